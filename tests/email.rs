//! Alert mail against a real SMTP server (aiosmtpd, tests/support/smtp_server.py): STARTTLS
//! with a certificate made here, AUTH, UTF-8, throttling with exact digest counts, retries and
//! rejections, an SMTP server that is down or black-holing while the main output keeps its
//! pace, windowed alert rules, and the shipped pipeline with alert mail off.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running tests/support/smtp_server.py, killed on drop.
struct Smtp {
    port: u16,
    out: PathBuf,
    child: Child,
}

impl Smtp {
    fn start(args: &[&str]) -> Smtp {
        let port = free_port();
        let out = temp_file("mail.jsonl", "");
        let script = repo_root().join("tests/support/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed to run the SMTP test server");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if !line.starts_with("ready") {
            let status = child.wait().unwrap();
            panic!(
                "the SMTP test server did not start ({status}); is aiosmtpd installed? \
                 run scripts/ci-deps/email.sh"
            );
        }
        Smtp { port, out, child }
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(timeout, &format!("{n} mails"), || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, made with openssl.
fn make_certs() -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_file("placeholder", "").parent().unwrap().to_path_buf();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl is needed to make the test certificates (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sheepdog test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// HTTP in, error tagging as in the shipped pipeline, every event to a file, and `email`.
fn pipeline(events_file: &Path, email: &str, extra: &str) -> PathBuf {
    temp_file(
        "pipeline.toml",
        &format!(
            r#"
[pipeline]
batch_size = 512
[api]
address = "${{API_ADDR}}"
[[inputs]]
type = "http"
address = "${{HTTP_ADDR}}"
[[filters]]
type = "classify"
target = "status_category"
[[filters.rules]]
when = '[status] == "success"'
value = "success"
tags = ["success"]
[filters.default]
value = "error"
tags = ["error"]
[[outputs]]
type = "file"
id = "main"
path = "{}"
[[outputs]]
type = "email"
id = "alert_mail"
when = '"error" in [tags]'
to = "${{ALERT_TO:-}}"
from = "${{ALERT_FROM:-sheepdog@localhost}}"
host = "127.0.0.1"
port = "${{SMTP_PORT:-25}}"
subject = "HolySheep API Error Alert: %{{error_message}}"
{email}
{extra}
"#,
            events_file.display()
        ),
    )
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn post_events(dog: &Sheepdog, events: &[Value]) {
    for chunk in events.chunks(500) {
        let body: String = chunk.iter().map(|e| format!("{e}\n")).collect();
        let (code, text) = dog.post(body, "application/x-ndjson");
        assert_eq!(code, 200, "{text}");
    }
}

#[test]
fn starttls_auth_utf8_and_recipients() {
    let (ca, cert, key) = make_certs();
    let smtp = Smtp::start(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--require-starttls",
        "--auth",
        "alerts:s3cret-pw",
    ]);
    let events_file = temp_file("events.ndjson", "");
    let config = pipeline(
        &events_file,
        &format!(
            "cc = \"lead@example.com\"\ntls = \"starttls\"\nca_file = \"{}\"\nusername = \"${{SMTP_USER}}\"\npassword = \"${{SMTP_PASSWORD}}\"\nbody = \"Lỗi: %{{error_message}}\\nModel: %{{model}}\\nRequest: %{{request_id}}\\nUser: %{{user_id}}\"",
            ca.display()
        ),
        "",
    );
    let port = smtp.port.to_string();
    let dog = Sheepdog::start(
        &config,
        &[
            ("ALERT_TO", "ops@example.com, oncall@example.com"),
            ("ALERT_FROM", "HolySheep Alerts <alerts@holysheep.example>"),
            ("SMTP_PORT", &port),
            ("SMTP_USER", "alerts"),
            ("SMTP_PASSWORD", "s3cret-pw"),
        ],
    );
    post_events(
        &dog,
        &[
            json!({"status": "error", "error_message": "Lỗi kết nối: hết thời gian chờ", "model": "gpt-4.1", "request_id": "req-1"}),
        ],
    );
    let mails = smtp.wait_messages(1, Duration::from_secs(20));
    let m = &mails[0];
    assert_eq!(
        m["subject"],
        "HolySheep API Error Alert: Lỗi kết nối: hết thời gian chờ"
    );
    assert_eq!(
        m["rcpt_tos"],
        json!(["ops@example.com", "oncall@example.com", "lead@example.com"])
    );
    assert_eq!(m["mail_from"], "alerts@holysheep.example");
    assert_eq!(m["from"], "HolySheep Alerts <alerts@holysheep.example>");
    assert_eq!(m["cc"], "lead@example.com");
    assert_eq!(
        m["text"].as_str().unwrap().trim_end(),
        "Lỗi: Lỗi kết nối: hết thời gian chờ\nModel: gpt-4.1\nRequest: req-1\nUser: %{user_id}"
    );
    assert_eq!(m["tls"], true);
    assert_eq!(m["login"], "alerts");
    assert!(!dog.log().contains("s3cret-pw"), "the password was logged");
    let metrics = dog.metrics();
    assert!(
        metrics.contains("sheepdog_email_sent_total{output=\"alert_mail\"} 1\n"),
        "{metrics}"
    );
    let (code, health) = dog.health();
    assert_eq!(code, 200);
    let comp = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "output alert_mail")
        .unwrap()
        .clone();
    assert_eq!(comp["status"], "ok", "{health}");
}

#[test]
fn wrong_password_is_a_permanent_failure_logged_with_the_reply() {
    let (ca, cert, key) = make_certs();
    let smtp = Smtp::start(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--auth",
        "alerts:right",
    ]);
    let events_file = temp_file("events.ndjson", "");
    let config = pipeline(
        &events_file,
        &format!(
            "tls = \"starttls\"\nca_file = \"{}\"\nusername = \"alerts\"\npassword = \"${{SMTP_PASSWORD}}\"\nretry_backoff = \"100ms\"",
            ca.display()
        ),
        "",
    );
    let port = smtp.port.to_string();
    let dog = Sheepdog::start(
        &config,
        &[
            ("ALERT_TO", "ops@example.com"),
            ("SMTP_PORT", &port),
            ("SMTP_PASSWORD", "wrong"),
        ],
    );
    post_events(&dog, &[json!({"status": "error", "error_message": "x"})]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dog.metric("sheepdog_email_rejected_total{output=\"alert_mail\"}") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "no rejection counted:\n{}",
            dog.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = dog.log();
    assert!(
        log.contains("SMTP server rejected the alert mail; not retrying"),
        "{log}"
    );
    assert!(log.contains("535"), "the server's reply is logged: {log}");
    assert!(!log.contains("wrong"), "the password was logged: {log}");
    assert_eq!(
        dog.metric("sheepdog_email_retries_total{output=\"alert_mail\"}"),
        Some(0.0)
    );
    assert!(smtp.messages().is_empty());
}

#[test]
fn temporary_failures_are_retried_and_reported_in_the_next_mail() {
    let smtp = Smtp::start(&["--tempfail", "2"]);
    let events_file = temp_file("events.ndjson", "");
    let config = pipeline(
        &events_file,
        "retry_backoff = \"100ms\"\nmax_attempts = 2\nthrottle_key = \"%{error_message}\"\nthrottle_window = \"1m\"",
        "",
    );
    let port = smtp.port.to_string();
    let dog = Sheepdog::start(
        &config,
        &[("ALERT_TO", "ops@example.com"), ("SMTP_PORT", &port)],
    );
    // First mail: 451, retried, 451 again -> not delivered after max_attempts = 2.
    post_events(
        &dog,
        &[json!({"status": "error", "error_message": "first"})],
    );
    wait_for(Duration::from_secs(20), "the failed delivery", || {
        dog.metric("sheepdog_email_failed_total{output=\"alert_mail\"}")
            .filter(|v| *v == 1.0)
    });
    // Second mail gets through and says one mail was lost before it.
    post_events(
        &dog,
        &[json!({"status": "error", "error_message": "second"})],
    );
    let mails = smtp.wait_messages(1, Duration::from_secs(20));
    assert_eq!(mails[0]["subject"], "HolySheep API Error Alert: second");
    let text = mails[0]["text"].as_str().unwrap();
    assert!(
        text.contains("0 alert mails were dropped because the mail queue was full and 1 could not be delivered"),
        "{text}"
    );
    assert_eq!(
        dog.metric("sheepdog_email_retries_total{output=\"alert_mail\"}"),
        Some(1.0)
    );
    assert_eq!(
        dog.metric("sheepdog_email_sent_total{output=\"alert_mail\"}"),
        Some(1.0)
    );
}

#[test]
fn burst_of_ten_thousand_errors_yields_two_mails_and_two_digests() {
    let smtp = Smtp::start(&[]);
    let events_file = temp_file("events.ndjson", "");
    let config = pipeline(
        &events_file,
        "throttle_key = \"%{model}|%{error_message}\"\nthrottle_window = \"3s\"",
        "",
    );
    let port = smtp.port.to_string();
    let dog = Sheepdog::start(
        &config,
        &[("ALERT_TO", "ops@example.com"), ("SMTP_PORT", &port)],
    );
    let keys = [
        ("gpt-4.1", "upstream timeout"),
        ("claude-sonnet-4.5", "Lỗi kết nối: hết thời gian chờ"),
    ];
    let events: Vec<Value> = (0..10_000)
        .map(|i| {
            let (model, message) = keys[i % 2];
            json!({"status": "error", "model": model, "error_message": message,
                   "user_id": format!("user-{}", i % 7), "request_id": format!("req-{i}")})
        })
        .collect();
    let started = Instant::now();
    post_events(&dog, &events);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "posting the burst took {took:?}, longer than one 3s throttle window"
    );
    let mails = smtp.wait_messages(4, Duration::from_secs(20));
    // Two more windows: nothing else may arrive.
    std::thread::sleep(Duration::from_secs(7));
    let mails_after = smtp.messages();
    assert_eq!(mails_after.len(), 4, "{mails_after:#?}");
    let subjects: Vec<&str> = mails
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    for (model, message) in keys {
        let alert = format!("HolySheep API Error Alert: {message}");
        let digest = format!("[digest: 4999 more] HolySheep API Error Alert: {message}");
        assert_eq!(
            subjects.iter().filter(|s| **s == alert).count(),
            1,
            "{subjects:?}"
        );
        assert_eq!(
            subjects.iter().filter(|s| **s == digest).count(),
            1,
            "{subjects:?}"
        );
        let body = mails.iter().find(|m| m["subject"] == digest).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            body.contains(&format!("throttle key `{model}|{message}`")),
            "{body}"
        );
        assert!(body.contains("Events:      4999\n"), "{body}");
        assert!(body.contains(&format!("model (1): {model}\n")), "{body}");
        assert!(body.contains("user_id (7): "), "{body}");
        assert!(body.contains("Sample request_id: req-"), "{body}");
    }
    assert_eq!(lines(&events_file), 10_000);
    assert_eq!(
        dog.metric("sheepdog_email_throttled_events_total{output=\"alert_mail\"}"),
        Some(9_998.0)
    );
    assert_eq!(
        dog.metric("sheepdog_email_sent_total{output=\"alert_mail\"}"),
        Some(4.0)
    );
}

/// Posts `n` events (every tenth an error with its own key, so each wants a mail) and returns
/// how long it took until the main output had them all.
fn ingest_time(dog: &Sheepdog, events_file: &Path, n: usize) -> Duration {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            if i % 10 == 0 {
                json!({"status": "error", "error_message": format!("failure {i}"), "request_id": i})
            } else {
                json!({"status": "success", "request_id": i})
            }
        })
        .collect();
    let started = Instant::now();
    post_events(dog, &events);
    wait_for(
        Duration::from_secs(30),
        "every event in the main output",
        || (lines(events_file) >= n).then_some(()),
    );
    started.elapsed()
}

