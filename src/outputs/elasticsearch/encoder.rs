//! Bulk encoding, done in the filter workers: each event becomes an action line and its document
//! in a chunk buffer, with per-item byte ranges so single items can be resent or dead-lettered.
//! Index names from a date-only template are rendered once per UTC day and cached with their
//! prebuilt action line; a document id, when configured, is rendered per event into it.

use crate::event::Event;
use crate::json::write::write_str;
use crate::template::Template;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const DAY_MS: i64 = 86_400_000;
/// Days kept in the cache; a batch rarely spans more than two (midnight, late events).
const CACHED_DAYS: usize = 4;
/// Elasticsearch's longest `_id` in bytes; a longer one could fail the whole bulk request.
const MAX_ID: usize = 512;

/// Encoded bulk items: `items[i]` ends at byte `ends[i]` of `buf`; each item is an action line
/// and a document line.
#[derive(Debug, Default)]
pub struct Chunk {
    pub buf: Vec<u8>,
    pub ends: Vec<u32>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of item `i` (action line and document line).
    pub fn item(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.buf[start..self.ends[i] as usize]
    }
}

/// An item split back into its parts, for the dead-letter file.
pub struct ItemParts<'a> {
    pub index: String,
    /// The `_id` the action gave the document, if any.
    pub id: Option<String>,
    /// The document as sent (one JSON object, no newline).
    pub document: &'a [u8],
}

/// The bulk action of every item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Action {
    /// Index the document, replacing one with the same `_id`.
    #[default]
    Index,
    /// Create it; one with the same `_id` already there is kept (HTTP 409 for the item).
    Create,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Index => "index",
            Action::Create => "create",
        }
    }
}

/// How items are identified: `_id` templates tried in order, and the action.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    pub templates: Vec<Template>,
    pub action: Action,
}

/// Splits an encoded item into its index name and document.
pub fn split_item(item: &[u8]) -> ItemParts<'_> {
    let newline = memchr::memchr(b'\n', item).unwrap_or(item.len());
    let action = &item[..newline];
    let mut document = item.get(newline + 1..).unwrap_or_default();
    if document.last() == Some(&b'\n') {
        document = &document[..document.len() - 1];
    }
    let meta = serde_json::from_slice::<serde_json::Value>(action)
        .ok()
        .and_then(|v| v.get("index").or_else(|| v.get("create")).cloned());
    let field = |name: &str| {
        meta.as_ref()
            .and_then(|m| m.get(name)?.as_str().map(str::to_string))
    };
    ItemParts {
        index: field("_index").unwrap_or_default(),
        id: field("_id"),
        document,
    }
}

/// Bulk action lines already rendered, one per day number (`days since the epoch`, line).
type DayNames = Vec<(i64, Arc<[u8]>)>;

/// Turns events into bulk items for one index template.
pub struct Encoder {
    index: Template,
    ids: Ids,
    /// `Some` when the index name depends only on the event day.
    days: Option<ArcSwap<DayNames>>,
    day_renders: AtomicU64,
}

impl Encoder {
    /// An encoder of `index` actions without `_id`.
    pub fn new(index: Template) -> Self {
        Encoder::with_ids(index, Ids::default())
    }

    pub fn with_ids(index: Template, ids: Ids) -> Self {
        let days = index
            .depends_only_on_date()
            .then(|| ArcSwap::from_pointee(Vec::new()));
        Encoder {
            index,
            ids,
            days,
            day_renders: AtomicU64::new(0),
        }
    }

    /// How many times a per-day action line was rendered (cache misses).
    #[cfg(test)]
    pub fn day_renders(&self) -> u64 {
        self.day_renders.load(Ordering::Relaxed)
    }

    /// Appends every event to `chunk`.
    pub fn encode(&self, events: &[&Event], chunk: &mut Chunk) {
        let mut scratch = String::new();
        let mut id = String::new();
        let mut cache = self.days.as_ref().map(|d| d.load_full());
        for event in events {
            let action_start = chunk.buf.len();
            match (&self.days, &mut cache) {
                (Some(days), Some(cache)) => {
                    let day = event.timestamp_ms().div_euclid(DAY_MS);
                    let line = match cache.iter().find(|(d, _)| *d == day) {
                        Some((_, line)) => line.clone(),
                        None => {
                            let line = self.render_day(day);
                            let mut next: DayNames = Vec::with_capacity(CACHED_DAYS);
                            next.push((day, line.clone()));
                            next.extend(cache.iter().take(CACHED_DAYS - 1).cloned());
                            let next = Arc::new(next);
                            days.store(next.clone());
                            *cache = next;
                            line
                        }
                    };
                    chunk.buf.extend_from_slice(&line);
                }
                _ => {
                    scratch.clear();
                    self.render_name(event, &mut scratch);
                    write_action(self.ids.action, &scratch, &mut chunk.buf);
                }
            }
            if self.render_id(event, &mut id) {
                insert_id(&id, action_start, &mut chunk.buf);
            }
            // A document of JSON values always serialises; this writer escapes faster.
            event.fields().write_json(&mut chunk.buf);
            chunk.buf.push(b'\n');
            chunk.ends.push(chunk.buf.len() as u32);
        }
    }

