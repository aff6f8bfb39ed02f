use super::*;
use crate::clock::ManualClock;
use crate::health::Status;
use serde_json::json;

const T0: i64 = 1_700_000_040_000;

fn events(values: &[Value]) -> Vec<Event> {
    values
        .iter()
        .map(|v| match v {
            Value::Object(m) => Event::from_map(m.clone(), 0),
            _ => unreachable!(),
        })
        .collect()
}

fn sources(clock: &ManualClock, settings: &Settings) -> Sources {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Sources {
        metrics: Registry::new(),
        health: HealthRegistry::new(),
        rates: Arc::new(rates::Rates::new(Duration::from_secs(5))),
        events: Arc::new(EventStats::new(settings, clock.clone()).unwrap()),
        alerts: None,
        clock,
    }
}

/// Events as the shipped pipeline leaves them (status_category from the classify stage).
fn shipped_events() -> Vec<Event> {
    events(&[
        json!({"model": "gpt-4.1", "user_id": "alice", "cost_usd": 0.5, "latency_ms": 120, "status_category": "success"}),
        json!({"model": "gpt-4.1", "user_id": "bob", "cost_usd": "0.25", "latency_ms": 80, "status_category": "success"}),
        json!({"model": "deepseek-v3.2", "user_id": "alice", "cost_usd": 0.01, "status_category": "error", "error_message": "upstream timeout"}),
        json!({"model": "deepseek-v3.2", "status_category": "error"}),
        json!({"message": "not an API log line"}),
    ])
}