#[test]
fn smtp_down_or_black_holing_never_slows_the_main_output() {
    let n = 20_000;
    let email = "throttle_key = \"%{error_message}\"\nconnect_timeout = \"2s\"\nsend_timeout = \"3s\"\nqueue_size = 10\nretry_backoff = \"200ms\"";

    // Baseline: a working SMTP server.
    let smtp = Smtp::start(&[]);
    let events_file = temp_file("events.ndjson", "");
    let port = smtp.port.to_string();
    let dog = Sheepdog::start(
        pipeline(&events_file, email, ""),
        &[("ALERT_TO", "ops@example.com"), ("SMTP_PORT", &port)],
    );
    let baseline = ingest_time(&dog, &events_file, n);
    drop(dog);

    // A server that accepts connections and never answers.
    let hole = free_port();
    let mut blackhole = Command::new("python3")
        .arg(repo_root().join("tests/support/smtp_server.py"))
        .args(["--port", &hole.to_string(), "--blackhole"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(blackhole.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "black hole did not start");
    }
    // And a port where nothing listens.
    let closed = free_port();
    for (what, port) in [("black hole", hole), ("nothing listening", closed)] {
        let events_file = temp_file("events.ndjson", "");
        let port = port.to_string();
        let dog = Sheepdog::start(
            pipeline(&events_file, email, ""),
            &[("ALERT_TO", "ops@example.com"), ("SMTP_PORT", &port)],
        );
        let took = ingest_time(&dog, &events_file, n);
        eprintln!("{what}: {n} events in {took:?} (baseline {baseline:?})");
        assert!(
            took < baseline * 3 + Duration::from_secs(1),
            "{what}: {n} events took {took:?}, baseline {baseline:?}"
        );
        assert_eq!(lines(&events_file), n);
        assert_eq!(
            dog.metric("sheepdog_email_events_total{output=\"alert_mail\"}"),
            Some((n / 10) as f64)
        );
        let dropped = dog
            .metric("sheepdog_email_dropped_total{output=\"alert_mail\"}")
            .unwrap();
        assert!(dropped >= (n / 10 - 20) as f64, "{what}: dropped {dropped}");
        // The failure shows in /health as Degraded (not Down: ingest goes on).
        let health = wait_for(
            Duration::from_secs(30),
            "alert mail degraded in /health",
            || {
                let (code, h) = dog.health();
                assert_eq!(code, 200, "{h}");
                h["components"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["component"] == "output alert_mail" && c["status"] == "degraded")
                    .cloned()
            },
        );
        assert!(
            health["reason"]
                .as_str()
                .unwrap()
                .starts_with("alert mail cannot reach 127.0.0.1:"),
            "{health}"
        );
        assert!(
            dog.metric("sheepdog_email_failed_total{output=\"alert_mail\"}")
                .unwrap()
                >= 1.0
        );
    }
    let _ = blackhole.kill();
    let _ = blackhole.wait();
}

#[test]
fn hourly_cap_holds_back_and_summarises() {
    let smtp = Smtp::start(&[]);
    let events_file = temp_file("events.ndjson", "");
    let config = pipeline(&events_file, "max_emails_per_hour = 3", "");
    let port = smtp.port.to_string();
    let mut dog = Sheepdog::start(
        &config,
        &[("ALERT_TO", "ops@example.com"), ("SMTP_PORT", &port)],
    );
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"status": "error", "error_message": format!("e{i}")}))
        .collect();
    post_events(&dog, &events);
    smtp.wait_messages(3, Duration::from_secs(20));
    wait_for(Duration::from_secs(10), "7 held mails", || {
        dog.metric("sheepdog_email_held_total{output=\"alert_mail\"}")
            .filter(|v| *v == 7.0)
    });
    assert_eq!(smtp.messages().len(), 3);
    // At shutdown, what the cap held back is summarised, not lost.
    assert!(dog.stop().success());
    let mails = smtp.messages();
    assert_eq!(mails.len(), 4, "{mails:#?}");
    assert_eq!(
        mails[3]["subject"],
        "[sheepdog] 7 alert mails held back by max_emails_per_hour"
    );
    let text = mails[3]["text"].as_str().unwrap();
    assert!(
        text.contains("7 alert mails standing for 7 events"),
        "{text}"
    );
    assert!(
        text.contains("  1 x HolySheep API Error Alert: e9\n"),
        "{text}"
    );
}

