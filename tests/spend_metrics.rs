//! Spend and health metrics: the real daemon on the shipped pipeline (into the real
//! osmem-server) gets a known set of request logs over HTTP; every `sheepdog_llm_*` series on
//! `/metrics` must then equal what the test computes from the logs it sent, with costs the
//! pipeline backfilled priced from the pipeline file's own price table.

mod common;

use common::{repo_root, wait_for, Osmem, Sheepdog};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Series by name and sorted `label=value` pairs, from the text format.
type Samples = HashMap<(String, BTreeMap<String, String>), f64>;

fn parse_metrics(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.insert((name.to_string(), labels), value.parse().unwrap());
    }
    out
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_string(), labels)).copied()
}

/// The cost_backfill stage's prices and rounding, read from the shipped pipeline file.
struct Prices {
    table: HashMap<String, f64>,
    default: f64,
    scale: f64,
}

impl Prices {
    fn shipped() -> Prices {
        let text = std::fs::read_to_string(repo_root().join("pipelines/holysheep.toml")).unwrap();
        let doc: toml::Value = toml::from_str(&text).unwrap();
        let cost = doc["filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"].as_str() == Some("cost_backfill"))
            .expect("a cost_backfill stage");
        let float = |v: &toml::Value| v.as_float().or(v.as_integer().map(|i| i as f64)).unwrap();
        Prices {
            table: cost["prices"]
                .as_table()
                .unwrap()
                .iter()
                .map(|(m, p)| (m.clone(), float(p)))
                .collect(),
            default: float(&cost["default_price"]),
            scale: 10f64.powi(cost["decimals"].as_integer().unwrap() as i32),
        }
    }

    fn cost(&self, model: Option<&str>, total_tokens: f64) -> f64 {
        let price = model
            .and_then(|m| self.table.get(m))
            .copied()
            .unwrap_or(self.default);
        (total_tokens / 1_000_000.0 * price * self.scale).round() / self.scale
    }
}

/// The number in a field as the pipeline reads it (number or numeric string).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The shipped classify stage's rule.
fn status_category(e: &Value) -> &'static str {
    if e["status"] == "success" || e["status_code"] == 200 {
        "success"
    } else if e["status"] == "pending" {
        "pending"
    } else {
        "error"
    }
}

const MODELS: &[&str] = &[
    "gpt-4.1",
    "claude-sonnet-4.5",
    "deepseek-v3.2",
    "gemini-2.5-flash",
    // Not in the price table: the default price applies.
    "mistral-large",
];
const EDGES: [f64; 4] = [50.0, 100.0, 200.0, 500.0];

/// 400 request logs covering every shape the stage must handle.
fn logs() -> Vec<Value> {
    (0..400u32)
        .map(|i| {
            let mut e =
                json!({"request_id": format!("spend-{i}"), "user_id": format!("u{}", i % 7)});
            if i % 23 != 0 {
                e["model"] = json!(MODELS[(i % 5) as usize]);
            }
            match i % 6 {
                0 | 1 => e["status"] = json!("success"),
                2 => e["status_code"] = json!(200),
                3 => e["status"] = json!("pending"),
                4 => e["status"] = json!("error"),
                _ => e["status"] = json!("timeout"),
            }
            if i % 4 != 3 {
                e["total_tokens"] = json!(100 + i * 37);
            }
            if i % 3 == 0 {
                e["prompt_tokens"] = json!(60 + i * 20);
                e["completion_tokens"] = json!(format!("{}", 40 + i * 17));
            }
            match i % 10 {
                0 => e["cost_usd"] = json!(0.0125 + f64::from(i) / 1000.0),
                1 => e["cost_usd"] = json!(format!("{}", 0.5 + f64::from(i) / 100.0)),
                _ => {}
            }
            match i % 9 {
                // The bucket edges themselves, a numeric string, no latency, a large one.
                0 => e["latency_ms"] = json!(EDGES[(i as usize / 9) % 4]),
                1 => e["latency_ms"] = json!(format!("{}", 75.5 + f64::from(i))),
                2 => {}
                _ => e["latency_ms"] = json!(f64::from(i * 13 % 900) + 0.25),
            }
            e
        })
        .collect()
}

