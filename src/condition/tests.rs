//! Tests of the condition language: parsing, errors and evaluation against events.

use super::*;
use serde_json::json;

fn ev(v: Value) -> Event {
    Event::from_map(v.as_object().unwrap().clone(), 0)
}

fn check(cond: &str, v: Value) -> bool {
    Condition::compile(cond).unwrap().matches(&ev(v))
}

#[test]
fn shipped_pipeline_conditions() {
    let json_msg = r#"[message] =~ /^\{/"#;
    assert!(check(json_msg, json!({"message": "{\"a\":1}"})));
    assert!(!check(json_msg, json!({"message": "plain"})));
    assert!(!check(json_msg, json!({})));

    let cost = "![cost_usd] and [total_tokens]";
    assert!(check(cost, json!({"total_tokens": 5})));
    assert!(!check(cost, json!({"total_tokens": 5, "cost_usd": 0.1})));
    assert!(!check(cost, json!({})));

    let ok = r#"[status] == "success" or [status_code] == 200"#;
    assert!(check(ok, json!({"status": "success"})));
    assert!(check(ok, json!({"status_code": 200})));
    assert!(check(ok, json!({"status_code": "200"})));
    assert!(!check(ok, json!({"status": "error", "status_code": 429})));

    assert!(check(
        r#""error" in [tags]"#,
        json!({"tags": ["x", "error"]})
    ));
    assert!(!check(r#""error" in [tags]"#, json!({"tags": ["x"]})));
    assert!(!check(r#""error" in [tags]"#, json!({})));
}

#[test]
fn operators() {
    let e = json!({"a": {"b": 5}, "s": "hello", "f": false, "n": null});
    assert!(check("[a][b] > 4 and [a][b] <= 5", e.clone()));
    assert!(check("[a][b] != 4", e.clone()));
    assert!(check("exists [a][b] and not exists [a][c]", e.clone()));
    assert!(check("!exists [x]", e.clone()));
    assert!(!check("[f]", e.clone()));
    assert!(!check("[n]", e.clone()));
    assert!(check("[s] in [\"hello\", \"bye\"]", e.clone()));
    assert!(check("[s] not in [\"bye\"]", e.clone()));
    assert!(check("\"ell\" in [s]", e.clone()));
    assert!(check("[s] !~ /^x/", e.clone()));
    assert!(check("([s] == \"x\" || [a][b] == 5) && true", e.clone()));
    assert!(check("[a][b] in [1, 5]", e.clone()));
    assert!(check("[missing] != 1", e.clone()));
    assert!(!check("[missing] == 1", e.clone()));
    assert!(check(
        "[@metadata][beat] == \"filebeat\"",
        json!({"@metadata": {"beat": "filebeat"}})
    ));
}

#[test]
fn errors_point_at_the_problem() {
    let e = Condition::compile("[a] == ").unwrap_err();
    assert_eq!(e.offset, 7);
    let e = Condition::compile("[a] =~ /(/").unwrap_err();
    assert!(e.message.contains("bad regex"), "{e}");
    let e = Condition::compile("status == 1").unwrap_err();
    assert!(e.message.contains("[status]"), "{e}");
    assert!(Condition::compile("[a] == 1 )").is_err());
    assert!(Condition::compile("[a").is_err());
    assert!(Condition::compile("\"x").is_err());
    assert!(Condition::compile("[a] = 1").is_err());
}

#[test]
fn printed_conditions_compile_to_the_same_tree() {
    for (source, printed) in [
        (
            "![cost_usd] && [total_tokens]",
            "not [cost_usd] and [total_tokens]",
        ),
        ("([a] || [b]) || [c]", "([a] or [b]) or [c]"),
        ("not ([a] and [b])", "not ([a] and [b])"),
        ("[s] not in ['x', 2]", r#"[s] not in ["x", 2]"#),
        (r"[p] =~ /^\/v1/", r"[p] =~ /^\/v1/"),
        ("not [s] =~ /x/", "[s] !~ /x/"),
        ("[s] == 'a\"b\\\\'", r#"[s] == "a\"b\\""#),
    ] {
        let condition = Condition::compile(source).unwrap();
        assert_eq!(condition.to_string(), printed);
        assert_eq!(Condition::compile(printed).unwrap(), condition);
    }
}
