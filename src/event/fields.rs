//! The top-level field storage of an event: keys in arrival order in one vector, short keys
//! stored inline. An event has a few dozen fields, so a scan that compares lengths first beats
//! a tree (no node allocations, no key comparisons on insert, one free on drop), and decoding
//! pushes fields without re-sorting them. Objects below the top level stay `serde_json` maps.
//!
//! A field can also hold a [`SharedValue`]: a value computed once and handed to many events
//! (a GeoIP or user-agent answer from a cache) together with its compact JSON, so an event
//! takes it with a reference count instead of a deep copy and outputs copy its bytes.

use crate::json::{decode_object, write, DecodeError, FieldJson, ObjectSink};
use compact_str::CompactString;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// A field name; up to 24 bytes are stored without an allocation.
pub type Key = CompactString;

/// Above this many fields (when the bloom bits no longer rule out most keys), decoding finds
/// duplicate keys through a hash index instead of a scan, so a hostile document with many keys
/// costs linear time.
const SCAN_LIMIT: usize = 64;

/// A value shared by many events, with its compact JSON rendered once.
#[derive(Debug, PartialEq)]
pub struct SharedValue {
    value: Value,
    json: Box<[u8]>,
}

impl SharedValue {
    pub fn new(value: Value) -> Arc<Self> {
        let mut json = Vec::new();
        write::write_value(&value, &mut json);
        Arc::new(SharedValue {
            value,
            json: json.into_boxed_slice(),
        })
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The value as compact JSON, byte for byte what [`write::write_value`] writes.
    pub fn json(&self) -> &[u8] {
        &self.json
    }
}

#[derive(Debug, Clone)]
enum Slot {
    Owned(Value),
    Shared(Arc<SharedValue>),
}

impl Slot {
    fn value(&self) -> &Value {
        match self {
            Slot::Owned(v) => v,
            Slot::Shared(s) => &s.value,
        }
    }

