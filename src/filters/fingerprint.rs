//! `fingerprint`: a stable 128-bit hash (XXH3-128) of the event as received, or of chosen
//! fields, written to a field, like Logstash's fingerprint filter. As the chain's first stage
//! it gives events without an id of their own a document id that a resent body or window
//! reproduces, so Elasticsearch overwrites instead of duplicating.

use super::{parse_path, Filter};
use crate::config::de;
use crate::config::problem::Problem;
use crate::event::{Event, FieldPath, TIMESTAMP};
use crate::json::write::{write_members, write_str, write_value};
use serde::Deserialize;
use serde_json::Value;
use std::cell::RefCell;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Fields hashed together, in this order (each as its path and JSON value; a missing one
    /// as `null`). Default `["message"]`, as in Logstash. Ignored with `concatenate_all_fields`.
    #[serde(default = "d_source")]
    pub source: Vec<String>,
    /// Hash the whole document as received instead: every field in arrival order as compact
    /// JSON, without the `@timestamp` an input stamps on events that came without one, and
    /// without `@metadata`. Default false.
    #[serde(default, deserialize_with = "de::from_str_or_value")]
    pub concatenate_all_fields: bool,
    /// Field receiving the fingerprint. Default `fingerprint`; for document ids
    /// `[@metadata][fingerprint]`, which is not indexed.
    #[serde(default = "d_target")]
    pub target: String,
    /// The hash: only `XXH3_128` (fast and stable across versions and machines; not a
    /// cryptographic hash, so not for values an attacker must not be able to collide).
    #[serde(default = "d_method")]
    pub method: String,
    /// Write the 16 bytes as unpadded base64url (22 characters) instead of lower-case hex
    /// (32 characters). Default false.
    #[serde(default, deserialize_with = "de::from_str_or_value")]
    pub base64encode: bool,
}

fn d_source() -> Vec<String> {
    vec!["message".into()]
}
fn d_target() -> String {
    "fingerprint".into()
}
fn d_method() -> String {
    "XXH3_128".into()
}

/// What is hashed.
enum Input {
    /// The whole document as received.
    AllFields,
    /// These fields, in order (path text and field).
    Fields(Vec<(String, FieldPath)>),
}

pub struct FingerprintFilter {
    input: Input,
    target: FieldPath,
    base64: bool,
}

impl Config {
    pub fn build(&self) -> Result<FingerprintFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let target = parse_path("target", &self.target, &mut problems);
        if !self.method.eq_ignore_ascii_case("XXH3_128") {
            problems.push(
                Problem::at("method", format!("unsupported method `{}`", self.method))
                    .hint("use \"XXH3_128\" (the only method; it is the default)"),
            );
        }
        let input =
            if self.concatenate_all_fields {
                Input::AllFields
            } else {
                if self.source.is_empty() {
                    problems.push(Problem::at("source", "no field to hash").hint(
                        "list fields, e.g. [\"message\"], or set concatenate_all_fields = true",
                    ));
                }
                let mut fields = Vec::new();
                for s in &self.source {
                    if let Some(p) = parse_path("source", s, &mut problems) {
                        fields.push((s.clone(), p));
                    }
                }
                Input::Fields(fields)
            };
        match target {
            Some(target) if problems.is_empty() => Ok(FingerprintFilter {
                input,
                target,
                base64: self.base64encode,
            }),
            _ => Err(problems),
        }
    }
}

thread_local! {
    /// The canonical text of the event being hashed, reused so that hashing allocates nothing.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl FingerprintFilter {
    /// The canonical bytes hashed for `event`; `false` when none of the source fields exists.
    fn canonical(&self, event: &Event, out: &mut Vec<u8>) -> bool {
        match &self.input {
            Input::AllFields => {
                let skip_stamp = event.stamped_at_receipt();
                let members = event
                    .fields()
                    .iter_json()
                    .filter(|(k, _)| !(skip_stamp && *k == TIMESTAMP));
                write_members(members, out);
                true
            }
            Input::Fields(fields) => {
                let mut any = false;
                for (name, path) in fields {
                    write_str(name, out);
                    out.push(b':');
                    match event.get(path) {
                        Some(v) => {
                            any = true;
                            write_value(v, out);
                        }
                        None => out.extend_from_slice(b"null"),
                    }
                    out.push(b'\n');
                }
                any
            }
        }
    }

    /// The fingerprint of `event`, or `None` when none of the source fields exists.
    pub fn fingerprint(&self, event: &Event) -> Option<String> {
        let hash = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            let any = self.canonical(event, &mut buf);
            any.then(|| xxhash_rust::xxh3::xxh3_128(&buf))
        })?;
        Some(render(hash, self.base64))
    }
}

