//! Per-key throttling of alert mail: the first event of a key is mailed at once, later events of
//! that key are counted until the window closes, then one digest summarises them. A key whose
//! window closed with events stays in digest mode for the next window, so a steady error storm
//! yields one mail per key and window. Pure state driven by an explicit `now`.

use crate::event::{Event, FieldPath};
use serde_json::Value;
use std::collections::HashMap;

/// At most this many distinct values of each digest field are listed.
const DISTINCT_CAP: usize = 20;
/// The key under which events are counted once `max_keys` distinct keys are being tracked.
pub const OVERFLOW_KEY: &str = "(other keys: too many distinct throttle keys)";

/// What the digest reports about the events it counts.
#[derive(Debug, Clone)]
pub struct DigestFields {
    /// Fields whose distinct values are listed (models, users).
    pub distinct: Vec<FieldPath>,
    /// Field whose first values are listed as samples (request ids).
    pub sample: Option<FieldPath>,
    /// How many samples.
    pub samples: usize,
}

/// What to do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First event of its key: mail it now.
    MailNow,
    /// Counted towards the key's digest.
    Counted,
}

/// The distinct values seen for one digest field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Distinct {
    pub values: Vec<String>,
    /// More distinct values were seen than are listed.
    pub truncated: bool,
}

impl Distinct {
    fn record(&mut self, value: &Value) {
        let found = match value {
            Value::String(s) => self.values.iter().any(|v| v == s),
            other => {
                let text = other.to_string();
                self.values.contains(&text)
            }
        };
        if found {
            return;
        }
        if self.values.len() >= DISTINCT_CAP {
            self.truncated = true;
            return;
        }
        self.values.push(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
}

/// A closed window's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Digest {
    pub key: String,
    /// Subject of the mail that opened this key's throttling.
    pub subject: String,
    /// Events counted in the window (none of them was mailed individually).
    pub count: u64,
    /// Event timestamps of the first and last counted event.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// One entry per [`DigestFields::distinct`] field, same order.
    pub distinct: Vec<Distinct>,
    pub samples: Vec<String>,
}

#[derive(Debug)]
struct KeyState {
    subject: String,
    window_start_ms: i64,
    window_end_ms: i64,
    count: u64,
    first_seen_ms: i64,
    last_seen_ms: i64,
    distinct: Vec<Distinct>,
    samples: Vec<String>,
}

impl KeyState {
    fn new(now_ms: i64, window_ms: i64, fields: usize) -> Self {
        KeyState {
            subject: String::new(),
            window_start_ms: now_ms,
            window_end_ms: now_ms + window_ms,
            count: 0,
            first_seen_ms: 0,
            last_seen_ms: 0,
            distinct: vec![Distinct::default(); fields],
            samples: Vec::new(),
        }
    }

