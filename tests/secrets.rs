//! Secrets stay secret: a daemon configured with known passwords, tokens and API keys (HTTP
//! input bearer token and basic auth, Elasticsearch credentials in a host URL, a password and
//! an API key, an SMTP password) runs at debug log level, takes events and mails an alert; none
//! of the secrets, nor their base64 forms, appear in its log, `/health`, `/metrics`,
//! `/status.json` or `sheepdog check` output, while the redacted forms do.

mod common;

use base64::Engine;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "tok-Q7xW9-bearer";
const HTTP_PASSWORD: &str = "pw-K3mZ8-basic";
const ES_URL_PASSWORD: &str = "es-Vb61T-inurl";
const ES_PASSWORD: &str = "es-Hq52R-keyed";
const ES_API_KEY: &str = "key-Np40L-apikey";
const SMTP_PASSWORD: &str = "smtp-Wc93J-auth";

/// Every secret, and the base64 forms that go into Authorization headers.
fn forbidden() -> Vec<String> {
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let mut all: Vec<String> = [
        TOKEN,
        HTTP_PASSWORD,
        ES_URL_PASSWORD,
        ES_PASSWORD,
        ES_API_KEY,
        SMTP_PASSWORD,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.push(b64(format!("app:{HTTP_PASSWORD}")));
    all.push(b64(format!("elastic:{ES_URL_PASSWORD}")));
    all.push(b64(format!("elastic:{ES_PASSWORD}")));
    all.push(b64(format!("alerts:{SMTP_PASSWORD}")));
    all
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in forbidden() {
        assert!(!text.contains(&secret), "{what} shows `{secret}`:\n{text}");
    }
}

/// tests/support/smtp_server.py requiring AUTH (over plain SMTP), killed on drop.
struct Smtp {
    port: u16,
    out: PathBuf,
    child: Child,
}

impl Smtp {
    fn start() -> Smtp {
        use std::io::BufRead;
        let port = free_port();
        let out = temp_file("mail.jsonl", "");
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/support/smtp_server.py"))
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .args(["--auth", &format!("alerts:{SMTP_PASSWORD}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed to run the SMTP test server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("ready"),
            "the SMTP test server did not start; run scripts/ci-deps/email.sh"
        );
        Smtp { port, out, child }
    }

    fn mails(&self) -> usize {
        std::fs::read_to_string(&self.out)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two HTTP inputs (bearer token, basic auth), three Elasticsearch outputs (login in the host
/// URL, `password`, `api_key`) and an email output with an SMTP password. Secrets come from
/// the environment and from literal values alike; `ES_HOSTS` carries the URL with the login.
fn pipeline(es_url: &str, smtp_port: u16) -> PathBuf {
    temp_file(
        "secrets.toml",
        &format!(
            r#"
[pipeline]
data_dir = "${{DATA_DIR}}"

[api]
address = "${{API_ADDR}}"

[[inputs]]
type = "http"
id = "bearer"
address = "${{HTTP_ADDR}}"
token = "${{INPUT_TOKEN}}"

[[inputs]]
type = "http"
id = "basic"
address = "${{HTTP2_ADDR}}"
user = "app"
password = "{HTTP_PASSWORD}"

[[outputs]]
type = "elasticsearch"
id = "es_url"
hosts = "${{ES_HOSTS}}"
index = "secrets-url"
manage_template = false

[[outputs]]
type = "elasticsearch"
id = "es_password"
hosts = "{es_url}"
user = "elastic"
password = "{ES_PASSWORD}"
index = "secrets-password"
manage_template = false

[[outputs]]
type = "elasticsearch"
id = "es_api_key"
hosts = "{es_url}"
api_key = "${{ES_API_KEY}}"
index = "secrets-apikey"
manage_template = false

[[outputs]]
type = "email"
id = "alert_mail"
when = '[status] == "error"'
to = "ops@example.com"
host = "127.0.0.1"
port = {smtp_port}
username = "alerts"
password = "${{SMTP_PASSWORD}}"
"#
        ),
    )
}

/// Runs `f` until it holds or `timeout` passes.
fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for(timeout, what, || f().then_some(()));
}

/// Three events with the bearer token, one error event with basic auth (mailed), and one
/// refused for a wrong token.
fn send_events(dog: &Sheepdog, http2_addr: &str) {
    let event = |i: usize, status: &str| {
        format!(
            "{}\n",
            json!({"request_id": format!("r{i}"), "status": status, "model": "gpt-4.1"})
        )
    };
    let bearer = format!("Bearer {TOKEN}");
    let body: String = (0..3).map(|i| event(i, "success")).collect();
    let (code, text) = post_body(
        &dog.http_url,
        body,
        "application/x-ndjson",
        &[("Authorization", &bearer)],
    );
    assert_eq!(code, 200, "{text}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("app:{HTTP_PASSWORD}"))
    );
    let (code, text) = post_body(
        &format!("http://{http2_addr}"),
        event(3, "error"),
        "application/x-ndjson",
        &[("Authorization", &basic)],
    );
    assert_eq!(code, 200, "{text}");
    // A wrong credential is refused, and the refusal does not name the right one.
    let (code, text) = post_body(
        &dog.http_url,
        event(4, "success"),
        "application/x-ndjson",
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(code, 401, "{text}");
    assert_no_secret("a 401 reply", &text);
}

#[test]
fn no_secret_shows_in_logs_health_metrics_status_or_check() {
    let es = Osmem::start();
    let smtp = Smtp::start();
    let config = pipeline(&es.url, smtp.port);
    let es_hosts = es
        .url
        .replacen("http://", &format!("http://elastic:{ES_URL_PASSWORD}@"), 1);
    let http2_addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("SHEEPDOG_LOG", "debug"),
        ("HTTP2_ADDR", http2_addr.as_str()),
        ("INPUT_TOKEN", TOKEN),
        ("ES_HOSTS", es_hosts.as_str()),
        ("ES_API_KEY", ES_API_KEY),
        ("SMTP_PASSWORD", SMTP_PASSWORD),
    ];
    let mut dog = Sheepdog::start(&config, &env);

    send_events(&dog, &http2_addr);
    for index in ["secrets-url", "secrets-password", "secrets-apikey"] {
        assert_eq!(
            es.wait_count(index, 4, Duration::from_secs(30)),
            4,
            "{index}"
        );
    }
    wait_until(Duration::from_secs(30), "the alert mail", || {
        smtp.mails() >= 1
    });

    let api = |path: &str| {
        client()
            .get(format!("{}{path}", dog.api_url))
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let health = api("/health");
    let metrics = api("/metrics");
    let status = api("/status.json");
    let mut check_env = env.to_vec();
    check_env.extend([
        ("API_ADDR", dog.api_addr.as_str()),
        ("HTTP_ADDR", dog.http_addr.as_str()),
        ("DATA_DIR", "/tmp"),
    ]);
    let (code, check) = sheepdog_check(&config, &check_env);
    assert_eq!(code, 0, "{check}");
    assert!(dog.stop().success(), "{}", dog.log());
    let log = dog.log();

    // Not vacuous: the texts are the real ones, naming the hosts without their login.
    let stripped = format!("output es_url host {}", es.url.trim_end_matches('/'));
    assert!(health.contains(&stripped), "{health}");
    assert!(status.contains(es.url.trim_end_matches('/')), "{status}");
    assert!(
        metrics.contains("sheepdog_input_events_total{input=\"basic\"} 1"),
        "{metrics}"
    );
    assert!(log.contains("DEBUG"), "not a debug-level log:\n{log}");
    assert!(log.contains("elasticsearch output starting"), "{log}");
    for (what, text) in [
        ("the log", &log),
        ("/health", &health),
        ("/metrics", &metrics),
        ("/status.json", &status),
        ("sheepdog check", &check),
    ] {
        assert_no_secret(what, text);
    }
}

#[test]
fn check_prints_hosts_and_problems_redacted() {
    let bad = temp_file(
        "bad.toml",
        &format!(
            r#"
[[inputs]]
type = "http"
address = "127.0.0.1:0"
token = "{TOKEN}"

[[outputs]]
type = "elasticsearch"
hosts = "http://elastic:{ES_URL_PASSWORD}@es:9200?pretty"
api_key = "{ES_API_KEY}"
index = "x"

[[outputs]]
type = "email"
id = "m"
to = "ops@example.com"
password = "{SMTP_PASSWORD}"

[[outputs]]
type = "elasticsearch"
id = "typed"
hosts = "http://es:9200"
index = "x"
password = 73519
"#
        ),
    );
    let (code, text) = sheepdog_check(&bad, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("host `http://[redacted]@es:9200?pretty` has a query string"),
        "{text}"
    );
    assert!(
        text.contains("`api_key` is set and a host URL carries a user and password"),
        "{text}"
    );
    assert!(
        text.contains("a password is set but the username is empty"),
        "{text}"
    );
    assert!(
        text.contains("password: a secret must be a string, not a number"),
        "{text}"
    );
    assert_no_secret("sheepdog check", &text);
    assert!(!text.contains("73519"), "{text}");
}
