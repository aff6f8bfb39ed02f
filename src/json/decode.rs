//! A JSON decoder for event documents: one pass over the text straight into an [`ObjectSink`]
//! (the event's fields) and `serde_json` values, without serde's visitor layers. It accepts
//! exactly what `serde_json` accepts (RFC 8259, nesting up to 128 levels, no lone surrogates,
//! no raw control characters in strings) and builds the same values: integers as `u64`/`i64`
//! where they fit (`-0` and integers out of range as `f64`, as `serde_json` does), other
//! numbers as correctly rounded `f64`, a repeated key's last value. Strings without escapes are
//! copied in one piece.

use super::scan::plain_run;
use serde_json::{Map, Number, Value};
use std::fmt;

/// Objects and arrays (the document included) nest less deep than this (`serde_json`'s
/// recursion limit).
const MAX_DEPTH: u32 = 128;

/// Why a document did not decode, with the byte offset where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub reason: &'static str,
    pub offset: usize,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

/// Receives the members of the decoded top-level object, in arrival order.
pub trait ObjectSink {
    /// Adds a member; a repeated name must replace the earlier value (the last one wins, as
    /// `serde_json` maps decode).
    fn member(&mut self, name: &str, value: Value);
}

/// Collects members into a `serde_json` map.
impl ObjectSink for Map<String, Value> {
    fn member(&mut self, name: &str, value: Value) {
        self.insert(name.to_owned(), value);
    }
}

/// Decodes a JSON object into `sink`; anything else (or trailing text) is an error.
pub fn decode_object<S: ObjectSink>(text: &str, sink: &mut S) -> Result<()> {
    let mut p = Parser {
        b: text.as_bytes(),
        text,
        pos: 0,
        // The object itself is the first level.
        depth: 1,
    };
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return Err(p.err("expected a JSON object"));
    }
    p.pos += 1;
    p.members(|p, name| {
        let value = p.value()?;
        sink.member(name.as_str(), value);
        Ok(())
    })?;
    p.skip_ws();
    if p.pos != p.b.len() {
        return Err(p.err("trailing characters after the object"));
    }
    Ok(())
}