/// What `/metrics` must show for `logs`.
#[derive(Default)]
struct Expected {
    requests: BTreeMap<(String, String), f64>,
    cost: BTreeMap<String, f64>,
    tokens: BTreeMap<(String, &'static str), f64>,
    /// Per model: count per bucket (not cumulative, +Inf last) and the sum.
    latency: BTreeMap<String, ([u64; 5], f64)>,
}

fn expected(logs: &[Value], prices: &Prices) -> Expected {
    let mut x = Expected::default();
    for e in logs {
        let model = e["model"].as_str().unwrap_or("unknown").to_string();
        let category = status_category(e).to_string();
        *x.requests.entry((model.clone(), category)).or_default() += 1.0;
        let total = number(&e["total_tokens"]);
        let cost = match (number(&e["cost_usd"]), total) {
            (Some(c), _) => Some(c),
            (None, Some(t)) => Some(prices.cost(e["model"].as_str(), t)),
            (None, None) => None,
        };
        if let Some(c) = cost {
            *x.cost.entry(model.clone()).or_default() += c;
        }
        for (kind, field) in [
            ("prompt", "prompt_tokens"),
            ("completion", "completion_tokens"),
            ("total", "total_tokens"),
        ] {
            if let Some(n) = number(&e[field]) {
                *x.tokens.entry((model.clone(), kind)).or_default() += n;
            }
        }
        if let Some(l) = number(&e["latency_ms"]) {
            let (buckets, sum) = x.latency.entry(model.clone()).or_default();
            buckets[EDGES.iter().position(|b| l <= *b).unwrap_or(4)] += 1;
            *sum += l;
        }
    }
    x
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn check(samples: &Samples, x: &Expected) {
    let r = "sheepdog_llm_requests_total";
    for ((model, category), n) in &x.requests {
        let got = get(
            samples,
            r,
            &[("model", model), ("status_category", category)],
        );
        assert_eq!(got, Some(*n), "{r} {model} {category}");
    }
    let series = samples.keys().filter(|(n, _)| n == r).count();
    assert_eq!(series, x.requests.len(), "{r}: extra series");
    for (model, usd) in &x.cost {
        let got = get(samples, "sheepdog_llm_cost_usd_total", &[("model", model)]).unwrap();
        assert!(close(got, *usd), "cost of {model}: {got} != {usd}");
    }
    for ((model, kind), n) in &x.tokens {
        let got = get(
            samples,
            "sheepdog_llm_tokens_total",
            &[("model", model), ("kind", kind)],
        );
        assert_eq!(got, Some(*n), "tokens {model} {kind}");
    }
    let h = "sheepdog_llm_latency_ms";
    for (model, (buckets, sum)) in &x.latency {
        let mut cumulative = 0;
        for (i, le) in ["50", "100", "200", "500", "+Inf"].iter().enumerate() {
            cumulative += buckets[i];
            let got = get(
                samples,
                &format!("{h}_bucket"),
                &[("model", model), ("le", le)],
            );
            assert_eq!(got, Some(cumulative as f64), "{h} {model} le={le}");
        }
        let count = get(samples, &format!("{h}_count"), &[("model", model)]);
        assert_eq!(count, Some(cumulative as f64), "{h}_count {model}");
        let got = get(samples, &format!("{h}_sum"), &[("model", model)]).unwrap();
        assert!(close(got, *sum), "{h}_sum {model}: {got} != {sum}");
    }
}

fn post(dog: &Sheepdog, logs: &[Value]) {
    let body: String = logs.iter().map(|e| format!("{e}\n")).collect();
    let (code, text) = dog.post(body, "application/x-ndjson");
    assert_eq!(code, 200, "{text}");
}

/// Waits until `/metrics` counts `n` requests in all.
fn counted(dog: &Sheepdog, n: f64) -> Samples {
    wait_for(Duration::from_secs(30), "every request counted", || {
        let samples = parse_metrics(&dog.metrics());
        let total: f64 = samples
            .iter()
            .filter(|((name, _), _)| name == "sheepdog_llm_requests_total")
            .map(|(_, v)| v)
            .sum();
        (total == n).then_some(samples)
    })
}

#[test]
fn llm_series_equal_the_sums_of_the_logs_sent() {
    let osmem = Osmem::start();
    let dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", &osmem.url)]);
    let logs = logs();
    for chunk in logs.chunks(97) {
        post(&dog, chunk);
    }
    let samples = counted(&dog, logs.len() as f64);
    check(&samples, &expected(&logs, &Prices::shipped()));
    assert_eq!(
        osmem.wait_count("holysheep-logs-*", 400, Duration::from_secs(30)),
        400
    );
}

#[test]
fn model_names_past_the_cap_fold_into_other() {
    let osmem = Osmem::start();
    let dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", &osmem.url)]);
    let known: Vec<Value> = MODELS
        .iter()
        .map(|m| json!({"model": m, "status": "success"}))
        .collect();
    post(&dog, &known);
    counted(&dog, 5.0);
    // 55 new names: 45 fit under the cap of 50, the other 10 fold.
    let flood: Vec<Value> = (0..55)
        .map(|i| json!({"model": format!("made-up-{i}"), "status": "success", "cost_usd": 1}))
        .collect();
    post(&dog, &flood);
    let samples = counted(&dog, 60.0);
    let models: Vec<&String> = samples
        .keys()
        .filter(|(n, _)| n == "sheepdog_llm_requests_total")
        .map(|(_, l)| &l["model"])
        .filter(|m| *m != "other")
        .collect();
    assert_eq!(models.len(), 50, "{models:?}");
    let other = [("model", "other"), ("status_category", "success")];
    assert_eq!(
        get(&samples, "sheepdog_llm_requests_total", &other),
        Some(10.0)
    );
    let cost = get(
        &samples,
        "sheepdog_llm_cost_usd_total",
        &[("model", "other")],
    );
    assert_eq!(cost, Some(10.0));
}
