//! End to end: thousands of LLM-API request logs in every HTTP body shape go through the real
//! daemon running the shipped pipeline into the real osmem-server; the shipped Kibana dashboard
//! queries then must give exactly what the test computes from its own input. One daemon run
//! feeds a table of named cases, one per dashboard query.

mod common;

use common::{Osmem, Sheepdog};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

const DAY_MS: i64 = 86_400_000;
const MODELS: &[(&str, f64)] = &[
    ("gpt-4.1", 8.0),
    ("claude-sonnet-4.5", 15.0),
    ("deepseek-v3.2", 0.42),
    ("gemini-2.5-flash", 2.50),
    // Not in the price table: the pipeline's default price applies.
    ("mistral-large", 8.0),
];
const ERRORS: &[&str] = &[
    "HTTP 429: rate limited",
    "HTTP 500: upstream error",
    "HTTP 401: invalid api key",
    "ReadTimeout: timed out after 60s",
    "ConnectError: connection refused",
];

/// One generated request log and what the pipeline should index for it.
struct Log {
    body: Value,
    day: i64,
    model: &'static str,
    user: String,
    status: &'static str,
    latency: Option<f64>,
    tokens: Option<i64>,
    cost: Option<f64>,
    error: Option<&'static str>,
}

/// A small deterministic generator (no shared state with the daemon).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn generate(n: usize, days: [i64; 2]) -> Vec<Log> {
    let mut rng = Lcg(42);
    (0..n)
        .map(|i| {
            let day = days[i % 2];
            let ts = day * DAY_MS + rng.below(DAY_MS as u64 - 1000) as i64;
            let (model, rate) = MODELS[rng.below(MODELS.len() as u64) as usize];
            let user = format!("user_{:02}", rng.below(15));
            let status = match rng.below(20) {
                0..=13 => "success",
                14..=16 => "error",
                17..=18 => "exception",
                _ => "pending",
            };
            let mut body = json!({
                "timestamp": iso(ts),
                "request_id": format!("req-{i:06}"),
                "model": model,
                "user_id": user,
                "endpoint": "/v1/chat/completions",
                "status": status,
            });
            let mut log = Log {
                body: Value::Null,
                day,
                model,
                user: user.clone(),
                status,
                latency: None,
                tokens: None,
                cost: None,
                error: None,
            };
            if status != "pending" {
                // Two decimals, as the SDK rounds; spread over the dashboard's 25 ms buckets.
                let latency = (rng.below(120_000) as f64) / 100.0 + 5.0;
                body["latency_ms"] = json!(latency);
                log.latency = Some(latency);
            }
            if status == "success" {
                let prompt = rng.below(4000) as i64 + 10;
                let completion = rng.below(2000) as i64 + 1;
                let total = prompt + completion;
                body["prompt_tokens"] = json!(prompt);
                body["completion_tokens"] = json!(completion);
                body["total_tokens"] = json!(total);
                log.tokens = Some(total);
                if rng.below(2) == 0 {
                    // The SDK priced it itself (with its own rounding).
                    let cost = (total as f64 * rate / 1e6 * 1e6).round() / 1e6 + 0.000001;
                    body["cost_usd"] = json!(cost);
                    log.cost = Some(cost);
                } else {
                    // Backfilled by the pipeline: round(total / 1e6 * price, 6).
                    log.cost = Some((total as f64 / 1e6 * rate * 1e6).round() / 1e6);
                }
            } else if status != "pending" {
                let error = ERRORS[rng.below(ERRORS.len() as u64) as usize];
                body["error_message"] = json!(error);
                log.error = Some(error);
            }
            log.body = body;
            log
        })
        .collect()
}

/// POSTs, waiting out 429s (the queue is full) within a bound.
fn post(dog: &Sheepdog, body: String, content_type: &str) {
    for _ in 0..200 {
        let (status, text) = dog.post(body.clone(), content_type);
        match status {
            200 => return,
            429 => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("POST answered {other}: {text}\n{}", dog.log()),
        }
    }
    panic!("the HTTP input kept answering 429:\n{}", dog.log());
}

fn close(a: f64, b: f64, what: &str) {
    let tolerance = 1e-4 * b.abs().max(1.0);
    assert!(
        (a - b).abs() <= tolerance,
        "{what}: Elasticsearch says {a}, the input says {b}"
    );
}

fn buckets(agg: &Value) -> BTreeMap<String, &Value> {
    agg["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets in {agg}"))
        .iter()
        .map(|b| {
            let key = match &b["key"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (key, b)
        })
        .collect()
}