/// The hash's 16 bytes (big-endian) as hex or unpadded base64url.
fn render(hash: u128, base64: bool) -> String {
    let bytes = hash.to_be_bytes();
    if base64 {
        use base64::Engine;
        return base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

impl Filter for FingerprintFilter {
    fn apply(&self, event: &mut Event) -> bool {
        if let Some(fp) = self.fingerprint(event) {
            event.insert(&self.target, Value::String(fp));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;

    fn filter(toml_text: &str) -> FingerprintFilter {
        toml::from_str::<Config>(toml_text)
            .unwrap()
            .build()
            .unwrap_or_else(|p| panic!("{p:?}"))
    }

    /// An event decoded from `line` as an input decodes it, received at `received`.
    fn received(line: &str, received: i64) -> Event {
        Event::from_fields(Fields::from_json_str(line).unwrap(), received)
    }

    fn fp(f: &FingerprintFilter, line: &str, at: i64) -> String {
        let mut e = received(line, at);
        assert!(f.apply(&mut e));
        match e.get(&f.target) {
            Some(Value::String(s)) => s.clone(),
            other => panic!("no fingerprint: {other:?}"),
        }
    }

    #[test]
    fn the_same_received_event_gives_the_same_fingerprint_whenever_it_arrives() {
        let f = filter("concatenate_all_fields = true\ntarget = \"[@metadata][fingerprint]\"");
        let line = r#"{"model":"gpt-4.1","log":{"file":{"path":"/var/log/a.log"},"offset":120}}"#;
        let a = fp(&f, line, 1_000);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Received later: the stamped receipt time is not part of the event.
        assert_eq!(fp(&f, line, 99_000), a);
        // Pinned: the hash must not change between versions, or a replay after an upgrade
        // would duplicate documents.
        assert_eq!(a, "12ba3d68ecb61d588cbc02a7595f3557");
        let other_offset = line.replace("120", "121");
        let other_path = line.replace("a.log", "b.log");
        assert_ne!(fp(&f, &other_offset, 1_000), a);
        assert_ne!(fp(&f, &other_path, 1_000), a);
        // An event's own @timestamp is part of it.
        let t1 = r#"{"m":1,"@timestamp":"2026-11-27T10:00:00.000Z"}"#;
        let t2 = r#"{"m":1,"@timestamp":"2026-11-27T10:00:01.000Z"}"#;
        assert_ne!(fp(&f, t1, 1_000), fp(&f, t2, 1_000));
        assert_eq!(fp(&f, t1, 1_000), fp(&f, t1, 2_000));
        // Field order is part of the text as received.
        assert_ne!(fp(&f, r#"{"a":1,"b":2}"#, 0), fp(&f, r#"{"b":2,"a":1}"#, 0));
        // @metadata is not.
        assert_eq!(
            fp(&f, r#"{"a":1,"@metadata":{"beat":"filebeat"}}"#, 0),
            fp(&f, r#"{"a":1}"#, 0)
        );
    }

    #[test]
    fn the_hash_is_xxh3_128_of_the_compact_json() {
        let f = filter("concatenate_all_fields = true");
        let want = xxhash_rust::xxh3::xxh3_128(br#"{"a":"x y","n":[1,2.5]}"#);
        assert_eq!(
            fp(&f, r#"{ "a" : "x y", "n" : [1, 2.5] }"#, 7),
            format!("{want:032x}")
        );
        let f = filter("concatenate_all_fields = true\nbase64encode = true");
        let b64 = fp(&f, r#"{"a":"x y","n":[1,2.5]}"#, 7);
        assert_eq!(b64.len(), 22);
        assert!(!b64.contains(['+', '/', '=']));
    }

    #[test]
    fn source_fields_are_hashed_in_order() {
        let f = filter("source = [\"[log][file][path]\", \"[log][offset]\"]");
        let a = fp(&f, r#"{"log":{"file":{"path":"/a"},"offset":1},"x":1}"#, 0);
        assert_eq!(
            a,
            fp(&f, r#"{"x":2,"log":{"offset":1,"file":{"path":"/a"}}}"#, 0)
        );
        assert_ne!(a, fp(&f, r#"{"log":{"file":{"path":"/a"},"offset":2}}"#, 0));
        // Only some present: still hashed; none present: no fingerprint.
        fp(&f, r#"{"log":{"offset":1}}"#, 0);
        let mut e = received(r#"{"x":1}"#, 0);
        assert!(f.apply(&mut e));
        assert!(e.get(&f.target).is_none());
        // The default source is `message`, as in Logstash.
        let f = filter("");
        assert_eq!(
            fp(&f, r#"{"message":"m","x":1}"#, 0),
            fp(&f, r#"{"message":"m"}"#, 3)
        );
    }

    #[test]
    fn problems_name_the_key() {
        let problems =
            toml::from_str::<Config>("method = \"SHA256\"\nsource = []\ntarget = \"[a\"")
                .unwrap()
                .build()
                .err()
                .unwrap();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("error: target:"), "{text:#?}");
        assert!(
            text[1].starts_with("error: method: unsupported method `SHA256`"),
            "{text:#?}"
        );
        assert!(
            text[2].starts_with("error: source: no field to hash"),
            "{text:#?}"
        );
    }
}
