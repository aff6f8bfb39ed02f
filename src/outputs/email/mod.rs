//! `email`: alert mail for the events its `when` selects (error events in the shipped pipeline),
//! throttled per key so an error storm yields one mail at once and one digest per window instead
//! of one mail per event (Logstash's `email` output). Never slows the pipeline: `submit` renders
//! the throttle key (and, for the first event of a key, the mail) and offers it to a bounded
//! queue; SMTP runs in its own task (`mailer`).

pub mod mailer;
pub mod throttle;

use super::{BoxFuture, Output, Started};
use crate::clock::{self, Clock};
use crate::config::de;
use crate::config::problem::Problem;
use crate::config::secret::Secret;
use crate::event::{format_timestamp_ms, Event, FieldPath};
use crate::health::Status;
use crate::metrics::Counter;
use crate::template::Template;
use crate::BuildContext;
use lettre::message::Mailbox;
pub use mailer::Mail;
use mailer::{DeliveryPolicy, MailQueue, Recipients, SmtpSettings, TlsMode};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use throttle::{Digest, DigestFields, Throttle, Verdict};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Recipients: a list, or a comma-separated string (`"${ALERT_TO:-}"`). Empty turns alert
    /// mail off (reported once at start-up and as Degraded in `/health`).
    #[serde(deserialize_with = "de::string_list")]
    pub to: Vec<String>,
    /// Copy recipients, same forms as `to`. Default none.
    #[serde(deserialize_with = "de::string_list")]
    pub cc: Vec<String>,
    /// Sender address. Default `sheepdog@localhost`.
    pub from: String,
    /// Subject template (`%{[field]}` references). Default `sheepdog alert`.
    pub subject: String,
    /// Plain-text body template. Default: the event as indented JSON.
    pub body: Option<String>,
    /// HTML body template, sent as an alternative to the plain text.
    pub htmlbody: Option<String>,
    /// SMTP server host. Default `localhost`.
    pub host: String,
    /// SMTP server port (a number or a string from `${SMTP_PORT}`). Default 25.
    #[serde(deserialize_with = "de::from_str_or_value")]
    pub port: u16,
    /// `none`, `starttls` (upgrade, usually port 587) or `tls` (implicit, usually 465). Default none.
    pub tls: TlsMode,
    /// PEM file with the CA (or self-signed certificate) to trust instead of the built-in roots.
    pub ca_file: Option<String>,
    /// SMTP AUTH user; empty means no authentication.
    pub username: String,
    /// SMTP AUTH password (from the environment; never logged).
    pub password: Secret,
    /// Time allowed to connect and for each SMTP reply. Default 10s.
    #[serde(deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one whole delivery attempt. Default 30s.
    #[serde(deserialize_with = "de::duration")]
    pub send_timeout: Duration,
    /// Template naming what counts as "the same alert" (`%{model}|%{error_message}`). Without
    /// it every event is mailed, as Logstash does.
    pub throttle_key: Option<String>,
    /// How long further events of a key are counted before one digest mail. Default 5m.
    #[serde(deserialize_with = "de::duration")]
    pub throttle_window: Duration,
    /// Distinct keys tracked at once; events of further keys share one overflow digest.
    /// Default 10000.
    #[serde(deserialize_with = "de::from_str_or_value")]
    pub max_keys: usize,
    /// Global cap on mails per hour; 0 means none. Mails over the cap are summarised in one
    /// mail once the cap allows. Default 0.
    #[serde(deserialize_with = "de::from_str_or_value")]
    pub max_emails_per_hour: u32,
    /// Fields whose distinct values a digest lists. Default `["model", "user_id"]`.
    #[serde(deserialize_with = "de::string_list")]
    pub digest_fields: Vec<String>,
    /// Field sampled in digests; empty for none. Default `request_id`.
    pub digest_sample_field: String,
    /// How many samples a digest lists. Default 5.
    pub digest_samples: usize,
    /// Mails waiting for the SMTP task; more are dropped and counted. Default 100.
    pub queue_size: usize,
    /// Delivery attempts per mail on transient failures. Default 5.
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt up to `retry_max_backoff`. Default 1s.
    #[serde(deserialize_with = "de::duration")]
    pub retry_backoff: Duration,
    /// Default 30s.
    #[serde(deserialize_with = "de::duration")]
    pub retry_max_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            to: Vec::new(),
            cc: Vec::new(),
            from: "sheepdog@localhost".into(),
            subject: "sheepdog alert".into(),
            body: None,
            htmlbody: None,
            host: "localhost".into(),
            port: 25,
            tls: TlsMode::None,
            ca_file: None,
            username: String::new(),
            password: Secret::default(),
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            throttle_key: None,
            throttle_window: Duration::from_secs(300),
            max_keys: 10_000,
            max_emails_per_hour: 0,
            digest_fields: vec!["model".into(), "user_id".into()],
            digest_sample_field: "request_id".into(),
            digest_samples: 5,
            queue_size: 100,
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            retry_max_backoff: Duration::from_secs(30),
        }
    }
}