#[derive(Default, Debug)]
struct Sums {
    count: u64,
    cost: f64,
    cost_n: u64,
    tokens: i64,
    latency: f64,
    latency_n: u64,
}

impl Sums {
    fn add(&mut self, log: &Log) {
        self.count += 1;
        if let Some(c) = log.cost {
            self.cost += c;
            self.cost_n += 1;
        }
        self.tokens += log.tokens.unwrap_or(0);
        if let Some(l) = log.latency {
            self.latency += l;
            self.latency_n += 1;
        }
    }
}

fn group<'a>(logs: &'a [Log], key: impl Fn(&'a Log) -> String) -> BTreeMap<String, Sums> {
    let mut out: BTreeMap<String, Sums> = BTreeMap::new();
    for log in logs {
        out.entry(key(log)).or_default().add(log);
    }
    out
}

/// What every case looks at: the cluster after the daemon indexed `logs` and exited.
struct Run {
    es: Osmem,
    logs: Vec<Log>,
    days: [i64; 2],
    /// The daemon's log, for failure messages.
    log: String,
}

impl Run {
    /// Posts the logs in every body shape to the shipped pipeline and stops the daemon.
    fn start() -> Run {
        let es = Osmem::start();
        let today = chrono::Utc::now().timestamp_millis().div_euclid(DAY_MS);
        let days = [today - 2, today - 1];
        let logs = generate(3000, days);
        let mut dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", es.url.as_str())]);
        post_in_every_shape(&dog, &logs);
        // Stop right away: shutdown must flush everything still queued.
        let status = dog.stop();
        assert!(
            status.success(),
            "sheepdog exited with {status}:\n{}",
            dog.log()
        );
        Run {
            es,
            logs,
            days,
            log: dog.log(),
        }
    }

    fn search(&self, query: &Value) -> Value {
        self.es.search("holysheep-logs-*", query)
    }
}

/// Three body shapes: single objects, JSON arrays, NDJSON.
fn post_in_every_shape(dog: &Sheepdog, logs: &[Log]) {
    let (singles, rest) = logs.split_at(200);
    let (arrays, ndjson) = rest.split_at(1400);
    for log in singles {
        post(dog, log.body.to_string(), "application/json");
    }
    for chunk in arrays.chunks(100) {
        let array: Vec<&Value> = chunk.iter().map(|l| &l.body).collect();
        post(
            dog,
            serde_json::to_string(&array).unwrap(),
            "application/json",
        );
    }
    for chunk in ndjson.chunks(350) {
        let mut text = String::new();
        for l in chunk {
            text.push_str(&l.body.to_string());
            text.push('\n');
        }
        post(dog, text, "application/x-ndjson");
    }
}

/// A named check over the shared run.
struct Case {
    name: &'static str,
    check: fn(&Run),
}

const CASES: &[Case] = &[
    Case {
        name: "every document in its daily index",
        check: documents_per_daily_index,
    },
    Case {
        name: "cost overview by model",
        check: cost_overview_by_model,
    },
    Case {
        name: "cost over time (daily)",
        check: cost_over_time,
    },
    Case {
        name: "errors by message, status and model",
        check: errors,
    },
    Case {
        name: "latency histogram",
        check: latency_histogram,
    },
    Case {
        name: "latency statistics",
        check: latency_statistics,
    },
    Case {
        name: "top users by cost",
        check: top_users_by_cost,
    },
];

#[test]
fn shipped_pipeline_feeds_the_kibana_dashboards() {
    let run = Run::start();
    let mut failed = Vec::new();
    for case in CASES {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (case.check)(&run))) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{}: {why}", case.name));
        }
    }
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}

fn documents_per_daily_index(run: &Run) {
    let n = run.logs.len() as u64;
    assert_eq!(run.es.count("holysheep-logs-*"), n, "{}", run.log);
    for day in run.days {
        let name = format!(
            "holysheep-logs-{}",
            chrono::DateTime::from_timestamp_millis(day * DAY_MS)
                .unwrap()
                .format("%Y.%m.%d")
        );
        let want = run.logs.iter().filter(|l| l.day == day).count() as u64;
        assert_eq!(run.es.count(&name), want, "documents in {name}");
    }
}

