//! The live status page (`GET /` on the API address) and the JSON it refreshes from
//! (`GET /status.json`), built from in-memory state only: event rates sampled from the metrics
//! registry, health, alert rule states, and rolling per-minute statistics of the events after the
//! filters (fed like an output without `when`, as the alert rules are).

pub mod rates;
pub mod window;

use crate::alerts;
use crate::clock::Clock;
use crate::config::de;
use crate::config::problem::Problem;
use crate::event::{Event, FieldPath};
use crate::health::HealthRegistry;
use crate::metrics::Registry;
use crate::outputs::{BoxFuture, Output};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use window::{Limits, Sample, Windows};

/// The page itself: one file, inline CSS and JS, no external assets.
pub const PAGE: &str = include_str!("page.html");

/// Minutes the error messages are counted over; models and users use the whole hour.
pub const ERROR_MINUTES: usize = 15;
/// Rows of top users and top error messages.
pub const TOP: usize = 10;

/// `[api.status_page]`: what the status page reads from each event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Serve `/` and `/status.json` and keep the rolling statistics. Default true.
    pub enabled: bool,
    /// How often the event counters are sampled for the rate charts (180 points each).
    /// Default 5s.
    #[serde(deserialize_with = "de::duration")]
    pub sample_every: Duration,
    /// Field holding the model name. Default `model`.
    pub model_field: String,
    /// Field holding the request's cost in USD (number or numeric string). Default `cost_usd`.
    pub cost_field: String,
    /// Field holding the user id. Default `user_id`.
    pub user_field: String,
    /// Field whose value `error_value` marks an error. Default `status_category`.
    pub status_field: String,
    /// Default `error` (what the shipped `status_category` stage writes for failures).
    pub error_value: String,
    /// Field holding the latency in milliseconds. Default `latency_ms`.
    pub latency_field: String,
    /// Field holding an error's message. Default `error_message`.
    pub message_field: String,
    /// Models, users and error messages kept per minute; further ones count as `other`.
    /// Defaults 50, 200, 50.
    pub max_models: usize,
    pub max_users: usize,
    pub max_messages: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            sample_every: Duration::from_secs(5),
            model_field: "model".into(),
            cost_field: "cost_usd".into(),
            user_field: "user_id".into(),
            status_field: "status_category".into(),
            error_value: "error".into(),
            latency_field: "latency_ms".into(),
            message_field: "error_message".into(),
            max_models: 50,
            max_users: 200,
            max_messages: 50,
        }
    }
}

/// The field paths, parsed.
#[derive(Debug, Clone)]
struct Fields {
    model: FieldPath,
    cost: FieldPath,
    user: FieldPath,
    status: FieldPath,
    error_value: String,
    latency: FieldPath,
    message: FieldPath,
}

const AT: &str = "api.status_page";

impl Settings {
    /// Every problem in the settings, located under `api.status_page`.
    pub fn validate(&self) -> Vec<Problem> {
        match self.compile() {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    fn compile(&self) -> Result<(Fields, Limits), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut path = |key: &str, text: &str| match FieldPath::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(
                    Problem::at(&format!("{AT}.{key}"), format!("bad field path: {e}"))
                        .hint("write a top-level name like `model` or a path like `[usage][cost]`"),
                );
                None
            }
        };
        let fields = (
            path("model_field", &self.model_field),
            path("cost_field", &self.cost_field),
            path("user_field", &self.user_field),
            path("status_field", &self.status_field),
            path("latency_field", &self.latency_field),
            path("message_field", &self.message_field),
        );
        if self.sample_every.is_zero() {
            problems.push(
                Problem::at(&format!("{AT}.sample_every"), "must be longer than 0")
                    .hint("e.g. \"5s\""),
            );
        }
        for (key, n) in [
            ("max_models", self.max_models),
            ("max_users", self.max_users),
            ("max_messages", self.max_messages),
        ] {
            if n == 0 {
                problems.push(Problem::at(&format!("{AT}.{key}"), "must be at least 1"));
            }
        }
        let (Some(model), Some(cost), Some(user), Some(status), Some(latency), Some(message)) =
            fields
        else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let fields = Fields {
            model,
            cost,
            user,
            status,
            error_value: self.error_value.clone(),
            latency,
            message,
        };
        let limits = Limits {
            models: self.max_models,
            users: self.max_users,
            messages: self.max_messages,
        };
        Ok((fields, limits))
    }
}