/// An email output's server, sender, recipients and retry settings, for mail that another
/// component (the alert rules) sends on a mailer of its own.
pub struct MailSettings {
    smtp: SmtpSettings,
    recipients: Recipients,
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl MailSettings {
    /// Starts the mailer, named `id` in metrics and reporting to `health`. Its queue holds 100
    /// mails and it has no hourly cap: mail handed in this way is edge-triggered (alert rules
    /// mail once when they start firing and once when they resolve).
    pub fn start(
        self,
        id: &str,
        health: crate::health::HealthHandle,
        ctx: &BuildContext,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<(MailHandle, tokio::task::JoinHandle<()>)> {
        let (queue, task) = mailer::start(
            mailer::MailerSpec {
                id: id.into(),
                smtp: self.smtp,
                recipients: self.recipients,
                policy: DeliveryPolicy {
                    queue_size: 100,
                    max_attempts: self.max_attempts,
                    backoff: self.backoff,
                    max_backoff: self.max_backoff,
                    max_per_hour: None,
                },
                health,
                clock,
                shutdown: ctx.shutdown.clone(),
            },
            &ctx.metrics,
        )?;
        Ok((MailHandle(queue), task))
    }
}

/// Where another component hands its mail to a mailer started from [`MailSettings`].
pub struct MailHandle(MailQueue);

impl MailHandle {
    /// Queues `mail` without waiting; a full queue drops it and counts the drop.
    pub fn offer(&self, mail: Mail) {
        self.0.offer(mail);
    }
}

/// The reason shown in `/health` when there are no recipients.
pub const MAIL_OFF: &str = "alert mail off: ALERT_TO is empty";

/// A template whose missing references are written literally (`%{[field]}`) instead of
/// failing the whole rendering, as Logstash does in mail text.
#[derive(Debug, Clone)]
struct Text {
    parts: Vec<Template>,
}

impl Text {
    fn compile(source: &str) -> Result<Self, crate::template::TemplateError> {
        // Validate the whole, then split so each reference renders on its own.
        Template::compile(source)?;
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("%{") {
            let Some(close) = rest[start..].find('}').map(|i| start + i) else {
                break;
            };
            if start > 0 {
                parts.push(Template::compile(&rest[..start])?);
            }
            parts.push(Template::compile(&rest[start..=close])?);
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Template::compile(rest)?);
        }
        Ok(Text { parts })
    }

    fn render(&self, event: &Event, out: &mut String) {
        for part in &self.parts {
            let len = out.len();
            if part.render_into(event, out).is_err() {
                out.truncate(len);
                out.push_str(part.source());
            }
        }
    }

    fn render_string(&self, event: &Event) -> String {
        let mut out = String::new();
        self.render(event, &mut out);
        out
    }
}

/// The validated configuration.
struct Compiled {
    smtp: SmtpSettings,
    recipients: Option<Recipients>,
    policy: DeliveryPolicy,
    subject: Text,
    body: Option<Text>,
    html: Option<Text>,
    throttle_key: Option<Template>,
    digest: DigestFields,
}

fn parse_mailbox(key: &str, value: &str, problems: &mut Vec<Problem>) -> Option<Mailbox> {
    match value.parse::<Mailbox>() {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(
                Problem::at(key, format!("`{value}` is not a mail address: {e}"))
                    .hint("write addresses like alerts@example.com or \"Ops <ops@example.com>\""),
            );
            None
        }
    }
}

