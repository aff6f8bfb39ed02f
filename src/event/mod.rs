//! The event flowing through the pipeline: a JSON object, its `@metadata` (never indexed),
//! Logstash-style field paths (`[a][b]`) and the event's timestamp kept as epoch milliseconds.

mod fields;

pub use crate::json::{DecodeError, FieldJson};
pub use fields::{key_tag, Fields, Key, SharedValue};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// The field name Logstash and Elasticsearch use for the event time.
pub const TIMESTAMP: &str = "@timestamp";
/// The field holding the event's tags (an array of strings).
pub const TAGS: &str = "tags";
/// The root key that addresses metadata in field paths.
pub const METADATA: &str = "@metadata";

/// When events were received, as epoch milliseconds and as the `@timestamp` text events
/// without a time of their own get.
#[derive(Debug, Clone)]
pub struct Receipt {
    ms: i64,
    text: String,
}

impl Receipt {
    pub fn new(ms: i64) -> Self {
        Receipt {
            ms,
            text: format_timestamp_ms(ms),
        }
    }

    pub fn ms(&self) -> i64 {
        self.ms
    }
}

/// One event: the document that is indexed plus metadata that is not.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    fields: Fields,
    metadata: Fields,
    /// `@timestamp` as milliseconds since the Unix epoch (UTC); kept in step with the field.
    timestamp_ms: i64,
    /// `@timestamp` is the receipt time the input stamped (the event arrived without one), so
    /// it is not part of the event as received (see the `fingerprint` filter).
    stamped_at_receipt: bool,
}

impl Event {
    /// An event from a decoded JSON object, stamped `received_ms` when it carries no usable
    /// `@timestamp` of its own. A `@metadata` key in the input moves into the metadata.
    pub fn from_map(fields: Map<String, Value>, received_ms: i64) -> Self {
        Event::from_fields(Fields::from(fields), received_ms)
    }

    /// An event from decoded fields, stamped `received_ms` when it carries no usable
    /// `@timestamp` of its own. A `@metadata` key in the input moves into the metadata.
    pub fn from_fields(fields: Fields, received_ms: i64) -> Self {
        Event::from_fields_at(fields, &Receipt::new(received_ms))
    }

    /// [`Event::from_fields`] with the receipt time formatted beforehand, once for all the
    /// events of a request or window.
    pub fn from_fields_at(mut fields: Fields, receipt: &Receipt) -> Self {
        let metadata = match fields.remove(METADATA) {
            Some(Value::Object(m)) => Fields::from(m),
            _ => Fields::new(),
        };
        let mut event = Event {
            fields,
            metadata,
            timestamp_ms: receipt.ms,
            stamped_at_receipt: false,
        };
        let parsed = match event.fields.get(TIMESTAMP) {
            Some(Value::String(s)) => parse_timestamp_ms(s),
            _ => None,
        };
        match parsed {
            Some(ms) => event.timestamp_ms = ms,
            None => {
                event
                    .fields
                    .insert(TIMESTAMP, Value::String(receipt.text.clone()));
                event.stamped_at_receipt = true;
            }
        }
        event
    }

    /// An event whose only field is `message` (used for input that is not a JSON object).
    pub fn from_message(message: impl Into<String>, received_ms: i64) -> Self {
        let mut fields = Fields::with_capacity(8);
        fields.insert("message", Value::String(message.into()));
        Event::from_fields(fields, received_ms)
    }

    /// The indexed document (without `@metadata`).
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// Mutable access to the document. Callers that change `@timestamp` must use
    /// [`Event::set_timestamp_ms`] instead so the cached time stays correct.
    pub fn fields_mut(&mut self) -> &mut Fields {
        &mut self.fields
    }

    pub fn metadata(&self) -> &Fields {
        &self.metadata
    }

