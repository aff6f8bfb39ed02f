//! The stage built from TOML against a fresh registry: label folding, value parsing, histogram
//! buckets, and the configuration errors an operator gets.

use super::*;
use serde_json::json;

/// The shipped pipeline's spend metrics stage (pipelines/holysheep.toml), with a small model cap.
const SPEND: &str = r#"
[labels.model]
field = "model"
max_values = 3
fold = "other"
missing = "unknown"

[labels.status_category]
field = "status_category"
max_values = 2

[[metrics]]
name = "sheepdog_llm_requests_total"
help = "Requests"
kind = "counter"
labels = ["model", "status_category"]

[[metrics]]
name = "sheepdog_llm_cost_usd_total"
help = "Spend"
kind = "counter"
value = "cost_usd"
labels = ["model"]

[[metrics]]
name = "sheepdog_llm_tokens_total"
help = "Tokens"
kind = "counter"
value = "prompt_tokens"
labels = ["model"]
const_labels = { kind = "prompt" }

[[metrics]]
name = "sheepdog_llm_tokens_total"
help = "Tokens"
kind = "counter"
value = "total_tokens"
labels = ["model"]
const_labels = { kind = "total" }

[[metrics]]
name = "sheepdog_llm_latency_ms"
help = "Latency"
kind = "histogram"
value = "latency_ms"
labels = ["model"]
buckets = [50, 100, 200, 500]
"#;

fn build(toml_text: &str) -> (Arc<Registry>, MetricsFilter) {
    let registry = Registry::new();
    let config: Config = toml::from_str(toml_text).unwrap();
    let filter = config.build(&registry).unwrap_or_else(|p| panic!("{p:?}"));
    (registry, filter)
}