fn compile_text(key: &str, source: &str, problems: &mut Vec<Problem>) -> Option<Text> {
    match Text::compile(source) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(
                Problem::at(key, format!("bad template `{source}`: {e}"))
                    .hint("reference fields as %{field} or %{[a][b]}"),
            );
            None
        }
    }
}

impl Config {
    /// SMTP settings and recipients (`None` recipients: mail is off).
    fn mail_parts(&self) -> Result<(SmtpSettings, Option<Recipients>), Vec<Problem>> {
        let mut problems = Vec::new();
        let from = parse_mailbox("from", &self.from, &mut problems);
        let to: Vec<Mailbox> = self
            .to
            .iter()
            .filter_map(|a| parse_mailbox("to", a, &mut problems))
            .collect();
        let cc: Vec<Mailbox> = self
            .cc
            .iter()
            .filter_map(|a| parse_mailbox("cc", a, &mut problems))
            .collect();
        self.check_server(&mut problems);
        let credentials = self.credentials(&mut problems);
        let ca_pem = self.ca_pem(&mut problems);
        self.check_timeouts(&mut problems);
        if problems.iter().any(Problem::is_error) {
            return Err(problems);
        }
        let recipients = if to.is_empty() {
            None
        } else {
            Some(Recipients {
                from: from.expect("checked above"),
                to,
                cc,
            })
        };
        Ok((
            SmtpSettings {
                host: self.host.trim().to_string(),
                port: self.port,
                tls: self.tls,
                ca_pem,
                credentials,
                connect_timeout: self.connect_timeout,
                send_timeout: self.send_timeout,
            },
            recipients,
        ))
    }

    /// Checks that `host` and `port` name an SMTP server.
    fn check_server(&self, problems: &mut Vec<Problem>) {
        if self.host.trim().is_empty() {
            problems.push(
                Problem::at("host", "the SMTP host is empty")
                    .hint("set SMTP_HOST or host = \"localhost\""),
            );
        }
        if self.port == 0 {
            problems.push(Problem::at("port", "port 0 is not an SMTP port").hint("25, 465 or 587"));
        }
    }

    /// The SMTP AUTH user and password: both or neither.
    fn credentials(&self, problems: &mut Vec<Problem>) -> Option<(String, Secret)> {
        match (self.username.is_empty(), self.password.is_empty()) {
            (true, true) => None,
            (false, false) => Some((self.username.clone(), self.password.clone())),
            (false, true) => {
                problems.push(
                    Problem::at("password", "a username is set but the password is empty")
                        .hint("set the password from the environment, e.g. password = \"${SMTP_PASSWORD}\""),
                );
                None
            }
            (true, false) => {
                problems.push(
                    Problem::at("username", "a password is set but the username is empty")
                        .hint("set username, or remove password"),
                );
                None
            }
        }
    }

    /// The PEM read from `ca_file`, when one is given and TLS is on.
    fn ca_pem(&self, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
        let path = self.ca_file.as_deref().filter(|f| !f.is_empty())?;
        if self.tls == TlsMode::None {
            problems.push(
                Problem::at("ca_file", "ca_file is ignored because tls = \"none\"")
                    .hint("set tls = \"starttls\" or \"tls\", or remove ca_file")
                    .warning(),
            );
            return None;
        }
        match std::fs::read(path) {
            Ok(pem) => {
                if let Err(e) = lettre::transport::smtp::client::Certificate::from_pem(&pem) {
                    problems.push(
                        Problem::at(
                            "ca_file",
                            format!("`{path}` holds no usable PEM certificate: {e}"),
                        )
                        .hint("give the PEM file of the server certificate or its CA"),
                    );
                }
                Some(pem)
            }
            Err(e) => {
                problems.push(
                    Problem::at("ca_file", format!("cannot read `{path}`: {e}"))
                        .hint("check the path and permissions"),
                );
                None
            }
        }
    }

