//! Black-box test of the `sheepdog-loadgen` binary: a real sink on port 0 fed by the real
//! generator, in bulk mode and in plain NDJSON mode, with exact document counts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sheepdog-loadgen");

struct Sink {
    child: Child,
    url: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sink(extra: &[&str]) -> Sink {
    let mut child = Command::new(BIN)
        .args(["sink", "--addr", "127.0.0.1:0", "--report-interval", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sink");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("first line is the URL JSON");
    let url = v["url"].as_str().unwrap().to_string();
    Sink { child, url, stdout }
}

fn http_get(url: &str, path: &str) -> serde_json::Value {
    let authority = url.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(authority).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn run_gen(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run generator");
    assert!(
        out.status.success(),
        "generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn generator_delivers_exact_counts_to_the_sink() {
    let sink = start_sink(&[]);
    let bulk = format!("{}/logs/_bulk", sink.url);
    let summary = run_gen(&[
        "http",
        "--target",
        &bulk,
        "--bulk",
        "--count",
        "12345",
        "--events-per-body",
        "1000",
        "--connections",
        "3",
        "--pool",
        "6",
    ]);
    assert_eq!(summary["events"], 12345);
    assert_eq!(summary["events_failed"], 0);
    assert_eq!(summary["statuses"]["200"], 13);
    let stats = http_get(&sink.url, "/_sink/stats");
    assert_eq!(stats["docs"], 12345);
    assert_eq!(stats["latency_samples"], 12345);
    assert!(stats["p99_ms"].as_f64().unwrap() < 10_000.0);

    let events = format!("{}/_sink/events", sink.url);
    let summary = run_gen(&[
        "http",
        "--target",
        &events,
        "--count",
        "999",
        "--events-per-body",
        "100",
        "--rate",
        "20000",
    ]);
    assert_eq!(summary["events"], 999);
    assert_eq!(http_get(&sink.url, "/_sink/stats")["docs"], 13344);

    assert_eq!(http_get(&sink.url, "/_cluster/health")["status"], "green");
    assert!(http_get(&sink.url, "/")["version"]["number"]
        .as_str()
        .unwrap()
        .starts_with("8."));
}

#[test]
fn sink_exits_with_a_summary_once_the_expected_docs_arrived() {
    let mut sink = start_sink(&["--expect", "5000", "--no-items"]);
    let bulk = format!("{}/_bulk", sink.url);
    let summary = run_gen(&[
        "http",
        "--target",
        &bulk,
        "--bulk",
        "--count",
        "5000",
        "--events-per-body",
        "500",
    ]);
    assert_eq!(summary["events"], 5000);
    let mut line = String::new();
    sink.stdout.read_line(&mut line).unwrap();
    let final_stats: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(final_stats["docs"], 5000);
    assert!(sink.child.wait().unwrap().success());
}

#[test]
fn beats_sender_delivers_exact_counts_to_the_sinks_beats_listener() {
    let mut sink = start_sink(&["--beats-addr", "127.0.0.1:0"]);
    let mut line = String::new();
    sink.stdout.read_line(&mut line).unwrap();
    let beats: serde_json::Value =
        serde_json::from_str(&line).expect("second line is the Beats address");
    let addr = beats["beats"].as_str().unwrap().to_string();
    let summary = run_gen(&[
        "beats",
        "--target",
        &addr,
        "--count",
        "5000",
        "--window",
        "2048",
        "--pipeline",
        "2",
        "--pool",
        "2",
    ]);
    assert_eq!(summary["events"], 5000);
    assert_eq!(summary["requests"], 3);
    let summary = run_gen(&[
        "beats",
        "--target",
        &addr,
        "--count",
        "100",
        "--window",
        "64",
        "--raw",
        "--connections",
        "2",
    ]);
    assert_eq!(summary["events"], 100);
    let stats = http_get(&sink.url, "/_sink/stats");
    assert_eq!(stats["docs"], 5100);
    assert_eq!(stats["latency_samples"], 5100);
}
