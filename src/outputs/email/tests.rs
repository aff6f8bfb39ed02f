use super::*;
use crate::config::{self, Source};
use serde_json::{json, Value};

fn event(v: Value) -> Event {
    let Value::Object(m) = v else { unreachable!() };
    Event::from_map(m, 1_700_000_000_000)
}

fn email_config(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let text = format!("[[inputs]]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\n[[outputs]]\ntype = \"email\"\n{toml}");
    let source = Source::new("test.toml", text);
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let (cfg, _) = config::parse(&source, &lookup).map_err(|e| e.to_string())?;
    let ctx = BuildContext::new("data".into(), CancellationToken::new());
    let problems: Vec<String> = crate::pipeline::validate(&cfg, &ctx)
        .into_iter()
        .map(|p| source.locate(p).to_string())
        .collect();
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    match cfg.outputs.into_iter().next().map(|s| s.config) {
        Some(crate::outputs::OutputConfig::Email(c)) => Ok(c),
        _ => Err("no email output".into()),
    }
}

const SHIPPED: &str = r#"
to = "${ALERT_TO:-}"
from = "${ALERT_FROM:-sheepdog@localhost}"
host = "${SMTP_HOST:-localhost}"
port = "${SMTP_PORT:-25}"
subject = "HolySheep API Error Alert: %{error_message}"
throttle_key = "%{model}|%{error_message}"
throttle_window = "5m"
"#;

#[test]
fn shipped_settings_from_environment() {
    let c = email_config(SHIPPED, &[]).unwrap();
    assert!(c.to.is_empty());
    assert_eq!(
        (c.host.as_str(), c.port, c.tls),
        ("localhost", 25, TlsMode::None)
    );
    let (_, recipients) = c.mail_parts().unwrap();
    assert!(recipients.is_none(), "empty ALERT_TO turns mail off");

    let c = email_config(
        SHIPPED,
        &[
            ("ALERT_TO", "a@example.com, b@example.com"),
            ("SMTP_PORT", "2525"),
            ("SMTP_HOST", "mail.internal"),
        ],
    )
    .unwrap();
    assert_eq!(c.to, ["a@example.com", "b@example.com"]);
    assert_eq!((c.host.as_str(), c.port), ("mail.internal", 2525));
    let (_, recipients) = c.mail_parts().unwrap();
    assert_eq!(recipients.unwrap().to.len(), 2);
}