    pub fn metadata_mut(&mut self) -> &mut Fields {
        &mut self.metadata
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// Whether `@timestamp` is the time of receipt the input added, not the event's own.
    pub fn stamped_at_receipt(&self) -> bool {
        self.stamped_at_receipt
    }

    /// Sets `@timestamp` (field and cached value) to `ms` since the epoch, formatted as
    /// RFC 3339 UTC with millisecond precision like Logstash.
    pub fn set_timestamp_ms(&mut self, ms: i64) {
        self.timestamp_ms = ms;
        self.stamped_at_receipt = false;
        // The date stage rewrites the receipt time of nearly every event: reuse its buffer.
        if let Some(Value::String(s)) = self.fields.get_mut(TIMESTAMP) {
            s.clear();
            write_timestamp_ms(ms, s);
            return;
        }
        let mut s = String::with_capacity(TIMESTAMP_LEN);
        write_timestamp_ms(ms, &mut s);
        self.fields.insert(TIMESTAMP, Value::String(s));
    }

    /// The value at `path`, if present.
    pub fn get(&self, path: &FieldPath) -> Option<&Value> {
        let (root, rest) = self.root_for(path)?;
        let (first, rest) = rest.split_first()?;
        let mut current = root.get_tagged(path.tag, first)?;
        for key in rest {
            current = current.as_object()?.get(key)?;
        }
        Some(current)
    }

    /// Mutable access to the value at `path`, if present.
    pub fn get_mut(&mut self, path: &FieldPath) -> Option<&mut Value> {
        let (root, rest) = self.root_for_mut(path)?;
        let (first, rest) = rest.split_first()?;
        let mut current = root.get_mut_tagged(path.tag, first)?;
        for key in rest {
            current = current.as_object_mut()?.get_mut(key)?;
        }
        Some(current)
    }

    pub fn contains(&self, path: &FieldPath) -> bool {
        self.get(path).is_some()
    }

    /// Writes `value` at `path`, creating intermediate objects and replacing non-object
    /// intermediates. Writing `@timestamp` with a parseable string keeps the cached time in step.
    pub fn insert(&mut self, path: &FieldPath, value: Value) {
        if path.is_timestamp() {
            if let Some(ms) = value.as_str().and_then(parse_timestamp_ms) {
                self.set_timestamp_ms(ms);
                return;
            }
        }
        let Some((root, rest)) = self.root_for_mut(path) else {
            return;
        };
        let Some((last, parents)) = rest.split_last() else {
            // A bare `[@metadata]` path replaces the whole metadata object.
            if let Value::Object(m) = value {
                self.metadata = Fields::from(m);
            }
            return;
        };
        let Some((first, parents)) = parents.split_first() else {
            root.insert(last, value);
            return;
        };
        // Look up before inserting: an owned key costs an allocation per call.
        if !root.contains_key(first) {
            root.insert(first, Value::Object(Map::new()));
        }
        let slot = root.get_mut(first).expect("key was just inserted");
        let mut current = object_in(slot);
        for key in parents {
            if !current.contains_key(key) {
                current.insert(key.clone(), Value::Object(Map::new()));
            }
            current = object_in(current.get_mut(key).expect("key was just inserted"));
        }
        // Filters mostly add new fields: one insert beats a lookup first.
        current.insert(last.clone(), value);
    }

    /// Writes a shared value at `path` without copying it when the path is a top-level field
    /// (a copy otherwise). `@timestamp` is never shared.
    pub fn insert_shared(&mut self, path: &FieldPath, value: &Arc<SharedValue>) {
        if path.keys.len() == 1 && !path.is_metadata() && !path.is_timestamp() {
            self.fields.insert_shared(&path.keys[0], Arc::clone(value));
        } else {
            self.insert(path, value.value().clone());
        }
    }

    /// Removes and returns the value at `path`.
    pub fn remove(&mut self, path: &FieldPath) -> Option<Value> {
        let (root, rest) = self.root_for_mut(path)?;
        let (last, parents) = rest.split_last()?;
        let Some((first, parents)) = parents.split_first() else {
            return root.remove(last);
        };
        let mut current = root.get_mut(first)?.as_object_mut()?;
        for key in parents {
            current = current.get_mut(key)?.as_object_mut()?;
        }
        current.remove(last)
    }

    /// True when `tags` holds `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        match self.fields.get(TAGS) {
            Some(Value::Array(tags)) => tags.iter().any(|t| t.as_str() == Some(tag)),
            Some(Value::String(t)) => t == tag,
            _ => false,
        }
    }

    /// Adds `tag` to `tags` unless present; a scalar `tags` becomes an array.
    pub fn add_tag(&mut self, tag: &str) {
        // One lookup (map lookups cost more than the tag) and no key allocation when `tags`
        // exists.
        let Some(slot) = self.fields.get_mut(TAGS) else {
            self.fields
                .insert(TAGS, Value::Array(vec![Value::String(tag.to_string())]));
            return;
        };
        match slot {
            Value::Array(tags) => {
                if !tags.iter().any(|t| t.as_str() == Some(tag)) {
                    tags.push(Value::String(tag.to_string()));
                }
            }
            Value::String(t) if t == tag => {}
            other => {
                let previous = std::mem::take(other);
                let mut tags = Vec::with_capacity(2);
                if !previous.is_null() {
                    tags.push(previous);
                }
                tags.push(Value::String(tag.to_string()));
                *other = Value::Array(tags);
            }
        }
    }

    fn root_for<'a, 'p>(&'a self, path: &'p FieldPath) -> Option<(&'a Fields, &'p [String])> {
        if path.is_metadata() {
            Some((&self.metadata, &path.keys[1..]))
        } else {
            Some((&self.fields, &path.keys[..]))
        }
    }

    fn root_for_mut<'a, 'p>(
        &'a mut self,
        path: &'p FieldPath,
    ) -> Option<(&'a mut Fields, &'p [String])> {
        if path.is_metadata() {
            Some((&mut self.metadata, &path.keys[1..]))
        } else {
            Some((&mut self.fields, &path.keys[..]))
        }
    }
}