#[test]
fn error_rate_rule_mails_when_firing_and_when_resolved() {
    let smtp = Smtp::start(&[]);
    let events_file = temp_file("events.ndjson", "");
    let rules = r#"
[alerts]
mail = "alert_mail"
evaluate_every = "200ms"
[[alerts.rules]]
name = "error_rate"
expr = "error_rate > 1%"
window = "3s"
min_events = 200
"#;
    // The error mails themselves are switched off by `when`, so only rule mails arrive.
    let config = pipeline(&events_file, "", rules)
        .to_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("when = '\"error\" in [tags]'", "when = 'false'");
    std::fs::write(&config, text).unwrap();
    let port = smtp.port.to_string();
    let dog = Sheepdog::start(
        &config,
        &[("ALERT_TO", "ops@example.com"), ("SMTP_PORT", &port)],
    );
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"status": if i % 20 == 0 { "error" } else { "success" }, "latency_ms": 40}))
        .collect();
    post_events(&dog, &events);
    let mails = smtp.wait_messages(1, Duration::from_secs(10));
    assert_eq!(
        mails[0]["subject"],
        "[sheepdog alert] FIRING error_rate: 5% (threshold > 1%, 3s window)"
    );
    let text = mails[0]["text"].as_str().unwrap();
    assert!(
        text.contains("Events:     300 in the window (minimum 200)"),
        "{text}"
    );
    // The window empties: one resolution, and nothing more.
    let mails = smtp.wait_messages(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let mails_after = smtp.messages();
    assert_eq!(mails_after.len(), 2, "{mails_after:#?}");
    assert!(
        mails[1]["subject"].as_str().unwrap().starts_with(
            "[sheepdog alert] RESOLVED error_rate: no data (threshold > 1%, 3s window)"
        ),
        "{}",
        mails[1]["subject"]
    );
    assert!(dog
        .metrics()
        .contains("sheepdog_alert_transitions_total{rule=\"error_rate\"} 2\n"));
    assert!(dog
        .metrics()
        .contains("sheepdog_alert_firing{rule=\"error_rate\"} 0\n"));
}

