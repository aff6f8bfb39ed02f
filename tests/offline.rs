//! `sheepdog test` and `sheepdog tap` as operators run them: the real binary on the shipped
//! pipeline and its shipped tests, a wrong expectation, malformed files, and events from stdin
//! printed with their index, streamed while the input is still open.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SHIPPED: &str = "pipelines/holysheep.toml";
const SHIPPED_TESTS: &str = "pipelines/holysheep.tests.toml";
const GEOIP_DB: &str = "tests/fixtures/geoip/GeoLite2-City-Test.mmdb";

fn sheepdog(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(sheepdog_binary());
    cmd.current_dir(repo_root())
        .args(args)
        .env_remove("GEOIP_DB");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sheepdog")
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shipped test file with its `[env]` table removed.
fn shipped_tests_without_env() -> String {
    let shipped = std::fs::read_to_string(repo_root().join(SHIPPED_TESTS)).unwrap();
    let env = format!("[env]\nGEOIP_DB = \"{GEOIP_DB}\"\n");
    assert!(
        shipped.contains(&env),
        "the shipped tests set GEOIP_DB in [env]"
    );
    shipped.replace(&env, "")
}

#[test]
fn the_shipped_tests_pass() {
    let (code, stdout, stderr) = text(&sheepdog(
        &["test", "--config", SHIPPED, SHIPPED_TESTS],
        &[],
    ));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 50, "{summary}");
    assert_eq!(summary, format!("{passed} passed, 0 failed"));
    // The database came from [env]: no warning about the default path.
    assert!(!stderr.contains("GeoIP database unusable"), "{stderr}");
}