    /// The index `event` goes to (`sheepdog test` and `tap` show it without encoding).
    pub fn index_name(&self, event: &Event) -> String {
        let mut name = String::new();
        if self.days.is_some() {
            let day = event.timestamp_ms().div_euclid(DAY_MS);
            self.index.render_for_time(day * DAY_MS, &mut name);
        } else {
            self.render_name(event, &mut name);
        }
        name
    }

    /// Renders the first `_id` template whose fields are all present and whose text is not
    /// empty and not too long into `out`; `false` when there is none.
    fn render_id(&self, event: &Event, out: &mut String) -> bool {
        for template in &self.ids.templates {
            out.clear();
            if template.render_into(event, out).is_ok() && !out.is_empty() && out.len() <= MAX_ID {
                return true;
            }
        }
        false
    }

    fn render_name(&self, event: &Event, out: &mut String) {
        if self.index.render_into(event, out).is_err() {
            // Like Logstash: a missing field leaves the reference in the name.
            out.clear();
            out.push_str(self.index.source());
        }
    }

    fn render_day(&self, day: i64) -> Arc<[u8]> {
        self.day_renders.fetch_add(1, Ordering::Relaxed);
        let mut name = String::new();
        self.index.render_for_time(day * DAY_MS, &mut name);
        let mut line = Vec::with_capacity(name.len() + 24);
        write_action(self.ids.action, &name, &mut line);
        line.into()
    }
}

