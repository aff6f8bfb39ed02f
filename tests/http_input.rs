//! The HTTP input and the shipped filter chain, end to end through the real binary with a
//! `file` output: body shapes, every reply code, bad input kept as tagged events, draining on
//! SIGTERM.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The shipped pipeline with a file output, extra settings for the HTTP input and an optional
/// replacement of the queue capacity.
fn pipeline_with_file_output(out: &Path, http_extra: &str, queue: &str) -> PathBuf {
    let tags = "tags = [\"direct-upload\"]";
    let http = format!("{tags}\n{http_extra}");
    let mut replacements = vec![(tags, http.as_str())];
    if !queue.is_empty() {
        replacements.push(("queue_capacity = 4096", queue));
    }
    shipped_pipeline_to_file(out, &replacements, "")
}

fn read_events(path: &Path, n: usize) -> Vec<Value> {
    read_ndjson(path, n, Duration::from_secs(20))
}

fn out_path() -> PathBuf {
    temp_file("events.ndjson", "").with_file_name(format!("events-{}.ndjson", free_port()))
}

#[test]
fn shipped_filters_enrich_events_from_all_body_shapes() {
    let out = out_path();
    let dog = Sheepdog::start(pipeline_with_file_output(&out, "", ""), &[]);
    let single = json!({"timestamp":"2026-11-27T10:15:02.123456+00:00","request_id":"r1","model":"deepseek-v3.2","user_id":"user_1","status":"success","latency_ms":43.17,"total_tokens":1042,"fields":{"environment":"production","service":"holysheep-api"}});
    assert_eq!(
        dog.post(single.to_string(), "application/json"),
        (200, "ok\n".into())
    );
    let array = json!([
        {"timestamp":"2026-11-28T00:30:00+07:00","request_id":"r2","model":"gpt-4.1","status":"error","error_message":"HTTP 429: rate limited","latency_ms":612.0},
        {"request_id":"r3","model":"claude-sonnet-4.5","status":"pending","latency_ms":"150","total_tokens":"2000","cost_usd":0.5}
    ]);
    assert_eq!(dog.post(array.to_string(), "application/json").0, 200);
    let ndjson = "{\"request_id\":\"r4\",\"status_code\":200,\"model\":\"mystery\",\"total_tokens\":1000000}\nthis is not json\n{\"request_id\":\"r5\",\"message\":\"{\\\"inner\\\":1}\",\"timestamp\":\"yesterday\"}\n";
    assert_eq!(dog.post(ndjson, "application/x-ndjson").0, 200);

    let events = read_events(&out, 6);
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["request_id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {events:?}"))
            .clone()
    };

    let r1 = by_id("r1");
    assert_eq!(r1["@timestamp"], "2026-11-27T10:15:02.123Z");
    assert_eq!(r1["cost_usd"], 0.000438);
    assert_eq!(r1["cost_per_1m_tokens"], 0.42);
    assert_eq!(r1["status_category"], "success");
    assert_eq!(r1["latency_bucket"], "ultra_fast");
    assert_eq!(r1["environment"], "production");
    assert_eq!(r1["service"], "holysheep-api");
    assert_eq!(r1["tags"], json!(["direct-upload", "success"]));

    let r2 = by_id("r2");
    assert_eq!(r2["@timestamp"], "2026-11-27T17:30:00.000Z");
    assert_eq!(r2["status_category"], "error");
    assert_eq!(r2["latency_bucket"], "critical");
    assert_eq!(r2["tags"], json!(["direct-upload", "error"]));
    assert!(r2.get("cost_usd").is_none());
    assert!(
        r2.get("environment").is_none(),
        "a missing [fields][environment] must not be written literally"
    );

    let r3 = by_id("r3");
    assert_eq!(r3["cost_usd"], 0.5, "an existing cost is kept");
    assert_eq!(r3["status_category"], "pending");
    assert_eq!(r3["latency_bucket"], "normal");

    let r4 = by_id("r4");
    assert_eq!(r4["cost_usd"], 8.0, "unknown models use the default price");
    assert_eq!(r4["status_category"], "success");

    let r5 = by_id("r5");
    assert_eq!(r5["parsed"], json!({"inner": 1}));
    assert!(r5["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("_dateparsefailure")));
    assert_eq!(r5["timestamp_unparsed"], "yesterday", "{r5}");
    assert!(r5.get("timestamp").is_none(), "{r5}");

    let bad = events
        .iter()
        .find(|e| e["message"] == "this is not json")
        .expect("bad line kept");
    assert_eq!(
        bad["tags"],
        json!(["_jsonparsefailure", "direct-upload", "error"])
    );
    assert!(bad["@timestamp"].is_string());

    assert_eq!(
        dog.metric("sheepdog_input_events_total{input=\"http\"}"),
        Some(6.0)
    );
    assert_eq!(
        dog.metric("sheepdog_input_parse_failures_total{input=\"http\"}"),
        Some(1.0)
    );
}

#[test]
fn gzip_bodies_and_reply_codes() {
    use flate2::write::GzEncoder;
    use std::io::Write;
    let out = out_path();
    let dog = Sheepdog::start(
        pipeline_with_file_output(
            &out,
            "max_body_size = \"2KiB\"\ntoken = \"s3cret\"",
            "queue_capacity = 8",
        ),
        &[],
    );
    let auth = [("Authorization", "Bearer s3cret")];
    let body: String = (0..5)
        .map(|i| format!("{{\"request_id\":\"g{i}\",\"status\":\"success\"}}\n"))
        .collect();
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let (status, _) = post_body(
        &dog.http_url,
        gz,
        "application/x-ndjson",
        &[auth[0], ("Content-Encoding", "gzip")],
    );
    assert_eq!(status, 200);
    assert_eq!(read_events(&out, 5).len(), 5);

    // 401 without or with a wrong token
    assert_eq!(
        post_body(&dog.http_url, "{}", "application/json", &[]).0,
        401
    );
    assert_eq!(
        post_body(
            &dog.http_url,
            "{}",
            "application/json",
            &[("Authorization", "Bearer nope")]
        )
        .0,
        401
    );
    // 413 over the body limit, plain and inflated
    assert_eq!(
        post_body(&dog.http_url, vec![b' '; 4096], "application/json", &auth).0,
        413
    );
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b' '; 100_000]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 2048);
    assert_eq!(
        post_body(
            &dog.http_url,
            bomb,
            "application/json",
            &[auth[0], ("Content-Encoding", "gzip")]
        )
        .0,
        413
    );
    // 400 for a corrupt gzip body
    assert_eq!(
        post_body(
            &dog.http_url,
            "nope",
            "application/json",
            &[auth[0], ("Content-Encoding", "gzip")]
        )
        .0,
        400
    );
    // A body with more events than the whole queue goes in chunks as room appears.
    let many: String = (0..9).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    assert_eq!(
        post_body(&dog.http_url, many, "application/x-ndjson", &auth).0,
        200
    );
    assert_eq!(read_events(&out, 14).len(), 14);
    // 405 for GET
    assert_eq!(
        client()
            .get(&dog.http_url)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        405
    );
    for (reason, n) in [
        ("unauthorized", 2.0),
        ("too_large", 2.0),
        ("bad_gzip", 1.0),
        ("method", 1.0),
        ("queue_full", 0.0),
    ] {
        assert_eq!(
            dog.metric(&format!(
                "sheepdog_input_rejected_total{{input=\"http\",reason=\"{reason}\"}}"
            )),
            Some(n),
            "{reason}"
        );
    }
}

