//! Unit tests of the offline chain, test files and their checks.

use super::spec::{self, TestFile};
use super::suite::{self, check, run_case, same, Totals};
use super::{tap, Chain, Routed};
use crate::config::Source;
use serde_json::{json, Value};

const PIPELINE: &str = r#"
[[inputs]]
type = "http"
address = "127.0.0.1:0"

[[filters]]
type = "classify"
target = "status_category"
[[filters.rules]]
when = '[status] == "success"'
value = "success"
tags = ["success"]
[filters.default]
value = "error"
tags = ["error"]

[[filters]]
type = "cost"
when = '[total_tokens]'
default_price = 8.0
[filters.prices]
"claude-sonnet-4.5" = 15.0

[[outputs]]
type = "elasticsearch"
id = "es"
hosts = "http://127.0.0.1:1"
index = "logs-%{+YYYY.MM.dd}"

[[outputs]]
type = "elasticsearch"
id = "by_service"
hosts = "http://127.0.0.1:1"
index = "svc-%{[service]}"

[[outputs]]
type = "stdout"
id = "errors"
when = '"error" in [tags]'
"#;

fn chain_of(text: &str) -> Chain {
    let lookup = |_: &str| None;
    let (config, _) = crate::config::parse(&Source::new("p.toml", text), &lookup).unwrap();
    let ctx = crate::BuildContext::new("data".into(), Default::default());
    let (problems, stages) = crate::pipeline::validate_and_build(&config, &ctx);
    assert!(!problems.iter().any(|p| p.is_error()), "{problems:?}");
    Chain::new(&config, stages).unwrap()
}

fn chain() -> Chain {
    chain_of(PIPELINE)
}

