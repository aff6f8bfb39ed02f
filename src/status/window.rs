//! Rolling per-minute statistics of the events after the filters: requests, errors, cost and a
//! latency histogram per model, cost per user and counts per error message. Sixty one-minute
//! buckets; each holds at most a fixed number of models, users and messages, and folds the rest
//! into one `other` entry, so memory is bounded whatever the traffic.

use compact_str::CompactString;
use serde::Serialize;
use std::collections::HashMap;

/// Buckets kept: one per minute over an hour.
pub const MINUTES: usize = 60;

/// The name under which keys beyond a bucket's limit are counted.
pub const OTHER: &str = "other";

/// Latency histogram: bin 0 holds values up to 1 ms, bin i > 0 holds (1.05^(i-1), 1.05^i] ms;
/// the last bin holds everything above ~19 minutes. A bin's midpoint is within 2.5% of any value
/// in it.
const LAT_BASE: f64 = 1.05;
pub const LAT_BINS: usize = 300;

fn lat_bin(ms: f64) -> usize {
    if ms.is_nan() || ms <= 1.0 {
        return 0;
    }
    ((ms.ln() / LAT_BASE.ln()).ceil() as usize).min(LAT_BINS - 1)
}

fn lat_value(bin: usize) -> f64 {
    if bin == 0 {
        return 1.0;
    }
    LAT_BASE.powf(bin as f64 - 0.5)
}

/// The value at quantile `q` (0..1) of a histogram; `None` when it is empty.
pub fn quantile(hist: &[u32], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            return Some(lat_value(i));
        }
    }
    None
}

/// One model's numbers in one minute.
#[derive(Debug, Clone, Default)]
pub struct ModelStats {
    pub requests: u64,
    pub errors: u64,
    pub cost: f64,
    /// Empty until the first latency arrives (`LAT_BINS` counts after).
    pub latency: Vec<u32>,
}

impl ModelStats {
    fn add(&mut self, other: &ModelStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.cost += other.cost;
        if !other.latency.is_empty() {
            if self.latency.is_empty() {
                self.latency = vec![0; LAT_BINS];
            }
            for (a, b) in self.latency.iter_mut().zip(&other.latency) {
                *a += b;
            }
        }
    }
}

/// One user's numbers in one minute.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserStats {
    pub requests: u64,
    pub cost: f64,
}

/// What one event contributes, read by the caller from the configured fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample<'a> {
    pub model: Option<&'a str>,
    pub user: Option<&'a str>,
    pub cost: Option<f64>,
    pub latency_ms: Option<f64>,
    /// `Some` for an error: its message (`None` inside when the event has none).
    pub error: Option<Option<&'a str>>,
}

/// How many distinct keys one minute keeps under their names; further keys count as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub models: usize,
    pub users: usize,
    pub messages: usize,
}

type Map<T> = HashMap<CompactString, T, foldhash::fast::RandomState>;

/// One minute of events.
#[derive(Debug, Default)]
struct Minute {
    /// Minutes since the epoch; `i64::MIN` when unused.
    minute: i64,
    events: u64,
    errors: u64,
    models: Map<ModelStats>,
    users: Map<UserStats>,
    messages: Map<u64>,
}

/// Adds to `key`'s entry, or to `other`'s when `limit` keys are held. A key the minute has seen
/// costs two lookups and no allocation; names up to 24 bytes are stored inline.
fn entry<'m, T: Default>(map: &'m mut Map<T>, key: &str, limit: usize) -> &'m mut T {
    if map.contains_key(key) {
        return map.get_mut(key).expect("present");
    }
    let key = if map.len() < limit { key } else { OTHER };
    map.entry(CompactString::from(key)).or_default()
}

impl Minute {
    fn reset(&mut self, minute: i64) {
        self.minute = minute;
        self.events = 0;
        self.errors = 0;
        self.models.clear();
        self.users.clear();
        self.messages.clear();
    }

