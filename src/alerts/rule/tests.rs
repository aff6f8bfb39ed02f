use super::*;
use serde_json::json;

#[test]
fn expressions() {
    let e = parse_expr("error_rate > 1%").unwrap();
    assert_eq!(
        (e.measure.clone(), e.op, e.threshold),
        (Measure::ErrorRate, Op::Gt, 0.01)
    );
    let e = parse_expr("p99(latency_ms) > 100").unwrap();
    assert_eq!(
        e.measure,
        Measure::Percentile(0.99, FieldPath::top("latency_ms"))
    );
    assert_eq!(e.threshold, 100.0);
    let e = parse_expr("sum(cost_usd) by user_id >= 50").unwrap();
    assert_eq!(e.measure, Measure::Sum(FieldPath::top("cost_usd")));
    assert_eq!(e.group_by, Some(FieldPath::top("user_id")));
    assert_eq!(e.op, Op::Ge);
    let e = parse_expr("p99.9([upstream][latency_ms]) <= 2.5").unwrap();
    let Measure::Percentile(q, field) = e.measure else {
        panic!("{e:?}")
    };
    assert!((q - 0.999).abs() < 1e-9);
    assert_eq!(field, FieldPath::parse("[upstream][latency_ms]").unwrap());
    assert_eq!(parse_expr("count < 10").unwrap().measure, Measure::Count);
    assert_eq!(parse_expr("error_rate > 0.05").unwrap().threshold, 0.05);

    for bad in [
        "error_rate",
        "error_rate > 5",
        "p99(latency_ms) > 100%",
        "median(latency_ms) > 3",
        "p100(latency_ms) > 3",
        "sum() > 3",
        "error_rate > lots",
    ] {
        assert!(parse_expr(bad).is_err(), "{bad} should not parse");
    }
}

#[test]
fn histogram_bins_are_within_two_percent() {
    for v in [0.5, 1.0, 42.0, 99.0, 100.0, 101.0, 250.0, 9_999.0] {
        let approx = bin_value(bin_of(v));
        assert!((approx - v).abs() / v < 0.02, "{v} -> {approx}");
    }
    assert_eq!(bin_of(0.0), 0);
    assert_eq!(bin_of(-3.0), 0);
    assert_eq!(bin_of(1e12), HIST_BINS - 1);
}

fn event(v: serde_json::Value) -> Event {
    let Value::Object(m) = v else { unreachable!() };
    Event::from_map(m, 0)
}

fn rule(expr: &str, window_ms: i64, min_events: u64) -> Rule {
    Rule::new(
        "r".into(),
        parse_expr(expr).unwrap(),
        window_ms,
        min_events,
        None,
        Condition::compile("\"error\" in [tags]").unwrap(),
        100,
    )
}

/// Feeds `per_second` events each second for `seconds`, evaluating after every second.
fn run(
    rule: &Rule,
    now: &mut i64,
    seconds: i64,
    per_second: usize,
    make: &dyn Fn(usize) -> Event,
) -> Vec<Transition> {
    let mut out = Vec::new();
    for _ in 0..seconds {
        let events: Vec<Event> = (0..per_second).map(make).collect();
        let refs: Vec<&Event> = events.iter().collect();
        rule.observe(&refs, *now);
        *now += 1000;
        out.extend(rule.evaluate(*now));
    }
    out
}

#[test]
fn error_rate_fires_and_resolves_exactly_once() {
    // 5 minutes, 5s steps, at least 200 events.
    let r = rule("error_rate > 1%", 300_000, 200);
    let mut now = 1_700_000_000_000;
    let ok = |_| event(json!({"tags": ["success"]}));
    // 0.5% errors: 1 in 200.
    let low = |i: usize| {
        if i.is_multiple_of(200) {
            event(json!({"tags": ["error"]}))
        } else {
            event(json!({"tags": ["success"]}))
        }
    };
    // 5% errors.
    let high = |i: usize| {
        if i.is_multiple_of(20) {
            event(json!({"tags": ["error"]}))
        } else {
            event(json!({"tags": ["success"]}))
        }
    };
    assert!(run(&r, &mut now, 300, 200, &low).is_empty());
    let fired = run(&r, &mut now, 120, 200, &high);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(fired[0].firing);
    assert!(fired[0].value.unwrap() > 0.01);
    assert!(fired[0].events >= 200);
    let resolved = run(&r, &mut now, 600, 200, &ok);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert!(!resolved[0].firing);
    assert!(resolved[0].value.unwrap() <= 0.01);
    assert_eq!(r.firing(), 0);
}

