//! The status page on the real daemon running the shipped pipeline into osmem-server: a known
//! set of request logs is posted, then `/status.json` must hold exactly their numbers, and the
//! page rendered by a real headless Chromium must show them.

mod common;

use common::{client, repo_root, wait_for, Osmem, Sheepdog};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOP_ERROR: &str = "HTTP 429: <rate limited> & retry later";
const OTHER_ERROR: &str = "ReadTimeout: timed out after 60s";

/// (model, requests, errors, cost per request, latency of request i)
struct Model {
    name: &'static str,
    requests: u64,
    errors: u64,
    cost: f64,
}

const MODELS: &[Model] = &[
    Model {
        name: "gpt-4.1",
        requests: 9,
        errors: 0,
        cost: 0.02,
    },
    Model {
        name: "claude-sonnet-4.5",
        requests: 5,
        errors: 1,
        cost: 0.5,
    },
    Model {
        name: "deepseek-v3.2",
        requests: 4,
        errors: 3,
        cost: 0.001,
    },
];

/// The known logs: model m's request i has latency (i + 1) * 10 ms and user `user_{i % 3}`;
/// errors come first in each model and carry `TOP_ERROR` except one `OTHER_ERROR`. One
/// gemini request has no cost_usd, so the shipped cost stage prices 1M tokens at 2.50.
fn logs() -> Vec<Value> {
    let mut out = Vec::new();
    for m in MODELS {
        for i in 0..m.requests {
            let mut log = json!({
                "request_id": format!("{}-{i}", m.name),
                "model": m.name,
                "user_id": format!("user_{}", i % 3),
                "cost_usd": m.cost,
                "latency_ms": (i + 1) * 10,
                "status": "success",
                "status_code": 200,
            });
            if i < m.errors {
                log["status"] = json!("error");
                log["status_code"] = json!(500);
                let message = if m.name == "claude-sonnet-4.5" {
                    OTHER_ERROR
                } else {
                    TOP_ERROR
                };
                log["error_message"] = json!(message);
            }
            out.push(log);
        }
    }
    out.push(
        json!({"request_id": "g", "model": "gemini-2.5-flash", "user_id": "whale",
                    "total_tokens": 1_000_000, "latency_ms": 5000, "status": "success"}),
    );
    out
}

fn start() -> (Osmem, Sheepdog) {
    let es = Osmem::start();
    let dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", es.url.as_str())]);
    let body: Vec<String> = logs().iter().map(Value::to_string).collect();
    let (status, reply) = dog.post(body.join("\n"), "application/x-ndjson");
    assert_eq!(status, 200, "{reply}");
    (es, dog)
}

fn status_json(dog: &Sheepdog) -> Value {
    let resp = client()
        .get(format!("{}/status.json", dog.api_url))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().unwrap()
}

/// Waits until the statistics counted every posted log.
fn counted(dog: &Sheepdog) -> Value {
    let n = logs().len() as u64;
    wait_for(Duration::from_secs(30), "events in /status.json", || {
        let s = status_json(dog);
        (s["events"]["totals"]["events"] == n).then_some(s)
    })
}