#[test]
fn a_full_queue_holds_requests_for_queue_wait_then_answers_429() {
    let out = out_path();
    // A second output that never delivers (nothing listens at its address) and holds one
    // event: the filter workers stall on it and the pipeline queue of 8 fills.
    let stuck = format!(
        "\n[[outputs]]\ntype = \"elasticsearch\"\nhosts = \"http://127.0.0.1:{}\"\nindex = \"stuck-%{{+YYYY.MM.dd}}\"\nqueue_max_events = 1\n",
        free_port()
    );
    let config = shipped_pipeline_to_file(
        &out,
        &[
            ("tags = [\"direct-upload\"]", "queue_wait = \"400ms\""),
            ("queue_capacity = 4096", "queue_capacity = 8"),
        ],
        &stuck,
    );
    let dog = Sheepdog::start(config, &[]);
    let body: String = (0..4).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let mut refused = None;
    for _ in 0..10 {
        let started = Instant::now();
        let resp = client()
            .post(&dog.http_url)
            .body(body.clone())
            .send()
            .unwrap();
        if resp.status().as_u16() == 429 {
            assert_eq!(resp.headers()["retry-after"], "1");
            refused = Some(started.elapsed());
            break;
        }
        assert_eq!(resp.status().as_u16(), 200);
    }
    let waited = refused.expect("a request was refused once the queue was full");
    assert!(
        waited >= Duration::from_millis(400),
        "answered after {waited:?}"
    );
    assert_eq!(
        dog.metric("sheepdog_input_rejected_total{input=\"http\",reason=\"queue_full\"}"),
        Some(1.0)
    );
}

