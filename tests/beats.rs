//! The Beats input end to end: the real Filebeat 8.1.3 (configured like our users' filebeat.yml)
//! and pylogbeat against the real binary and the shipped filter chain. Asserts every line
//! arrives exactly once, Filebeat's registry acknowledges every file, keepalives hold Filebeat
//! through a blocked pipeline without reconnects, and TLS with and without client certificates.
//!
//! Needs Filebeat (`scripts/ci-deps/beats.sh`, or `$FILEBEAT_BIN`) and pylogbeat.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sheepdog-beats-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shipped pipeline as operators run it (Elasticsearch output at `ES_HOSTS`), with extra
/// settings for the beats input and a filter that copies metadata into fields so the indexed
/// documents show it. Written to `<dir>/pipeline.toml`.
fn pipeline(dir: &Path, beats_extra: &str, pipeline_extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(repo_root().join("pipelines/holysheep.toml")).unwrap();
    let cut = shipped
        .find("\n[[outputs]]")
        .expect("shipped pipeline has outputs");
    let (filters, outputs) = shipped.split_at(cut);
    let mut text = filters.replace(
        "keepalive_interval = \"5s\"",
        &format!("keepalive_interval = \"5s\"\n{beats_extra}"),
    );
    if !pipeline_extra.is_empty() {
        text = text.replace("queue_capacity = 4096", pipeline_extra);
    }
    text.push_str(
        r#"
[[filters]]
type = "mutate"
id = "show_metadata"
add_field = { meta_beat = "%{[@metadata][beat]}", meta_version = "%{[@metadata][version]}", meta_peer = "%{[@metadata][input][beats][host][ip]}" }
"#,
    );
    // A slow Elasticsearch (osmem on two busy shared cores can take over a minute for a
    // 4096-document bulk) must not time out bulks that it still indexes: the retry would index
    // them twice, and these tests count duplicates of the Beats path.
    let outputs = outputs.replace(
        "\ndead_letter_path =",
        "\nrequest_timeout = \"300s\"\ndead_letter_path =",
    );
    assert!(
        outputs.contains("request_timeout"),
        "shipped ES output changed"
    );
    text.push_str(&outputs);
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const INDICES: &str = "holysheep-logs-*";

/// Every document in `holysheep-logs-*`, read with the scroll API.
fn all_documents(es: &Osmem) -> Vec<Value> {
    es.refresh();
    let http = client();
    let mut reply: Value = http
        .post(format!("{}/{INDICES}/_search?scroll=1m", es.url))
        .json(&serde_json::json!({"size": 5000}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut docs = Vec::new();
    loop {
        let hits = reply["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if hits.is_empty() {
            return docs;
        }
        docs.extend(hits.into_iter().map(|h| h["_source"].clone()));
        let id = reply["_scroll_id"].as_str().expect("scroll id").to_string();
        reply = http
            .post(format!("{}/_search/scroll", es.url))
            .json(&serde_json::json!({"scroll": "1m", "scroll_id": id}))
            .send()
            .unwrap()
            .json()
            .unwrap();
    }
}

/// Waits until Elasticsearch holds `n` documents (and a moment longer, so duplicates would
/// show); returns them all.
fn es_events(es: &Osmem, n: usize, what: &str, log: impl Fn() -> String) -> Vec<Value> {
    let got = es.wait_count(INDICES, n as u64, Duration::from_secs(180));
    assert!(
        got >= n as u64,
        "{what}: {got} of {n} documents after 180s\n{}",
        tail(&log())
    );
    std::thread::sleep(Duration::from_millis(1000));
    all_documents(es)
}

/// Log files like our users': JSON request logs (some without `message`) and application logs
/// where a line starting with `{` begins an event and indented lines continue it. Returns
/// every request_id written.
fn write_logs(
    dir: &Path,
    json_files: usize,
    json_lines: usize,
    app_files: usize,
    app_events: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    std::fs::create_dir_all(dir.join("json")).unwrap();
    std::fs::create_dir_all(dir.join("app")).unwrap();
    let models = [
        "gpt-4.1",
        "claude-sonnet-4.5",
        "deepseek-v3.2",
        "gemini-2.5-flash",
    ];
    for f in 0..json_files {
        let mut text = String::with_capacity(json_lines * 260);
        for i in 0..json_lines {
            let id = format!("json-{f}-{i}");
            let status = if i % 10 == 0 { "error" } else { "success" };
            let message = if i % 3 == 0 {
                String::new()
            } else {
                format!(",\"message\":\"request {id} done\"")
            };
            text.push_str(&format!(
                "{{\"timestamp\":\"2026-11-27T10:{:02}:{:02}.123Z\",\"request_id\":\"{id}\",\"model\":\"{}\",\"user_id\":\"user_{}\",\"status\":\"{status}\",\"status_code\":{},\"latency_ms\":{},\"total_tokens\":{}{message}}}\n",
                (i / 60) % 60,
                i % 60,
                models[i % 4],
                i % 97,
                if status == "success" { 200 } else { 500 },
                (i * 37) % 900,
                100 + i % 5000,
            ));
            ids.push(id);
        }
        std::fs::write(dir.join(format!("json/requests-{f}.log")), text).unwrap();
    }
    for f in 0..app_files {
        let mut text = String::new();
        for i in 0..app_events {
            let id = format!("app-{f}-{i}");
            text.push_str(&format!(
                "{{\"request_id\":\"{id}\",\"level\":\"error\",\"msg\":\"upstream failed\"}}\n"
            ));
            if i % 4 == 0 {
                text.push_str("  at holysheep.api.Upstream.call(Upstream.java:88)\n  at holysheep.api.Router.route(Router.java:12)\n");
            }
            ids.push(id);
        }
        std::fs::write(dir.join(format!("app/app-{f}.log")), text).unwrap();
    }
    ids
}

struct FilebeatOptions<'a> {
    hosts: &'a [&'a str],
    compression: u32,
    loadbalance: bool,
    timeout: &'a str,
    ssl: &'a str,
}

/// A running Filebeat, killed on drop; its log goes to `<dir>/filebeat.log`.
struct Filebeat {
    child: Option<Child>,
    dir: PathBuf,
}

impl Filebeat {
    fn start(dir: &Path, o: &FilebeatOptions<'_>) -> Filebeat {
        let hosts: Vec<String> = o.hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let yml = format!(
            r#"filebeat.inputs:
- type: log
  id: json-requests
  paths: ["{dir}/json/*.log"]
  json.keys_under_root: true
  json.add_error_key: true
  fields: {{service: holysheep-api, environment: production}}
  fields_under_root: true
- type: log
  id: app-logs
  paths: ["{dir}/app/*.log"]
  multiline.pattern: '^\{{'
  multiline.negate: true
  multiline.match: after
  fields: {{service: holysheep-api, environment: production}}
  fields_under_root: true
output.logstash:
  hosts: [{hosts}]
  compression_level: {compression}
  loadbalance: {loadbalance}
  timeout: {timeout}
{ssl}
queue.mem.flush.timeout: 0.2s
filebeat.registry.flush: 0.5s
path.data: "{dir}/fbdata"
path.logs: "{dir}/fblogs"
logging.level: info
logging.metrics.enabled: false
http.enabled: false
"#,
            dir = dir.display(),
            hosts = hosts.join(", "),
            compression = o.compression,
            loadbalance = o.loadbalance,
            timeout = o.timeout,
            ssl = o.ssl,
        );
        let config = dir.join("filebeat.yml");
        std::fs::write(&config, yml).unwrap();
        let child = common::spawn_filebeat(&config, &dir.join("filebeat.log"));
        Filebeat {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("filebeat.log")).unwrap_or_default()
    }

    /// Source path -> acknowledged offset, from the registry's checkpoint and log.
    fn registry(&self) -> HashMap<String, u64> {
        let reg = self.dir.join("fbdata/registry/filebeat");
        let mut offsets = HashMap::new();
        let mut record = |v: &Value| {
            if let (Some(src), Some(off)) = (v["source"].as_str(), v["offset"].as_u64()) {
                offsets.insert(src.to_string(), off);
            }
        };
        if let Ok(active) = std::fs::read_to_string(reg.join("active.dat")) {
            if let Ok(text) = std::fs::read_to_string(active.trim()) {
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&text) {
                    items.iter().for_each(&mut record);
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(reg.join("log.json")) {
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    record(&v["v"]);
                }
            }
        }
        offsets
    }

    /// Waits until the registry acknowledges every byte of every log file.
    fn wait_fully_acked(&self, log_dir: &Path) {
        let mut files = Vec::new();
        for sub in ["json", "app"] {
            for entry in std::fs::read_dir(log_dir.join(sub)).unwrap() {
                let p = entry.unwrap().path();
                files.push((
                    p.display().to_string(),
                    std::fs::metadata(&p).unwrap().len(),
                ));
            }
        }
        let start = Instant::now();
        loop {
            let reg = self.registry();
            let missing: Vec<String> = files
                .iter()
                .filter(|(p, len)| reg.get(p) != Some(len))
                .map(|(p, len)| format!("{p}: {len} bytes, registry {:?}", reg.get(p)))
                .collect();
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "Filebeat's registry does not acknowledge every file:\n{}\nfilebeat log:\n{}",
                    missing.join("\n"),
                    tail(&self.log())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Filebeat {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Filebeat log lines that show a timeout, a failed publish or a reconnect.
fn filebeat_trouble(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("i/o timeout")
                || l.contains("Failed to publish")
                || l.contains("failed to publish")
                || l.contains("connection reset")
                || l.contains("broken pipe")
                || l.contains("Connection marked as failed")
        })
        .map(str::to_string)
        .collect()
}

/// The request_id of an output event: at the root (JSON logs), or inside the message text
/// (multiline application logs, whose message is not a single JSON object).
fn request_id(e: &Value) -> String {
    if let Some(id) = e["request_id"].as_str() {
        return id.to_string();
    }
    if let Some(id) = e["parsed"]["request_id"].as_str() {
        return id.to_string();
    }
    let msg = e["message"].as_str().unwrap_or("");
    let start = msg.find("\"request_id\":\"").map(|i| i + 14);
    match start {
        Some(s) => msg[s..].split('"').next().unwrap_or("").to_string(),
        None => panic!("event without request_id: {e}"),
    }
}

/// What a failed delivery check prints: the daemon's log and beats/ES metrics, Filebeat's
/// complaints.
fn diagnose(dogs: &[&Sheepdog], fb: Option<&Filebeat>) -> String {
    let mut out = String::new();
    for d in dogs {
        out.push_str(&format!(
            "--- sheepdog log\n{}\n--- metrics\n",
            tail(&d.log())
        ));
        for l in d.metrics().lines() {
            if (l.starts_with("sheepdog_beats")
                || l.starts_with("sheepdog_es")
                || l.starts_with("sheepdog_input"))
                && !l.ends_with(" 0")
            {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    if let Some(fb) = fb {
        out.push_str(&format!(
            "--- filebeat trouble\n{}\n",
            filebeat_trouble(&fb.log()).join("\n")
        ));
    }
    out
}

/// Every id exactly once, and the shipped filter chain and Filebeat's fields came through.
fn assert_exactly_once(events: &[Value], ids: &[String], context: impl Fn() -> String) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in events {
        *seen.entry(request_id(e)).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}\n{}", context());
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}\n{}", context());
    assert_eq!(events.len(), ids.len());
}

fn assert_filebeat_fields(events: &[Value], peer: &str) {
    let mut multiline = 0;
    let mut no_message = 0;
    for e in events {
        assert_eq!(e["environment"], "production", "{e}");
        assert_eq!(e["service"], "holysheep-api", "{e}");
        assert_eq!(e["agent"]["type"], "filebeat", "{e}");
        assert!(e["log"]["file"]["path"].is_string(), "{e}");
        assert!(e["host"]["name"].is_string(), "{e}");
        assert!(e["@timestamp"].is_string(), "{e}");
        assert_eq!(e["meta_beat"], "filebeat", "{e}");
        assert_eq!(e["meta_version"], "8.1.3", "{e}");
        assert_eq!(e["meta_peer"], peer, "{e}");
        assert!(e["status_category"].is_string(), "classify filter ran: {e}");
        let id = request_id(e);
        if id.starts_with("json-") {
            assert!(e["latency_bucket"].is_string(), "bucket filter ran: {e}");
            assert!(e["cost_usd"].is_number(), "cost filter ran: {e}");
            // Filebeat 8.1.3 sends no message key for a JSON line without one
            if e.get("message").is_none_or(|m| m == "") {
                no_message += 1;
            }
        } else {
            let msg = e["message"].as_str().unwrap();
            if msg.contains("\n  at holysheep.api.Upstream.call") {
                multiline += 1;
                assert_eq!(e["log"]["flags"][0], "multiline", "{e}");
            }
        }
    }
    assert!(multiline > 0, "multiline events arrived whole");
    assert!(no_message > 0, "JSON lines without message arrived");
}

fn metric(dog: &Sheepdog, name: &str) -> f64 {
    dog.metric(&format!("{name}{{input=\"beats\"}}"))
        .unwrap_or(0.0)
}

fn filebeat_run(compression: u32, json_files: usize, json_lines: usize) {
    let dir = scratch_dir(&format!("fb{compression}"));
    let ids = write_logs(&dir, json_files, json_lines, 2, 2000);
    let es = Osmem::start();
    let dog = Sheepdog::start(pipeline(&dir, "", ""), &[("ES_HOSTS", es.url.as_str())]);
    let mut fb = Filebeat::start(
        &dir,
        &FilebeatOptions {
            hosts: &[&dog.beats_addr],
            compression,
            loadbalance: false,
            timeout: "30s",
            ssl: "",
        },
    );
    let events = es_events(&es, ids.len(), "filebeat", || fb.log());
    fb.wait_fully_acked(&dir);
    assert_exactly_once(&events, &ids, || diagnose(&[&dog], Some(&fb)));
    assert_filebeat_fields(&events, "127.0.0.1");
    let trouble = filebeat_trouble(&fb.log());
    assert!(
        trouble.is_empty(),
        "Filebeat reported trouble:\n{}",
        trouble.join("\n")
    );
    assert_eq!(
        metric(&dog, "sheepdog_input_events_total"),
        ids.len() as f64
    );
    assert_eq!(metric(&dog, "sheepdog_beats_connections_total"), 1.0);
    assert!(metric(&dog, "sheepdog_beats_windows_total") >= (ids.len() / 2048) as f64);
    fb.stop();
    let errors: f64 = dog
        .metrics()
        .lines()
        .filter(|l| l.starts_with("sheepdog_beats_protocol_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(errors, 0.0, "protocol errors:\n{}", dog.metrics());
}

#[test]
fn filebeat_compressed_every_line_exactly_once() {
    filebeat_run(3, 4, 4000);
}

#[test]
fn filebeat_uncompressed_every_line_exactly_once() {
    filebeat_run(0, 2, 3000);
}

#[test]
fn filebeat_loadbalance_across_two_daemons() {
    let dir = scratch_dir("lb");
    let ids = write_logs(&dir, 2, 4000, 1, 2000);
    let es = Osmem::start();
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    let env = [("ES_HOSTS", es.url.as_str())];
    let a = Sheepdog::start(pipeline(&dir.join("a"), "", ""), &env);
    let b = Sheepdog::start(pipeline(&dir.join("b"), "", ""), &env);
    let fb = Filebeat::start(
        &dir,
        &FilebeatOptions {
            hosts: &[&a.beats_addr, &b.beats_addr],
            compression: 3,
            loadbalance: true,
            timeout: "30s",
            ssl: "",
        },
    );
    let events = es_events(&es, ids.len(), "loadbalance", || fb.log());
    fb.wait_fully_acked(&dir);
    assert_exactly_once(&events, &ids, || diagnose(&[&a, &b], Some(&fb)));
    assert_filebeat_fields(&events, "127.0.0.1");
    let (na, nb) = (
        metric(&a, "sheepdog_input_events_total"),
        metric(&b, "sheepdog_input_events_total"),
    );
    assert!(
        na > 0.0 && nb > 0.0,
        "both daemons got events: {na} and {nb}"
    );
    assert_eq!(na + nb, ids.len() as f64);
}

#[test]
fn keepalives_hold_filebeat_while_elasticsearch_is_down() {
    // Elasticsearch is unreachable for 16 s, longer than Filebeat's timeout (10 s here): the
    // queue fills, ACKs are withheld, and ACK 0 every 2 s keeps Filebeat waiting on its one
    // connection instead of timing out, reconnecting and resending.
    let dir = scratch_dir("blocked");
    let ids = write_logs(&dir, 2, 5000, 1, 2000);
    let port = free_port();
    let es_url = format!("http://127.0.0.1:{port}");
    let cfg = pipeline(&dir, "", "queue_capacity = 2048");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("keepalive_interval = \"5s\"", "keepalive_interval = \"2s\"")
        // The output holds 20000 events by default; keep it small so the pipeline blocks.
        .replace(
            "\nrequest_timeout =",
            "\nqueue_max_events = 2000\nbatch_max_events = 1000\nrequest_timeout =",
        );
    std::fs::write(&cfg, text).unwrap();
    let dog = Sheepdog::start(&cfg, &[("ES_HOSTS", es_url.as_str())]);
    let fb = Filebeat::start(
        &dir,
        &FilebeatOptions {
            hosts: &[&dog.beats_addr],
            compression: 3,
            loadbalance: false,
            timeout: "10s",
            ssl: "",
        },
    );
    wait_for(Duration::from_secs(30), "keepalives while blocked", || {
        (metric(&dog, "sheepdog_beats_keepalives_total") >= 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(16));
    let keepalives = metric(&dog, "sheepdog_beats_keepalives_total");
    assert!(
        keepalives >= 5.0,
        "keepalives sent while blocked: {keepalives}"
    );
    let queued = metric(&dog, "sheepdog_input_events_total");
    assert!(
        queued < ids.len() as f64,
        "the pipeline was not blocked: {queued} events queued"
    );
    // Elasticsearch comes back on its address: every line arrives, once.
    let es = Osmem::start_on(&format!("127.0.0.1:{port}"));
    let events = es_events(&es, ids.len(), "after Elasticsearch returned", || {
        format!("{}\n{}", dog.log(), fb.log())
    });
    fb.wait_fully_acked(&dir);
    assert_exactly_once(&events, &ids, || diagnose(&[&dog], Some(&fb)));
    let trouble = filebeat_trouble(&fb.log());
    assert!(
        trouble.is_empty(),
        "Filebeat timed out or reconnected:\n{}",
        trouble.join("\n")
    );
    assert_eq!(
        metric(&dog, "sheepdog_beats_connections_total"),
        1.0,
        "no reconnect"
    );
}

fn pylogbeat(port: &str, count: usize, prefix: &str, tls: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("tests/support/pylogbeat_send.py"))
        .args([
            "--port",
            port,
            "--count",
            &count.to_string(),
            "--window",
            "500",
            "--prefix",
            prefix,
        ]);
    for (flag, path) in tls {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.output().expect("python3 runs the pylogbeat helper");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named 'pylogbeat'"),
        "pylogbeat is not installed: pip install pylogbeat (.ci/run does)"
    );
    (out.status.success(), text)
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn pylogbeat_is_a_second_independent_client() {
    let dir = scratch_dir("pylogbeat");
    let es = Osmem::start();
    let dog = Sheepdog::start(pipeline(&dir, "", ""), &[("ES_HOSTS", es.url.as_str())]);
    let (ok, text) = pylogbeat(port_of(&dog.beats_addr), 3000, "py", &[]);
    assert!(ok, "pylogbeat failed: {text}\n{}", dog.log());
    assert_eq!(text.trim(), "sent 3000");
    let events = es_events(&es, 3000, "pylogbeat", || dog.log());
    let ids: Vec<String> = (0..3000).map(|i| format!("py-{i}")).collect();
    assert_exactly_once(&events, &ids, || diagnose(&[&dog], None));
    for e in &events {
        // [fields][environment] is copied by the shipped mutate filter
        assert_eq!(e["environment"], "staging");
        assert_eq!(e["service"], "pylogbeat");
        assert_eq!(e["status_category"], "success");
        assert_eq!(e["latency_bucket"], "ultra_fast");
        assert_eq!(e["meta_peer"], "127.0.0.1");
    }
}

fn tls_settings(pki: &Pki, client_auth: &str) -> String {
    format!(
        "ssl_enabled = true\nssl_certificate = \"{}\"\nssl_key = \"{}\"\nssl_certificate_authorities = [\"{}\"]\nssl_client_authentication = \"{client_auth}\"\nssl_handshake_timeout = \"5s\"",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    )
}

#[test]
fn tls_without_and_with_client_certificates() {
    let dir = scratch_dir("tls");
    let pki = make_pki(&dir);

    // server certificate only
    let es = Osmem::start();
    std::fs::create_dir_all(dir.join("one")).unwrap();
    let dog = Sheepdog::start(
        pipeline(&dir.join("one"), &tls_settings(&pki, "none"), ""),
        &[("ES_HOSTS", es.url.as_str())],
    );
    let (ok, text) = pylogbeat(port_of(&dog.beats_addr), 1000, "tls", &[("--ca", &pki.ca)]);
    assert!(ok, "pylogbeat over TLS: {text}\n{}", dog.log());
    let events = es_events(&es, 1000, "pylogbeat over TLS", || dog.log());
    assert_exactly_once(
        &events,
        &(0..1000).map(|i| format!("tls-{i}")).collect::<Vec<_>>(),
        || diagnose(&[&dog], None),
    );
    drop(dog);
    drop(es);

    // client certificates required: Filebeat with its certificate gets through...
    let es = Osmem::start();
    std::fs::create_dir_all(dir.join("two")).unwrap();
    let dog = Sheepdog::start(
        pipeline(&dir.join("two"), &tls_settings(&pki, "required"), ""),
        &[("ES_HOSTS", es.url.as_str())],
    );
    let fbdir = dir.join("fb");
    let ids = write_logs(&fbdir, 1, 3000, 1, 500);
    let ssl = format!(
        "  ssl.certificate_authorities: [\"{}\"]\n  ssl.certificate: \"{}\"\n  ssl.key: \"{}\"",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let fb = Filebeat::start(
        &fbdir,
        &FilebeatOptions {
            hosts: &[&dog.beats_addr],
            compression: 3,
            loadbalance: false,
            timeout: "30s",
            ssl: &ssl,
        },
    );
    let events = es_events(&es, ids.len(), "filebeat over mutual TLS", || fb.log());
    fb.wait_fully_acked(&fbdir);
    assert_exactly_once(&events, &ids, || diagnose(&[&dog], Some(&fb)));
    drop(fb);
    // ...and a client without one is refused and nothing from it arrives
    let (ok, text) = pylogbeat(port_of(&dog.beats_addr), 10, "nocert", &[("--ca", &pki.ca)]);
    assert!(!ok, "a client without a certificate was served: {text}");
    let tls_errors = dog
        .metric("sheepdog_beats_protocol_errors_total{input=\"beats\",kind=\"tls_handshake\"}")
        .unwrap_or(0.0);
    assert!(
        tls_errors >= 1.0,
        "handshake failure counted:\n{}",
        dog.metrics()
    );
    // with a client certificate pylogbeat is served too
    let (ok, text) = pylogbeat(
        port_of(&dog.beats_addr),
        500,
        "withcert",
        &[
            ("--ca", &pki.ca),
            ("--cert", &pki.client_cert),
            ("--key", &pki.client_key),
        ],
    );
    assert!(ok, "pylogbeat with a client certificate: {text}");
    let events = es_events(&es, ids.len() + 500, "pylogbeat with a certificate", || {
        dog.log()
    });
    assert_eq!(events.len(), ids.len() + 500);
    assert!(!events.iter().any(|e| request_id(e).starts_with("nocert")));
}

#[test]
fn check_names_missing_tls_files() {
    let dir = scratch_dir("check");
    let cfg = pipeline(
        &dir,
        "ssl_enabled = true\nssl_certificate = \"/nonexistent/beats.crt\"\nssl_key = \"/nonexistent/beats.key\"",
        "",
    );
    let (code, text) = sheepdog_check(&cfg, &[("BEATS_ADDR", "127.0.0.1:0")]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("ssl_certificate: cannot read `/nonexistent/beats.crt`"),
        "{text}"
    );
    assert!(
        text.contains("ssl_key: cannot read `/nonexistent/beats.key`"),
        "{text}"
    );
}
