//! The persisted queue (the shipped pipeline's default) against crashes: `kill -9` while an
//! HTTP client and Filebeat stream, a record torn by a crash mid-write, a queue too small for
//! the burst, and SIGTERM past a short shutdown deadline. Clients resend what was not
//! acknowledged, as applications and Filebeat do; every acknowledged event must be indexed
//! exactly once.

mod common;

use common::{free_port, Osmem, Sheepdog};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Addresses and data directory that stay the same across restarts.
struct Home {
    data: tempfile::TempDir,
    http: String,
    beats: String,
    api: String,
}

impl Home {
    fn new() -> Home {
        Home {
            data: tempfile::tempdir().unwrap(),
            http: format!("127.0.0.1:{}", free_port()),
            beats: format!("127.0.0.1:{}", free_port()),
            api: format!("127.0.0.1:{}", free_port()),
        }
    }

    fn start(&self, config: &Path, es: &str, extra: &[(&str, &str)]) -> Sheepdog {
        let data = self.data.path().display().to_string();
        let mut env = vec![
            ("HTTP_ADDR", self.http.as_str()),
            ("BEATS_ADDR", self.beats.as_str()),
            ("API_ADDR", self.api.as_str()),
            ("DATA_DIR", data.as_str()),
            ("ES_HOSTS", es),
        ];
        env.extend_from_slice(extra);
        Sheepdog::start(config, &env)
    }

    fn queue_dir(&self) -> PathBuf {
        self.data.path().join("queue")
    }
}

fn shipped() -> PathBuf {
    common::repo_root().join("pipelines/holysheep.toml")
}

/// The shipped pipeline with a different shutdown deadline.
fn shipped_with_deadline(dir: &Path, deadline: &str) -> PathBuf {
    let text = std::fs::read_to_string(shipped()).unwrap();
    let patched = text.replacen(
        "shutdown_timeout = \"30s\"",
        &format!("shutdown_timeout = \"{deadline}\""),
        1,
    );
    assert_ne!(patched, text, "the shipped pipeline sets shutdown_timeout");
    let path = dir.join("deadline.toml");
    std::fs::write(&path, patched).unwrap();
    path
}

fn body(prefix: &str, from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "{}\n",
                json!({"request_id": format!("{prefix}-{i}"), "model": "gpt-4.1", "status": "success",
                       "total_tokens": 100, "latency_ms": 30.0})
            )
        })
        .collect()
}