#[test]
fn sigterm_drains_queued_events() {
    let out = out_path();
    let mut dog = Sheepdog::start(pipeline_with_file_output(&out, "", ""), &[]);
    let mut sent = 0;
    for batch in 0..20 {
        let body: String = (0..500).map(|i| format!("{{\"request_id\":\"d{batch}-{i}\",\"status\":\"success\",\"latency_ms\":{i}}}\n")).collect();
        assert_eq!(dog.post(body, "application/x-ndjson").0, 200);
        sent += 500;
    }
    let status = dog.stop();
    assert!(status.success(), "exit status {status}\n{}", dog.log());
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), sent);
}

#[test]
fn check_reports_every_problem_and_exit_code() {
    let bad = temp_file(
        "bad.toml",
        "[[inputs]]\ntype = \"http\"\naddress = \"nowhere\"\n\n[[filters]]\ntype = \"mutate\"\nadd_field = { x = \"%{[a\" }\n\n[[filters]]\ntype = \"date\"\nformats = [\"JODA\"]\n\n[[outputs]]\ntype = \"file\"\npath = \"${SHEEPDOG_TEST_UNSET_VAR}\"\n",
    );
    let (code, text) = sheepdog_check(&bad, &[]);
    assert_eq!(code, 1, "{text}");
    let name = bad.display().to_string();
    assert!(
        text.contains(&format!(
            "{name}:3:1: error: inputs[0].address: `nowhere` is not a listen address"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:7:15: error: filters[0].add_field.x: bad template"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:11:1: error: filters[1].formats: unknown date format `JODA`"
        )),
        "{text}"
    );
    assert!(
        text.contains("environment variable `SHEEPDOG_TEST_UNSET_VAR` is not set"),
        "{text}"
    );

    let bad_when = temp_file(
        "when.toml",
        "[[inputs]]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\n[[outputs]]\ntype = \"stdout\"\nwhen = \"[a] ==\"\n",
    );
    let (code, text) = sheepdog_check(&bad_when, &[]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        text.matches("outputs[0].when: bad condition").count(),
        1,
        "reported once: {text}"
    );

    let good = temp_file(
        "good.toml",
        "[[inputs]]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\n[[outputs]]\ntype = \"stdout\"\n",
    );
    let (code, text) = sheepdog_check(&good, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn help_explains_run_and_check() {
    let out = std::process::Command::new(sheepdog_binary())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("run") && text.contains("check"), "{text}");
}

/// The queue fills while the output waits for a cluster that never answers; the input then
/// refuses bodies with 429 once `queue_wait` is over, without decoding them: a body of bad JSON
/// counts no parse failure.
#[test]
fn a_full_queue_answers_429_before_decoding() {
    let config = temp_file(
        "queue-full.toml",
        &format!(
            r#"
[pipeline]
workers = 1
queue_capacity = 8
batch_size = 8
shutdown_timeout = "1s"
data_dir = "${{DATA_DIR}}"

[api]
address = "${{API_ADDR}}"

[[inputs]]
type = "http"
address = "${{HTTP_ADDR}}"
queue_wait = "200ms"

[[outputs]]
type = "elasticsearch"
hosts = "http://127.0.0.1:{dead}"
index = "logs"
manage_template = false
queue_max_events = 1
"#,
            dead = free_port(),
        ),
    );
    let dog = Sheepdog::start(&config, &[]);
    let eight: String = (0..8).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    // The first batch fills the output's queue of one; the worker then holds the second (and
    // its share of the pipeline queue) while the output waits.
    assert_eq!(dog.post(eight.clone(), "application/x-ndjson").0, 200);
    assert_eq!(dog.post(eight, "application/x-ndjson").0, 200);
    wait_for(Duration::from_secs(10), "the queue to fill", || {
        (dog.metric("sheepdog_queue_events") == Some(8.0)).then_some(())
    });
    let resp = client()
        .post(&dog.http_url)
        .body("not json\n")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(
        dog.metric("sheepdog_input_rejected_total{input=\"http\",reason=\"queue_full\"}"),
        Some(1.0)
    );
    assert_eq!(
        dog.metric("sheepdog_input_parse_failures_total{input=\"http\"}"),
        Some(0.0),
        "a refused body is not decoded"
    );
}

/// The status code of the first answer on `s`, 0 when it was closed without one.
fn status_on(s: &mut std::net::TcpStream, wait: Duration) -> u16 {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n])
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("no answer within {wait:?}: {e}"),
    }
}