    fn observe(&mut self, s: &Sample, limits: Limits) {
        self.events += 1;
        let model = entry(&mut self.models, s.model.unwrap_or("(none)"), limits.models);
        model.requests += 1;
        model.cost += s.cost.unwrap_or(0.0);
        if let Some(ms) = s.latency_ms {
            if model.latency.is_empty() {
                model.latency = vec![0; LAT_BINS];
            }
            model.latency[lat_bin(ms)] += 1;
        }
        if let Some(user) = s.user {
            let u = entry(&mut self.users, user, limits.users);
            u.requests += 1;
            u.cost += s.cost.unwrap_or(0.0);
        }
        if let Some(message) = s.error {
            self.errors += 1;
            model.errors += 1;
            let m = entry(
                &mut self.messages,
                message.unwrap_or("(no message)"),
                limits.messages,
            );
            *m += 1;
        }
    }
}

/// The rolling statistics. Not synchronised: the owner locks it once per batch.
#[derive(Debug)]
pub struct Windows {
    minutes: Vec<Minute>,
    limits: Limits,
}

/// One model over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub cost_usd: f64,
    /// `None` when no event of the model carried a latency.
    pub p99_latency_ms: Option<f64>,
}

/// One user over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRow {
    pub user: String,
    pub requests: u64,
    pub cost_usd: f64,
}

/// One error message over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageRow {
    pub message: String,
    pub count: u64,
}

/// Totals over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    pub events: u64,
    pub errors: u64,
}

impl Windows {
    pub fn new(limits: Limits) -> Self {
        let minutes = (0..MINUTES)
            .map(|_| Minute {
                minute: i64::MIN,
                ..Minute::default()
            })
            .collect();
        Windows { minutes, limits }
    }

    fn slot(&mut self, now_ms: i64) -> &mut Minute {
        let minute = now_ms.div_euclid(60_000);
        let m = &mut self.minutes[minute.rem_euclid(MINUTES as i64) as usize];
        if m.minute < minute {
            m.reset(minute);
        }
        m
    }

