//! Delivery of rendered alert mails over SMTP, in a task of its own behind a bounded queue:
//! offering a mail never waits; a full queue, failed deliveries and mails held back by the hourly
//! cap are counted, exposed in `/metrics` and reported in the next mail that gets through.
//! Transient failures (connection errors, timeouts, 4xx replies) are retried with backoff;
//! permanent ones (5xx) are logged with the server's reply.

use crate::clock::Clock;
use crate::config::secret::Secret;
use crate::health::{HealthHandle, Status};
use crate::metrics::Counter;
use anyhow::Context;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text (a local relay).
    #[default]
    None,
    /// Plain connection upgraded with STARTTLS (port 587); fails if the server does not offer it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Extra trusted root certificates (PEM); when set, only these are trusted.
    pub ca_pem: Option<Vec<u8>>,
    pub credentials: Option<(String, Secret)>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
}

/// Sender and recipients of every mail.
#[derive(Debug, Clone)]
pub struct Recipients {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
}

/// Queueing, retrying and rate limiting.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub queue_size: usize,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// At most this many mails in any hour; the rest are summarised once there is room.
    pub max_per_hour: Option<u32>,
}

/// A rendered mail.
#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// Events this mail stands for (1 for an alert, the count for a digest).
    pub events: u64,
}

/// Why a delivery attempt failed, reduced to what the retry policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server replied with this code.
    Reply(u16),
    Timeout,
    /// Connection refused or reset, network or TLS trouble.
    Connection,
    /// The message or the client configuration is wrong; sending it again cannot help.
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Retry,
    GiveUp,
}

/// Transient failures are retried, permanent ones are not.
pub fn disposition(failure: Failure) -> Disposition {
    match failure {
        Failure::Reply(code) if (400..500).contains(&code) => Disposition::Retry,
        Failure::Reply(_) | Failure::Client => Disposition::GiveUp,
        Failure::Timeout | Failure::Connection => Disposition::Retry,
    }
}

fn failure_of(e: &lettre::transport::smtp::Error) -> Failure {
    if let Some(code) = e.status() {
        Failure::Reply(u16::from(code))
    } else if e.is_timeout() {
        Failure::Timeout
    } else if e.is_client() {
        Failure::Client
    } else {
        Failure::Connection
    }
}

/// Counters shared by the offering side and the sender task.
struct Stats {
    /// Dropped or failed since the last mail that got through (for its delivery note).
    unreported_dropped: AtomicU64,
    unreported_failed: AtomicU64,
    sent: Counter,
    dropped: Counter,
    failed: Counter,
    rejected: Counter,
    retries: Counter,
    held: Counter,
}

/// The offering side of a mailer; cheap to clone.
#[derive(Clone)]
pub struct MailQueue {
    tx: mpsc::Sender<Mail>,
    stats: Arc<Stats>,
}

