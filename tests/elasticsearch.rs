//! The Elasticsearch output against the real osmem-server: a cluster that is down at start-up
//! (the daemon runs, `/health` says why, events are delivered once it comes up) and documents
//! the cluster refuses (dead-letter file with the reason, the rest indexed).

mod common;

use common::{client, free_port, wait_for, Osmem, Sheepdog};
use serde_json::{json, Value};
use std::time::Duration;

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn today_index() -> String {
    format!("holysheep-logs-{}", chrono::Utc::now().format("%Y.%m.%d"))
}

#[test]
fn unreachable_at_start_up_holds_events_until_the_cluster_answers() {
    let port = free_port();
    let es_url = format!("http://127.0.0.1:{port}");
    let dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", es_url.as_str())]);

    // The daemon runs and says what is wrong.
    let (status, body) = wait_for(
        Duration::from_secs(20),
        "/health to report the output down",
        || {
            let (status, body) = dog.health();
            (status == 503).then_some((status, body))
        },
    );
    assert_eq!(status, 503);
    let es = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "output elasticsearch")
        .unwrap_or_else(|| panic!("no elasticsearch component in {body}"))
        .clone();
    assert_eq!(es["status"], "down", "{body}");
    assert_eq!(
        es["reason"],
        json!(format!("connection refused to {es_url}")),
        "{body}"
    );

    // Events posted meanwhile are accepted and held.
    let events: Vec<Value> = (0..500)
        .map(|i| {
            json!({"request_id": format!("held-{i}"), "model": "gpt-4.1", "status": "success",
                   "total_tokens": 1000 + i, "latency_ms": 42.5})
        })
        .collect();
    let (code, text) = dog.post(ndjson(&events), "application/x-ndjson");
    assert_eq!(code, 200, "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dog.health().0, 503);

    // The cluster comes up on that port: template first, then every held event.
    let osmem = Osmem::start_on(&format!("127.0.0.1:{port}"));
    assert_eq!(osmem.url, es_url);
    let indexed = osmem.wait_count("holysheep-logs-*", 500, Duration::from_secs(60));
    assert_eq!(indexed, 500, "{}", dog.log());
    let template: Value = client()
        .get(format!("{es_url}/_index_template/holysheep-logs"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        template["index_templates"][0]["index_template"]["index_patterns"],
        json!(["holysheep-logs-*"]),
        "{template}"
    );
    let mapping: Value = client()
        .get(format!("{es_url}/{}/_mapping", today_index()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let props = &mapping[today_index()]["mappings"]["properties"];
    assert_eq!(props["model"]["type"], "keyword", "{mapping}");
    assert_eq!(props["cost_usd"]["type"], "float", "{mapping}");
    assert_eq!(
        props["error_message"]["fields"]["keyword"]["type"],
        "keyword"
    );
    let (status, body) = wait_for(Duration::from_secs(20), "/health to recover", || {
        let (status, body) = dog.health();
        (status == 200).then_some((status, body))
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        dog.metric("sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"indexed\"}"),
        Some(500.0)
    );
    assert!(
        dog.metric("sheepdog_es_bulk_requests_total{output=\"elasticsearch\",outcome=\"ok\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn refused_documents_go_to_the_dead_letter_file_with_the_reason() {
    let osmem = Osmem::start();
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    let mut dog = Sheepdog::start(
        "pipelines/holysheep.toml",
        &[("ES_HOSTS", osmem.url.as_str()), ("DATA_DIR", data)],
    );
    let good = |i: u32| {
        json!({"request_id": format!("ok-{i}"), "model": "deepseek-v3.2", "status": "success",
               "total_tokens": 100 * i, "latency_ms": 12.0})
    };
    // total_tokens is mapped `long`: a word there is refused by the cluster. cost_usd is given so
    // the cost filter leaves the event alone.
    let bad = json!({"request_id": "bad-1", "model": "gpt-4.1", "status": "success",
                     "total_tokens": "many", "cost_usd": 0.5, "latency_ms": 80.0});
    let events = vec![good(1), good(2), bad, good(3)];
    let (code, text) = dog.post(ndjson(&events), "application/x-ndjson");
    assert_eq!(code, 200, "{text}");

    assert_eq!(
        osmem.wait_count("holysheep-logs-*", 3, Duration::from_secs(30)),
        3,
        "{}",
        dog.log()
    );
    let path = data_dir.path().join("dead_letter.ndjson");
    let text = wait_for(Duration::from_secs(20), "the dead-letter file", || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|t| t.ends_with('\n'))
    });
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let letter = &lines[0];
    assert_eq!(letter["index"], json!(today_index()));
    assert_eq!(letter["status"], 400);
    assert_eq!(letter["error"]["type"], "mapper_parsing_exception");
    let reason = letter["error"]["reason"].as_str().unwrap();
    assert!(reason.contains("[total_tokens]"), "{reason}");
    assert_eq!(letter["document"]["request_id"], "bad-1");
    assert_eq!(letter["document"]["total_tokens"], "many");
    assert!(letter["@timestamp"].as_str().unwrap().ends_with('Z'));
    // the good ones are searchable, the bad one is not
    let hits = osmem.search(
        "holysheep-logs-*",
        &json!({"size": 10, "query": {"term": {"request_id": "bad-1"}}}),
    );
    assert_eq!(hits["hits"]["total"]["value"], 0);
    assert_eq!(
        dog.metric(
            "sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"dead_lettered\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        dog.metric("sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"indexed\"}"),
        Some(3.0)
    );
    assert_eq!(dog.health().0, 200);
    assert!(dog.stop().success());
}

#[test]
fn stops_promptly_when_elasticsearch_never_answered_and_nothing_was_queued() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", closed.as_str())]);
    let started = std::time::Instant::now();
    let status = dog.stop();
    assert!(status.success(), "exit status {status}\n{}", dog.log());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "shutdown took {:?}\n{}",
        started.elapsed(),
        dog.log()
    );
}