    /// Adds samples seen at `now_ms`.
    pub fn observe<'a>(&mut self, samples: impl IntoIterator<Item = Sample<'a>>, now_ms: i64) {
        let limits = self.limits;
        let m = self.slot(now_ms);
        for s in samples {
            m.observe(&s, limits);
        }
    }

    /// The minutes within the last `minutes` (the current one included).
    fn recent(&self, now_ms: i64, minutes: usize) -> impl Iterator<Item = &Minute> {
        let now = now_ms.div_euclid(60_000);
        let oldest = now - minutes.min(MINUTES) as i64 + 1;
        self.minutes
            .iter()
            .filter(move |m| m.minute >= oldest && m.minute <= now)
    }

    pub fn totals(&self, now_ms: i64, minutes: usize) -> Totals {
        let mut t = Totals::default();
        for m in self.recent(now_ms, minutes) {
            t.events += m.events;
            t.errors += m.errors;
        }
        t
    }

    /// Every model over the last `minutes`, most requests first.
    pub fn models(&self, now_ms: i64, minutes: usize) -> Vec<ModelRow> {
        let mut sums: HashMap<&str, ModelStats> = HashMap::new();
        for m in self.recent(now_ms, minutes) {
            for (k, v) in &m.models {
                sums.entry(k.as_str()).or_default().add(v);
            }
        }
        let mut rows: Vec<ModelRow> = sums
            .into_iter()
            .map(|(k, v)| ModelRow {
                model: k.to_string(),
                requests: v.requests,
                errors: v.errors,
                cost_usd: v.cost,
                p99_latency_ms: quantile(&v.latency, 0.99),
            })
            .collect();
        rows.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.model.cmp(&b.model)));
        rows
    }

    /// The `top` users by cost over the last `minutes`.
    pub fn top_users(&self, now_ms: i64, minutes: usize, top: usize) -> Vec<UserRow> {
        let mut sums: HashMap<&str, UserStats> = HashMap::new();
        for m in self.recent(now_ms, minutes) {
            for (k, v) in &m.users {
                let s = sums.entry(k.as_str()).or_default();
                s.requests += v.requests;
                s.cost += v.cost;
            }
        }
        let mut rows: Vec<UserRow> = sums
            .into_iter()
            .map(|(k, v)| UserRow {
                user: k.to_string(),
                requests: v.requests,
                cost_usd: v.cost,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then(b.requests.cmp(&a.requests))
                .then(a.user.cmp(&b.user))
        });
        rows.truncate(top);
        rows
    }

    /// The `top` error messages by count over the last `minutes`.
    pub fn top_messages(&self, now_ms: i64, minutes: usize, top: usize) -> Vec<MessageRow> {
        let mut sums: HashMap<&str, u64> = HashMap::new();
        for m in self.recent(now_ms, minutes) {
            for (k, v) in &m.messages {
                *sums.entry(k.as_str()).or_default() += v;
            }
        }
        let mut rows: Vec<MessageRow> = sums
            .into_iter()
            .map(|(k, count)| MessageRow {
                message: k.to_string(),
                count,
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.message.cmp(&b.message)));
        rows.truncate(top);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        models: 3,
        users: 2,
        messages: 2,
    };
    const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;

    fn ok<'a>(model: &'a str, user: &'a str, cost: f64, latency: f64) -> Sample<'a> {
        Sample {
            model: Some(model),
            user: Some(user),
            cost: Some(cost),
            latency_ms: Some(latency),
            error: None,
        }
    }

    fn err<'a>(model: &'a str, message: &'a str) -> Sample<'a> {
        Sample {
            model: Some(model),
            error: Some(Some(message)),
            ..Sample::default()
        }
    }

    #[test]
    fn sums_models_users_and_messages_across_minutes() {
        let mut w = Windows::new(LIMITS);
        w.observe([ok("a", "u1", 0.5, 10.0), ok("b", "u2", 1.0, 20.0)], T0);
        w.observe(
            [
                ok("a", "u1", 0.25, 30.0),
                err("a", "timeout"),
                err("b", "timeout"),
            ],
            T0 + 60_000,
        );
        let now = T0 + 90_000;
        let models = w.models(now, 60);
        assert_eq!(
            models
                .iter()
                .map(|m| (m.model.as_str(), m.requests, m.errors))
                .collect::<Vec<_>>(),
            [("a", 3, 1), ("b", 2, 1)]
        );
        assert_eq!(models[0].cost_usd, 0.75);
        let users = w.top_users(now, 60, 10);
        assert_eq!(users[0].user, "u2");
        assert_eq!((users[1].user.as_str(), users[1].requests), ("u1", 2));
        assert_eq!(
            w.top_messages(now, 15, 10),
            [MessageRow {
                message: "timeout".into(),
                count: 2
            }]
        );
        assert_eq!(
            w.totals(now, 60),
            Totals {
                events: 5,
                errors: 2
            }
        );
        // Only the current minute.
        assert_eq!(w.totals(now, 1).events, 3);
    }

    #[test]
    fn old_minutes_expire() {
        let mut w = Windows::new(LIMITS);
        w.observe([err("a", "boom")], T0);
        w.observe([err("a", "bang")], T0 + 10 * 60_000);
        let now = T0 + 20 * 60_000;
        // 15-minute window: only the second error; 60-minute window: both.
        assert_eq!(w.top_messages(now, 15, 10).len(), 1);
        assert_eq!(w.top_messages(now, 15, 10)[0].message, "bang");
        assert_eq!(w.totals(now, 60).errors, 2);
        // An hour after the first: gone, even though its slot was never reused.
        let later = T0 + 60 * 60_000;
        assert_eq!(w.totals(later, 60).errors, 1);
        assert!(w.models(T0 + 71 * 60_000, 60).is_empty());
        // Reusing a slot an hour later starts it afresh.
        w.observe([ok("c", "u", 1.0, 1.0)], T0 + 60 * 60_000);
        let models = w.models(T0 + 60 * 60_000, 60);
        assert_eq!(
            models.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(w.models(T0 + 60 * 60_000, 1).len(), 1);
    }

    #[test]
    fn keys_beyond_the_limit_fold_into_other() {
        let mut w = Windows::new(LIMITS);
        let samples: Vec<Sample> = ["m1", "m2", "m3", "m4", "m5", "m1"]
            .iter()
            .map(|m| ok(m, m, 1.0, 5.0))
            .collect();
        w.observe(samples, T0);
        let models = w.models(T0, 60);
        let names: Vec<(&str, u64)> = models
            .iter()
            .map(|m| (m.model.as_str(), m.requests))
            .collect();
        // Limit 3: m1..m3 keep their names, m4 and m5 count as `other`; a known key still
        // counts under its name.
        assert_eq!(names, [("m1", 2), (OTHER, 2), ("m2", 1), ("m3", 1)]);
        let users = w.top_users(T0, 60, 10);
        let users: Vec<(&str, u64)> = users
            .iter()
            .map(|u| (u.user.as_str(), u.requests))
            .collect();
        assert_eq!(users, [(OTHER, 3), ("m1", 2), ("m2", 1)]);
        assert_eq!(w.top_users(T0, 60, 1).len(), 1);
        w.observe(
            [
                err("x", "e1"),
                err("x", "e2"),
                err("x", "e3"),
                err("x", "e1"),
            ],
            T0,
        );
        let messages = w.top_messages(T0, 15, 10);
        assert_eq!(
            messages
                .iter()
                .map(|m| (m.message.as_str(), m.count))
                .collect::<Vec<_>>(),
            [("e1", 2), ("e2", 1), (OTHER, 1)]
        );
        // A new minute has its own room again.
        w.observe([err("x", "e3")], T0 + 60_000);
        assert!(w
            .top_messages(T0 + 60_000, 15, 10)
            .iter()
            .any(|m| m.message == "e3"));
    }

    #[test]
    fn p99_from_the_histogram_is_within_its_resolution() {
        let mut w = Windows::new(LIMITS);
        // 1..=1000 ms: p99 is 990 ms.
        let samples: Vec<Sample> = (1..=1000)
            .map(|i| ok("m", "u", 0.0, f64::from(i)))
            .collect();
        w.observe(samples, T0);
        let p99 = w.models(T0, 60)[0].p99_latency_ms.unwrap();
        assert!((p99 / 990.0 - 1.0).abs() < 0.03, "p99 {p99}");
        // Across minutes the histograms add up: 20 slow of 1020 puts p99 among the slow.
        w.observe((0..20).map(|_| ok("m", "u", 0.0, 50_000.0)), T0 + 60_000);
        let p99 = w.models(T0 + 60_000, 60)[0].p99_latency_ms.unwrap();
        assert!((p99 / 50_000.0 - 1.0).abs() < 0.03, "p99 {p99}");
        // No latency at all: no p99.
        w.observe([err("n", "x")], T0);
        let n = w.models(T0 + 60_000, 60);
        assert_eq!(
            n.iter().find(|m| m.model == "n").unwrap().p99_latency_ms,
            None
        );
    }

    #[test]
    fn quantile_edges() {
        assert_eq!(quantile(&[], 0.99), None);
        assert_eq!(quantile(&[0; LAT_BINS], 0.99), None);
        assert_eq!(lat_bin(0.2), 0);
        assert_eq!(lat_bin(f64::NAN), 0);
        assert_eq!(lat_bin(1e12), LAT_BINS - 1);
        for v in [2.0, 17.0, 250.0, 9_999.0] {
            let mid = lat_value(lat_bin(v));
            assert!((mid / v - 1.0).abs() < 0.026, "{v} -> {mid}");
        }
    }
}
