//! Compact JSON writing of documents for the outputs, byte for byte what
//! `serde_json::to_writer` writes, with string escaping that skips eight clean bytes at a time
//! (serde_json looks up every byte in its escape table, the largest cost of bulk encoding).

use super::scan::plain_run;
use serde::Serialize;
use serde_json::{Map, Value};

/// An object member's value as the outputs write it: a value, or JSON rendered before.
pub enum FieldJson<'a> {
    Value(&'a Value),
    Json(&'a [u8]),
}

/// True when `bytes` holds a byte that JSON must escape.
#[inline]
fn has_escapes(bytes: &[u8]) -> bool {
    plain_run(bytes) < bytes.len()
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if has_escapes(bytes) {
        write_escaped(bytes, out);
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

#[cold]
fn write_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends `value` as compact JSON.
pub fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Numbers keep serde_json's own formatting (itoa, shortest round-trip floats);
            // writing into a Vec cannot fail.
            let _ = n.serialize(&mut serde_json::Serializer::new(&mut *out));
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out),
    }
}

/// Appends `map` as a compact JSON object.
pub fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    write_members(
        map.iter().map(|(k, v)| (k.as_str(), FieldJson::Value(v))),
        out,
    );
}

/// Appends `members` as a compact JSON object, rendered JSON copied as it is.
pub fn write_members<'a>(
    members: impl Iterator<Item = (&'a str, FieldJson<'a>)>,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (key, member)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(key, out);
        out.push(b':');
        match member {
            FieldJson::Value(value) => write_value(value, out),
            FieldJson::Json(json) => out.extend_from_slice(json),
        }
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same_as_serde(v: &Value) {
        let mut ours = Vec::new();
        write_value(v, &mut ours);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(v).unwrap()
        );
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let mut every_byte = String::new();
        for c in 0u8..=0x7f {
            every_byte.push(c as char);
        }
        for s in [
            "",
            "a",
            "plain ascii longer than eight bytes",
            "quote \" and\nnewline",
            "\\",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "tab\there\r\n\u{8}\u{c}",
            "héllo wörld — 日本語 🐑",
            "12345678\"12345678\\1234567\n",
            every_byte.as_str(),
        ] {
            same_as_serde(&json!(s));
            // every alignment of a special byte against the eight-byte words
            for pad in 0..9 {
                same_as_serde(&json!(format!("{}{s}", "x".repeat(pad))));
            }
        }
    }

    #[test]
    fn documents_match_serde_json() {
        same_as_serde(&json!({
            "@timestamp": "2026-11-27T10:15:02.123Z",
            "a": null, "b": true, "c": false,
            "n": [0, -1, 18446744073709551615u64, -9223372036854775808i64, 1.5, 0.000438,
                  1e300, -2.5e-8, 626.21, 8.0],
            "nested": {"x": {"y": []}, "empty": {}},
            "key \"quoted\"\n": "v",
            "tags": ["direct-upload", "success"]
        }));
    }
}