fn test_file(text: &str) -> TestFile {
    spec::parse(Source::new("t.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> String {
    spec::parse(Source::new("t.toml", text))
        .unwrap_err()
        .to_string()
}

#[test]
fn routes_follow_output_conditions_and_the_first_index() {
    let chain = chain();
    let mut events = vec![
        crate::event::Event::from_map(
            json!({"status": "success", "service": "api"})
                .as_object()
                .unwrap()
                .clone(),
            1_795_774_502_123, // 2026-11-27
        ),
        crate::event::Event::from_map(json!({}).as_object().unwrap().clone(), 0),
    ];
    chain.apply(&mut events);
    assert_eq!(
        chain.route(&events[0]),
        Routed {
            outputs: vec!["es".into(), "by_service".into()],
            index: Some("logs-2026.11.27".into()),
        }
    );
    let routed = chain.route(&events[1]);
    assert_eq!(routed.outputs, ["es", "by_service", "errors"]);
    assert_eq!(routed.index.as_deref(), Some("logs-1970.01.01"));
    assert!(chain.has_output("errors") && !chain.has_output("nope"));

    let doc = Value::from(super::event_json(&events[1], &routed));
    assert_eq!(doc["@metadata"]["index"], "logs-1970.01.01");
    assert_eq!(
        doc["@metadata"]["outputs"],
        json!(["es", "by_service", "errors"])
    );
    assert_eq!(doc["tags"], json!(["error"]));
}

#[test]
fn an_index_with_a_missing_field_keeps_the_reference_like_the_bulk_encoder() {
    let chain = chain_of(&PIPELINE.replace("logs-%{+YYYY.MM.dd}", "x-%{[nope]}"));
    let e = crate::event::Event::from_map(Default::default(), 0);
    assert_eq!(chain.route(&e).index.as_deref(), Some("x-%{[nope]}"));
}

const CASES: &str = r#"
now = 2026-11-27T10:00:00Z
[env]
A = "b"

[[tests]]
name = "priced"
input = { model = "claude-sonnet-4.5", total_tokens = 1000, status = "success" }
expect = { cost_usd = 0.015, "[model]" = "claude-sonnet-4.5", "@timestamp" = "2026-11-27T10:00:00.000Z" }
expect_tags = ["success"]
expect_no_tags = ["error"]
expect_absent = ["[geoip][ip]"]
expect_index = "logs-2026.11.27"
expect_outputs = ["by_service", "es"]

[[tests]]
name = "two inputs, own now"
now = "2026-01-02T03:04:05+01:00"
inputs = [{ total_tokens = "2000" }, { total_tokens = 2000 }]
expect = { cost_usd = 0.016, "@timestamp" = "2026-01-02T02:04:05.000Z" }
expect_outputs = ["es", "by_service", "errors"]
"#;

#[test]
fn test_files_parse_into_cases() {
    let file = test_file(CASES);
    assert_eq!(file.env.get("A").map(String::as_str), Some("b"));
    assert_eq!(file.cases.len(), 2);
    let c = &file.cases[0];
    assert_eq!((c.name.as_str(), c.line), ("priced", 6));
    assert_eq!(
        c.now_ms,
        crate::event::parse_timestamp_ms("2026-11-27T10:00:00Z")
    );
    assert_eq!(c.inputs.len(), 1);
    assert_eq!(c.expect.len(), 3);
    assert_eq!(file.cases[1].inputs.len(), 2);
    assert_eq!(file.cases[1].line, 16);
}

#[test]
fn passing_cases_pass() {
    let file = test_file(CASES);
    let mut out = Vec::new();
    let totals = suite::run_file(&file, &chain(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        totals,
        Totals {
            passed: 2,
            failed: 0
        },
        "{text}"
    );
    assert_eq!(text, "ok    priced\nok    two inputs, own now\n");
}

#[test]
fn a_failure_names_the_field_both_values_and_shows_the_event() {
    let file = test_file(&CASES.replace("cost_usd = 0.015", "cost_usd = 0.02"));
    let mut out = Vec::new();
    let totals = suite::run_file(&file, &chain(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        totals,
        Totals {
            passed: 1,
            failed: 1
        },
        "{text}"
    );
    assert!(text.starts_with("FAIL  priced (t.toml:6)\n"), "{text}");
    assert!(
        text.contains("      [cost_usd]: expected 0.02, got 0.015\n"),
        "{text}"
    );
    assert!(text.contains("      event: {\n"), "{text}");
    assert!(text.contains("\"index\": \"logs-2026.11.27\""), "{text}");
    assert!(text.contains("\"model\": \"claude-sonnet-4.5\""), "{text}");
}

#[test]
fn every_kind_of_expectation_reports_its_mismatch() {
    let file = test_file(
        r#"
now = 2026-11-27T10:00:00Z
[[tests]]
name = "all wrong"
inputs = [{ status = "success", total_tokens = 1000 }, { status = "success" }]
expect = { status_category = "error", missing = 1, total_tokens = "1000" }
expect_tags = ["error"]
expect_no_tags = ["success"]
expect_absent = ["cost_usd"]
expect_index = "other"
expect_outputs = ["errors"]
"#,
    );
    let chain = chain();
    let events = run_case(&file.cases[0], &chain);
    let (event, routed) = &events[0];
    let what: Vec<(String, String, String)> = check(&file.cases[0], event, routed)
        .into_iter()
        .map(|m| (m.what, m.expected, m.actual))
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        what,
        [
            // `expect` in key order
            s("[missing]", "1", "absent"),
            s("[status_category]", "\"error\"", "\"success\""),
            // A number and a numeric string are not equal.
            s("[total_tokens]", "\"1000\"", "1000"),
            s("tags", "to contain \"error\"", "[\"success\"]"),
            s("tags", "not to contain \"success\"", "[\"success\"]"),
            s("[cost_usd]", "absent", "0.008"),
            s("index", "\"other\"", "\"logs-2026.11.27\""),
            s("outputs", "[\"errors\"]", "[\"by_service\", \"es\"]"),
        ]
    );
    let mut out = Vec::new();
    suite::run_file(&file, &chain, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("      input 2: [missing]: expected 1, got absent\n"),
        "{text}"
    );
}

#[test]
fn numbers_compare_with_a_relative_tolerance() {
    assert!(same(&json!(15.0), &json!(15)));
    assert!(same(&json!(0.015), &json!(0.015 * (1.0 + 5e-10))));
    assert!(!same(&json!(0.015), &json!(0.015 * (1.0 + 5e-9))));
    assert!(same(&json!(0), &json!(0.0)));
    assert!(!same(&json!(0), &json!(1e-300)));
    assert!(same(&json!(u64::MAX), &json!(u64::MAX)));
    assert!(!same(&json!(1), &json!("1")));
    assert!(!same(&json!(true), &json!(1)));
    assert!(same(
        &json!({"lat": 51.5142, "lon": [-0.0931]}),
        &json!({"lon": [-0.0931000000000001], "lat": 51.5142})
    ));
    assert!(!same(&json!({"lat": 1}), &json!({"lat": 1, "lon": 2})));
    assert!(!same(&json!([1, 2]), &json!([1])));
}

#[test]
fn malformed_files_are_located_errors() {
    let text = errors(
        "[[tests]]\nname = \"a\"\ninput = { a = 1 }\nexpct = { a = 1 }\n\n[[tests]]\nname = \"b\"\ninputs = []\nexpect = { \"[a\" = 1 }\n",
    );
    assert!(
        text.contains(
            "t.toml:4:1: error: tests[0].expct: unknown key `expct` (hint: did you mean `expect`?)"
        ),
        "{text}"
    );
    assert!(
        text.contains("t.toml:6:1: error: tests[1]: the test has no input event"),
        "{text}"
    );
    assert!(
        text.contains("t.toml:9:12: error: tests[1].expect.[a: invalid field reference"),
        "{text}"
    );
    assert!(!text.contains("expects nothing"), "{text}");

    let text = errors("[[tests]]\nname = \"a\"\ninput = {}\ninputs = [{}]\nexpect_index = \"x\"\n[[tests]]\nname = \"a\"\ninput = {}\n");
    assert!(
        text.contains("t.toml:1:1: error: tests[0]: both `input` and `inputs`"),
        "{text}"
    );
    assert!(
        text.contains("t.toml:6:1: error: tests[1]: test `a` expects nothing"),
        "{text}"
    );

    let text = errors("now = \"soon\"\nbogus = 1\n[[tests]]\nname = \"a\"\ninput = {}\nexpect_tags = [\"x\"]\nnow = 5\n");
    assert!(
        text.contains("t.toml:2:1: error: bogus: unknown key `bogus`"),
        "{text}"
    );

    let text = errors(
        "now = \"soon\"\n[[tests]]\nname = \"a\"\ninput = {}\nexpect_tags = [\"x\"]\nnow = 5\n",
    );
    assert!(
        text.contains("t.toml:1:1: error: now: `soon` is not a timestamp"),
        "{text}"
    );
    assert!(
        text.contains("t.toml:6:1: error: tests[0].now: `5` is not a timestamp"),
        "{text}"
    );

    let text = errors("[[tests]]\nname = \"a\"\ninput = {}\nexpect_tags = [\"x\"]\n[[tests]]\nname = \"a\"\ninput = {}\nexpect_tags = [\"x\"]\n");
    assert!(
        text.contains("t.toml:5:1: error: tests[1]: duplicate test `a`"),
        "{text}"
    );

    assert!(errors("").contains("t.toml:1:1: error: tests: the file has no tests"));
    let text = errors("[[tests]\n");
    assert!(
        text.contains("t.toml:1:9: error: : not valid TOML"),
        "{text}"
    );
    assert!(
        errors("[[tests]]\nname = 5\n").contains("t.toml:2:1: error: tests[0].name: invalid type")
    );
}

#[test]
fn toml_values_become_json() {
    let v: toml::Value = toml::from_str(
        "a = 1\nb = 1.5\nc = [true, \"s\"]\nd = 2026-11-27T10:00:00Z\ne = { f = {} }",
    )
    .unwrap();
    assert_eq!(
        spec::to_json(v).unwrap(),
        json!({"a": 1, "b": 1.5, "c": [true, "s"], "d": "2026-11-27T10:00:00Z", "e": {"f": {}}})
    );
    assert!(spec::to_json(toml::Value::Float(f64::NAN)).is_err());
}

#[test]
fn tap_prints_every_document_as_an_event_line() {
    let input = "{\"status\":\"success\",\"service\":\"api\"}\nplain text\n[{\"total_tokens\":\"1000\",\"model\":\"claude-sonnet-4.5\"},\n 7]\n";
    let mut out = Vec::new();
    let n = tap::run(&chain(), input.as_bytes(), &mut out).unwrap();
    assert_eq!(n, 4);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["status_category"], "success");
    assert_eq!(
        lines[0]["@metadata"]["outputs"],
        json!(["es", "by_service"])
    );
    assert_eq!(lines[1]["message"], "plain text");
    assert_eq!(lines[1]["tags"], json!(["_jsonparsefailure", "error"]));
    assert_eq!(
        lines[1]["@metadata"]["outputs"],
        json!(["es", "by_service", "errors"])
    );
    assert_eq!(lines[2]["cost_usd"], 0.015);
    assert_eq!(lines[3]["message"], "7");
    for l in &lines {
        assert!(l["@metadata"]["index"]
            .as_str()
            .unwrap()
            .starts_with("logs-"));
    }
}

#[test]
fn tap_cuts_batches_at_the_batch_size() {
    let input: String = (0..tap::BATCH * 2 + 5)
        .map(|i| format!("{{\"i\":{i}}}\n"))
        .collect();
    let mut out = Vec::new();
    let n = tap::run(&chain(), input.as_bytes(), &mut out).unwrap();
    assert_eq!(n as usize, tap::BATCH * 2 + 5);
    let last: Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["i"], tap::BATCH * 2 + 4);
}