/// The object in `slot`, replacing a value of another type by an empty object.
fn object_in(slot: &mut Value) -> &mut Map<String, Value> {
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("slot was just made an object")
}

/// A parsed field reference: `[a][b]` (Logstash style) or a bare top-level name `a`.
/// A bare name is taken literally, dots included, as Logstash does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    keys: Vec<String>,
    /// [`key_tag`] of the first key below the root (`@metadata` is a root of its own).
    tag: u32,
    /// True for paths under `@metadata`.
    metadata: bool,
}

/// Why a field reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field reference `{input}`: {reason}")]
pub struct FieldPathError {
    pub input: String,
    pub reason: &'static str,
}

impl FieldPath {
    pub fn parse(input: &str) -> Result<Self, FieldPathError> {
        let err = |reason| FieldPathError {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(err("it is empty"));
        }
        if !trimmed.starts_with('[') {
            if trimmed.contains('[') || trimmed.contains(']') {
                return Err(err("mixes a bare name with brackets; write `[a][b]`"));
            }
            return Ok(FieldPath::from_keys(vec![trimmed.to_string()]));
        }
        let mut keys = Vec::new();
        let mut rest = trimmed;
        while !rest.is_empty() {
            let Some(after_open) = rest.strip_prefix('[') else {
                return Err(err("expected `[` between path segments"));
            };
            let Some(close) = after_open.find(']') else {
                return Err(err("a `[` has no matching `]`"));
            };
            let key = &after_open[..close];
            if key.is_empty() {
                return Err(err("a segment `[]` is empty"));
            }
            if key.contains('[') {
                return Err(err("nested `[` inside a segment"));
            }
            keys.push(key.to_string());
            rest = &after_open[close + 1..];
        }
        Ok(FieldPath::from_keys(keys))
    }

    /// A path to a single top-level key.
    pub fn top(key: &str) -> Self {
        FieldPath::from_keys(vec![key.to_string()])
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    fn from_keys(keys: Vec<String>) -> Self {
        let metadata = keys.first().map(String::as_str) == Some(METADATA);
        let below_root = if metadata { keys.get(1) } else { keys.first() };
        let tag = below_root.map_or(0, |k| key_tag(k));
        FieldPath {
            keys,
            tag,
            metadata,
        }
    }

    pub fn is_metadata(&self) -> bool {
        self.metadata
    }

    pub fn is_timestamp(&self) -> bool {
        self.keys.len() == 1 && self.keys[0] == TIMESTAMP
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for key in &self.keys {
            write!(f, "[{key}]")?;
        }
        Ok(())
    }
}

/// Parses an ISO 8601 / RFC 3339 timestamp into epoch milliseconds. Accepts a `Z` or numeric
/// offset, `T` or space as separator, any fraction length, and a naive time taken as UTC.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    parse_rfc3339_fast(s).or_else(|| parse_timestamp_ms_slow(s))
}

fn parse_timestamp_ms_slow(s: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some(dt.timestamp_millis());
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(naive.and_utc().timestamp_millis());
        }
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    None
}