#[test]
fn bad_settings_are_located() {
    let e = email_config("to = \"ops@example.com, not an address\"\n", &[]).unwrap_err();
    assert!(
        e.contains("test.toml:6:1: error: outputs[0].to: `not an address` is not a mail address"),
        "{e}"
    );
    let e = email_config(
        "to = \"ops@example.com\"\nport = \"${SMTP_PORT}\"\n",
        &[("SMTP_PORT", "smtp")],
    )
    .unwrap_err();
    assert!(e.contains("outputs[0].port: invalid value `smtp`"), "{e}");
    let e = email_config("to = \"ops@example.com\"\nusername = \"u\"\n", &[]).unwrap_err();
    assert!(
        e.contains("outputs[0].password: a username is set but the password is empty"),
        "{e}"
    );
    let e = email_config("to = \"ops@example.com\"\ntls = \"ssl\"\n", &[]).unwrap_err();
    assert!(e.contains("outputs[0].tls"), "{e}");
    let e = email_config(
        "to = \"ops@example.com\"\nthrottle_key = \"%{model\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.contains("outputs[0].throttle_key: bad template"), "{e}");
    let e = email_config(
        "to = \"ops@example.com\"\ntls = \"starttls\"\nca_file = \"/nonexistent/ca.pem\"\n",
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("outputs[0].ca_file: cannot read `/nonexistent/ca.pem`"),
        "{e}"
    );
    let e = email_config("to = \"ops@example.com\"\nthrotle_window = \"5m\"\n", &[]).unwrap_err();
    assert!(
        e.contains("unknown key `throtle_window`") && e.contains("did you mean `throttle_window`?"),
        "{e}"
    );
}

#[test]
fn password_is_never_printed() {
    let c = email_config(
        "to = \"ops@example.com\"\nusername = \"u\"\npassword = \"hunter2\"\n",
        &[],
    )
    .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[test]
fn text_writes_missing_references_literally() {
    let t = Text::compile("Alert: %{error_message} on %{[upstream][host]} (%{model})").unwrap();
    let e = event(json!({"error_message": "Lỗi kết nối: hết thời gian chờ", "model": "gpt-4.1"}));
    assert_eq!(
        t.render_string(&e),
        "Alert: Lỗi kết nối: hết thời gian chờ on %{[upstream][host]} (gpt-4.1)"
    );
    assert_eq!(Text::compile("plain").unwrap().render_string(&e), "plain");
    assert!(Text::compile("%{oops").is_err());
}

#[test]
fn digest_mail_lists_counts_models_users_and_samples() {
    let fields = DigestFields {
        distinct: vec![FieldPath::top("model"), FieldPath::top("user_id")],
        sample: Some(FieldPath::top("request_id")),
        samples: 5,
    };
    let d = Digest {
        key: "gpt-4.1|timeout".into(),
        subject: "HolySheep API Error Alert: timeout".into(),
        count: 4999,
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_002_500,
        window_start_ms: 1_700_000_000_000,
        window_end_ms: 1_700_000_003_000,
        distinct: vec![
            throttle::Distinct {
                values: vec!["gpt-4.1".into()],
                truncated: false,
            },
            throttle::Distinct {
                values: vec!["u1".into(), "u2".into()],
                truncated: true,
            },
        ],
        samples: vec!["r1".into(), "r2".into()],
    };
    let mail = render_digest(&d, &fields, Duration::from_secs(3));
    assert_eq!(
        mail.subject,
        "[digest: 4999 more] HolySheep API Error Alert: timeout"
    );
    assert_eq!(mail.events, 4999);
    assert!(
        mail.text.starts_with(
            "4999 more events with the throttle key `gpt-4.1|timeout` arrived in the 3s window"
        ),
        "{}",
        mail.text
    );
    assert!(mail.text.contains("Events:      4999\n"));
    assert!(
        mail.text
            .contains("First seen:  2023-11-14T22:13:20.000Z\n"),
        "{}",
        mail.text
    );
    assert!(
        mail.text
            .contains("Last seen:   2023-11-14T22:13:22.500Z\n"),
        "{}",
        mail.text
    );
    assert!(mail.text.contains("model (1): gpt-4.1\n"));
    assert!(mail.text.contains("user_id (2+): u1, u2\n"));
    assert!(mail.text.contains("Sample request_id: r1, r2\n"));
}

#[tokio::test]
async fn submit_never_waits_and_counts_what_the_queue_cannot_take() {
    // Nothing listens on this port; the queue holds one mail, the rest are dropped and counted.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = email_config(
        &format!("to = \"ops@example.com\"\nhost = \"127.0.0.1\"\nport = {port}\nqueue_size = 1\nmax_attempts = 1\nconnect_timeout = \"200ms\"\n"),
        &[],
    )
    .unwrap();
    let ctx = BuildContext::new("data".into(), CancellationToken::new());
    let started = c.start("mail", &ctx).unwrap();
    let events: Vec<Event> = (0..1000).map(|i| event(json!({"request_id": i}))).collect();
    let refs: Vec<&Event> = events.iter().collect();
    let t = std::time::Instant::now();
    started.output.submit(&refs).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "submit took {:?}",
        t.elapsed()
    );
    let dropped = ctx
        .metrics
        .value("sheepdog_email_dropped_total", &[("output", "mail")])
        .unwrap();
    assert!(dropped >= 998.0, "dropped {dropped}");
    drop(started.output);
    tokio::time::timeout(Duration::from_secs(10), started.task)
        .await
        .unwrap()
        .unwrap();
    let sent = ctx
        .metrics
        .value("sheepdog_email_sent_total", &[("output", "mail")])
        .unwrap();
    let failed = ctx
        .metrics
        .value("sheepdog_email_failed_total", &[("output", "mail")])
        .unwrap();
    assert_eq!(sent, 0.0);
    assert_eq!(dropped + failed, 1000.0);
    let report = ctx.health.report();
    assert_eq!(report.status, crate::health::Status::Degraded);
    assert!(
        report.components[0]
            .reason
            .starts_with("alert mail cannot reach 127.0.0.1:"),
        "{:?}",
        report.components
    );
}

#[tokio::test]
async fn no_recipients_means_mail_off_in_health() {
    let c = email_config(SHIPPED, &[]).unwrap();
    let ctx = BuildContext::new("data".into(), CancellationToken::new());
    let started = c.start("email", &ctx).unwrap();
    let e = event(json!({"tags": ["error"]}));
    started.output.submit(&[&e]).await;
    let report = ctx.health.report();
    assert_eq!(report.status, crate::health::Status::Degraded);
    assert_eq!(
        report.components[0].reason,
        "alert mail off: ALERT_TO is empty"
    );
    assert_eq!(
        ctx.metrics
            .value("sheepdog_email_events_total", &[("output", "email")]),
        Some(1.0)
    );
}
