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
    // `timestamp` is mapped `date`: the shipped pipeline moves a malformed one aside, so this
    // event is indexed, not refused.
    let odd_time = json!({"request_id": "odd-time", "model": "gpt-4.1", "status": "success",
                          "timestamp": "yesterday at noon", "total_tokens": 10, "latency_ms": 5.0});
    let events = vec![good(1), good(2), bad, good(3), odd_time];
    let (code, text) = dog.post(ndjson(&events), "application/x-ndjson");
    assert_eq!(code, 200, "{text}");

    assert_eq!(
        osmem.wait_count("holysheep-logs-*", 4, Duration::from_secs(30)),
        4,
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
    let hits = osmem.search(
        "holysheep-logs-*",
        &json!({"size": 10, "query": {"term": {"request_id": "odd-time"}}}),
    );
    assert_eq!(hits["hits"]["total"]["value"], 1, "{hits}");
    let odd = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(odd["timestamp_unparsed"], "yesterday at noon", "{odd}");
    assert!(odd.get("timestamp").is_none(), "{odd}");
    assert_eq!(
        dog.metric(
            "sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"dead_lettered\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        dog.metric("sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"indexed\"}"),
        Some(4.0)
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

/// The name of the shipped pipeline's index `days` days from today (UTC; negative: before).
fn index_on(days: i64) -> String {
    let day = chrono::Utc::now().date_naive() + chrono::Duration::days(days);
    format!("holysheep-logs-{}", day.format("%Y.%m.%d"))
}

fn index_names(osmem: &Osmem) -> Vec<String> {
    let rows: Vec<Value> = client()
        .get(format!("{}/_cat/indices?format=json&h=index", osmem.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut names: Vec<String> = rows
        .iter()
        .map(|r| r["index"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn retention_deletes_exactly_the_expired_daily_indices() {
    let osmem = Osmem::start();
    let expired = [index_on(-400), index_on(-31)];
    let old = index_on(-45);
    let old_date = &old["holysheep-logs-".len()..];
    let kept = [
        index_on(-30),
        index_on(-1),
        index_on(0),
        index_on(1),
        // Decoys: not exactly the prefix followed by a valid date.
        "holysheep-logs-2020.13.01".to_string(),
        "holysheep-logs-2020.02.30".to_string(),
        "holysheep-logs-2020.1.01".to_string(),
        format!("{old}-old"),
        format!("holysheep-logs-x-{old_date}"),
        format!("other-{old_date}"),
        format!("holysheep-logs{old_date}"),
    ];
    for name in expired.iter().chain(&kept) {
        let resp = client()
            .put(format!("{}/{name}", osmem.url))
            .send()
            .unwrap();
        assert!(
            resp.status().is_success(),
            "create {name}: {:?}",
            resp.text()
        );
    }
    let dog = Sheepdog::start(
        "pipelines/holysheep.toml",
        &[("ES_HOSTS", osmem.url.as_str()), ("RETENTION_DAYS", "30")],
    );
    let metric = "sheepdog_es_retention_deleted_total{output=\"elasticsearch\"}";
    wait_for(Duration::from_secs(30), "two retention deletions", || {
        (dog.metric(metric) == Some(2.0)).then_some(())
    });
    let mut want: Vec<String> = kept.to_vec();
    want.sort();
    assert_eq!(index_names(&osmem), want, "{}", dog.log());
    // Logging to a pipe is plain text: no colour escapes.
    let log = dog.log();
    assert!(!log.contains('\x1b'), "{log}");
    let cutoff = (chrono::Utc::now().date_naive() - chrono::Duration::days(30)).to_string();
    for name in &expired {
        let date = chrono::NaiveDate::parse_from_str(&name["holysheep-logs-".len()..], "%Y.%m.%d")
            .unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("deleted expired index") && l.contains(&format!("index={name} ")))
            .unwrap_or_else(|| panic!("no deletion logged for {name}:\n{log}"));
        assert!(line.contains(&format!("date={date}")), "{line}");
        assert!(line.contains(&format!("cutoff={cutoff}")), "{line}");
    }
    assert_eq!(log.matches("deleted expired index").count(), 2, "{log}");
    // Events still flow into today's index beside the retention task.
    let (code, text) = dog.post(
        r#"{"request_id":"r-1","model":"gpt-4.1","status":"success"}"#,
        "application/json",
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        osmem.wait_count(&index_on(0), 1, Duration::from_secs(30)),
        1
    );
}

#[test]
fn retention_needs_a_daily_index_of_a_literal_prefix() {
    let (code, text) = common::sheepdog_check(
        &common::repo_root().join("pipelines/holysheep.toml"),
        &[
            ("RETENTION_DAYS", "7"),
            ("ES_INDEX_PREFIX", "logs-%{[service]}"),
        ],
    );
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("retention_days: cannot tell which indices expire from index `logs-%{[service]}-%{+YYYY.MM.dd}`"),
        "{text}"
    );
}

/// osmem-server speaks the OpenSearch API, which has no ILM: the template carrying
/// `index.lifecycle.name` is refused, and sheepdog says so and keeps indexing.
#[test]
fn ilm_policy_refused_by_a_cluster_without_ilm_is_reported() {
    let osmem = Osmem::start();
    let dog = Sheepdog::start(
        "pipelines/holysheep.toml",
        &[
            ("ES_HOSTS", osmem.url.as_str()),
            ("ES_ILM_POLICY", "logs-30d"),
        ],
    );
    let reason = wait_for(Duration::from_secs(30), "the template refusal", || {
        let (_, health) = dog.health();
        health["components"]
            .as_array()?
            .iter()
            .find(|c| c["component"] == "output elasticsearch" && c["status"] == "degraded")
            .map(|c| c["reason"].as_str().unwrap().to_string())
    });
    assert!(
        reason.starts_with("index template refused: HTTP 400")
            && reason.contains("index.lifecycle.name"),
        "{reason}"
    );
    let resp = client()
        .get(format!("{}/_index_template/holysheep-logs", osmem.url))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let (code, text) = dog.post(r#"{"request_id":"r-1"}"#, "application/json");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        osmem.wait_count(&index_on(0), 1, Duration::from_secs(30)),
        1
    );
}

/// Starts the shipped pipeline (queue `queue`, a 2 s shutdown deadline) with no cluster,
/// posts 25 events, stops it and returns the log line matching `marker`.
fn deadline_line(queue: &str, marker: &str) -> String {
    // Nothing listens on the cluster's port: every event stays with the output.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let shipped = std::fs::read_to_string(common::repo_root().join("pipelines/holysheep.toml"))
        .unwrap()
        .replacen("shutdown_timeout = \"30s\"", "shutdown_timeout = \"2s\"", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("short-deadline.toml");
    std::fs::write(&config, shipped).unwrap();
    let mut dog = Sheepdog::start(&config, &[("ES_HOSTS", dead.as_str()), ("QUEUE", queue)]);
    let events: Vec<Value> = (0..25)
        .map(|i| json!({"request_id": format!("held-{i}"), "model": "m", "cost_usd": 0.1}))
        .collect();
    let (code, text) = dog.post(ndjson(&events), "application/x-ndjson");
    assert_eq!(code, 200, "{text}");
    dog.stop();
    let log = dog.log();
    log.lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no count of undelivered events:\n{log}"))
        .to_string()
}

/// The number after `key=` in a log line.
fn logged_number(line: &str, key: &str) -> i64 {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("{line}"))
        + key.len()
        + 1;
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn a_shutdown_deadline_that_passes_logs_how_many_events_were_not_delivered() {
    let line = deadline_line(
        "memory",
        "shutdown deadline passed with events not delivered",
    );
    assert_eq!(
        logged_number(&line, "queued") + logged_number(&line, "in_outputs"),
        25,
        "{line}"
    );
    let line = deadline_line("persisted", "stay in the persisted queue");
    assert_eq!(logged_number(&line, "events"), 25, "{line}");
}

#[test]
fn events_sent_twice_are_indexed_once() {
    let osmem = Osmem::start();
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    let mut dog = Sheepdog::start(
        "pipelines/holysheep.toml",
        &[("ES_HOSTS", osmem.url.as_str()), ("DATA_DIR", data)],
    );
    let with_id: Vec<Value> = (0..3)
        .map(|i| {
            json!({"request_id": format!("req-{i}"), "model": "gpt-4.1", "status": "success",
                   "total_tokens": 10 + i, "latency_ms": 5.0})
        })
        .collect();
    // No request_id and no time of their own: the document id is the fingerprint of the event
    // as received, which leaves out the receipt time each send stamps.
    let without_id: Vec<Value> = (0..3)
        .map(|i| {
            json!({"model": "deepseek-v3.2", "status": "success", "total_tokens": 20 + i,
                        "latency_ms": 7.0})
        })
        .collect();
    // A Filebeat-shaped line: its file and offset are part of what is hashed.
    let filebeat = json!({"message": "upstream timeout", "@timestamp": "2026-11-27T10:00:00.000Z",
                          "log": {"file": {"path": "/var/log/app.log"}, "offset": 4096}});
    let mut events = with_id.clone();
    events.extend(without_id);
    events.push(filebeat);
    let body = ndjson(&events);
    let (code, text) = dog.post(body.clone(), "application/x-ndjson");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        osmem.wait_count("holysheep-logs-*", 7, Duration::from_secs(30)),
        7,
        "{}",
        dog.log()
    );
    // The client did not get the answer and sends the same body again.
    std::thread::sleep(Duration::from_millis(20));
    let (code, text) = dog.post(body, "application/x-ndjson");
    assert_eq!(code, 200, "{text}");
    let duplicates = "sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"duplicate\"}";
    wait_for(
        Duration::from_secs(30),
        "the resent events to be settled",
        || (dog.metric(duplicates) == Some(7.0)).then_some(()),
    );
    assert_eq!(
        osmem.count("holysheep-logs-*"),
        7,
        "each document indexed once"
    );
    assert_eq!(
        dog.metric("sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"indexed\"}"),
        Some(7.0)
    );
    assert_eq!(
        dog.metric(
            "sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"dead_lettered\"}"
        ),
        Some(0.0)
    );
    let hits = osmem.search("holysheep-logs-*", &json!({"size": 20}));
    let hits = hits["hits"]["hits"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 7);
    let mut ids = std::collections::BTreeSet::new();
    for hit in &hits {
        let id = hit["_id"].as_str().unwrap();
        match hit["_source"]["request_id"].as_str() {
            Some(request_id) => assert_eq!(id, request_id, "{hit}"),
            None => assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "a fingerprint id: {hit}"
            ),
        }
        assert!(hit["_source"].get("@metadata").is_none(), "{hit}");
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), 7, "distinct events have distinct ids");
    assert!(dog.stop().success());
}