/// An application: posts `total` events in bodies of `per_body`, resending each body until
/// it is answered 200 (whatever happens to the daemon meanwhile). Counts acknowledged events
/// and the answers that pushed back.
struct App {
    acked: Arc<AtomicUsize>,
    pushed_back: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

fn start_app(url: String, prefix: &'static str, total: usize, per_body: usize) -> App {
    let acked = Arc::new(AtomicUsize::new(0));
    let pushed_back = Arc::new(AtomicUsize::new(0));
    let (a, p) = (acked.clone(), pushed_back.clone());
    let thread = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let started = Instant::now();
        let mut n = 0;
        while n < total {
            let end = (n + per_body).min(total);
            let text = body(prefix, n, end);
            loop {
                assert!(started.elapsed() < Duration::from_secs(600), "app gave up");
                let sent = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(text.clone())
                    .send();
                match sent.map(|r| r.status().as_u16()) {
                    Ok(200) => break,
                    Ok(429) | Ok(503) => {
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            a.fetch_add(end - n, Ordering::Relaxed);
            n = end;
        }
    });
    App {
        acked,
        pushed_back,
        thread,
    }
}

/// `request_id` -> copies indexed, through a terms aggregation (the template maps it as a
/// keyword).
fn tally(es: &Osmem) -> HashMap<String, u64> {
    es.refresh();
    let r = es.search(
        "holysheep-logs-*",
        &json!({"size": 0, "aggs": {"ids": {"terms": {"field": "request_id", "size": 200000}}}}),
    );
    r["aggregations"]["ids"]["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no terms buckets: {r}"))
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap().to_string(),
                b["doc_count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits (at most `timeout`) until `sent` distinct events `<prefix>-0..sent` are indexed,
/// then prints and checks the tally.
fn report(name: &str, es: &Osmem, prefix: &str, sent: usize, timeout: Duration, log: &str) {
    let started = Instant::now();
    let mut seen = tally(es);
    while seen.len() < sent && started.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
        seen = tally(es);
    }
    let (duplicates, lost) = common::fault_tally(name, prefix, sent, &seen);
    assert_eq!((duplicates, lost), (0, 0), "{log}");
    assert_eq!(seen.len(), sent);
}

fn wait_until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    common::wait_for(timeout, what, || f().then_some(()));
}

#[test]
fn kill_9_three_times_while_an_http_client_streams() {
    let es = Osmem::start();
    let home = Home::new();
    let mut dog = home.start(&shipped(), &es.url, &[]);
    let total = 40_000;
    let app = start_app(format!("http://{}/", home.http), "k", total, 500);
    let mut logs = String::new();
    for at in [8_000, 18_000, 28_000] {
        wait_until("the client's progress", Duration::from_secs(300), || {
            app.acked.load(Ordering::Relaxed) >= at
        });
        dog.kill9();
        logs.push_str(&dog.log());
        dog = home.start(&shipped(), &es.url, &[]);
    }
    app.thread.join().expect("the client finished");
    logs.push_str(&dog.log());
    report(
        "kill -9 three times under HTTP",
        &es,
        "k",
        total,
        Duration::from_secs(300),
        &logs,
    );
    assert!(
        dog.log().contains("replaying the persisted queue") || logs.contains("replaying"),
        "a restart replayed unconfirmed events"
    );
    assert!(dog.stop().success());
}

/// A running Filebeat 8.1.3 shipping `<dir>/logs/*.log` (JSON lines) to `beats`.
struct Filebeat(Child);

impl Drop for Filebeat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_filebeat(dir: &Path, beats: &str) -> Filebeat {
    let yml = format!(
        r#"filebeat.inputs:
- type: log
  id: requests
  paths: ["{dir}/logs/*.log"]
  json.keys_under_root: true
  json.add_error_key: true
output.logstash:
  hosts: ["{beats}"]
  timeout: 10s
  backoff.init: 500ms
  backoff.max: 2s
queue.mem.flush.timeout: 0.2s
filebeat.registry.flush: 0.5s
path.data: "{dir}/fbdata"
path.logs: "{dir}/fblogs"
logging.level: warning
logging.metrics.enabled: false
http.enabled: false
"#,
        dir = dir.display()
    );
    let config = dir.join("filebeat.yml");
    std::fs::write(&config, yml).unwrap();
    Filebeat(common::spawn_filebeat(&config, &dir.join("filebeat.log")))
}

#[test]
fn kill_9_twice_while_filebeat_ships() {
    let es = Osmem::start();
    let home = Home::new();
    let fb_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fb_dir.path().join("logs")).unwrap();
    let total = 30_000;
    std::fs::write(fb_dir.path().join("logs/requests.log"), body("b", 0, total)).unwrap();
    let mut dog = home.start(&shipped(), &es.url, &[]);
    let _filebeat = start_filebeat(fb_dir.path(), &home.beats);
    let mut logs = String::new();
    for at in [8_000, 18_000] {
        wait_until("Filebeat's progress", Duration::from_secs(300), || {
            es.count("holysheep-logs-*") >= at
        });
        dog.kill9();
        logs.push_str(&dog.log());
        dog = home.start(&shipped(), &es.url, &[]);
    }
    logs.push_str(&dog.log());
    report(
        "kill -9 twice under Filebeat",
        &es,
        "b",
        total,
        Duration::from_secs(300),
        &logs,
    );
    assert!(dog.stop().success());
}

/// The newest segment file of the queue.
fn last_segment(queue: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(queue)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segs.sort();
    segs.pop().expect("a segment with records")
}

#[test]
fn a_torn_last_record_is_cut_and_everything_before_it_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_with_deadline(dir.path(), "1s");
    let es_addr = format!("127.0.0.1:{}", free_port());
    let es_url = format!("http://{es_addr}");
    let home = Home::new();
    // Elasticsearch is not there yet: everything accepted stays in the queue.
    let mut dog = home.start(&config, &es_url, &[]);
    for k in 0..10 {
        let (code, text) = dog.post(body("t", k * 100, (k + 1) * 100), "application/x-ndjson");
        assert_eq!(code, 200, "{text}");
    }
    dog.stop();
    assert!(
        dog.log().contains("stay in the persisted queue"),
        "{}",
        dog.log()
    );
    // A crash mid-write: the last record (the last body) loses its final bytes.
    let seg = last_segment(&home.queue_dir());
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 7).unwrap();
    drop(f);
    let es = Osmem::start_on(&es_addr);
    let mut dog = home.start(&config, &es_url, &[]);
    let log = dog.log();
    assert!(
        log.contains("cut a torn record") && log.contains("bytes="),
        "{log}"
    );
    report(
        "torn last record (the 100 events of the torn record were never written whole)",
        &es,
        "t",
        900,
        Duration::from_secs(120),
        &dog.log(),
    );
    assert!(
        !tally(&es).contains_key("t-950"),
        "the torn record is not replayed as garbage"
    );
    assert!(dog.stop().success());
}