    /// Checks that neither SMTP timeout is zero.
    fn check_timeouts(&self, problems: &mut Vec<Problem>) {
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if d.is_zero() {
                problems.push(Problem::at(key, "must be longer than 0").hint("e.g. \"10s\""));
            }
        }
    }

    /// This output's settings for mail another component sends; `None`: no recipients, so
    /// mail is off.
    pub fn mail_settings(&self) -> Result<Option<MailSettings>, Vec<Problem>> {
        let (smtp, recipients) = self.mail_parts()?;
        Ok(recipients.map(|recipients| MailSettings {
            smtp,
            recipients,
            max_attempts: self.max_attempts.max(1),
            backoff: self.retry_backoff,
            max_backoff: self.retry_max_backoff.max(self.retry_backoff),
        }))
    }

    fn compile(&self) -> Result<(Compiled, Vec<Problem>), Vec<Problem>> {
        let (mut problems, mail) = match self.mail_parts() {
            Ok(parts) => (Vec::new(), Some(parts)),
            Err(p) => (p, None),
        };
        let subject = compile_text("subject", &self.subject, &mut problems);
        let body = self
            .body
            .as_ref()
            .and_then(|b| compile_text("body", b, &mut problems));
        let html = self
            .htmlbody
            .as_ref()
            .and_then(|b| compile_text("htmlbody", b, &mut problems));
        let throttle_key = self.throttle_key(&mut problems);
        let digest = self.digest_fields(&mut problems);
        for (key, v) in [
            ("queue_size", self.queue_size),
            ("max_attempts", self.max_attempts as usize),
            ("max_keys", self.max_keys),
        ] {
            if v == 0 {
                problems.push(Problem::at(key, "must be at least 1"));
            }
        }
        if problems.iter().any(Problem::is_error) {
            return Err(problems);
        }
        let (smtp, recipients) = mail.expect("no errors");
        Ok((
            Compiled {
                smtp,
                recipients,
                policy: DeliveryPolicy {
                    queue_size: self.queue_size,
                    max_attempts: self.max_attempts,
                    backoff: self.retry_backoff,
                    max_backoff: self.retry_max_backoff.max(self.retry_backoff),
                    max_per_hour: (self.max_emails_per_hour > 0)
                        .then_some(self.max_emails_per_hour),
                },
                subject: subject.expect("no errors"),
                body,
                html,
                throttle_key,
                digest,
            },
            problems,
        ))
    }

    /// The compiled `throttle_key`, which needs a window longer than 0.
    fn throttle_key(&self, problems: &mut Vec<Problem>) -> Option<Template> {
        let throttle_key = match &self.throttle_key {
            None => None,
            Some(source) => match Template::compile(source) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(
                        Problem::at("throttle_key", format!("bad template `{source}`: {e}"))
                            .hint("e.g. \"%{model}|%{error_message}\""),
                    );
                    None
                }
            },
        };
        if self.throttle_key.is_some() && self.throttle_window.is_zero() {
            problems.push(
                Problem::at(
                    "throttle_window",
                    "must be longer than 0 when throttle_key is set",
                )
                .hint("e.g. \"5m\"; remove throttle_key to mail every event"),
            );
        }
        throttle_key
    }

    /// What a digest lists: the `digest_fields` paths and the sampled field.
    fn digest_fields(&self, problems: &mut Vec<Problem>) -> DigestFields {
        let mut distinct = Vec::new();
        for f in &self.digest_fields {
            match FieldPath::parse(f) {
                Ok(p) => distinct.push(p),
                Err(e) => problems.push(Problem::at("digest_fields", e.to_string())),
            }
        }
        let sample = if self.digest_sample_field.is_empty() {
            None
        } else {
            match FieldPath::parse(&self.digest_sample_field) {
                Ok(p) => Some(p),
                Err(e) => {
                    problems.push(Problem::at("digest_sample_field", e.to_string()));
                    None
                }
            }
        };
        DigestFields {
            distinct,
            sample,
            samples: self.digest_samples,
        }
    }

    pub fn validate(&self, _ctx: &BuildContext) -> Vec<Problem> {
        match self.compile() {
            Ok((_, warnings)) => warnings,
            Err(problems) => problems,
        }
    }

    pub fn start(&self, id: &str, ctx: &BuildContext) -> anyhow::Result<Started> {
        self.start_with_clock(id, ctx, clock::system())
    }

    /// Starts the output with an explicit clock (tests step it).
    pub fn start_with_clock(
        &self,
        id: &str,
        ctx: &BuildContext,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Started> {
        let (c, _) = self.compile().map_err(|problems| {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            anyhow::anyhow!("{}", text.join("; "))
        })?;
        let health = ctx.health.register(format!("output {id}"));
        let labels = [("output", id)];
        let events = ctx.metrics.counter(
            "sheepdog_email_events_total",
            "Events received by an email output",
            &labels,
        );
        let Some(recipients) = c.recipients else {
            tracing::warn!(output = %id, "{MAIL_OFF}; set ALERT_TO (the output's `to`) to a comma-separated list of addresses to turn it on");
            health.set(Status::Degraded, MAIL_OFF);
            return Ok(Started {
                output: Box::new(MailOff { events }),
                task: tokio::spawn(async {}),
            });
        };
        tracing::info!(output = %id, server = %format!("{}:{}", c.smtp.host, c.smtp.port), tls = ?c.smtp.tls, recipients = recipients.to.len() + recipients.cc.len(), "alert mail on");
        let (queue, mailer_task) = mailer::start(
            mailer::MailerSpec {
                id: id.to_string(),
                smtp: c.smtp,
                recipients,
                policy: c.policy,
                health,
                clock: clock.clone(),
                shutdown: ctx.shutdown.clone(),
            },
            &ctx.metrics,
        )?;
        let window_ms = self.throttle_window.as_millis() as i64;
        let inner = Arc::new(Inner {
            subject: c.subject,
            body: c.body,
            html: c.html,
            throttle: c.throttle_key.map(|key| {
                Mutex::new(ThrottleState {
                    key,
                    throttle: Throttle::new(window_ms, self.max_keys, c.digest.clone()),
                    key_buf: String::new(),
                })
            }),
            digest_fields: c.digest,
            window: self.throttle_window,
            queue,
            clock,
            events,
            throttled: ctx.metrics.counter(
                "sheepdog_email_throttled_events_total",
                "Error events counted into a digest instead of mailed one by one",
                &labels,
            ),
        });
        let closed = CancellationToken::new();
        let tick =
            (self.throttle_window / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let digests = tokio::spawn(digest_loop(inner.clone(), closed.clone(), tick));
        let task = tokio::spawn(async move {
            let _ = digests.await;
            let _ = mailer_task.await;
        });
        Ok(Started {
            output: Box::new(EmailOutput { inner, closed }),
            task,
        })
    }
}

/// The output when there are no recipients: counts events, sends nothing.
struct MailOff {
    events: Counter,
}

impl Output for MailOff {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        self.events.add(events.len() as u64);
        Box::pin(async {})
    }
}