/// Length of a formatted timestamp such as `2026-11-27T10:15:02.123Z`.
const TIMESTAMP_LEN: usize = 24;
/// 10000-01-01T00:00:00Z: years from here on take chrono's (signed, wider) format.
const YEAR_10000_MS: i64 = 253_402_300_800_000;
const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// The common shapes `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` without chrono's general
/// parser; `None` sends anything else (leap seconds, other separators) the slow way.
fn parse_rfc3339_fast(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year.into(), month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u32;
    if b[i] == b'.' {
        i += 1;
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for k in 0..3 {
            millis = millis * 10
                + if k < digits {
                    u32::from(b[i + k] - b'0')
                } else {
                    0
                };
        }
        i += digits;
    }
    let offset_s: i64 = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let d = |c: &u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let (h, m) = (d(h1)? * 10 + d(h2)?, d(m1)? * 10 + d(m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year.into(), month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
        - offset_s;
    Some(secs * 1000 + i64::from(millis))
}

/// Writes `n` as `width` decimal digits ending just before `end`.
fn put_digits(buf: &mut [u8], end: usize, width: usize, mut n: u32) {
    for slot in buf[end - width..end].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Appends epoch milliseconds as `2026-11-27T10:15:02.123Z`, exactly as
/// [`format_timestamp_ms`] formats them, without allocating.
pub fn write_timestamp_ms(ms: i64, out: &mut String) {
    if !(0..YEAR_10000_MS).contains(&ms) {
        out.push_str(&format_timestamp_chrono(ms));
        return;
    }
    let (year, month, day) = civil_from_days(ms / DAY_MS);
    let in_day = (ms % DAY_MS) as u32;
    let secs = in_day / 1000;
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut buf, 4, 4, year as u32);
    put_digits(&mut buf, 7, 2, month);
    put_digits(&mut buf, 10, 2, day);
    put_digits(&mut buf, 13, 2, secs / 3600);
    put_digits(&mut buf, 16, 2, secs / 60 % 60);
    put_digits(&mut buf, 19, 2, secs % 60);
    put_digits(&mut buf, 23, 3, in_day % 1000);
    out.push_str(std::str::from_utf8(&buf).expect("ASCII digits and separators"));
}

/// Formats epoch milliseconds as `2026-11-27T10:15:02.123Z`.
pub fn format_timestamp_ms(ms: i64) -> String {
    let mut out = String::with_capacity(TIMESTAMP_LEN);
    write_timestamp_ms(ms, &mut out);
    out
}

fn format_timestamp_chrono(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => Utc
            .timestamp_millis_opt(0)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: Value) -> Event {
        Event::from_map(v.as_object().unwrap().clone(), 1_000)
    }

    #[test]
    fn parses_bracketed_and_bare_paths() {
        assert_eq!(FieldPath::parse("[a][b]").unwrap().keys(), ["a", "b"]);
        assert_eq!(
            FieldPath::parse("log.file.path").unwrap().keys(),
            ["log.file.path"]
        );
        assert_eq!(FieldPath::parse("[a]").unwrap().to_string(), "[a]");
        for bad in ["", "[a", "[]", "a[b]", "[a]b", "[a[b]]"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn gets_inserts_and_removes_nested_fields() {
        let mut e = event(json!({"fields": {"environment": "prod"}}));
        let env = FieldPath::parse("[fields][environment]").unwrap();
        assert_eq!(e.get(&env), Some(&json!("prod")));
        let deep = FieldPath::parse("[a][b][c]").unwrap();
        e.insert(&deep, json!(1));
        assert_eq!(e.fields()["a"], json!({"b": {"c": 1}}));
        assert_eq!(e.remove(&deep), Some(json!(1)));
        assert_eq!(e.get(&deep), None);
        // a scalar in the way is replaced by an object
        e.insert(&FieldPath::top("x"), json!(5));
        e.insert(&FieldPath::parse("[x][y]").unwrap(), json!(true));
        assert_eq!(e.fields()["x"], json!({"y": true}));
    }

    #[test]
    fn metadata_is_separate_from_fields() {
        let mut e = event(json!({"@metadata": {"beat": "filebeat"}, "a": 1}));
        let beat = FieldPath::parse("[@metadata][beat]").unwrap();
        assert_eq!(e.get(&beat), Some(&json!("filebeat")));
        assert!(!e.fields().contains_key("@metadata"));
        e.insert(&FieldPath::parse("[@metadata][index]").unwrap(), json!("x"));
        assert_eq!(e.metadata()["index"], json!("x"));
    }

    #[test]
    fn timestamp_defaults_to_receipt_and_follows_the_field() {
        let e = event(json!({"a": 1}));
        assert_eq!(e.timestamp_ms(), 1_000);
        assert_eq!(e.fields()["@timestamp"], json!("1970-01-01T00:00:01.000Z"));
        let e = event(json!({"@timestamp": "2026-11-27T10:15:02.123Z"}));
        assert_eq!(e.timestamp_ms(), 1_795_774_502_123);
        let mut e = event(json!({"@timestamp": "garbage"}));
        assert_eq!(e.timestamp_ms(), 1_000);
        e.insert(&FieldPath::top("@timestamp"), json!("2026-11-27T00:00:00Z"));
        assert_eq!(e.timestamp_ms(), 1_795_737_600_000);
    }

    #[test]
    fn parses_iso8601_variants() {
        let want = 1_795_774_502_123;
        for s in [
            "2026-11-27T10:15:02.123Z",
            "2026-11-27T10:15:02.123456+00:00",
            "2026-11-27T17:15:02.123+07:00",
            "2026-11-27 10:15:02.123Z",
            "2026-11-27T10:15:02.123",
            "2026-11-27T10:15:02.123+0000",
        ] {
            assert_eq!(parse_timestamp_ms(s), Some(want), "{s}");
        }
        assert_eq!(parse_timestamp_ms("yesterday"), None);
        assert_eq!(parse_timestamp_ms(""), None);
    }

    #[test]
    fn tags_are_an_array_without_duplicates() {
        let mut e = event(json!({"tags": "beats"}));
        e.add_tag("error");
        e.add_tag("error");
        assert_eq!(e.fields()["tags"], json!(["beats", "error"]));
        assert!(e.has_tag("beats") && e.has_tag("error") && !e.has_tag("x"));
        let mut e = event(json!({}));
        e.add_tag("a");
        assert_eq!(e.fields()["tags"], json!(["a"]));
        let mut e = event(json!({"tags": null}));
        e.add_tag("a");
        assert_eq!(e.fields()["tags"], json!(["a"]));
        let mut e = event(json!({"tags": "a"}));
        e.add_tag("a");
        assert_eq!(e.fields()["tags"], json!("a"));
    }

    #[test]
    fn insert_replaces_existing_values_and_objects() {
        let mut e = event(json!({"a": {"b": 1, "c": 2}, "d": 3}));
        e.insert(&FieldPath::parse("[a][b]").unwrap(), json!("x"));
        e.insert(&FieldPath::top("d"), json!([1]));
        assert_eq!(e.fields()["a"], json!({"b": "x", "c": 2}));
        assert_eq!(e.fields()["d"], json!([1]));
        e.set_timestamp_ms(0);
        e.set_timestamp_ms(1_795_774_502_123);
        assert_eq!(e.fields()["@timestamp"], json!("2026-11-27T10:15:02.123Z"));
    }

    #[test]
    fn fast_timestamp_formatting_matches_chrono() {
        let mut ms: i64 = -62_135_596_800_000 - 5;
        let mut samples = vec![
            i64::MIN,
            i64::MAX,
            -1,
            0,
            1,
            951_782_400_000,
            4_107_542_399_999,
            YEAR_10000_MS - 1,
            YEAR_10000_MS,
        ];
        while ms < 300_000_000_000_000 {
            samples.push(ms);
            ms += 7_777_777_777 + ms.abs() / 1000;
        }
        for ms in samples {
            assert_eq!(format_timestamp_ms(ms), format_timestamp_chrono(ms), "{ms}");
        }
    }

    #[test]
    fn fast_timestamp_parsing_matches_chrono() {
        let chrono_ms = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| d.timestamp_millis())
        };
        let mut inputs: Vec<String> = [
            "2026-11-27T10:15:02.123Z",
            "2026-11-27T10:15:02Z",
            "2026-11-27T10:15:02.1Z",
            "2026-11-27T10:15:02.123456789123+00:00",
            "2026-11-28T00:30:00+07:00",
            "1969-12-31T23:59:59.999-00:30",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999+23:59",
            "2024-02-29T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T10:60:00Z",
            "2026-11-27T10:15:02.Z",
            "2026-11-27T10:15:02+24:00",
            "2026-11-27T10:15:02+0700",
            "2026-11-27T10:15:02",
            "2026-11-27t10:15:02z",
            "2026-11-27T10:15:02.123Zjunk",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for day in (0..3_000_000).step_by(4_999) {
            let ms = day as i64 * 86_400_000 - 62_135_596_800_000 + day as i64 * 17;
            inputs.push(format_timestamp_chrono(ms));
        }
        let mut fast_hits = 0;
        for s in &inputs {
            if let Some(fast) = parse_rfc3339_fast(s) {
                fast_hits += 1;
                assert_eq!(Some(fast), chrono_ms(s), "{s}");
                assert_eq!(Some(fast), parse_timestamp_ms_slow(s), "{s}");
            }
        }
        // The canonical shapes take the fast path; the edge cases go the slow way.
        assert!(
            fast_hits >= inputs.len() - 20,
            "{fast_hits} of {}",
            inputs.len()
        );
    }
}