impl MailQueue {
    /// Queues `mail` without waiting; a full queue drops it and counts the drop.
    pub fn offer(&self, mail: Mail) -> bool {
        match self.tx.try_send(mail) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.inc();
                self.stats
                    .unreported_dropped
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues `mail`, waiting for room (used when flushing at shutdown).
    pub async fn send(&self, mail: Mail) {
        if self.tx.send(mail).await.is_err() {
            self.stats.dropped.inc();
            self.stats
                .unreported_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Everything a mailer needs.
pub struct MailerSpec {
    /// Component id used in metrics and logs.
    pub id: String,
    pub smtp: SmtpSettings,
    pub recipients: Recipients,
    pub policy: DeliveryPolicy,
    pub health: HealthHandle,
    pub clock: Arc<dyn Clock>,
    pub shutdown: CancellationToken,
}

/// Starts the sender task. It ends once every [`MailQueue`] is dropped and the queue is sent.
pub fn start(
    spec: MailerSpec,
    metrics: &crate::metrics::Registry,
) -> anyhow::Result<(MailQueue, JoinHandle<()>)> {
    let labels = [("output", spec.id.as_str())];
    let stats = Arc::new(Stats {
        unreported_dropped: AtomicU64::new(0),
        unreported_failed: AtomicU64::new(0),
        sent: metrics.counter(
            "sheepdog_email_sent_total",
            "Alert mails accepted by the SMTP server",
            &labels,
        ),
        dropped: metrics.counter(
            "sheepdog_email_dropped_total",
            "Alert mails dropped because the mail queue was full",
            &labels,
        ),
        failed: metrics.counter(
            "sheepdog_email_failed_total",
            "Alert mails not delivered after retrying transient SMTP failures",
            &labels,
        ),
        rejected: metrics.counter(
            "sheepdog_email_rejected_total",
            "Alert mails permanently rejected by the SMTP server (5xx)",
            &labels,
        ),
        retries: metrics.counter(
            "sheepdog_email_retries_total",
            "SMTP delivery attempts repeated after a transient failure",
            &labels,
        ),
        held: metrics.counter(
            "sheepdog_email_held_total",
            "Alert mails held back by max_emails_per_hour and summarised later",
            &labels,
        ),
    });
    let transport = build_transport(&spec.smtp)?;
    let (tx, rx) = mpsc::channel(spec.policy.queue_size.max(1));
    let queue = MailQueue {
        tx,
        stats: stats.clone(),
    };
    let sender = Sender {
        transport,
        stats,
        held: HeldBack::default(),
        sent_at: VecDeque::new(),
        spec,
    };
    Ok((queue, tokio::spawn(sender.run(rx))))
}

fn build_transport(s: &SmtpSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
        .port(s.port)
        .timeout(Some(s.connect_timeout));
    if s.tls != TlsMode::None {
        let mut params = TlsParameters::builder(s.host.clone());
        if let Some(pem) = &s.ca_pem {
            let cert = Certificate::from_pem(pem).context("ca_file is not a PEM certificate")?;
            params = params
                .certificate_store(CertificateStore::None)
                .add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .context("cannot set up TLS for SMTP")?;
        builder = builder.tls(match s.tls {
            TlsMode::Starttls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        });
    }
    if let Some((user, password)) = &s.credentials {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    Ok(builder.build())
}

/// Mails held back by the hourly cap, summarised in one mail once there is room.
#[derive(Debug, Default)]
struct HeldBack {
    mails: u64,
    events: u64,
    first_ms: i64,
    last_ms: i64,
    /// Held mails per subject (bounded; the rest are counted in `other`).
    subjects: BTreeMap<String, u64>,
    other: u64,
}

const HELD_SUBJECTS: usize = 50;

impl HeldBack {
    fn add(&mut self, mail: &Mail, now_ms: i64) {
        if self.mails == 0 {
            self.first_ms = now_ms;
        }
        self.mails += 1;
        self.events += mail.events;
        self.last_ms = now_ms;
        if let Some(n) = self.subjects.get_mut(&mail.subject) {
            *n += 1;
        } else if self.subjects.len() < HELD_SUBJECTS {
            self.subjects.insert(mail.subject.clone(), 1);
        } else {
            self.other += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.mails == 0
    }

    fn take_summary(&mut self, cap: u32) -> Mail {
        let held = std::mem::take(self);
        let mut text = format!(
            "{} alert mails standing for {} events were held back between {} and {} because \
             max_emails_per_hour = {cap} was reached.\n\nHeld back, by subject:\n",
            held.mails,
            held.events,
            crate::event::format_timestamp_ms(held.first_ms),
            crate::event::format_timestamp_ms(held.last_ms),
        );
        for (subject, n) in &held.subjects {
            let _ = writeln!(text, "  {n} x {subject}");
        }
        if held.other > 0 {
            let _ = writeln!(text, "  {} x (other subjects)", held.other);
        }
        Mail {
            subject: format!(
                "[sheepdog] {} alert mails held back by max_emails_per_hour",
                held.mails
            ),
            text,
            html: None,
            events: held.events,
        }
    }
}

struct Sender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    stats: Arc<Stats>,
    held: HeldBack,
    /// When each mail in the last hour was sent (only kept with a cap).
    sent_at: VecDeque<i64>,
    spec: MailerSpec,
}

const HOUR_MS: i64 = 3_600_000;

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Mail>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mail = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = tick.tick(), if !self.held.is_empty() => {
                    self.send_held_summary(false).await;
                    continue;
                }
            };
            if self.at_cap() {
                self.held.add(&mail, self.spec.clock.now_ms());
                self.stats.held.inc();
                continue;
            }
            self.send_held_summary(false).await;
            if self.at_cap() {
                self.held.add(&mail, self.spec.clock.now_ms());
                self.stats.held.inc();
                continue;
            }
            self.deliver(mail).await;
        }
        // Nothing more will come: what the cap held back is reported now rather than lost.
        self.send_held_summary(true).await;
    }

    fn at_cap(&mut self) -> bool {
        let Some(cap) = self.spec.policy.max_per_hour else {
            return false;
        };
        let now = self.spec.clock.now_ms();
        while self.sent_at.front().is_some_and(|t| now - t >= HOUR_MS) {
            self.sent_at.pop_front();
        }
        self.sent_at.len() >= cap as usize
    }

    async fn send_held_summary(&mut self, ignore_cap: bool) {
        if self.held.is_empty() || (!ignore_cap && self.at_cap()) {
            return;
        }
        let cap = self.spec.policy.max_per_hour.unwrap_or(0);
        let summary = self.held.take_summary(cap);
        self.deliver(summary).await;
    }

    /// Appends what went missing since the last delivered mail.
    fn delivery_note(&self, dropped: u64, failed: u64) -> Option<String> {
        if dropped == 0 && failed == 0 {
            return None;
        }
        Some(format!(
            "\n\n-- \nDelivery note: since the last alert mail that got through, {dropped} alert \
             mails were dropped because the mail queue was full and {failed} could not be \
             delivered (SMTP failures). Counts are in /metrics as sheepdog_email_*.\n"
        ))
    }

    fn build(&self, mail: &Mail, note: Option<&str>) -> anyhow::Result<Message> {
        let r = &self.spec.recipients;
        let mut builder = Message::builder()
            .from(r.from.clone())
            .subject(mail.subject.clone());
        for to in &r.to {
            builder = builder.to(to.clone());
        }
        for cc in &r.cc {
            builder = builder.cc(cc.clone());
        }
        let mut text = mail.text.clone();
        if let Some(note) = note {
            text.push_str(note);
        }
        let message = match &mail.html {
            None => builder.singlepart(SinglePart::plain(text)),
            Some(html) => {
                let mut html = html.clone();
                if let Some(note) = note {
                    let _ = write!(html, "<hr><pre>{}</pre>", escape_html(note.trim()));
                }
                builder.multipart(MultiPart::alternative_plain_html(text, html))
            }
        };
        message.context("cannot build the mail")
    }

    async fn deliver(&mut self, mail: Mail) {
        let dropped = self.stats.unreported_dropped.load(Ordering::Relaxed);
        let failed = self.stats.unreported_failed.load(Ordering::Relaxed);
        let note = self.delivery_note(dropped, failed);
        let message = match self.build(&mail, note.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(output = %self.spec.id, subject = %mail.subject, error = %format!("{e:#}"), "alert mail could not be built");
                self.stats.rejected.inc();
                return;
            }
        };
        let s = &self.spec.smtp;
        let mut backoff = self.spec.policy.backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure = match tokio::time::timeout(
                s.send_timeout,
                self.transport.send(message.clone()),
            )
            .await
            {
                Ok(Ok(_)) => {
                    self.stats.sent.inc();
                    self.stats
                        .unreported_dropped
                        .fetch_sub(dropped, Ordering::Relaxed);
                    self.stats
                        .unreported_failed
                        .fetch_sub(failed, Ordering::Relaxed);
                    if self.spec.policy.max_per_hour.is_some() {
                        self.sent_at.push_back(self.spec.clock.now_ms());
                    }
                    if self.spec.health.get().status != Status::Ok {
                        self.spec.health.ok();
                    }
                    tracing::debug!(output = %self.spec.id, subject = %mail.subject, "alert mail sent");
                    return;
                }
                Ok(Err(e)) => (failure_of(&e), e.to_string()),
                Err(_) => (
                    Failure::Timeout,
                    format!("no answer within send_timeout {:?}", s.send_timeout),
                ),
            };
            let (kind, reason) = failure;
            let server = format!("{}:{}", s.host, s.port);
            if disposition(kind) == Disposition::GiveUp {
                tracing::error!(output = %self.spec.id, server = %server, reply = %reason, subject = %mail.subject, "SMTP server rejected the alert mail; not retrying");
                self.stats.rejected.inc();
                self.stats.unreported_failed.fetch_add(1, Ordering::Relaxed);
                self.spec.health.set(
                    Status::Degraded,
                    format!("alert mail rejected by {server}: {reason}"),
                );
                return;
            }
            if attempt >= self.spec.policy.max_attempts || self.spec.shutdown.is_cancelled() {
                tracing::warn!(output = %self.spec.id, server = %server, error = %reason, attempts = attempt, subject = %mail.subject, "alert mail not delivered");
                self.stats.failed.inc();
                self.stats.unreported_failed.fetch_add(1, Ordering::Relaxed);
                self.spec.health.set(
                    Status::Degraded,
                    format!("alert mail cannot reach {server}: {reason}"),
                );
                return;
            }
            tracing::debug!(output = %self.spec.id, server = %server, error = %reason, attempt, "SMTP delivery failed; retrying");
            self.stats.retries.inc();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.spec.shutdown.cancelled() => {}
            }
            backoff = (backoff * 2).min(self.spec.policy.max_backoff);
        }
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retried_permanent_ones_not() {
        let table = [
            (Failure::Reply(421), Disposition::Retry),
            (Failure::Reply(451), Disposition::Retry),
            (Failure::Reply(452), Disposition::Retry),
            (Failure::Reply(535), Disposition::GiveUp),
            (Failure::Reply(550), Disposition::GiveUp),
            (Failure::Reply(554), Disposition::GiveUp),
            (Failure::Timeout, Disposition::Retry),
            (Failure::Connection, Disposition::Retry),
            (Failure::Client, Disposition::GiveUp),
        ];
        for (failure, expected) in table {
            assert_eq!(disposition(failure), expected, "{failure:?}");
        }
    }

    #[test]
    fn held_back_summary_counts_every_mail() {
        let mut held = HeldBack::default();
        let mail = |s: &str, events| Mail {
            subject: s.into(),
            text: String::new(),
            html: None,
            events,
        };
        held.add(&mail("a", 1), 1_000);
        held.add(&mail("a", 1), 2_000);
        held.add(&mail("digest b", 40), 3_000);
        let summary = held.take_summary(10);
        assert!(held.is_empty());
        assert_eq!(summary.events, 42);
        assert!(summary
            .subject
            .starts_with("[sheepdog] 3 alert mails held back"));
        assert!(summary.text.contains("  2 x a\n"), "{}", summary.text);
        assert!(
            summary.text.contains("  1 x digest b\n"),
            "{}",
            summary.text
        );
        assert!(summary.text.contains("max_emails_per_hour = 10"));
    }
}