#[test]
fn error_rate_needs_min_events() {
    let r = rule("error_rate > 1%", 300_000, 200);
    let mut now = 0;
    // Every event an error, but only 100 in five minutes.
    let t = run(&r, &mut now, 100, 1, &|_| event(json!({"tags": ["error"]})));
    assert!(t.is_empty(), "{t:?}");
}

#[test]
fn p99_fires_and_resolves_exactly_once() {
    let r = rule("p99(latency_ms) > 100", 300_000, 1);
    let mut now = 0;
    // 2% of requests at 400ms pushes p99 over 100ms; 0.5% keeps it under.
    let fast = |i: usize| {
        event(json!({"latency_ms": if i.is_multiple_of(200) { 400 } else { 40 + (i % 50) }}))
    };
    let slow = |i: usize| {
        event(json!({"latency_ms": if i.is_multiple_of(50) { 400 } else { 40 + (i % 50) }}))
    };
    assert!(run(&r, &mut now, 300, 100, &fast).is_empty());
    let fired = run(&r, &mut now, 300, 100, &slow);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(fired[0].firing);
    let v = fired[0].value.unwrap();
    assert!((390.0..=410.0).contains(&v), "p99 measured {v}");
    let resolved = run(&r, &mut now, 600, 100, &fast);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert!(!resolved[0].firing);
    assert!(resolved[0].value.unwrap() < 100.0);
}

#[test]
fn sum_by_group_fires_per_group_and_empty_window_resolves() {
    let r = rule("sum(cost_usd) by user_id > 50", 86_400_000, 1);
    let mut now = 0;
    let t = run(&r, &mut now, 10, 2, &|i| {
        event(
            json!({"user_id": if i == 0 { "big" } else { "small" }, "cost_usd": if i == 0 { 3.0 } else { 0.01 }}),
        )
    });
    assert!(t.is_empty());
    let t = run(&r, &mut now, 10, 2, &|i| {
        event(
            json!({"user_id": if i == 0 { "big" } else { "small" }, "cost_usd": if i == 0 { "3.0" } else { "0.01" }}),
        )
    });
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].group.as_deref(), Some("big"));
    assert!(t[0].value.unwrap() > 50.0);
    // A day later the window is empty: resolved, and the groups are forgotten.
    now += 86_400_000 + 1_500_000;
    let t = r.evaluate(now);
    assert_eq!(t.len(), 1);
    assert!(!t[0].firing);
    assert_eq!(r.evaluate(now + 1000), vec![]);
    assert!(r.state.lock().unwrap().groups.is_empty());
}

#[test]
fn too_many_groups_are_counted_not_tracked() {
    let r = Rule::new(
        "r".into(),
        parse_expr("count by user_id > 5").unwrap(),
        60_000,
        1,
        None,
        Condition::compile("true").unwrap(),
        2,
    );
    let events: Vec<Event> = (0..5)
        .map(|i| event(json!({"user_id": format!("u{i}")})))
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    r.observe(&refs, 0);
    assert_eq!(r.take_dropped_groups(), 3);
    assert_eq!(r.state.lock().unwrap().groups.len(), 2);
}

#[test]
fn short_windows_slide_in_seconds_long_ones_in_sixtieths() {
    let r = rule("count > 1", 3_000, 1);
    assert_eq!((r.buckets, r.bucket_ms), (3, 1_000));
    let r = rule("count > 1", 300_000, 1);
    assert_eq!((r.buckets, r.bucket_ms), (60, 5_000));
    let r = rule("count > 1", 86_400_000, 1);
    assert_eq!((r.buckets, r.bucket_ms), (60, 1_440_000));
    // A 3s window forgets events after 3s.
    let r = rule("count > 5", 3_000, 1);
    let mut now = 10_000;
    let t = run(&r, &mut now, 1, 10, &|_| event(json!({})));
    assert!(t[0].firing);
    assert!(r.evaluate(now + 1_000).is_empty());
    let t = r.evaluate(now + 2_000);
    assert_eq!(t.len(), 1);
    assert!(!t[0].firing);
}

#[test]
fn values_format_like_the_rule() {
    assert_eq!(format_value(&Measure::ErrorRate, 0.0125), "1.25%");
    assert_eq!(format_value(&Measure::ErrorRate, 0.01), "1%");
    assert_eq!(format_value(&Measure::Count, 200.0), "200");
    assert_eq!(format_value(&Measure::Count, 101.5), "101.5");
}