    fn count_event(&mut self, event: &Event, fields: &DigestFields) {
        let ts = event.timestamp_ms();
        if self.count == 0 {
            self.first_seen_ms = ts;
            self.last_seen_ms = ts;
        } else {
            self.first_seen_ms = self.first_seen_ms.min(ts);
            self.last_seen_ms = self.last_seen_ms.max(ts);
        }
        self.count += 1;
        for (slot, path) in self.distinct.iter_mut().zip(&fields.distinct) {
            if let Some(v) = event.get(path).filter(|v| !v.is_null()) {
                slot.record(v);
            }
        }
        if self.samples.len() < fields.samples {
            if let Some(v) = fields.sample.as_ref().and_then(|p| event.get(p)) {
                self.samples.push(match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
        }
    }
}

/// Throttle state for every key seen within its window.
#[derive(Debug)]
pub struct Throttle {
    window_ms: i64,
    max_keys: usize,
    fields: DigestFields,
    keys: HashMap<String, KeyState>,
}

impl Throttle {
    pub fn new(window_ms: i64, max_keys: usize, fields: DigestFields) -> Self {
        Throttle {
            window_ms: window_ms.max(1),
            max_keys: max_keys.max(1),
            fields,
            keys: HashMap::new(),
        }
    }

    /// Records `event` under `key`. On [`Verdict::MailNow`] the caller mails the event and
    /// reports the subject with [`Throttle::set_subject`].
    pub fn observe(&mut self, key: &str, event: &Event, now_ms: i64) -> Verdict {
        if let Some(state) = self.keys.get_mut(key) {
            state.count_event(event, &self.fields);
            return Verdict::Counted;
        }
        if self.keys.len() >= self.max_keys {
            let fields = self.fields.distinct.len();
            let window = self.window_ms;
            let state = self
                .keys
                .entry(OVERFLOW_KEY.to_string())
                .or_insert_with(|| KeyState::new(now_ms, window, fields));
            state.count_event(event, &self.fields);
            return Verdict::Counted;
        }
        self.keys.insert(
            key.to_string(),
            KeyState::new(now_ms, self.window_ms, self.fields.distinct.len()),
        );
        Verdict::MailNow
    }

    /// Remembers the subject of the mail that opened `key`, for its digests.
    pub fn set_subject(&mut self, key: &str, subject: &str) {
        if let Some(state) = self.keys.get_mut(key) {
            state.subject.clear();
            state.subject.push_str(subject);
        }
    }

    /// Closes every window that ended at or before `now_ms`, returning one digest per window
    /// that counted events. Keys with events continue into a new window in digest mode; quiet
    /// keys are forgotten, so their next event is mailed at once.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Digest> {
        let mut digests = Vec::new();
        let window_ms = self.window_ms;
        let fields = self.fields.distinct.len();
        self.keys.retain(|key, state| {
            if state.window_end_ms > now_ms {
                return true;
            }
            if state.count == 0 {
                return false;
            }
            digests.push(take_digest(key, state));
            // The next window starts where this one ended (or now, after a long pause).
            let start = if now_ms - state.window_end_ms < window_ms {
                state.window_end_ms
            } else {
                now_ms
            };
            let subject = std::mem::take(&mut state.subject);
            *state = KeyState::new(start, window_ms, fields);
            state.subject = subject;
            true
        });
        digests.sort_by(|a, b| a.key.cmp(&b.key));
        digests
    }

    /// Digests for every open window with events (at shutdown); forgets all keys.
    pub fn flush(&mut self, now_ms: i64) -> Vec<Digest> {
        let mut digests: Vec<Digest> = self
            .keys
            .drain()
            .filter(|(_, s)| s.count > 0)
            .map(|(key, mut state)| {
                state.window_end_ms = state.window_end_ms.min(now_ms);
                take_digest(&key, &mut state)
            })
            .collect();
        digests.sort_by(|a, b| a.key.cmp(&b.key));
        digests
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn take_digest(key: &str, state: &mut KeyState) -> Digest {
    Digest {
        key: key.to_string(),
        subject: state.subject.clone(),
        count: state.count,
        first_seen_ms: state.first_seen_ms,
        last_seen_ms: state.last_seen_ms,
        window_start_ms: state.window_start_ms,
        window_end_ms: state.window_end_ms,
        distinct: std::mem::take(&mut state.distinct),
        samples: std::mem::take(&mut state.samples),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(model: &str, user: &str, id: u32, ts: i64) -> Event {
        let Value::Object(m) =
            json!({"model": model, "user_id": user, "request_id": format!("r{id}")})
        else {
            unreachable!()
        };
        Event::from_map(m, ts)
    }

    fn throttle(window_ms: i64, max_keys: usize) -> Throttle {
        Throttle::new(
            window_ms,
            max_keys,
            DigestFields {
                distinct: vec![FieldPath::top("model"), FieldPath::top("user_id")],
                sample: Some(FieldPath::top("request_id")),
                samples: 3,
            },
        )
    }

    #[test]
    fn first_mails_rest_counted_then_one_digest() {
        let mut t = throttle(5_000, 100);
        assert_eq!(
            t.observe("a", &event("m1", "u1", 0, 1_000), 1_000),
            Verdict::MailNow
        );
        t.set_subject("a", "boom");
        for i in 1..=10 {
            let user = if i % 2 == 0 { "u1" } else { "u2" };
            assert_eq!(
                t.observe("a", &event("m1", user, i, 1_000 + i as i64), 2_000),
                Verdict::Counted
            );
        }
        assert!(t.expire(5_999).is_empty());
        let d = t.expire(6_000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].count, 10);
        assert_eq!(d[0].subject, "boom");
        assert_eq!((d[0].first_seen_ms, d[0].last_seen_ms), (1_001, 1_010));
        assert_eq!(d[0].distinct[0].values, ["m1"]);
        assert_eq!(d[0].distinct[1].values, ["u2", "u1"]);
        assert_eq!(d[0].samples, ["r1", "r2", "r3"]);
        // still in digest mode for the next window
        assert_eq!(
            t.observe("a", &event("m1", "u1", 11, 7_000), 7_000),
            Verdict::Counted
        );
        let d = t.expire(11_000);
        assert_eq!((d.len(), d[0].count, d[0].window_start_ms), (1, 1, 6_000));
        // a quiet window forgets the key: its next event mails again
        assert!(t.expire(16_000).is_empty());
        assert!(t.is_empty());
        assert_eq!(
            t.observe("a", &event("m1", "u1", 12, 17_000), 17_000),
            Verdict::MailNow
        );
    }

    #[test]
    fn a_single_event_sends_no_digest() {
        let mut t = throttle(1_000, 100);
        assert_eq!(t.observe("a", &event("m", "u", 0, 0), 0), Verdict::MailNow);
        assert!(t.expire(1_000).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn too_many_keys_share_an_overflow_digest() {
        let mut t = throttle(1_000, 2);
        assert_eq!(t.observe("a", &event("m", "u", 0, 0), 0), Verdict::MailNow);
        assert_eq!(t.observe("b", &event("m", "u", 1, 0), 0), Verdict::MailNow);
        assert_eq!(t.observe("c", &event("m", "u", 2, 0), 0), Verdict::Counted);
        assert_eq!(t.observe("d", &event("m", "u", 3, 0), 0), Verdict::Counted);
        let d = t.flush(500);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].key.as_str(), d[0].count), (OVERFLOW_KEY, 2));
    }

    #[test]
    fn distinct_values_are_capped() {
        let mut t = throttle(1_000, 100);
        t.observe("a", &event("m", "u", 0, 0), 0);
        for i in 0..50 {
            t.observe("a", &event("m", &format!("u{i}"), i, 0), 0);
        }
        let d = t.flush(10);
        assert_eq!(d[0].distinct[1].values.len(), DISTINCT_CAP);
        assert!(d[0].distinct[1].truncated);
        assert_eq!(d[0].count, 50);
    }
}