/// A number from a JSON number or a numeric string.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Fields {
    /// What `event` contributes; borrows its strings, allocates nothing.
    fn sample<'e>(&self, event: &'e Event) -> Sample<'e> {
        let text = |path: &FieldPath| event.get(path).and_then(Value::as_str);
        let error = event.get(&self.status).and_then(Value::as_str) == Some(&self.error_value);
        Sample {
            model: text(&self.model),
            user: text(&self.user),
            cost: event.get(&self.cost).and_then(number),
            latency_ms: event.get(&self.latency).and_then(number),
            error: error.then(|| text(&self.message)),
        }
    }
}

/// The rolling statistics of the events after the filters, fed by the workers like an output.
pub struct EventStats {
    fields: Fields,
    windows: Mutex<Windows>,
    clock: Arc<dyn Clock>,
}

impl EventStats {
    pub fn new(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let (fields, limits) = settings.compile().map_err(|problems| {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            anyhow::anyhow!("invalid [api.status_page]: {}", text.join("; "))
        })?;
        Ok(EventStats {
            fields,
            windows: Mutex::new(Windows::new(limits)),
            clock,
        })
    }

    /// Adds a batch: one clock read and one short lock per batch.
    pub fn observe(&self, events: &[&Event]) {
        let now = self.clock.now_ms();
        // Held while one batch is counted (no I/O, no await); the page reads under it too.
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.observe(events.iter().map(|e| self.fields.sample(e)), now);
    }

    /// The `events` part of `/status.json`.
    pub fn snapshot(&self) -> Value {
        let now = self.clock.now_ms();
        let w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "window_minutes": window::MINUTES,
            "totals": w.totals(now, window::MINUTES),
            "models": w.models(now, window::MINUTES),
            "top_users": w.top_users(now, window::MINUTES, TOP),
            "errors_window_minutes": ERROR_MINUTES,
            "error_totals": w.totals(now, ERROR_MINUTES),
            "top_errors": w.top_messages(now, ERROR_MINUTES, TOP),
        })
    }
}

/// The workers' handle on the shared statistics.
pub struct StatsSink(pub Arc<EventStats>);

impl Output for StatsSink {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        self.0.observe(events);
        Box::pin(async {})
    }
}

/// Everything `/status.json` reads.
#[derive(Clone)]
pub struct Sources {
    pub metrics: Arc<Registry>,
    pub health: Arc<HealthRegistry>,
    pub rates: Arc<rates::Rates>,
    pub events: Arc<EventStats>,
    pub alerts: Option<alerts::States>,
    pub clock: Arc<dyn Clock>,
}

/// Values of every series of a metric, keyed by the value of `label`.
fn by_label(metrics: &Registry, name: &str, label: &str) -> Vec<(String, f64)> {
    metrics
        .series(name)
        .into_iter()
        .filter_map(|(labels, v)| {
            let (_, value) = labels.into_iter().find(|(k, _)| k == label)?;
            Some((value, v))
        })
        .collect()
}