fn errors(toml_text: &str) -> Vec<String> {
    let config: Config = toml::from_str(toml_text).unwrap();
    match config.build(&Registry::new()) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn send(filter: &MetricsFilter, fields: Value) {
    let mut e = Event::from_map(fields.as_object().unwrap().clone(), 0);
    assert!(filter.apply(&mut e));
    assert!(
        !e.fields().contains_key("tags"),
        "a metrics stage never tags"
    );
}

fn requests(r: &Registry, model: &str, status: &str) -> Option<f64> {
    r.value(
        "sheepdog_llm_requests_total",
        &[("model", model), ("status_category", status)],
    )
}

#[test]
fn models_past_the_cap_fold_into_other() {
    let (r, f) = build(SPEND);
    for model in ["a", "b", "c", "d", "e", "a", "d"] {
        send(&f, json!({"model": model, "status_category": "success"}));
    }
    for (model, want) in [("a", 2.0), ("b", 1.0), ("c", 1.0), ("other", 3.0)] {
        assert_eq!(requests(&r, model, "success"), Some(want), "{model}");
    }
    assert_eq!(requests(&r, "d", "success"), None);
    // A literal "other" joins the folded series; an over-long value folds without taking room.
    send(&f, json!({"model": "other", "status_category": "success"}));
    send(
        &f,
        json!({"model": "x".repeat(300), "status_category": "success"}),
    );
    assert_eq!(requests(&r, "other", "success"), Some(5.0));
    // Missing or non-scalar model: the `missing` value; integers and booleans as written.
    send(&f, json!({"status_category": "success"}));
    send(
        &f,
        json!({"model": {"name": "a"}, "status_category": "success"}),
    );
    assert_eq!(requests(&r, "unknown", "success"), Some(2.0));
    let text = r.render();
    assert_eq!(
        text.matches("sheepdog_llm_requests_total{").count(),
        5,
        "{text}"
    );
}

#[test]
fn status_values_past_their_cap_fold_and_a_missing_label_skips_the_metric() {
    let (r, f) = build(SPEND);
    for status in ["success", "error", "pending", "weird"] {
        send(
            &f,
            json!({"model": "a", "status_category": status, "cost_usd": 1}),
        );
    }
    assert_eq!(requests(&r, "a", "success"), Some(1.0));
    assert_eq!(requests(&r, "a", "error"), Some(1.0));
    assert_eq!(requests(&r, "a", "other"), Some(2.0));
    // status_category has no `missing`: the request is not counted, its cost is (model only).
    send(&f, json!({"model": "a", "cost_usd": 0.5}));
    assert_eq!(requests(&r, "a", "other"), Some(2.0));
    let cost = r.value("sheepdog_llm_cost_usd_total", &[("model", "a")]);
    assert_eq!(cost, Some(4.5));
}

#[test]
fn values_from_numbers_and_numeric_strings_and_nothing_from_the_rest() {
    let (r, f) = build(SPEND);
    let events = [
        json!({"model": "a", "cost_usd": 0.25, "prompt_tokens": 100, "total_tokens": "150"}),
        json!({"model": "a", "cost_usd": " 0.5 ", "prompt_tokens": "x", "total_tokens": 50.0}),
        // Missing, non-numeric, negative and non-finite values add nothing.
        json!({"model": "a", "cost_usd": "free", "prompt_tokens": null, "total_tokens": -5}),
        json!({"model": "a", "cost_usd": [1], "prompt_tokens": "NaN", "total_tokens": "inf"}),
        json!({"model": "a"}),
    ];
    for e in events {
        send(&f, e);
    }
    let cost = r.value("sheepdog_llm_cost_usd_total", &[("model", "a")]);
    assert_eq!(cost, Some(0.75));
    let tokens = |kind| {
        r.value(
            "sheepdog_llm_tokens_total",
            &[("model", "a"), ("kind", kind)],
        )
    };
    assert_eq!(tokens("prompt"), Some(100.0));
    assert_eq!(tokens("total"), Some(200.0));
}

#[test]
fn latency_lands_in_inclusive_buckets_per_model() {
    let (r, f) = build(SPEND);
    for latency in [
        json!(10),
        json!("50"),
        json!(50.5),
        json!(200),
        json!(499.9),
        json!(9000),
    ] {
        send(&f, json!({"model": "a", "latency_ms": latency}));
    }
    send(&f, json!({"model": "b", "latency_ms": "slow"}));
    send(&f, json!({"model": "b", "latency_ms": -3}));
    let text = r.render();
    let a: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sheepdog_llm_latency_ms") && l.contains("model=\"a\""))
        .collect();
    assert_eq!(
        a,
        [
            "sheepdog_llm_latency_ms_bucket{model=\"a\",le=\"50\"} 2",
            "sheepdog_llm_latency_ms_bucket{model=\"a\",le=\"100\"} 3",
            "sheepdog_llm_latency_ms_bucket{model=\"a\",le=\"200\"} 4",
            "sheepdog_llm_latency_ms_bucket{model=\"a\",le=\"500\"} 5",
            "sheepdog_llm_latency_ms_bucket{model=\"a\",le=\"+Inf\"} 6",
            "sheepdog_llm_latency_ms_sum{model=\"a\"} 9810.4",
            "sheepdog_llm_latency_ms_count{model=\"a\"} 6",
        ],
        "{text}"
    );
    // A histogram takes negative values (only counters must not go down).
    assert!(
        text.contains("sheepdog_llm_latency_ms_count{model=\"b\"} 1\n"),
        "{text}"
    );
}

#[test]
fn integer_and_boolean_label_values_are_written_as_text() {
    let (r, f) = build(
        r#"
        labels.code = { field = "[http][status_code]" }
        labels.cached = { field = "cached" }
        [[metrics]]
        name = "responses_total"
        help = "Responses"
        kind = "counter"
        labels = ["code", "cached"]
        "#,
    );
    send(&f, json!({"http": {"status_code": 200}, "cached": true}));
    send(&f, json!({"http": {"status_code": "200"}, "cached": true}));
    send(&f, json!({"http": {"status_code": 2.5}, "cached": false}));
    let value = |code, cached| r.value("responses_total", &[("code", code), ("cached", cached)]);
    assert_eq!(value("200", "true"), Some(2.0));
    assert_eq!(value("2.5", "false"), Some(1.0));
}