struct ThrottleState {
    key: Template,
    throttle: Throttle,
    /// Reused for rendering keys, so a known key costs no allocation.
    key_buf: String,
}

struct Inner {
    subject: Text,
    body: Option<Text>,
    html: Option<Text>,
    /// Held only for the duration of one batch's bookkeeping, never across an await.
    throttle: Option<Mutex<ThrottleState>>,
    digest_fields: DigestFields,
    window: Duration,
    queue: MailQueue,
    clock: Arc<dyn Clock>,
    events: Counter,
    throttled: Counter,
}

struct EmailOutput {
    inner: Arc<Inner>,
    /// Cancelled when the pipeline drops the output: the digest task flushes and ends.
    closed: CancellationToken,
}

impl Drop for EmailOutput {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl Output for EmailOutput {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        self.inner.accept(events);
        Box::pin(async {})
    }
}

impl Inner {
    fn accept(&self, events: &[&Event]) {
        self.events.add(events.len() as u64);
        let Some(throttle) = &self.throttle else {
            for event in events {
                let subject = self.subject.render_string(event);
                self.queue.offer(self.render_mail(event, subject));
            }
            return;
        };
        let now = self.clock.now_ms();
        let mut first: Vec<(usize, String)> = Vec::new();
        {
            let mut guard = throttle.lock().unwrap_or_else(|e| e.into_inner());
            let ThrottleState {
                key,
                throttle,
                key_buf,
            } = &mut *guard;
            let mut counted = 0;
            for (i, event) in events.iter().enumerate() {
                key_buf.clear();
                if key.render_into(event, key_buf).is_err() {
                    key_buf.clear();
                    key_buf.push_str(key.source());
                }
                match throttle.observe(key_buf, event, now) {
                    Verdict::Counted => counted += 1,
                    Verdict::MailNow => {
                        let subject = self.subject.render_string(event);
                        throttle.set_subject(key_buf, &subject);
                        first.push((i, subject));
                    }
                }
            }
            self.throttled.add(counted);
        }
        for (i, subject) in first {
            self.queue.offer(self.render_mail(events[i], subject));
        }
    }