#[test]
fn the_database_can_come_from_the_environment_instead() {
    let tests = temp_file("tests.toml", &shipped_tests_without_env());
    let tests = tests.to_str().unwrap();
    let (code, stdout, stderr) = text(&sheepdog(
        &["test", "--config", SHIPPED, tests],
        &[("GEOIP_DB", GEOIP_DB)],
    ));
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Without it the GeoIP tests fail, and the warning says why.
    let (code, stdout, stderr) = text(&sheepdog(&["test", "--config", SHIPPED, tests], &[]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("FAIL  geoip: London"), "{stdout}");
    assert!(stderr.contains("GeoIP database unusable"), "{stderr}");
}

#[test]
fn a_wrong_expectation_fails_naming_the_field_and_both_values() {
    let tests = temp_file(
        "wrong.toml",
        r#"now = 2026-11-27T10:00:00Z
[[tests]]
name = "right"
input = { model = "gpt-4.1", total_tokens = 1000 }
expect = { cost_usd = 0.008 }

[[tests]]
name = "claude priced like gpt"
input = { model = "claude-sonnet-4.5", total_tokens = 1000, request_id = "r-77" }
expect = { cost_usd = 0.008 }
expect_index = "holysheep-logs-2026.11.27"
"#,
    );
    let (code, stdout, stderr) = text(&sheepdog(
        &["test", "--config", SHIPPED, tests.to_str().unwrap()],
        &[],
    ));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("ok    right\n"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAIL  claude priced like gpt ({}:7)\n",
            tests.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("[cost_usd]: expected 0.008, got 0.015\n"),
        "{stdout}"
    );
    // The whole resulting event follows.
    assert!(stdout.contains("\"request_id\": \"r-77\""), "{stdout}");
    assert!(stdout.contains("\"cost_per_1m_tokens\": 15.0"), "{stdout}");
    assert!(
        stdout.contains("\"index\": \"holysheep-logs-2026.11.27\""),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn malformed_files_exit_2_with_their_location() {
    let tests = temp_file(
        "bad.toml",
        "[[tests]]\nname = \"x\"\ninput = { a = 1 }\nexpect_tag = [\"a\"]\n",
    );
    let (code, stdout, stderr) = text(&sheepdog(
        &["test", "--config", SHIPPED, tests.to_str().unwrap()],
        &[],
    ));
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:4:1: error: tests[0].expect_tag: unknown key `expect_tag` (hint: did you mean `expect_tags`?)",
            tests.display()
        )),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");

    // An output the pipeline does not have.
    let tests = temp_file(
        "outputs.toml",
        "[[tests]]\nname = \"x\"\ninput = { a = 1 }\nexpect_outputs = [\"mail\"]\n",
    );
    let (code, _, stderr) = text(&sheepdog(
        &["test", "--config", SHIPPED, tests.to_str().unwrap()],
        &[],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(":4:1: error: tests[0].expect_outputs: the pipeline has no output `mail`"),
        "{stderr}"
    );

    // A broken pipeline file, as `check` reports it.
    let pipeline = temp_file(
        "p.toml",
        "[[inputs]]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\n[[outputs]]\ntype = \"stdot\"\n",
    );
    let (code, _, stderr) = text(&sheepdog(
        &[
            "test",
            "--config",
            pipeline.to_str().unwrap(),
            SHIPPED_TESTS,
        ],
        &[],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("p.toml:5:1: error: outputs[0].type: unknown output type `stdot`"),
        "{stderr}"
    );
    let (code, _, stderr) = text(&sheepdog(
        &["tap", "--config", pipeline.to_str().unwrap()],
        &[],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("did you mean `stdout`?"), "{stderr}");

    let (code, _, stderr) = text(&sheepdog(&["test", "--config", SHIPPED, "nope.toml"], &[]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nope.toml"), "{stderr}");
}

/// Runs `sheepdog tap` on the shipped pipeline with `input` on stdin.
fn tap(input: &str, env: &[(&str, &str)]) -> Vec<Value> {
    let mut cmd = Command::new(sheepdog_binary());
    cmd.current_dir(repo_root())
        .args(["tap", "--config", SHIPPED])
        .env("GEOIP_DB", GEOIP_DB)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tap_prints_each_event_with_its_index_and_outputs() {
    let input = concat!(
        "{\"model\":\"claude-sonnet-4.5\",\"total_tokens\":1000,\"status\":\"success\",\"latency_ms\":87,",
        "\"client_ip\":\"81.2.69.142\",\"timestamp\":\"2026-11-27T01:30:00+05:00\",\"@metadata\":{\"source\":\"t\"}}\n",
        "plain log line\n",
        "[{\"status\":\"pending\",\"@timestamp\":\"2026-11-25T08:00:00.000Z\"},\n",
        " {\"status\":\"error\",\"error_message\":\"boom\",\"@timestamp\":\"2026-11-25T08:00:00.000Z\"}]\n",
        "{\n  \"message\": \"{\\\"user\\\":\\\"u1\\\"}\",\n  \"@timestamp\": \"2026-11-24T00:00:00.000Z\"\n}\n",
    );
    // The HTTP and Beats inputs are not bound: a port already in use does not matter.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let events = tap(input, &[("HTTP_ADDR", &addr), ("BEATS_ADDR", &addr)]);
    assert_eq!(events.len(), 5, "{events:#?}");

    let e = &events[0];
    assert_eq!(e["cost_usd"], 0.015);
    assert_eq!(e["latency_bucket"], "fast");
    assert_eq!(e["@timestamp"], "2026-11-26T20:30:00.000Z");
    assert_eq!(e["geoip"]["geo"]["city_name"], "London");
    // Without a request_id the shipped first stage fingerprints the event for its document id.
    let mut metadata = e["@metadata"].clone();
    let fingerprint = metadata.as_object_mut().unwrap().remove("fingerprint");
    assert!(
        fingerprint
            .as_ref()
            .and_then(|f| f.as_str())
            .is_some_and(|f| f.len() == 32 && f.bytes().all(|b| b.is_ascii_hexdigit())),
        "{fingerprint:?}"
    );
    assert_eq!(
        metadata,
        json!({"source": "t", "index": "holysheep-logs-2026.11.26", "outputs": ["elasticsearch"]})
    );

    let e = &events[1];
    assert_eq!(e["message"], "plain log line");
    assert_eq!(e["tags"], json!(["_jsonparsefailure", "error"]));
    assert_eq!(
        e["@metadata"]["outputs"],
        json!(["elasticsearch", "alert_mail"])
    );

    assert_eq!(events[2]["status_category"], "pending");
    assert_eq!(events[2]["@metadata"]["index"], "holysheep-logs-2026.11.25");
    assert_eq!(events[3]["status_category"], "error");
    assert_eq!(
        events[3]["@metadata"]["outputs"],
        json!(["elasticsearch", "alert_mail"])
    );
    assert_eq!(events[4]["parsed"], json!({"user": "u1"}));
    assert_eq!(events[4]["@metadata"]["index"], "holysheep-logs-2026.11.24");

    // ES_INDEX_PREFIX reaches the index name as it does in `run`.
    let events = tap("{\"a\":1}", &[("ES_INDEX_PREFIX", "relay")]);
    assert!(events[0]["@metadata"]["index"]
        .as_str()
        .unwrap()
        .starts_with("relay-"));
    drop(held);
}

#[test]
fn tap_streams_events_while_the_input_is_open() {
    let mut child = Command::new(sheepdog_binary())
        .current_dir(repo_root())
        .args(["tap", "--config", SHIPPED])
        .env_remove("GEOIP_DB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // One event at a time: each is printed before the next is written.
    for i in 0..3 {
        writeln!(stdin, "{{\"i\":{i},\"status\":\"success\"}}").unwrap();
        stdin.flush().unwrap();
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tap printed the event while stdin is open");
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["i"], i);
    }
    // Then a large input in one go, more than many batches.
    let n = 50_000;
    let writer = std::thread::spawn(move || {
        let mut buf = String::new();
        for i in 0..n {
            buf.push_str(&format!(
                "{{\"i\":{i},\"model\":\"gpt-4.1\",\"total_tokens\":1000}}\n"
            ));
        }
        stdin.write_all(buf.as_bytes()).unwrap();
    });
    let mut seen = 0;
    while seen < n {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("events keep coming");
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["i"], seen);
        assert_eq!(e["cost_usd"], 0.008);
        seen += 1;
    }
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
}

/// Sample request logs with their own timestamps, so both runs stamp them alike.
fn sample_logs() -> Vec<Value> {
    let models = [
        "gpt-4.1",
        "claude-sonnet-4.5",
        "deepseek-v3.2",
        "gemini-2.5-flash",
        "other",
    ];
    let statuses = [
        ("success", 200),
        ("pending", 202),
        ("error", 500),
        ("done", 200),
    ];
    let ips = [
        "81.2.69.142",
        "216.160.83.56",
        "8.8.8.8",
        "10.0.0.1",
        "not-an-ip",
    ];
    let agents = ["curl/8.5.0", "OpenAI/Python 1.54.0", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"];
    (0..40)
        .map(|i| {
            let (status, code) = statuses[i % statuses.len()];
            let mut log = json!({
                "request_id": format!("r-{i}"),
                "model": models[i % models.len()],
                "total_tokens": if i % 7 == 0 { json!(format!("{}", 100 * i)) } else { json!(100 * i) },
                "status": status,
                "status_code": code,
                "latency_ms": (i * 37) % 700,
                "client_ip": ips[i % ips.len()],
                "user_agent": agents[i % agents.len()],
                "timestamp": format!("2026-11-{:02}T{:02}:30:00+0{}:00", 20 + i % 5, i % 24, i % 3),
                "fields": {"environment": "production", "service": "relay"},
            });
            if i % 6 == 0 {
                log["message"] = json!(format!("{{\"n\":{i}}}"));
            }
            if i % 9 == 0 {
                // (A malformed `timestamp` is tagged, but the index template maps the field
                // as a date, so Elasticsearch refuses it: not part of this comparison.)
                log.as_object_mut().unwrap().remove("timestamp");
                log["@timestamp"] = json!("2026-11-19T12:00:00.000Z");
            }
            log
        })
        .collect()
}

#[test]
fn tap_prints_what_run_indexes() {
    let logs = sample_logs();
    let ndjson: String = logs.iter().map(|l| format!("{l}\n")).collect();

    let es = Osmem::start();
    let mut dog = Sheepdog::start(
        SHIPPED,
        &[("ES_HOSTS", es.url.as_str()), ("GEOIP_DB", GEOIP_DB)],
    );
    let (status, reply) = dog.post(ndjson.clone(), "application/x-ndjson");
    assert_eq!(status, 200, "{reply}");
    assert!(dog.stop().success(), "{}", dog.log());
    let hits = es.search("holysheep-logs-*", &json!({"size": 100}));
    let hits = hits["hits"]["hits"].as_array().unwrap().clone();
    assert_eq!(
        hits.len(),
        logs.len(),
        "{} indexed: {}",
        es.count("holysheep-logs-*"),
        dog.log()
    );

    let tapped = tap(&ndjson, &[]);
    assert_eq!(tapped.len(), logs.len());
    for mut event in tapped {
        let meta = event.as_object_mut().unwrap().remove("@metadata").unwrap();
        let id = event["request_id"].clone();
        let mut hit = hits
            .iter()
            .find(|h| h["_source"]["request_id"] == id)
            .unwrap_or_else(|| panic!("{id} was not indexed"))
            .clone();
        // tap feeds the filter chain directly: the HTTP input's own tag is not added.
        let tags = hit["_source"]["tags"].as_array_mut().unwrap();
        assert_eq!(tags[0], "direct-upload");
        tags.remove(0);
        let differing: Vec<(&String, &Value, &Value)> = event
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k, v, &hit["_source"][k]))
            .filter(|(_, v, w)| v != w)
            .collect();
        assert!(differing.is_empty(), "{id}: tap vs indexed: {differing:?}");
        assert_eq!(hit["_source"], event, "{id}");
        assert_eq!(hit["_index"], meta["index"], "{id}");
    }
}