struct Parser<'a> {
    b: &'a [u8],
    /// The same bytes as text: slices between ASCII delimiters are valid UTF-8.
    text: &'a str,
    pos: usize,
    depth: u32,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            reason,
            offset: self.pos,
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Expects `byte` after optional whitespace.
    #[inline]
    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<()> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(reason))
        }
    }

    /// Walks the members of an object whose `{` was consumed, up to its `}`, handing each name
    /// to `member`, which decodes the value.
    #[inline]
    fn members(&mut self, mut member: impl FnMut(&mut Self, Text<'a>) -> Result<()>) -> Result<()> {
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.expect(b'"', "expected a field name")?;
            let key = self.string()?;
            self.expect(b':', "expected `:` after a field name")?;
            member(self, key)?;
            if self.end_of_members(b'}')? {
                return Ok(());
            }
        }
    }

    /// After a member or element: `true` at the closing `close`, `false` after a comma.
    #[inline]
    fn end_of_members(&mut self, close: u8) -> Result<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(self.err(if close == b'}' {
                "expected `,` or `}` in an object"
            } else {
                "expected `,` or `]` in an array"
            })),
        }
    }

    fn value(&mut self) -> Result<Value> {
        self.skip_ws();
        let Some(c) = self.peek() else {
            return Err(self.err("expected a value"));
        };
        match c {
            b'"' => {
                self.pos += 1;
                Ok(Value::String(self.string()?.into_string()))
            }
            b'-' | b'0'..=b'9' => self.number(),
            b'{' => {
                self.pos += 1;
                self.nested(|p| p.object().map(Value::Object))
            }
            b'[' => {
                self.pos += 1;
                self.nested(|p| p.array().map(Value::Array))
            }
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            _ => Err(self.err("expected a value")),
        }
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<Value>) -> Result<Value> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(self.err("nested 128 levels deep or more"));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn object(&mut self) -> Result<Map<String, Value>> {
        let mut map = Map::new();
        self.members(|p, key| {
            let key = key.into_string();
            let value = p.value()?;
            map.insert(key, value);
            Ok(())
        })?;
        Ok(map)
    }

    fn array(&mut self) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(self.value()?);
            if self.end_of_members(b']')? {
                return Ok(items);
            }
        }
    }

    /// A string whose opening quote was consumed, up to and including its closing quote.
    fn string(&mut self) -> Result<Text<'a>> {
        let start = self.pos;
        let end = start + plain_run(&self.b[start..]);
        match self.b.get(end) {
            Some(b'"') => {
                self.pos = end + 1;
                Ok(Text::Borrowed(&self.text[start..end]))
            }
            Some(b'\\') => {
                let mut out = String::with_capacity(end - start + 16);
                out.push_str(&self.text[start..end]);
                self.pos = end;
                self.escaped_rest(&mut out)?;
                Ok(Text::Owned(out))
            }
            Some(_) => {
                self.pos = end;
                Err(self.err("control character in a string"))
            }
            None => {
                self.pos = end;
                Err(self.err("unterminated string"))
            }
        }
    }

    /// The rest of a string from a backslash on, appended to `out`.
    fn escaped_rest(&mut self, out: &mut String) -> Result<()> {
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(out)?;
                }
                Some(_) => {
                    let start = self.pos;
                    let end = start + plain_run(&self.b[start..]);
                    if end == start {
                        return Err(self.err("control character in a string"));
                    }
                    out.push_str(&self.text[start..end]);
                    self.pos = end;
                }
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// One escape after its backslash.
    fn escape(&mut self, out: &mut String) -> Result<()> {
        let Some(c) = self.peek() else {
            return Err(self.err("unterminated string"));
        };
        self.pos += 1;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => self.unicode_escape()?,
            _ => return Err(self.err("invalid escape in a string")),
        };
        out.push(ch);
        Ok(())
    }

    /// The character of a `\uXXXX` escape (a surrogate pair takes two).
    fn unicode_escape(&mut self) -> Result<char> {
        let first = self.hex4()?;
        match first {
            0xD800..=0xDBFF => {
                if !self.b[self.pos..].starts_with(b"\\u") {
                    return Err(self.err("lone leading surrogate in a \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.err("invalid trailing surrogate in a \\u escape"));
                }
                let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))
            }
            0xDC00..=0xDFFF => Err(self.err("lone trailing surrogate in a \\u escape")),
            _ => char::from_u32(first).ok_or_else(|| self.err("invalid \\u escape")),
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let Some(digits) = self.b.get(self.pos..self.pos + 4) else {
            return Err(self.err("unterminated \\u escape"));
        };
        let mut n = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.err("invalid hex digit in a \\u escape")),
            };
            n = n * 16 + u32::from(v);
        }
        self.pos += 4;
        Ok(n)
    }

    fn number(&mut self) -> Result<Value> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("invalid number")),
        }
        let int_end = self.pos;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
            float = true;
        }
        if !float {
            if let Some(v) = integer(&self.b[int_start..int_end], negative) {
                return Ok(v);
            }
        }
        let f: f64 = self.text[start..self.pos]
            .parse()
            .map_err(|_| self.err("invalid number"))?;
        match Number::from_f64(f) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(self.err("number out of range")),
        }
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

/// An integer as `serde_json` represents it; `None` when it takes the `f64` form (too large
/// for 64 bits, or `-0`).
fn integer(digits: &[u8], negative: bool) -> Option<Value> {
    let mut n: u64 = 0;
    for &d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if !negative {
        return Some(Value::Number(n.into()));
    }
    if n == 0 || n > 1 << 63 {
        return None;
    }
    Some(Value::Number((n as i64).wrapping_neg().into()))
}