    fn render_mail(&self, event: &Event, subject: String) -> Mail {
        let text = match (&self.body, &self.html) {
            (Some(body), _) => body.render_string(event),
            (None, Some(_)) => String::new(),
            (None, None) => {
                let json = serde_json::to_string_pretty(event.fields()).unwrap_or_default();
                format!("{subject}\n\nEvent:\n{json}\n")
            }
        };
        Mail {
            subject,
            text,
            html: self.html.as_ref().map(|h| h.render_string(event)),
            events: 1,
        }
    }

    fn expire(&self, flush: bool) -> Vec<Digest> {
        let Some(throttle) = &self.throttle else {
            return Vec::new();
        };
        let now = self.clock.now_ms();
        let mut guard = throttle.lock().unwrap_or_else(|e| e.into_inner());
        if flush {
            guard.throttle.flush(now)
        } else {
            guard.throttle.expire(now)
        }
    }
}

async fn digest_loop(inner: Arc<Inner>, closed: CancellationToken, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                for d in inner.expire(false) {
                    inner.queue.offer(render_digest(&d, &inner.digest_fields, inner.window));
                }
            }
            _ = closed.cancelled() => {
                // Shutting down: what was counted goes out now rather than being lost.
                for d in inner.expire(true) {
                    inner.queue.send(render_digest(&d, &inner.digest_fields, inner.window)).await;
                }
                return;
            }
        }
    }
}

/// The digest mail for a closed throttle window.
pub fn render_digest(d: &Digest, fields: &DigestFields, window: Duration) -> Mail {
    let subject = if d.subject.is_empty() {
        format!("[digest: {} more] {}", d.count, d.key)
    } else {
        format!("[digest: {} more] {}", d.count, d.subject)
    };
    let mut text = format!(
        "{} more events with the throttle key `{}` arrived in the {} window after the alert \
         mail \"{}\".\n\n",
        d.count,
        d.key,
        humantime(window),
        d.subject
    );
    let _ = writeln!(
        text,
        "Window:      {} .. {}",
        format_timestamp_ms(d.window_start_ms),
        format_timestamp_ms(d.window_end_ms)
    );
    let _ = writeln!(text, "Events:      {}", d.count);
    let _ = writeln!(
        text,
        "First seen:  {}",
        format_timestamp_ms(d.first_seen_ms)
    );
    let _ = writeln!(text, "Last seen:   {}", format_timestamp_ms(d.last_seen_ms));
    for (path, distinct) in fields.distinct.iter().zip(&d.distinct) {
        let _ = writeln!(
            text,
            "{} ({}{}): {}",
            path.keys().join("."),
            distinct.values.len(),
            if distinct.truncated { "+" } else { "" },
            distinct.values.join(", ")
        );
    }
    if let Some(sample) = &fields.sample {
        let _ = writeln!(
            text,
            "Sample {}: {}",
            sample.keys().join("."),
            d.samples.join(", ")
        );
    }
    Mail {
        subject,
        text,
        html: None,
        events: d.count,
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests;