#[test]
fn status_json_has_every_section_with_the_numbers() {
    let clock = ManualClock::new(T0);
    let s = sources(&clock, &Settings::default());
    let evs = shipped_events();
    let refs: Vec<&Event> = evs.iter().collect();
    StatsSink(s.events.clone()).observe_now(&refs);
    s.metrics
        .gauge("sheepdog_queue_capacity_events", "h", &[])
        .set(4096);
    s.metrics.gauge("sheepdog_queue_events", "h", &[]).set(12);
    let es = [("output", "es"), ("outcome", "dead_lettered")];
    s.metrics
        .counter("sheepdog_es_documents_total", "h", &es)
        .add(2);
    s.metrics
        .counter("sheepdog_es_retries_total", "h", &[("output", "es")])
        .add(3);
    s.health
        .register("output es")
        .set(Status::Down, "connection refused to http://es:9200");
    s.health.register("output es host http://es:9200").set(
        Status::Degraded,
        "unreachable: connection refused to http://es:9200",
    );
    s.metrics
        .counter("sheepdog_email_sent_total", "h", &[("output", "alerts")])
        .add(1);
    let mail = [("output", "alert_mail")];
    s.metrics
        .counter("sheepdog_email_events_total", "h", &mail)
        .add(5);
    s.metrics
        .counter("sheepdog_email_throttled_events_total", "h", &mail)
        .add(4);
    let j = s.snapshot();
    assert_eq!(j["status"], "down");
    assert_eq!(j["queue"], json!({"events": 12, "capacity": 4096}));
    assert!(j["memory"]["rss_bytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(
        j["elasticsearch"][0],
        json!({"output": "es", "status": "down", "reason": "connection refused to http://es:9200",
               "hosts": [{"host": "http://es:9200", "status": "degraded",
                          "reason": "unreachable: connection refused to http://es:9200"}],
               "retries": 3, "indexed": 0, "dead_lettered": 2, "failed": 0, "queued": 0})
    );
    assert_eq!(
        j["alerts"],
        json!({"rules": [], "mail": [
            {"sender": "alert_mail", "sent": 0, "throttled": 4, "failed": 0},
            {"sender": "alerts", "sent": 1, "throttled": 0, "failed": 0}]})
    );
    let ev = &j["events"];
    assert_eq!(ev["totals"], json!({"events": 5, "errors": 2}));
    assert_eq!(
        ev["models"],
        json!([
            {"model": "deepseek-v3.2", "requests": 2, "errors": 2, "cost_usd": 0.01, "p99_latency_ms": null},
            {"model": "gpt-4.1", "requests": 2, "errors": 0, "cost_usd": 0.75, "p99_latency_ms": ev["models"][1]["p99_latency_ms"]},
            {"model": "(none)", "requests": 1, "errors": 0, "cost_usd": 0.0, "p99_latency_ms": null},
        ])
    );
    let p99 = ev["models"][1]["p99_latency_ms"].as_f64().unwrap();
    assert!((p99 / 120.0 - 1.0).abs() < 0.03, "{p99}");
    assert_eq!(
        ev["top_users"],
        json!([{"user": "alice", "requests": 2, "cost_usd": 0.51},
               {"user": "bob", "requests": 1, "cost_usd": 0.25}])
    );
    assert_eq!(
        ev["top_errors"],
        json!([{"message": "(no message)", "count": 1}, {"message": "upstream timeout", "count": 1}])
    );
    // Sixteen minutes later the errors have left the 15-minute window, not the hour.
    clock.advance(16 * 60_000);
    let j = s.snapshot();
    assert_eq!(j["events"]["top_errors"], json!([]));
    assert_eq!(j["events"]["totals"]["errors"], 2);
}

impl StatsSink {
    fn observe_now(&self, events: &[&Event]) {
        self.0.observe(events);
    }
}

#[test]
fn configured_fields_are_read() {
    let settings = Settings {
        model_field: "[req][model]".into(),
        cost_field: "price".into(),
        user_field: "[who]".into(),
        status_field: "outcome".into(),
        error_value: "failed".into(),
        latency_field: "[timing][ms]".into(),
        message_field: "[err][text]".into(),
        ..Settings::default()
    };
    let clock = ManualClock::new(T0);
    let s = sources(&clock, &settings);
    let evs = events(&[
        json!({"req": {"model": "m"}, "price": 2, "who": "u", "outcome": "failed",
               "timing": {"ms": 40}, "err": {"text": "quota"}}),
        json!({"model": "ignored", "status_category": "error"}),
    ]);
    let refs: Vec<&Event> = evs.iter().collect();
    s.events.observe(&refs);
    let ev = &s.snapshot()["events"];
    // Equal requests: by name.
    assert_eq!(ev["models"][1]["model"], "m");
    assert_eq!(ev["models"][1]["errors"], 1);
    assert_eq!(ev["models"][0]["model"], "(none)");
    assert_eq!(ev["models"][0]["errors"], 0);
    assert_eq!(ev["top_users"][0]["cost_usd"], 2.0);
    assert_eq!(ev["top_errors"], json!([{"message": "quota", "count": 1}]));
    assert!(ev["models"][1]["p99_latency_ms"].as_f64().unwrap() > 39.0);
}

#[test]
fn bad_settings_are_reported_with_their_keys() {
    let settings = Settings {
        model_field: "a[b]".into(),
        latency_field: "".into(),
        sample_every: Duration::ZERO,
        max_users: 0,
        ..Settings::default()
    };
    let p: Vec<String> = settings.validate().iter().map(|p| p.to_string()).collect();
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p[0].contains("api.status_page.model_field") && p[0].contains("bad field path"));
    assert!(p[1].contains("api.status_page.latency_field"));
    assert!(p[2].contains("api.status_page.sample_every"));
    assert!(p[3].contains("api.status_page.max_users"));
    assert!(Settings::default().validate().is_empty());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    assert!(EventStats::new(&settings, clock).is_err());
}

#[test]
fn memory_shows_the_budget_and_what_holds_it() {
    let clock = ManualClock::new(0);
    let s = sources(&clock, &Settings::default());
    let budget = crate::budget::MemoryBudget::new(1 << 20, &s.metrics);
    let _held = budget
        .try_charge(4096, crate::budget::Use::HttpBody)
        .unwrap();
    let j = s.snapshot();
    assert_eq!(j["memory"]["budget_bytes"], json!(1 << 20));
    assert_eq!(j["memory"]["budget_used_bytes"]["http_body"], json!(4096));
    assert_eq!(j["memory"]["budget_used_bytes"]["queue"], json!(0));
}

#[test]
fn rss_is_parsed_from_proc_status() {
    assert_eq!(
        parse_rss("Name:\tsheepdog\nVmRSS:\t   20480 kB\nVmSwap: 0 kB\n"),
        Some(20 << 20)
    );
    assert_eq!(parse_rss("Name: x\n"), None);
    assert_eq!(parse_rss("VmRSS: lots kB\n"), None);
}

#[test]
fn the_page_is_self_contained() {
    assert!(PAGE.contains("status.json"));
    for external in ["http://", "https://", "src=", "<link"] {
        let hits: Vec<&str> = PAGE
            .lines()
            .filter(|l| l.contains(external) && !l.contains("www.w3.org/2000/svg"))
            .collect();
        assert!(hits.is_empty(), "{external}: {hits:?}");
    }
}