/// The value of `name` for `label` = `value`, summed over its other labels (0 when absent).
fn sum_for(metrics: &Registry, name: &str, filter: &[(&str, &str)]) -> f64 {
    metrics
        .series(name)
        .into_iter()
        .filter(|(labels, _)| {
            filter
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Resident memory of this process in bytes, from `/proc/self/status` (`None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss(&text)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl Sources {
    /// The whole of `/status.json`.
    pub fn snapshot(&self) -> Value {
        let m = &self.metrics;
        let gauge = |name: &str| sum_for(m, name, &[]) as i64;
        let health = self.health.report();
        json!({
            "now_ms": self.clock.now_ms(),
            "version": env!("CARGO_PKG_VERSION"),
            "status": health.status,
            "rates": {
                "every_s": self.rates.every().as_secs_f64(),
                "points": rates::POINTS,
                "series": self.rates.snapshot(),
            },
            "queue": {
                "events": gauge("sheepdog_queue_events"),
                "capacity": gauge("sheepdog_queue_capacity_events"),
            },
            "memory": {
                "rss_bytes": rss_bytes(),
                "queue_events": gauge("sheepdog_queue_events"),
                "output_events": gauge("sheepdog_es_queued_events"),
                "budget_bytes": gauge("sheepdog_memory_budget_limit_bytes"),
                "budget_used_bytes": by_label(m, "sheepdog_memory_budget_used_bytes", "use")
                    .into_iter()
                    .map(|(u, v)| (u, json!(v as i64)))
                    .collect::<serde_json::Map<String, Value>>(),
            },
            "components": health.components,
            "elasticsearch": self.elasticsearch(&health.components),
            "alerts": self.alerts(),
            "events": self.events.snapshot(),
        })
    }

    /// Each Elasticsearch output: its health, documents by outcome and retries.
    fn elasticsearch(&self, components: &[crate::health::ComponentHealth]) -> Vec<Value> {
        let m = &self.metrics;
        by_label(m, "sheepdog_es_retries_total", "output")
            .into_iter()
            .map(|(id, retries)| {
                let component = format!("output {id}");
                let health = components.iter().find(|c| c.component == component);
                let host_prefix = format!("output {id} host ");
                let hosts: Vec<Value> = components
                    .iter()
                    .filter_map(|c| {
                        let host = c.component.strip_prefix(&host_prefix)?;
                        Some(json!({ "host": host, "status": c.status, "reason": c.reason }))
                    })
                    .collect();
                let docs = |outcome: &str| {
                    sum_for(
                        m,
                        "sheepdog_es_documents_total",
                        &[("output", &id), ("outcome", outcome)],
                    ) as u64
                };
                json!({
                    "output": id,
                    "status": health.map(|h| h.status),
                    "reason": health.map(|h| h.reason.as_str()).unwrap_or(""),
                    "hosts": hosts,
                    "retries": retries as u64,
                    "indexed": docs("indexed"),
                    "dead_lettered": docs("dead_lettered"),
                    "failed": docs("failed"),
                    "queued": sum_for(m, "sheepdog_es_queued_events", &[("output", &id)]) as u64,
                })
            })
            .collect()
    }

    /// Rule states and, per mail sender (email outputs and the rules), mails sent and events
    /// throttled.
    fn alerts(&self) -> Value {
        let m = &self.metrics;
        let mut senders: Vec<String> = ["sheepdog_email_sent_total", "sheepdog_email_events_total"]
            .iter()
            .flat_map(|name| by_label(m, name, "output"))
            .map(|(id, _)| id)
            .collect();
        senders.sort();
        senders.dedup();
        let mail: Vec<Value> = senders
            .iter()
            .map(|id| {
                let of = |name: &str| sum_for(m, name, &[("output", id)]) as u64;
                json!({
                    "sender": id,
                    "sent": of("sheepdog_email_sent_total"),
                    "throttled": of("sheepdog_email_throttled_events_total"),
                    "failed": of("sheepdog_email_failed_total"),
                })
            })
            .collect();
        json!({
            "rules": self.alerts.as_ref().map(|s| s.snapshot()).unwrap_or_default(),
            "mail": mail,
        })
    }
}

#[cfg(test)]
mod tests;
