//! SIGHUP against the real binary: an edited price applies to the next events with no event
//! lost or doubled and the listeners left open; a broken file is refused with its problems
//! logged as file:line:column, and the running pipeline goes on; `/health` names the version.

mod common;

use common::{read_ndjson, shipped_pipeline_to_file, Sheepdog};
use serde_json::{json, Value};
use std::time::Duration;

fn hangup(dog: &Sheepdog) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &dog.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn post_one(dog: &Sheepdog, id: &str) {
    let event = json!({"request_id": id, "model": "gpt-4.1", "total_tokens": 1_000_000, "status": "success"});
    let (code, text) = dog.post(event.to_string(), "application/json");
    assert_eq!(code, 200, "{text}");
}

fn pipeline_reason(dog: &Sheepdog) -> String {
    let (_, health) = dog.health();
    health["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["component"] == "pipeline"))
        .map(|c| format!("{} {}", c["status"], c["reason"]))
        .unwrap_or_else(|| panic!("no pipeline component: {health}"))
}

fn wait_for_log(dog: &Sheepdog, text: &str) {
    common::wait_for(Duration::from_secs(30), text, || {
        dog.log().contains(text).then_some(())
    });
}

#[test]
fn sighup_applies_an_edited_price_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.ndjson");
    let config = shipped_pipeline_to_file(&out, &[], "");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut dog = Sheepdog::start(&config, &[]);
    let before = pipeline_reason(&dog);
    assert!(
        before.contains("running") && before.contains("version"),
        "{before}"
    );

    post_one(&dog, "before");
    // The price of gpt-4.1 goes from 8 to 9 USD per million tokens.
    let edited = original.replacen("\"gpt-4.1\" = 8.0", "\"gpt-4.1\" = 9.0", 1);
    assert_ne!(edited, original);
    std::fs::write(&config, &edited).unwrap();
    hangup(&dog);
    wait_for_log(&dog, "pipeline reloaded");
    post_one(&dog, "after");
    let events = read_ndjson(&out, 2, Duration::from_secs(30));
    let cost = |id: &str| -> Value {
        let matching: Vec<&Value> = events.iter().filter(|e| e["request_id"] == id).collect();
        assert_eq!(matching.len(), 1, "{id} once: {events:?}");
        matching[0]["cost_usd"].clone()
    };
    assert_eq!(cost("before"), json!(8.0));
    assert_eq!(cost("after"), json!(9.0));
    let after_reload = pipeline_reason(&dog);
    assert_ne!(after_reload, before, "the version changed");

    // A broken file: refused with its location, the running pipeline (price 9) goes on.
    let broken = edited.replacen("type = \"cost\"", "type = \"no_such_filter\"", 1);
    std::fs::write(&config, &broken).unwrap();
    hangup(&dog);
    wait_for_log(
        &dog,
        "reload refused; the running pipeline goes on unchanged",
    );
    let log = dog.log();
    let file_name = config.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        log.lines().any(
            |l| l.contains("reload refused: the pipeline file has errors")
                && l.contains(&file_name)
                && l.contains("no_such_filter")
        ),
        "{log}"
    );
    let refused = pipeline_reason(&dog);
    assert!(
        refused.contains("degraded") && refused.contains("reload refused"),
        "{refused}"
    );
    post_one(&dog, "still-running");
    let events = read_ndjson(&out, 3, Duration::from_secs(30));
    let last = events
        .iter()
        .find(|e| e["request_id"] == "still-running")
        .unwrap();
    assert_eq!(last["cost_usd"], json!(9.0));

    // A section a reload does not apply is named, and left as it runs.
    let moved = edited.replacen("tags = [\"direct-upload\"]", "tags = [\"moved\"]", 1);
    assert_ne!(moved, edited);
    std::fs::write(&config, &moved).unwrap();
    hangup(&dog);
    wait_for_log(&dog, "it applies at the next restart");
    post_one(&dog, "same-listener");
    let events = read_ndjson(&out, 4, Duration::from_secs(30));
    let e = events
        .iter()
        .find(|e| e["request_id"] == "same-listener")
        .unwrap();
    assert!(
        e["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("direct-upload")),
        "{e}"
    );
    assert_eq!(events.len(), 4, "no event lost or doubled: {events:?}");
    assert!(dog.stop().success(), "{}", dog.log());
}
