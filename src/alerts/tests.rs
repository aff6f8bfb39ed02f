use super::*;
use crate::config::{self, PipelineConfig, Source};
use serde_json::{json, Value};

fn parse(toml: &str) -> PipelineConfig {
    let source = Source::new("test.toml", toml);
    let lookup = |_: &str| None;
    config::parse(&source, &lookup).expect("valid pipeline").0
}

const BASE: &str = r#"
[[inputs]]
type = "http"
address = "127.0.0.1:0"
[[outputs]]
type = "stdout"
[[outputs]]
type = "email"
id = "alert_mail"
to = "ops@example.com"
"#;

fn problems(toml: &str) -> Vec<String> {
    let source = Source::new("test.toml", toml);
    let cfg = parse(toml);
    let ctx = BuildContext::new("data".into(), CancellationToken::new());
    crate::pipeline::validate(&cfg, &ctx)
        .into_iter()
        .map(|p| source.locate(p).to_string())
        .collect()
}

#[test]
fn shipped_style_rules_validate() {
    let toml = format!(
        "{BASE}\n[alerts]\nmail = \"alert_mail\"\n[[alerts.rules]]\nname = \"error_rate\"\nexpr = \"error_rate > 1%\"\nwindow = \"5m\"\nmin_events = \"200\"\n[[alerts.rules]]\nname = \"p99\"\nexpr = \"p99(latency_ms) > 100\"\nwindow = \"5m\"\nwhen = 'exists [latency_ms]'\n"
    );
    assert_eq!(problems(&toml), Vec::<String>::new());
    let cfg = parse(&toml);
    let engine = engine(&crate::pipeline::alert_input(&cfg).unwrap()).unwrap();
    assert_eq!(engine.rules.len(), 2);
    assert_eq!(engine.rules[0].min_events, 200);
    assert_eq!(engine.rules[1].bucket_ms, 5_000);
}

#[test]
fn problems_are_located_with_hints() {
    let toml = format!(
        "{BASE}\n[alerts]\nmail = \"alert_mai\"\n[[alerts.rules]]\nname = \"x\"\nexpr = \"p99(latency_ms) > 100%\"\nwindow = \"5m\"\n[[alerts.rules]]\nname = \"x\"\nexpr = \"error_rate > 1%\"\nwindow = \"5m\"\nwhen = '[a] =='\n"
    );
    let p = problems(&toml);
    assert!(
        p.iter().any(|l| l.starts_with(
            "test.toml:13:1: error: alerts.mail: there is no email output with id `alert_mai`"
        ) && l.contains("did you mean `alert_mail`?")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l.starts_with(
            "test.toml:16:1: error: alerts.rules[0].expr: `%` only applies to error_rate"
        )),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l
            .starts_with("test.toml:19:1: error: alerts.rules[1].name: duplicate rule name `x`")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("test.toml:22:1: error: alerts.rules[1].when: bad condition")),
        "{p:#?}"
    );
    let p = problems(&format!("{BASE}\n[alerts]\n[[alerts.rules]]\nname = \"x\"\nexpr = \"count > 1\"\nwindow = \"5m\"\nfor = \"1m\"\n"));
    assert!(
        p.iter()
            .any(|l| l.contains("alerts.rules[0].for: unknown key `for`")),
        "{p:#?}"
    );
}

#[test]
fn rule_mail_states_value_and_threshold() {
    let toml = format!(
        "{BASE}\n[alerts]\n[[alerts.rules]]\nname = \"error_rate\"\nexpr = \"error_rate > 1%\"\nwindow = \"5m\"\nmin_events = 10\n"
    );
    let cfg = parse(&toml);
    let engine = engine(&crate::pipeline::alert_input(&cfg).unwrap()).unwrap();
    let events: Vec<Event> = (0..100)
        .map(|i| {
            let Value::Object(m) = json!({"tags": [if i < 4 { "error" } else { "success" }]})
            else {
                unreachable!()
            };
            Event::from_map(m, 0)
        })
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    engine.observe(&refs, 1_000);
    let t = engine.evaluate(2_000);
    assert_eq!(t.len(), 1);
    let mail = rule_mail(&engine.rules[0], &t[0].1, "[sheepdog alert]");
    assert_eq!(
        mail.subject,
        "[sheepdog alert] FIRING error_rate: 4% (threshold > 1%, 5m window)"
    );
    assert!(
        mail.text.contains("Measured:   4% over the last 5m\n"),
        "{}",
        mail.text
    );
    assert!(
        mail.text
            .contains("Events:     100 in the window (minimum 10)\n"),
        "{}",
        mail.text
    );
    // Resolution after the window empties.
    let t = engine.evaluate(2_000 + 400_000);
    let mail = rule_mail(&engine.rules[0], &t[0].1, "[sheepdog alert]");
    assert!(
        mail.subject
            .starts_with("[sheepdog alert] RESOLVED error_rate: no data"),
        "{}",
        mail.subject
    );
    assert!(mail.text.contains("Fired:      from"), "{}", mail.text);
}

#[test]
fn states_show_each_rule_firing_or_ok_with_its_groups() {
    let toml = format!(
        "{BASE}\n[alerts]\n[[alerts.rules]]\nname = \"errors\"\nexpr = \"error_rate > 50%\"\nwindow = \"1m\"\n[[alerts.rules]]\nname = \"spend\"\nexpr = \"sum(cost_usd) by user_id > 10\"\nwindow = \"1h\"\n"
    );
    let cfg = parse(&toml);
    let engine = Arc::new(engine(&crate::pipeline::alert_input(&cfg).unwrap()).unwrap());
    let states = States::new(engine.clone());
    let before = states.snapshot();
    assert_eq!(
        before
            .iter()
            .map(|r| (r.name.as_str(), r.state, r.window.as_str()))
            .collect::<Vec<_>>(),
        [("errors", "ok", "1m"), ("spend", "ok", "1h")]
    );
    let events: Vec<crate::event::Event> = [
        json!({"tags": ["error"], "user_id": "u1", "cost_usd": 20}),
        json!({"user_id": "u2", "cost_usd": 30}),
        json!({"user_id": "u3", "cost_usd": 1}),
    ]
    .into_iter()
    .map(|v| match v {
        Value::Object(m) => crate::event::Event::from_map(m, 0),
        _ => unreachable!(),
    })
    .collect();
    let refs: Vec<&crate::event::Event> = events.iter().collect();
    engine.observe(&refs, 1_000_000);
    engine.evaluate(1_000_000);
    let after = states.snapshot();
    assert_eq!(after[0].state, "ok", "1 error in 3 is under 50%");
    assert_eq!(after[1].state, "firing");
    assert_eq!(after[1].firing, 2);
    assert_eq!(after[1].groups, ["u1", "u2"]);
    assert_eq!(after[1].since_ms, Some(1_000_000));
    assert_eq!(after[1].expr, "sum(cost_usd) by user_id > 10");
}