/// Decoded text: a slice of the input, or a copy where escapes were resolved.
enum Text<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl Text<'_> {
    fn as_str(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s,
        }
    }

    fn into_string(self) -> String {
        match self {
            Text::Borrowed(s) => s.to_owned(),
            Text::Owned(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decodes `text` into a map.
    fn decode_fields(text: &str) -> Result<Map<String, Value>> {
        let mut map = Map::new();
        decode_object(text, &mut map)?;
        Ok(map)
    }

    /// Decodes `text` both ways and checks that the outcomes agree.
    fn same_as_serde_json(text: &str) {
        let ours = decode_fields(text);
        let theirs = serde_json::from_str::<Map<String, Value>>(text);
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{text}"),
            (Err(_), Err(_)) => {}
            (ours, theirs) => panic!("{text}: ours {ours:?}, serde_json {theirs:?}"),
        }
    }

    #[test]
    fn decodes_like_serde_json() {
        for text in [
            r#"{}"#,
            r#" { } "#,
            r#"{"a":1,"b":-2,"c":1.5,"d":-0.0,"e":1e3,"f":1E-3,"g":-1.25e+2}"#,
            r#"{"max":18446744073709551615,"over":18446744073709551616,"min":-9223372036854775808}"#,
            r#"{"under":-9223372036854775809,"negzero":-0,"zero":0}"#,
            r#"{"big":1e308,"tiny":1e-400,"prec":0.1,"long":3.141592653589793238462643383279}"#,
            r#"{"s":"plain","e":"q\"b\\s\/n\nr\rt\tb\bf\f","u":"\u00e9\u65e5\ud83d\udc11"}"#,
            r#"{"utf8":"héllo wörld — 日本語 🐑","empty":""}"#,
            r#"{"nested":{"b":[1,{"c":null}],"a":true},"arr":[],"obj":{},"f":false}"#,
            r#"{"dup":1,"dup":2}"#,
            r#"{"nested":{"dup":1,"dup":{"x":2}}}"#,
            "{\"ws\" :\t[ 1 ,\n 2 ]\r\n}",
            r#"{"long":"0123456789abcdef0123456789abcdef0123456789\"x"}"#,
        ] {
            same_as_serde_json(text);
            assert!(decode_fields(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in [
            "",
            " ",
            "[]",
            "1",
            "\"s\"",
            "null",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,}",
            "{,}",
            "{\"a\" 1}",
            "{a:1}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":1e400}",
            "{\"a\":-1e400}",
            "{\"a\":NaN}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"unterminated}",
            "{\"a\":1} x",
            "{\"a\":1}{}",
        ] {
            same_as_serde_json(text);
            assert!(decode_fields(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn nesting_is_limited_like_serde_json() {
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        same_as_serde_json(&deep(126));
        assert!(decode_fields(&deep(126)).is_ok());
        same_as_serde_json(&deep(127));
        assert!(decode_fields(&deep(127)).is_err());
        assert!(decode_fields(&deep(100_000)).is_err());
    }

    #[test]
    fn hands_members_over_in_arrival_order_duplicates_included() {
        struct Members(Vec<(String, Value)>);
        impl ObjectSink for Members {
            fn member(&mut self, name: &str, value: Value) {
                self.0.push((name.to_owned(), value));
            }
        }
        let mut members = Members(Vec::new());
        decode_object(r#"{"z":1,"a":2,"z":3}"#, &mut members).unwrap();
        let expected = [("z", json!(1)), ("a", json!(2)), ("z", json!(3))];
        assert_eq!(members.0, expected.map(|(k, v)| (k.to_owned(), v)));
        assert_eq!(
            decode_fields(r#"{"z":1,"a":2,"z":3}"#).unwrap()["z"],
            json!(3)
        );
    }

    #[test]
    fn errors_name_the_offset() {
        let e = decode_fields(r#"{"a":1,"b":x}"#).unwrap_err();
        assert_eq!(e.offset, 11);
        assert_eq!(e.to_string(), "expected a value at byte 11");
    }

    #[test]
    fn strings_split_at_every_word_boundary() {
        for n in 0..20 {
            for special in ["\\\"", "\\n", "é", "\\u00e9"] {
                let text = format!(r#"{{"k":"{}{}{}"}}"#, "x".repeat(n), special, "y".repeat(n));
                same_as_serde_json(&text);
            }
        }
    }

    /// Random edits of valid documents (xorshift, fixed seed): whatever the text, both decoders
    /// accept it or both refuse it, and what they build is equal.
    #[test]
    fn random_edits_decode_like_serde_json() {
        let seeds = [
            r#"{"timestamp":"2026-11-27T09:55:10.500400+00:00","model":"gpt-4.1","latency_ms":2847.16,"prompt_tokens":499,"cost_usd":0.000325,"ok":true,"err":null}"#,
            r#"{"a":[1,-2,3.5e-3,{"b":"\u00e9\n"}],"c":{"d":[[]],"e":{}},"f":"日本🐑"}"#,
            r#"{"n":18446744073709551615,"m":-9223372036854775808,"x":-0,"y":1E+2}"#,
        ];
        let alphabet: Vec<char> = "\"\\u0dD8Cc{}[],:-+.eE1 9\n\tntrufalsé🐑\u{1}/bx"
            .chars()
            .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..60_000 {
            let mut chars: Vec<char> = seeds[round % seeds.len()].chars().collect();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % (chars.len() + 1);
                match next() % 4 {
                    0 if at < chars.len() => {
                        chars.remove(at);
                    }
                    1 if at < chars.len() => chars[at] = alphabet[next() as usize % alphabet.len()],
                    2 => chars.truncate(at),
                    _ => chars.insert(at, alphabet[next() as usize % alphabet.len()]),
                }
            }
            let text: String = chars.into_iter().collect();
            same_as_serde_json(&text);
        }
    }
}