#[test]
fn shipped_pipeline_runs_with_alert_mail_off() {
    let osmem = Osmem::start();
    let dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", &osmem.url)]);
    let (code, health) = dog.health();
    assert_eq!(code, 200, "{health}");
    let comp = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "output alert_mail")
        .cloned()
        .unwrap_or_else(|| panic!("{health}"));
    assert_eq!(comp["status"], "degraded");
    assert_eq!(comp["reason"], "alert mail off: ALERT_TO is empty");
    let log = dog.log();
    assert_eq!(
        log.matches("alert mail off: ALERT_TO is empty").count(),
        1,
        "{log}"
    );
    assert!(log.contains("alert rules on"), "{log}");
    // An error event still flows to Elasticsearch.
    let (code, _) = dog.post(
        json!({"status": "error", "error_message": "x", "model": "gpt-4.1", "latency_ms": 20})
            .to_string(),
        "application/json",
    );
    assert_eq!(code, 200);
    assert_eq!(
        dog.metric("sheepdog_email_events_total{output=\"alert_mail\"}")
            .map(|v| v as u64),
        Some(wait_for(
            Duration::from_secs(10),
            "the error event counted",
            || {
                dog.metric("sheepdog_email_events_total{output=\"alert_mail\"}")
                    .filter(|v| *v == 1.0)
                    .map(|v| v as u64)
            }
        ))
    );
}