#[test]
fn status_json_counts_the_posted_events() {
    let (es_server, dog) = start();
    let s = counted(&dog);
    let ev = &s["events"];
    assert_eq!(ev["totals"], json!({"events": 19, "errors": 4}));
    let models = ev["models"].as_array().unwrap();
    let names: Vec<&str> = models
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "gpt-4.1",
            "claude-sonnet-4.5",
            "deepseek-v3.2",
            "gemini-2.5-flash"
        ]
    );
    for (row, m) in models.iter().zip(MODELS) {
        assert_eq!(row["requests"], m.requests, "{row}");
        assert_eq!(row["errors"], m.errors, "{row}");
        let cost = row["cost_usd"].as_f64().unwrap();
        assert!((cost - m.cost * m.requests as f64).abs() < 1e-9, "{row}");
        // The slowest request is (requests * 10) ms; p99 of so few is the slowest.
        let p99 = row["p99_latency_ms"].as_f64().unwrap();
        let slowest = (m.requests * 10) as f64;
        assert!((p99 / slowest - 1.0).abs() < 0.03, "{row}");
    }
    assert_eq!(
        models[3]["cost_usd"], 2.5,
        "priced by the shipped cost stage"
    );
    assert_eq!(
        ev["top_users"][0],
        json!({"user": "whale", "requests": 1, "cost_usd": 2.5})
    );
    // user_0: gpt 0,3,6 + claude 0,3 + deepseek 0,3.
    let user0 = ev["top_users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "user_0");
    assert_eq!(user0.unwrap()["requests"], 7);
    assert_eq!(
        ev["top_errors"],
        json!([{"message": TOP_ERROR, "count": 3}, {"message": OTHER_ERROR, "count": 1}])
    );
    assert_eq!(s["queue"]["capacity"], 4096);
    assert!(s["memory"]["rss_bytes"].as_u64().unwrap() > 1 << 20);

    // Indexed into osmem: the Elasticsearch output reports it, healthy.
    let es = wait_for(Duration::from_secs(30), "indexed documents", || {
        let s = status_json(&dog);
        let es = s["elasticsearch"][0].clone();
        (es["indexed"] == 19).then_some(es)
    });
    assert_eq!(es["output"], "elasticsearch");
    assert_eq!(es["status"], "ok");
    assert_eq!(
        es["hosts"],
        json!([{"host": es_server.url.trim_end_matches('/'), "status": "ok", "reason": ""}])
    );
    assert_eq!(
        (es["retries"].clone(), es["dead_lettered"].clone()),
        (json!(0), json!(0))
    );

    // The shipped rules: p99 latency (5 s gemini request) fires, error_rate needs 200 events.
    let rules = wait_for(Duration::from_secs(30), "p99 rule firing", || {
        let rules = status_json(&dog)["alerts"]["rules"].clone();
        (rules[1]["state"] == "firing").then_some(rules)
    });
    assert_eq!(rules[0]["name"], "error_rate");
    assert_eq!(rules[0]["state"], "ok");
    assert_eq!(rules[1]["name"], "p99_latency");
    // ALERT_TO is empty: the email output only counts the error events it was given.
    let mail = status_json(&dog)["alerts"]["mail"].clone();
    assert_eq!(
        mail,
        json!([{"sender": "alert_mail", "sent": 0, "throttled": 0, "failed": 0}])
    );

    // The rate sampler: the http input's points add up to the posted events.
    let every = s["rates"]["every_s"].as_f64().unwrap();
    wait_for(Duration::from_secs(30), "the http input's rate", || {
        let s = status_json(&dog);
        let series = s["rates"]["series"].as_array().unwrap().clone();
        let http = series
            .iter()
            .find(|x| x["name"] == "http" && x["direction"] == "in")?;
        let sum: f64 = http["per_s"]
            .as_array()?
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        ((sum * every).round() == 19.0).then_some(())
    });
}

/// The chromium binary, installed by scripts/ci-deps/chromium.sh.
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "chromium is not installed: run scripts/ci-deps/chromium.sh (scripts/test does)"
    );
    path
}

/// Runs headless chromium with `args` then `url`; returns its stdout. At most 90 s.
fn run_chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

#[test]
fn a_real_browser_renders_models_counts_and_the_top_error() {
    let (_es, dog) = start();
    counted(&dog);
    // Until the sampler has two readings the charts have no line to draw.
    wait_for(Duration::from_secs(30), "a rate point", || {
        let s = status_json(&dog);
        let series = s["rates"]["series"].as_array()?.clone();
        series
            .iter()
            .all(|x| x["per_s"].as_array().is_some_and(|p| !p.is_empty()))
            .then_some(())
    });
    let url = format!("{}/", dog.api_url);
    let dom = run_chromium(&url, &["--dump-dom"]);
    assert!(dom.contains("<h1>sheepdog</h1>"), "{dom}");
    for m in MODELS {
        let row = format!("<td>{}</td><td class=\"n\">{}</td>", m.name, m.requests);
        assert!(dom.contains(&row), "no row {row} in:\n{dom}");
    }
    assert!(dom.contains("<td>gemini-2.5-flash</td><td class=\"n\">1</td>"));
    // A chart per input and output, each with its line.
    for name in ["http", "beats", "elasticsearch", "alert_mail"] {
        assert!(
            dom.contains(&format!("<span class=\"name\">{name}</span>")),
            "{name}"
        );
    }
    assert_eq!(dom.matches("<polyline").count(), 4, "{dom}");
    // The top error message as sent, as text: its `<` and `&` escaped, never markup.
    let escaped = "HTTP 429: &lt;rate limited&gt; &amp; retry later";
    let row = format!("<td class=\"msg\">{escaped}</td><td class=\"n\">3</td>");
    assert!(dom.contains(&row), "no row {row} in:\n{dom}");
    assert!(!dom.contains("<rate"), "event text became markup");
    // No GeoIP database and no ALERT_TO in the test: degraded, not down.
    assert!(
        dom.contains(r#"<span id="overall" class="pill degraded">degraded</span>"#),
        "{dom}"
    );

    let target = repo_root().join("target");
    let shot = target.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