#[test]
fn a_queue_too_small_for_the_burst_pushes_back_and_loses_nothing() {
    let es_addr = format!("127.0.0.1:{}", free_port());
    let es_url = format!("http://{es_addr}");
    let home = Home::new();
    let dog = home.start(&shipped(), &es_url, &[("QUEUE_MAX_BYTES", "1MiB")]);
    let total = 20_000;
    let app = start_app(format!("http://{}/", home.http), "s", total, 500);
    wait_until("a push back", Duration::from_secs(120), || {
        app.pushed_back.load(Ordering::Relaxed) > 0
    });
    let held = dog
        .metric("sheepdog_persisted_queue_bytes")
        .expect("the queue's size is published");
    assert!(held <= 2.0 * 1024.0 * 1024.0, "bounded near 1 MiB: {held}");
    // The cluster arrives; the queue drains and the client's resends get in.
    let es = Osmem::start_on(&es_addr);
    app.thread.join().expect("the client finished");
    report(
        "queue_max_bytes 1 MiB under a 20,000-event burst",
        &es,
        "s",
        total,
        Duration::from_secs(300),
        &dog.log(),
    );
}

#[test]
fn sigterm_past_a_short_deadline_keeps_what_was_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_with_deadline(dir.path(), "2s");
    let es_addr = format!("127.0.0.1:{}", free_port());
    let es_url = format!("http://{es_addr}");
    let home = Home::new();
    let mut dog = home.start(&config, &es_url, &[]);
    let total = 10_000;
    let app = start_app(format!("http://{}/", home.http), "d", total, 500);
    wait_until("load", Duration::from_secs(120), || {
        app.acked.load(Ordering::Relaxed) >= 3_000
    });
    let started = Instant::now();
    assert!(dog.stop().success());
    assert!(started.elapsed() < Duration::from_secs(20));
    let log = dog.log();
    assert!(log.contains("stay in the persisted queue"), "{log}");
    let es = Osmem::start_on(&es_addr);
    let mut dog = home.start(&config, &es_url, &[]);
    app.thread.join().expect("the client finished");
    report(
        "SIGTERM past a 2 s deadline, then restart",
        &es,
        "d",
        total,
        Duration::from_secs(300),
        &dog.log(),
    );
    assert!(dog.stop().success());
}

#[test]
fn acknowledge_delivered_answers_once_indexed_and_503_while_the_cluster_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shipped()).unwrap();
    let patched = text.replacen(
        "[pipeline]\n",
        "[pipeline]\nacknowledge = \"delivered\"\ndelivery_timeout = \"2s\"\n",
        1,
    );
    let config = dir.path().join("delivered.toml");
    std::fs::write(&config, patched).unwrap();
    let es_addr = format!("127.0.0.1:{}", free_port());
    let es_url = format!("http://{es_addr}");
    let home = Home::new();
    let dog = home.start(&config, &es_url, &[]);
    // No cluster: the events are queued but not delivered within 2 s.
    let started = Instant::now();
    let (code, text) = dog.post(body("a", 0, 50), "application/x-ndjson");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("delivery_timeout"), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let es = Osmem::start_on(&es_addr);
    // The refused body's events were queued all the same: indexed once the cluster is back.
    wait_until("the first body indexed", Duration::from_secs(60), || {
        es.count("holysheep-logs-*") >= 50
    });
    // With the cluster there, a 200 means indexed: the count is right at once.
    for k in 0..5 {
        let (code, text) = dog.post(body("a", 50 + k * 50, 100 + k * 50), "application/x-ndjson");
        assert_eq!(code, 200, "{text}");
        es.refresh();
        assert!(es.count("holysheep-logs-*") >= 100 + k as u64 * 50);
    }
    report(
        "acknowledge = delivered",
        &es,
        "a",
        300,
        Duration::from_secs(60),
        &dog.log(),
    );
}
