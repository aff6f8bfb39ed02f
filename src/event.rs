//! The event flowing through the pipeline: a JSON object, its `@metadata` (never indexed),
//! Logstash-style field paths (`[a][b]`) and the event's timestamp kept as epoch milliseconds.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value};
use std::fmt;

/// The field name Logstash and Elasticsearch use for the event time.
pub const TIMESTAMP: &str = "@timestamp";
/// The field holding the event's tags (an array of strings).
pub const TAGS: &str = "tags";
/// The root key that addresses metadata in field paths.
pub const METADATA: &str = "@metadata";

/// One event: the document that is indexed plus metadata that is not.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    fields: Map<String, Value>,
    metadata: Map<String, Value>,
    /// `@timestamp` as milliseconds since the Unix epoch (UTC); kept in step with the field.
    timestamp_ms: i64,
}

impl Event {
    /// An event from a decoded JSON object, stamped `received_ms` when it carries no usable
    /// `@timestamp` of its own. A `@metadata` key in the input moves into the metadata.
    pub fn from_map(mut fields: Map<String, Value>, received_ms: i64) -> Self {
        let metadata = match fields.remove(METADATA) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut event = Event {
            fields,
            metadata,
            timestamp_ms: received_ms,
        };
        let parsed = match event.fields.get(TIMESTAMP) {
            Some(Value::String(s)) => parse_timestamp_ms(s),
            _ => None,
        };
        match parsed {
            Some(ms) => event.timestamp_ms = ms,
            None => event.set_timestamp_ms(received_ms),
        }
        event
    }

    /// An event whose only field is `message` (used for input that is not a JSON object).
    pub fn from_message(message: impl Into<String>, received_ms: i64) -> Self {
        let mut fields = Map::new();
        fields.insert("message".to_string(), Value::String(message.into()));
        Event::from_map(fields, received_ms)
    }

    /// The indexed document (without `@metadata`).
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// Mutable access to the document. Callers that change `@timestamp` must use
    /// [`Event::set_timestamp_ms`] instead so the cached time stays correct.
    pub fn fields_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.fields
    }

    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    pub fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.metadata
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// Sets `@timestamp` (field and cached value) to `ms` since the epoch, formatted as
    /// RFC 3339 UTC with millisecond precision like Logstash.
    pub fn set_timestamp_ms(&mut self, ms: i64) {
        self.timestamp_ms = ms;
        self.fields.insert(
            TIMESTAMP.to_string(),
            Value::String(format_timestamp_ms(ms)),
        );
    }

    /// The value at `path`, if present.
    pub fn get(&self, path: &FieldPath) -> Option<&Value> {
        let (root, rest) = self.root_for(path)?;
        let mut current = root.get(rest.first()?)?;
        for key in &rest[1..] {
            current = current.as_object()?.get(key)?;
        }
        Some(current)
    }

    /// Mutable access to the value at `path`, if present.
    pub fn get_mut(&mut self, path: &FieldPath) -> Option<&mut Value> {
        let (root, rest) = self.root_for_mut(path)?;
        let mut current = root.get_mut(rest.first()?)?;
        for key in &rest[1..] {
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
                self.metadata = m;
            }
            return;
        };
        let mut current = root;
        for key in parents {
            let slot = current
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            current = slot.as_object_mut().expect("slot was just made an object");
        }
        current.insert(last.clone(), value);
    }

    /// Removes and returns the value at `path`.
    pub fn remove(&mut self, path: &FieldPath) -> Option<Value> {
        let (root, rest) = self.root_for_mut(path)?;
        let (last, parents) = rest.split_last()?;
        let mut current = root;
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
        if self.has_tag(tag) {
            return;
        }
        let slot = self
            .fields
            .entry(TAGS.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        match slot {
            Value::Array(tags) => tags.push(Value::String(tag.to_string())),
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

    fn root_for<'a, 'p>(
        &'a self,
        path: &'p FieldPath,
    ) -> Option<(&'a Map<String, Value>, &'p [String])> {
        if path.is_metadata() {
            Some((&self.metadata, &path.keys[1..]))
        } else {
            Some((&self.fields, &path.keys[..]))
        }
    }

    fn root_for_mut<'a, 'p>(
        &'a mut self,
        path: &'p FieldPath,
    ) -> Option<(&'a mut Map<String, Value>, &'p [String])> {
        if path.is_metadata() {
            Some((&mut self.metadata, &path.keys[1..]))
        } else {
            Some((&mut self.fields, &path.keys[..]))
        }
    }
}

/// A parsed field reference: `[a][b]` (Logstash style) or a bare top-level name `a`.
/// A bare name is taken literally, dots included, as Logstash does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    keys: Vec<String>,
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
            return Ok(FieldPath {
                keys: vec![trimmed.to_string()],
            });
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
        Ok(FieldPath { keys })
    }

    /// A path to a single top-level key.
    pub fn top(key: &str) -> Self {
        FieldPath {
            keys: vec![key.to_string()],
        }
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    pub fn is_metadata(&self) -> bool {
        self.keys.first().map(String::as_str) == Some(METADATA)
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

/// Formats epoch milliseconds as `2026-11-27T10:15:02.123Z`.
pub fn format_timestamp_ms(ms: i64) -> String {
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
    }
}