    /// The value for writing; a shared value is copied out first.
    fn value_mut(&mut self) -> &mut Value {
        if let Slot::Shared(s) = self {
            *self = Slot::Owned(s.value.clone());
        }
        match self {
            Slot::Owned(v) => v,
            Slot::Shared(_) => unreachable!("a shared slot was just replaced by an owned one"),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Slot::Owned(v) => v,
            Slot::Shared(s) => Arc::try_unwrap(s)
                .map(|s| s.value)
                .unwrap_or_else(|s| s.value.clone()),
        }
    }
}

/// A key's length and three of its bytes in one word: a scan compares words and looks at the
/// bytes only when they agree (nearly always the key sought).
#[inline]
pub fn key_tag(key: &str) -> u32 {
    let b = key.as_bytes();
    match b.len() {
        0 => 0,
        n => {
            (n as u32 & 0xff)
                | u32::from(b[0]) << 8
                | u32::from(b[n / 2]) << 16
                | u32::from(b[n - 1]) << 24
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    tag: u32,
    key: Key,
    slot: Slot,
}

impl Entry {
    fn new(key: Key, slot: Slot) -> Self {
        Entry {
            tag: key_tag(&key),
            key,
            slot,
        }
    }

    #[inline]
    fn is(&self, tag: u32, key: &str) -> bool {
        self.tag == tag && self.key.as_str() == key
    }
}

/// An ordered JSON object of top-level fields.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    entries: Vec<Entry>,
    /// One bit per key tag ever inserted ([`bloom_bit`]): a lookup of a key whose bit is clear
    /// (most lookups of absent fields, and every new key while decoding) skips the scan.
    /// Removals leave their bit set, which costs only a scan.
    bloom: u64,
}

#[inline]
fn bloom_bit(tag: u32) -> u64 {
    1 << (tag.wrapping_mul(0x9E37_79B1) >> 26)
}

static NULL: Value = Value::Null;

impl Fields {
    pub fn new() -> Self {
        Fields::default()
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Fields {
            entries: Vec::with_capacity(capacity),
            bloom: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[inline]
    fn may_contain(&self, tag: u32) -> bool {
        self.bloom & bloom_bit(tag) != 0
    }

    #[inline]
    fn position(&self, tag: u32, key: &str) -> Option<usize> {
        if !self.may_contain(tag) {
            return None;
        }
        self.entries.iter().position(|e| e.is(tag, key))
    }

    fn push_entry(&mut self, entry: Entry) {
        self.bloom |= bloom_bit(entry.tag);
        self.entries.push(entry);
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.get_tagged(key_tag(key), key)
    }

    /// [`Fields::get`] with the key's [`key_tag`] computed beforehand.
    #[inline]
    pub fn get_tagged(&self, tag: u32, key: &str) -> Option<&Value> {
        let i = self.position(tag, key)?;
        Some(self.entries[i].slot.value())
    }

    /// Mutable access; a shared value becomes the event's own copy.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.get_mut_tagged(key_tag(key), key)
    }

    /// [`Fields::get_mut`] with the key's [`key_tag`] computed beforehand.
    #[inline]
    pub fn get_mut_tagged(&mut self, tag: u32, key: &str) -> Option<&mut Value> {
        let i = self.position(tag, key)?;
        Some(self.entries[i].slot.value_mut())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key_tag(key), key).is_some()
    }

    /// Sets `key` to `value`, keeping the field's place when it exists; returns the old value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: Value) -> Option<Value> {
        self.put(key.as_ref(), Slot::Owned(value))
    }

    /// Sets `key` to a shared value (no copy); returns the old value.
    pub fn insert_shared(&mut self, key: &str, value: Arc<SharedValue>) -> Option<Value> {
        self.put(key, Slot::Shared(value))
    }

    fn put(&mut self, key: &str, slot: Slot) -> Option<Value> {
        let tag = key_tag(key);
        match self.position(tag, key) {
            Some(i) => Some(std::mem::replace(&mut self.entries[i].slot, slot).into_value()),
            None => {
                self.push_entry(Entry {
                    tag,
                    key: Key::from(key),
                    slot,
                });
                None
            }
        }
    }

    /// Removes `key`, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.position(key_tag(key), key)?;
        Some(self.entries.remove(i).slot.into_value())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.slot.value()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.key.as_str())
    }

    /// The fields as the outputs write them (shared values as their rendered JSON).
    pub fn iter_json(&self) -> impl Iterator<Item = (&str, FieldJson<'_>)> {
        self.entries.iter().map(|e| {
            let json = match &e.slot {
                Slot::Owned(v) => FieldJson::Value(v),
                Slot::Shared(s) => FieldJson::Json(&s.json),
            };
            (e.key.as_str(), json)
        })
    }

    /// Appends the fields as a compact JSON object (shared values as their rendered JSON).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write::write_members(self.iter_json(), out);
    }

    /// A `serde_json` map of the fields (sorted by key), for callers that need one.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// Decodes a JSON object; anything else is an error.
    pub fn from_json_str(text: &str) -> Result<Fields, DecodeError> {
        let mut decoded = Decoded {
            // Room for the document's fields and those the filters add, so the vector is not
            // reallocated halfway through the pipeline.
            fields: Fields::with_capacity(32),
            index: None,
        };
        decode_object(text, &mut decoded)?;
        Ok(decoded.fields)
    }

    /// Decodes a JSON object from bytes, which must be UTF-8.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Fields, DecodeError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Fields::from_json_str(text),
            Err(e) => Err(DecodeError {
                reason: "invalid UTF-8",
                offset: e.valid_up_to(),
            }),
        }
    }
}

impl PartialEq for Fields {
    /// Equal as JSON objects: the same keys with equal values, in any order.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Self {
        let mut fields = Fields::with_capacity(map.len());
        for (k, v) in map {
            fields.push_entry(Entry::new(Key::from(k), Slot::Owned(v)));
        }
        fields
    }
}

impl From<Fields> for Value {
    fn from(fields: Fields) -> Self {
        Value::Object(
            fields
                .entries
                .into_iter()
                .map(|e| (e.key.into_string(), e.slot.into_value()))
                .collect(),
        )
    }
}

impl std::ops::Index<&str> for Fields {
    type Output = Value;