#[test]
fn connection_and_request_caps_and_header_timeout() {
    use std::io::Write;
    use std::net::TcpStream;
    let out = out_path();
    let dog = Sheepdog::start(
        pipeline_with_file_output(
            &out,
            "max_connections = 2\nmax_pending_requests = 1\nheader_read_timeout = \"1s\"",
            "",
        ),
        &[],
    );
    // A request in progress (half its body sent) holds the one pending-request slot.
    let mut slow = TcpStream::connect(&dog.http_addr).unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{\"a\"")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let resp = client().post(&dog.http_url).body("{}").send().unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["x-sheepdog-accepted"], "0");
    slow.write_all(b":1}\n\n\n").unwrap();
    assert_eq!(status_on(&mut slow, Duration::from_secs(5)), 200);
    // Two connections open (the slow one, kept alive, and an idle one): a third is refused.
    let mut idle = TcpStream::connect(&dog.http_addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&dog.http_addr).unwrap();
    assert_eq!(status_on(&mut third, Duration::from_secs(5)), 503);
    // Both are closed once header_read_timeout passes without a request.
    let started = Instant::now();
    assert_eq!(status_on(&mut idle, Duration::from_secs(5)), 0);
    assert_eq!(status_on(&mut slow, Duration::from_secs(5)), 0);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(dog.post("{\"b\":1}", "application/json").0, 200);
    assert_eq!(read_events(&out, 2).len(), 2);
    for (metric, n) in [
        (
            "sheepdog_http_connections_refused_total{input=\"http\"}",
            1.0,
        ),
        ("sheepdog_http_header_timeouts_total{input=\"http\"}", 2.0),
        (
            "sheepdog_input_rejected_total{input=\"http\",reason=\"too_many_requests\"}",
            1.0,
        ),
    ] {
        assert_eq!(dog.metric(metric), Some(n), "{metric}");
    }
}

#[test]
fn https_with_the_beats_ssl_settings() {
    let dir = temp_file("https-marker", "")
        .parent()
        .unwrap()
        .to_path_buf();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let out = out_path();
    let tls = format!(
        "ssl_enabled = true\nssl_certificate = \"{}\"\nssl_key = \"{}\"\ntoken = \"s3cret\"",
        cert_path.display(),
        key_path.display()
    );
    let dog = Sheepdog::start(pipeline_with_file_output(&out, &tls, ""), &[]);
    let https = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://{}/", dog.http_addr);
    let resp = https
        .post(&url)
        .bearer_auth("s3cret")
        .body("{\"request_id\":\"tls1\"}")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-sheepdog-accepted"], "1");
    let wrong = https
        .post(&url)
        .bearer_auth("s3cre")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(client().post(&dog.http_url).body("{}").send().is_err());
    let events = read_events(&out, 1);
    assert_eq!(events[0]["request_id"], "tls1");
    assert_eq!(
        dog.metric("sheepdog_http_tls_handshake_failures_total{input=\"http\"}"),
        Some(1.0)
    );
}
