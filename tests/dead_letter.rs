//! `sheepdog dead-letter list|replay` against the real binary and osmem-server: documents a
//! wrong mapping refused are grouped by reason, stay in the store while the mapping is still
//! wrong, and are indexed once (and leave the store) after it was fixed, while the daemon
//! keeps running and writing to the same store.

mod common;

use common::{client, repo_root, sheepdog_binary, wait_for, Osmem, Sheepdog};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn today_index() -> String {
    format!("holysheep-logs-{}", chrono::Utc::now().format("%Y.%m.%d"))
}

/// Runs `sheepdog dead-letter <args>` on the shipped pipeline; returns (exit code, stdout +
/// stderr).
fn dead_letter(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(sheepdog_binary());
    cmd.current_dir(repo_root())
        .arg("dead-letter")
        .args(args)
        .args(["--config", "pipelines/holysheep.toml"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sheepdog dead-letter");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn letters(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn indexed_ids(es: &Osmem) -> Vec<String> {
    let r = es.search(
        "holysheep-logs-*",
        &json!({"size": 100, "query": {"prefix": {"request_id": "dl-"}}}),
    );
    let mut ids: Vec<String> = r["hits"]["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .map(|h| {
                    h["_source"]["request_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn refused_documents_are_listed_by_reason_and_replayed_once_the_mapping_is_fixed() {
    let es = Osmem::start();
    // An operator's mistake: today's index created with `model` as a number.
    let created = client()
        .put(format!("{}/{}", es.url, today_index()))
        .json(&json!({"mappings": {"properties": {"model": {"type": "long"}}}}))
        .send()
        .unwrap();
    assert!(created.status().is_success());
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let env = [("ES_HOSTS", es.url.as_str()), ("DATA_DIR", data_dir)];
    let dog = Sheepdog::start("pipelines/holysheep.toml", &env);
    let sent: Vec<String> = (1..=3).map(|i| format!("dl-{i}")).collect();
    let body: String = sent
        .iter()
        .map(|id| {
            format!(
                "{}\n",
                json!({"request_id": id, "model": "gpt-4.1", "status": "success",
                       "total_tokens": 10, "cost_usd": 0.1, "latency_ms": 20.0})
            )
        })
        .collect();
    let (code, text) = dog.post(body, "application/x-ndjson");
    assert_eq!(code, 200, "{text}");
    let store = data.path().join("dead_letter.ndjson");
    wait_for(Duration::from_secs(30), "three dead letters", || {
        (letters(&store).len() == 3).then_some(())
    });
    // Each letter keeps the document's id (the shipped pipeline's request_id), which a replay
    // sends again.
    let mut ids: Vec<String> = letters(&store)
        .iter()
        .map(|l| l["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, sent);

    let (code, listed) = dead_letter(&["list"], &env);
    assert_eq!(code, 0, "{listed}");
    assert!(listed.contains("3 documents"), "{listed}");
    let group = listed
        .lines()
        .find(|l| l.contains("failed to parse field [model] of type [long]"))
        .unwrap_or_else(|| panic!("no group for the mapping conflict:\n{listed}"));
    assert!(group.trim_start().starts_with("3 "), "{group}");
    assert!(group.contains("mapper_parsing_exception"), "{group}");

    // Still wrong: refused again, and kept.
    let (code, out) = dead_letter(&["replay", "--reason", "[model]"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("replayed 3: indexed 0, refused again 3"),
        "{out}"
    );
    assert_eq!(letters(&store).len(), 3);
    // A reason nothing has: nothing sent, nothing lost.
    let (code, out) = dead_letter(&["replay", "--reason", "no such reason"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("replayed 0") && out.contains("3 not selected"),
        "{out}"
    );
    assert_eq!(letters(&store).len(), 3);

    // Fixed: the wrong index goes, the daemon's template maps the next one.
    let deleted = client()
        .delete(format!("{}/{}", es.url, today_index()))
        .send()
        .unwrap();
    assert!(deleted.status().is_success());
    let (code, out) = dead_letter(&["replay"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("replayed 3: indexed 3, refused again 0"),
        "{out}"
    );
    assert!(letters(&store).is_empty(), "{:?}", letters(&store));
    let ids = indexed_ids(&es);
    assert_eq!(ids, sent, "each replayed document indexed once");
    let hits = es.search(
        "holysheep-logs-*",
        &json!({"size": 10, "query": {"prefix": {"request_id": "dl-"}}}),
    );
    for hit in hits["hits"]["hits"].as_array().unwrap() {
        assert_eq!(hit["_id"], hit["_source"]["request_id"], "{hit}");
    }
    let (_, listed) = dead_letter(&["list"], &env);
    assert!(listed.contains("0 documents"), "{listed}");
    // The daemon goes on writing to the store after the replay took it aside.
    let (code, text) = dog.post(
        json!({"request_id": "late-1", "model": "m", "total_tokens": "many", "cost_usd": 0.1})
            .to_string(),
        "application/json",
    );
    assert_eq!(code, 200, "{text}");
    wait_for(
        Duration::from_secs(30),
        "the daemon's next dead letter",
        || (letters(&store).len() == 1).then_some(()),
    );
    println!(
        "faults: dead-letter replay: sent {}, indexed {}, duplicates 0, lost 0",
        sent.len(),
        ids.len()
    );
}