    /// The value at `key`, or `null` when absent (as `serde_json::Value` indexes).
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Fields being decoded, with the index of their keys once there are many.
struct Decoded {
    fields: Fields,
    index: Option<HashMap<Key, usize>>,
}

impl ObjectSink for Decoded {
    #[inline]
    fn member(&mut self, name: &str, value: Value) {
        self.fields
            .push_decoded(Key::from(name), value, &mut self.index);
    }
}

impl Fields {
    /// Adds a decoded field; a repeated key replaces the earlier value (last one wins, as
    /// `serde_json` maps decode).
    fn push_decoded(&mut self, key: Key, value: Value, index: &mut Option<HashMap<Key, usize>>) {
        if index.is_none() && self.entries.len() >= SCAN_LIMIT {
            let built = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.key.clone(), i))
                .collect();
            *index = Some(built);
        }
        let tag = key_tag(&key);
        let existing = match index {
            Some(index) => index.get(key.as_str()).copied(),
            None => self.position(tag, &key),
        };
        match existing {
            Some(i) => self.entries[i].slot = Slot::Owned(value),
            None => {
                if let Some(index) = index {
                    index.insert(key.clone(), self.entries.len());
                }
                self.push_entry(Entry {
                    tag,
                    key,
                    slot: Slot::Owned(value),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_objects_in_arrival_order_with_last_duplicate_winning() {
        let f = Fields::from_json_str(r#"{"b":1,"a":{"x":[1,2]},"b":3,"c\"d":"é"}"#).unwrap();
        assert_eq!(f.keys().collect::<Vec<_>>(), ["b", "a", "c\"d"]);
        assert_eq!(f["b"], json!(3));
        assert_eq!(f["a"], json!({"x": [1, 2]}));
        assert_eq!(f["c\"d"], json!("é"));
        assert_eq!(f["missing"], Value::Null);
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        for text in ["[1]", "1", "\"s\"", "{\"a\":", "{1:2}", "null"] {
            assert!(Fields::from_json_str(text).is_err(), "{text}");
        }
        assert!(Fields::from_json_slice(b"{\"a\":\"\xff\"}").is_err());
    }

    #[test]
    fn many_keys_and_duplicates_decode_through_the_index() {
        let mut text = String::from("{");
        for i in 0..5000 {
            text.push_str(&format!("\"k{}\":{i},", i % 2500));
        }
        text.push_str("\"end\":true}");
        let f = Fields::from_json_str(&text).unwrap();
        assert_eq!(f.len(), 2501);
        assert_eq!(f["k0"], json!(2500));
        assert_eq!(f["k2499"], json!(4999));
        assert_eq!(f.keys().last(), Some("end"));
    }

    #[test]
    fn insert_keeps_the_place_and_remove_keeps_the_order() {
        let mut f = Fields::new();
        assert_eq!(f.insert("a", json!(1)), None);
        f.insert("b", json!(2));
        f.insert("c", json!(3));
        assert_eq!(f.insert("a", json!(10)), Some(json!(1)));
        assert_eq!(f.remove("b"), Some(json!(2)));
        assert_eq!(f.remove("b"), None);
        assert_eq!(f.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"a":10,"c":3}"#);
    }

    #[test]
    fn shared_values_read_like_owned_ones_and_copy_on_write() {
        let shared = SharedValue::new(json!({"geo": {"city_name": "London"}}));
        assert_eq!(shared.json(), br#"{"geo":{"city_name":"London"}}"#);
        let mut a = Fields::new();
        a.insert_shared("geoip", shared.clone());
        let mut b = a.clone();
        assert_eq!(a["geoip"]["geo"]["city_name"], json!("London"));
        b.get_mut("geoip").unwrap()["geo"]["city_name"] = json!("Paris");
        assert_eq!(a["geoip"]["geo"]["city_name"], json!("London"));
        assert_eq!(b["geoip"]["geo"]["city_name"], json!("Paris"));
        assert_eq!(shared.value()["geo"]["city_name"], json!("London"));
        assert!(matches!(
            a.iter_json().next(),
            Some(("geoip", FieldJson::Json(_)))
        ));
        assert!(matches!(
            b.iter_json().next(),
            Some(("geoip", FieldJson::Value(_)))
        ));
        assert_eq!(a.remove("geoip"), Some(shared.value().clone()));
    }

    #[test]
    fn lookups_agree_with_a_map_however_full_the_bloom_bits() {
        let mut f = Fields::new();
        let mut m = Map::new();
        for i in 0..300 {
            let key = format!("field_{}", i * 7 % 300);
            f.insert(&key, json!(i));
            m.insert(key, json!(i));
            if i % 3 == 0 {
                let gone = format!("field_{}", i / 2);
                assert_eq!(f.remove(&gone), m.remove(&gone), "{gone}");
            }
            for probe in [0, i, i * 7 % 300, 299, 1000] {
                let key = format!("field_{probe}");
                assert_eq!(f.get(&key), m.get(&key), "{key} after {i}");
                assert_eq!(f.contains_key(&key), m.contains_key(&key));
            }
        }
        assert_eq!(Value::from(f), Value::Object(m));
    }

    #[test]
    fn equality_ignores_order() {
        let a = Fields::from_json_str(r#"{"a":1,"b":2}"#).unwrap();
        let b = Fields::from_json_str(r#"{"b":2,"a":1}"#).unwrap();
        let c = Fields::from_json_str(r#"{"b":2,"a":2}"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(Value::from(a), json!({"a": 1, "b": 2}));
    }
}