fn cost_overview_by_model(run: &Run) {
    let r = run.search(
        &json!({"size": 0, "aggs": {"by_model": {"terms": {"field": "model", "size": 10},
        "aggs": {
            "total_cost": {"sum": {"field": "cost_usd"}},
            "total_tokens": {"sum": {"field": "total_tokens"}},
            "avg_latency": {"avg": {"field": "latency_ms"}},
            "p99_latency": {"percentiles": {"field": "latency_ms", "percents": [99]}},
            "request_count": {"value_count": {"field": "request_id"}}
        }}}}),
    );
    let got = buckets(&r["aggregations"]["by_model"]);
    let want = group(&run.logs, |l| l.model.to_string());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (model, sums) in &want {
        let b = got[model];
        assert_eq!(b["doc_count"], json!(sums.count), "{model}");
        assert_eq!(b["request_count"]["value"], json!(sums.count), "{model}");
        close(
            b["total_cost"]["value"].as_f64().unwrap(),
            sums.cost,
            "cost",
        );
        assert_eq!(
            b["total_tokens"]["value"].as_f64().unwrap(),
            sums.tokens as f64
        );
        close(
            b["avg_latency"]["value"].as_f64().unwrap(),
            sums.latency / sums.latency_n as f64,
            "avg latency",
        );
        let p99 = b["p99_latency"]["values"]["99.0"].as_f64().unwrap();
        assert_p99_near(&run.logs, model, p99);
    }
}

/// Percentiles are estimates: accepts anything between neighbours of the exact rank.
fn assert_p99_near(logs: &[Log], model: &str, p99: f64) {
    let mut latencies: Vec<f64> = logs
        .iter()
        .filter(|l| l.model == model)
        .filter_map(|l| l.latency)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let rank = (0.99 * (latencies.len() - 1) as f64) as usize;
    let lo = latencies[rank.saturating_sub(2)] - 0.01;
    let hi = latencies[(rank + 3).min(latencies.len() - 1)] + 0.01;
    assert!(
        lo <= p99 && p99 <= hi,
        "{model} p99 {p99} not in [{lo}, {hi}]"
    );
}

fn cost_over_time(run: &Run) {
    let r = run.search(
        &json!({"size": 0,
            "query": {"range": {"@timestamp": {"gte": "now-30d", "lte": "now"}}},
            "aggs": {"over_time": {"date_histogram": {"field": "@timestamp", "calendar_interval": "day"},
                "aggs": {
                    "daily_cost": {"sum": {"field": "cost_usd"}},
                    "daily_requests": {"value_count": {"field": "request_id"}},
                    "by_model": {"terms": {"field": "model"}, "aggs": {"cost": {"sum": {"field": "cost_usd"}}}}
                }}}}),
    );
    let got = buckets(&r["aggregations"]["over_time"]);
    let want = group(&run.logs, |l| (l.day * DAY_MS).to_string());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let want_models = group(&run.logs, |l| format!("{}|{}", l.day * DAY_MS, l.model));
    for (day, sums) in &want {
        let b = got[day];
        assert_eq!(b["doc_count"], json!(sums.count));
        assert_eq!(b["daily_requests"]["value"], json!(sums.count));
        close(
            b["daily_cost"]["value"].as_f64().unwrap(),
            sums.cost,
            "daily cost",
        );
        let by_model = buckets(&b["by_model"]);
        for (key, s) in want_models
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{day}|")))
        {
            let model = &key[day.len() + 1..];
            assert_eq!(by_model[model]["doc_count"], json!(s.count), "{key}");
            close(
                by_model[model]["cost"]["value"].as_f64().unwrap(),
                s.cost,
                "daily model cost",
            );
        }
    }
}