#[test]
fn concurrent_workers_registering_the_same_values_count_every_event() {
    let (r, f) = build(SPEND);
    std::thread::scope(|s| {
        for t in 0..4 {
            let f = &f;
            s.spawn(move || {
                for i in 0..2_000 {
                    let model = ["a", "b", "c", "d", "e"][(i + t) % 5];
                    send(f, json!({"model": model, "status_category": "success"}));
                }
            });
        }
    });
    let series = r.render();
    let total: f64 = series
        .lines()
        .filter(|l| l.starts_with("sheepdog_llm_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 8_000.0, "{series}");
    assert_eq!(
        series.matches("sheepdog_llm_requests_total{").count(),
        4,
        "{series}"
    );
    assert_eq!(requests(&r, "other", "success"), Some(3_200.0));
}

#[test]
fn a_declared_family_renders_before_any_event() {
    let (r, _f) = build(SPEND);
    let text = r.render();
    assert!(
        text.contains("# TYPE sheepdog_llm_latency_ms histogram\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE sheepdog_llm_cost_usd_total counter\n"),
        "{text}"
    );
}

#[test]
fn bad_configurations_name_the_key_and_the_fix() {
    let metric = |extra: &str| {
        format!(
            "labels.model = {{ field = \"model\" }}\n[[metrics]]\nname = \"x_total\"\n\
             help = \"X\"\nkind = \"counter\"\nlabels = [\"model\"]\n{extra}"
        )
    };
    let table: Vec<(String, &str)> = vec![
        ("metrics = []".into(), "error: metrics: no metrics declared"),
        (
            metric("buckets = [1]"),
            "metrics[0].buckets: a counter has no buckets",
        ),
        (
            metric("kind = \"histogram\"").replace("kind = \"counter\"\n", ""),
            "metrics[0].value: a histogram needs a value field",
        ),
        (
            metric("kind = \"histogram\"\nvalue = \"l\"\nbuckets = [5, 1]")
                .replace("kind = \"counter\"\n", ""),
            "metrics[0].buckets: needs finite, strictly ascending upper bounds",
        ),
        (
            metric("").replace("[\"model\"]", "[\"modle\"]"),
            "unknown label `modle` (hint: did you mean `model`?)",
        ),
        (
            metric("").replace("x_total", "sheepdog_queue_total"),
            "is in the daemon's own namespace",
        ),
        (
            metric("").replace("x_total", "x"),
            "counter x must end with _total",
        ),
        (
            metric("").replace("field = \"model\"", "field = \"model\", max_values = 0"),
            "labels.model.max_values: must be between 1 and 100000",
        ),
        (
            metric("").replace("field = \"model\"", "field = \"[a\""),
            "labels.model.field:",
        ),
        (metric("value = \"[x\""), "metrics[0].value:"),
        (
            metric("const_labels = { model = \"a\" }"),
            "`model` is also a field label",
        ),
        (
            format!(
                "{}\n{}",
                metric(""),
                metric("").replace("labels.model = { field = \"model\" }", "")
            ),
            "`x_total`: an earlier metric of this name has the same labels",
        ),
        (
            format!(
                "{}\n{}",
                metric(""),
                metric("")
                    .replace("labels.model = { field = \"model\" }", "")
                    .replace("\"X\"", "\"Y\"")
            ),
            "another kind, help or label names",
        ),
        (
            format!("labels.unused = {{ field = \"u\" }}\n{}", metric("")),
            "labels.unused: declared but no metric uses it",
        ),
    ];
    for (toml_text, want) in table {
        let errs = errors(&toml_text);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{want:?} not in {errs:?} for\n{toml_text}"
        );
    }
}

#[test]
fn a_name_registered_with_another_type_is_a_config_error() {
    let registry = Registry::new();
    registry.gauge("x_total", "X", &[]);
    let config: Config =
        toml::from_str("[[metrics]]\nname = \"x_total\"\nhelp = \"X\"\nkind = \"counter\"")
            .unwrap();
    let problems = config
        .build(&registry)
        .err()
        .expect("accepted a type conflict");
    assert!(
        problems[0]
            .to_string()
            .contains("metrics[0].name: metric x_total is already registered as a gauge"),
        "{problems:?}"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let err = toml::from_str::<Config>(
        "[[metrics]]\nname = \"a_total\"\nhelp = \"\"\nkind = \"counter\"\nvalues = \"x\"",
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `values`"), "{err}");
    let err = toml::from_str::<Config>("[[metrics]]\nname = \"a\"\nhelp = \"\"\nkind = \"gauge\"")
        .unwrap_err();
    assert!(err.to_string().contains("unknown variant `gauge`"), "{err}");
}