/// `{"<action>":{"_index":"<index>"}}` and a newline.
fn write_action(action: Action, index: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(action.name().as_bytes());
    out.extend_from_slice(br#"":{"_index":"#);
    // An index name is a JSON string; serde_json escapes what needs escaping.
    let _ = serde_json::to_writer(&mut *out, index);
    out.extend_from_slice(b"}}\n");
}

/// Adds `"_id"` to the action line that starts at `start` and ends `buf`.
fn insert_id(id: &str, start: usize, buf: &mut Vec<u8>) {
    // The line ends in `}}\n`: cut that, add the id, close it again.
    debug_assert!(buf[start..].ends_with(b"}}\n"));
    buf.truncate(buf.len() - 3);
    buf.extend_from_slice(br#","_id":"#);
    write_str(id, buf);
    buf.extend_from_slice(b"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: serde_json::Value, ts: i64) -> Event {
        Event::from_map(v.as_object().unwrap().clone(), ts)
    }

    // 2026-11-27T10:15:02.123Z and the next day
    const DAY1: i64 = 1_795_774_502_123;
    const DAY2: i64 = DAY1 + DAY_MS;

    #[test]
    fn encodes_exact_bytes_without_metadata() {
        let enc = Encoder::new(Template::compile("logs-%{+YYYY.MM.dd}").unwrap());
        let a = event(
            json!({"@metadata": {"secret": 1}, "model": "gpt-4.1", "total_tokens": 12}),
            DAY1,
        );
        let b = event(json!({"msg": "quote \" and\nnewline"}), DAY2);
        let mut chunk = Chunk::default();
        enc.encode(&[&a, &b], &mut chunk);
        let want_a = concat!(
            "{\"index\":{\"_index\":\"logs-2026.11.27\"}}\n",
            "{\"model\":\"gpt-4.1\",\"total_tokens\":12,\"@timestamp\":\"2026-11-27T10:15:02.123Z\"}\n",
        );
        let want_b = concat!(
            "{\"index\":{\"_index\":\"logs-2026.11.28\"}}\n",
            "{\"msg\":\"quote \\\" and\\nnewline\",\"@timestamp\":\"2026-11-28T10:15:02.123Z\"}\n",
        );
        assert_eq!(
            String::from_utf8(chunk.buf.clone()).unwrap(),
            format!("{want_a}{want_b}")
        );
        assert_eq!(chunk.len(), 2);
        assert_eq!(chunk.item(0), want_a.as_bytes());
        assert_eq!(chunk.item(1), want_b.as_bytes());
        let parts = split_item(chunk.item(1));
        assert_eq!(parts.index, "logs-2026.11.28");
        assert_eq!(
            parts.document,
            br#"{"msg":"quote \" and\nnewline","@timestamp":"2026-11-28T10:15:02.123Z"}"#
        );
    }

    #[test]
    fn renders_each_day_once() {
        let enc = Encoder::new(Template::compile("logs-%{+YYYY.MM.dd}").unwrap());
        let events: Vec<Event> = (0..100)
            .map(|i| event(json!({"i": i}), if i % 2 == 0 { DAY1 } else { DAY2 + i }))
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let mut chunk = Chunk::default();
        enc.encode(&refs, &mut chunk);
        enc.encode(&refs, &mut chunk);
        assert_eq!(enc.day_renders(), 2);
        assert_eq!(chunk.len(), 200);
        assert!(split_item(chunk.item(0)).index.ends_with("11.27"));
        assert!(split_item(chunk.item(1)).index.ends_with("11.28"));
        // Before the epoch the day still rounds down.
        let old = event(json!({}), -1);
        let mut chunk = Chunk::default();
        enc.encode(&[&old], &mut chunk);
        assert_eq!(split_item(chunk.item(0)).index, "logs-1969.12.31");
        assert_eq!(enc.day_renders(), 3);
    }

    #[test]
    fn index_name_is_the_name_encode_writes() {
        for source in ["logs-%{+YYYY.MM.dd}", "logs-%{[service]}-%{+YYYY}", "fixed"] {
            let enc = Encoder::new(Template::compile(source).unwrap());
            for e in [
                event(json!({"service": "api"}), DAY1),
                event(json!({}), DAY2),
                event(json!({}), -1),
            ] {
                let mut chunk = Chunk::default();
                enc.encode(&[&e], &mut chunk);
                assert_eq!(
                    enc.index_name(&e),
                    split_item(chunk.item(0)).index,
                    "{source}"
                );
            }
        }
    }

    #[test]
    fn field_templates_render_per_event() {
        let enc = Encoder::new(Template::compile("logs-%{[service]}-%{+YYYY}").unwrap());
        let a = event(json!({"service": "api"}), DAY1);
        let b = event(json!({}), DAY1);
        let mut chunk = Chunk::default();
        enc.encode(&[&a, &b], &mut chunk);
        assert_eq!(split_item(chunk.item(0)).index, "logs-api-2026");
        assert_eq!(
            split_item(chunk.item(1)).index,
            "logs-%{[service]}-%{+YYYY}"
        );
        assert_eq!(enc.day_renders(), 0);
    }

    #[test]
    fn document_ids_fall_back_in_order_and_create_is_the_action() {
        let ids = Ids {
            templates: vec![
                Template::compile("%{request_id}").unwrap(),
                Template::compile("%{[@metadata][fingerprint]}").unwrap(),
            ],
            action: Action::Create,
        };
        for index in ["logs-%{+YYYY.MM.dd}", "logs-%{[service]}"] {
            let enc = Encoder::with_ids(Template::compile(index).unwrap(), ids.clone());
            let with_id = event(json!({"request_id": "r-\"1", "service": "api"}), DAY1);
            let mut fingerprinted = event(json!({"request_id": "", "service": "api"}), DAY1);
            fingerprinted
                .metadata_mut()
                .insert("fingerprint", json!("0123abcd"));
            let neither = event(
                json!({"service": "api", "request_id": "x".repeat(513)}),
                DAY1,
            );
            let mut chunk = Chunk::default();
            enc.encode(&[&with_id, &fingerprinted, &neither], &mut chunk);
            let name = if index.contains("service") {
                "logs-api"
            } else {
                "logs-2026.11.27"
            };
            let action = |i: usize| {
                let item = chunk.item(i);
                String::from_utf8(item[..memchr::memchr(b'\n', item).unwrap()].to_vec()).unwrap()
            };
            assert_eq!(
                action(0),
                format!(r#"{{"create":{{"_index":"{name}","_id":"r-\"1"}}}}"#)
            );
            assert_eq!(
                action(1),
                format!(r#"{{"create":{{"_index":"{name}","_id":"0123abcd"}}}}"#),
                "an empty request_id falls back to the fingerprint"
            );
            assert_eq!(
                action(2),
                format!(r#"{{"create":{{"_index":"{name}"}}}}"#),
                "an id over 512 bytes is not sent"
            );
            assert_eq!(split_item(chunk.item(0)).index, name);
            assert_eq!(
                split_item(chunk.item(0)).document,
                br#"{"request_id":"r-\"1","service":"api","@timestamp":"2026-11-27T10:15:02.123Z"}"#
            );
        }
    }
}