/// Everything not successful, by message, status and model.
fn errors(run: &Run) {
    let r = run.search(&json!({"size": 0,
    "query": {"bool": {
        "must": [{"range": {"@timestamp": {"gte": "now-7d"}}}],
        "must_not": [{"term": {"status": "success"}}]}},
    "aggs": {
        "errors_by_type": {"terms": {"field": "error_message.keyword", "size": 20}},
        "errors_by_status": {"terms": {"field": "status"}},
        "errors_by_model": {"terms": {"field": "model"}},
        "errors_over_time": {"date_histogram": {"field": "@timestamp", "calendar_interval": "hour"},
            "aggs": {"error_count": {"value_count": {"field": "request_id"}}}}
    }}));
    let failed: Vec<&Log> = run.logs.iter().filter(|l| l.status != "success").collect();
    assert_eq!(r["hits"]["total"]["value"], json!(failed.len()));
    let count_by = |key: &dyn Fn(&Log) -> Option<String>| {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for l in &failed {
            if let Some(k) = key(l) {
                *m.entry(k).or_default() += 1;
            }
        }
        m
    };
    let as_counts = |agg: &Value| -> BTreeMap<String, u64> {
        buckets(agg)
            .into_iter()
            .map(|(k, b)| (k, b["doc_count"].as_u64().unwrap()))
            .collect()
    };
    let aggs = &r["aggregations"];
    assert_eq!(
        as_counts(&aggs["errors_by_type"]),
        count_by(&|l| l.error.map(str::to_string))
    );
    assert_eq!(
        as_counts(&aggs["errors_by_status"]),
        count_by(&|l| Some(l.status.to_string()))
    );
    assert_eq!(
        as_counts(&aggs["errors_by_model"]),
        count_by(&|l| Some(l.model.to_string()))
    );
    let hourly: u64 = buckets(&aggs["errors_over_time"])
        .values()
        .map(|b| b["error_count"]["value"].as_u64().unwrap())
        .sum();
    assert_eq!(hourly, failed.len() as u64);
}

/// The latency dashboard's query.
fn latency_search(run: &Run) -> Value {
    run.search(&json!({"size": 0, "aggs": {
        "latency_distribution": {"histogram": {"field": "latency_ms", "interval": 25}},
        "latency_stats": {"extended_stats": {"field": "latency_ms"}},
        "by_model": {"terms": {"field": "model"}, "aggs": {"latency_stats": {"stats": {"field": "latency_ms"}}}}
    }}))
}

fn latency_histogram(run: &Run) {
    let r = latency_search(run);
    let mut histogram: BTreeMap<i64, u64> = BTreeMap::new();
    for l in run.logs.iter().filter_map(|l| l.latency) {
        *histogram.entry((l / 25.0).floor() as i64 * 25).or_default() += 1;
    }
    let got: BTreeMap<i64, u64> = r["aggregations"]["latency_distribution"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["doc_count"].as_u64().unwrap() > 0)
        .map(|b| {
            (
                b["key"].as_f64().unwrap() as i64,
                b["doc_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, histogram);
}

fn latency_statistics(run: &Run) {
    let r = latency_search(run);
    let latencies: Vec<f64> = run.logs.iter().filter_map(|l| l.latency).collect();
    let stats = &r["aggregations"]["latency_stats"];
    let n_lat = latencies.len() as f64;
    let mean = latencies.iter().sum::<f64>() / n_lat;
    let var = latencies.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n_lat;
    assert_eq!(stats["count"], json!(latencies.len()));
    close(
        stats["sum"].as_f64().unwrap(),
        latencies.iter().sum(),
        "latency sum",
    );
    close(stats["avg"].as_f64().unwrap(), mean, "latency avg");
    close(
        stats["min"].as_f64().unwrap(),
        latencies.iter().cloned().fold(f64::MAX, f64::min),
        "min",
    );
    close(
        stats["max"].as_f64().unwrap(),
        latencies.iter().cloned().fold(f64::MIN, f64::max),
        "max",
    );
    close(
        stats["std_deviation"].as_f64().unwrap(),
        var.sqrt(),
        "std deviation",
    );
    let want = group(&run.logs, |l| l.model.to_string());
    for (model, b) in buckets(&r["aggregations"]["by_model"]) {
        assert_eq!(
            b["latency_stats"]["count"],
            json!(want[&model].latency_n),
            "{model}"
        );
    }
}

fn top_users_by_cost(run: &Run) {
    let r = run.search(
        &json!({"size": 0, "aggs": {"by_user": {"terms": {"field": "user_id", "size": 20},
        "aggs": {
            "total_cost": {"sum": {"field": "cost_usd"}},
            "total_requests": {"value_count": {"field": "request_id"}},
            "avg_cost_per_request": {"avg": {"field": "cost_usd"}}
        }}}}),
    );
    let got = buckets(&r["aggregations"]["by_user"]);
    let want = group(&run.logs, |l| l.user.clone());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (user, sums) in &want {
        let b = got[user];
        assert_eq!(b["total_requests"]["value"], json!(sums.count), "{user}");
        close(
            b["total_cost"]["value"].as_f64().unwrap(),
            sums.cost,
            "user cost",
        );
        close(
            b["avg_cost_per_request"]["value"].as_f64().unwrap(),
            sums.cost / sums.cost_n as f64,
            "user avg cost",
        );
    }
}
