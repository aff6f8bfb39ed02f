//! Body text to events, a document at a time: [`Documents`] finds where each document of a
//! body ends without decoding it (NDJSON lines, the elements of a JSON array, or one
//! pretty-printed object), so a body is decoded in chunks as queue room appears; [`Decoder`]
//! turns one document into an event. Nothing is dropped: what is not a JSON object becomes an
//! event with `message` = the text (lossy UTF-8) and the tag `_jsonparsefailure`. Scanning
//! keeps a depth counter, never recursion, so no nesting overflows the stack.

use crate::event::{Event, Fields, Receipt};

/// One document of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc<'a> {
    /// Text that should be one JSON object.
    Json(&'a [u8]),
    /// Text that cannot be a document: the unterminated tail of a JSON array, or what follows
    /// its closing bracket.
    Broken(&'a [u8]),
}

impl Doc<'_> {
    /// The document's length in bytes, what its decoded event is estimated from.
    pub fn len(&self) -> usize {
        match self {
            Doc::Json(t) | Doc::Broken(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Done,
    Single,
    Lines,
    Array,
    /// What followed an array's `]`, now in `body`.
    Trailing,
}

/// The documents of a body, in order.
pub struct Documents<'a> {
    body: &'a [u8],
    pos: usize,
    shape: Shape,
}

impl<'a> Documents<'a> {
    /// Splits `body`: a JSON array into its elements, a body whose first line is not a whole
    /// JSON value but starts with `{` into one (pretty-printed) document, anything else into
    /// non-blank lines.
    pub fn new(body: &'a [u8]) -> Self {
        let body = body.trim_ascii();
        let shape = match body.first() {
            None => Shape::Done,
            Some(b'[') => Shape::Array,
            Some(_) if single_document(body) => Shape::Single,
            Some(_) => Shape::Lines,
        };
        let pos = usize::from(shape == Shape::Array);
        Documents { body, pos, shape }
    }

    /// The (trimmed) body being split.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The next non-blank line.
    fn next_line(&mut self) -> Option<Doc<'a>> {
        while self.pos <= self.body.len() {
            let rest = &self.body[self.pos..];
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let line = rest[..end].trim_ascii();
            self.pos += end + 1;
            if !line.is_empty() {
                return Some(Doc::Json(line));
            }
        }
        self.shape = Shape::Done;
        None
    }

    /// The next element of the array; `pos` is just past the `[` or `,` before it.
    fn next_element(&mut self) -> Option<Doc<'a>> {
        loop {
            let separator = self.pos - 1;
            match element_end(self.body, self.pos) {
                Some((end, closing)) => {
                    let element = self.body[self.pos..end].trim_ascii();
                    self.pos = end + 1;
                    if closing {
                        self.shape = Shape::Done;
                        let after = self.body[self.pos..].trim_ascii();
                        return match (element.is_empty(), after.is_empty()) {
                            (false, _) => {
                                // What follows `]` comes next, as a broken document.
                                if !after.is_empty() {
                                    self.shape = Shape::Trailing;
                                    self.body = after;
                                }
                                Some(Doc::Json(element))
                            }
                            (true, true) => None,
                            (true, false) => Some(Doc::Broken(after)),
                        };
                    }
                    // Empty elements (`[1,,2]`) carry nothing; skip them.
                    if !element.is_empty() {
                        return Some(Doc::Json(element));
                    }
                }
                None => {
                    self.shape = Shape::Done;
                    return Some(Doc::Broken(&self.body[separator..]));
                }
            }
        }
    }
}

impl<'a> Iterator for Documents<'a> {
    type Item = Doc<'a>;

    fn next(&mut self) -> Option<Doc<'a>> {
        match self.shape {
            Shape::Done => None,
            Shape::Single => {
                self.shape = Shape::Done;
                Some(Doc::Json(self.body))
            }
            Shape::Trailing => {
                self.shape = Shape::Done;
                Some(Doc::Broken(self.body))
            }
            Shape::Lines => self.next_line(),
            Shape::Array => self.next_element(),
        }
    }
}

/// Whether a body starting with `{` is one document: its first line is not a whole JSON value
/// (serde_json's recursion limit bounds the check). A body without a newline is one document.
fn single_document(body: &[u8]) -> bool {
    match memchr::memchr(b'\n', body) {
        None => true,
        Some(end) => {
            body[0] == b'{'
                && serde_json::from_slice::<serde::de::IgnoredAny>(body[..end].trim_ascii())
                    .is_err()
        }
    }
}

/// Where the array element starting at `from` ends: the index of the `,` or `]` after it at
/// depth 0 and whether it was the `]`; `None` when the body ends first. Strings (with their
/// escapes) are skipped; brackets only count depth, so mismatched ones are left to the decoder.
fn element_end(body: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut depth: usize = 0;
    let mut i = from;
    while i < body.len() {
        match body[i] {
            b'"' => i = string_end(body, i + 1)?,
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth > 0 => depth -= 1,
            b']' => return Some((i, true)),
            b',' if depth == 0 => return Some((i, false)),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the `"` closing a string whose text starts at `from`.
fn string_end(body: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', &body[i..])?;
        if body[at] == b'"' {
            return Some(at);
        }
        i = at + 2;
        if i > body.len() {
            return None;
        }
    }
}

/// Decodes documents of one body into events stamped with one receipt time.
pub struct Decoder<'a> {
    body: &'a [u8],
    /// The body as text when it is all UTF-8 (checked once), so documents skip the check.
    text: Option<&'a str>,
    receipt: Receipt,
    /// Documents that were not JSON objects.
    pub failures: u64,
}

impl<'a> Decoder<'a> {
    /// A decoder for documents of `body` (those [`Documents::new`] gives for it).
    pub fn new(body: &'a [u8], received: i64) -> Self {
        Decoder {
            body,
            text: std::str::from_utf8(body).ok(),
            receipt: Receipt::new(received),
            failures: 0,
        }
    }

    /// The event of one document.
    pub fn event(&mut self, doc: Doc<'_>) -> Event {
        let json = match doc {
            Doc::Json(json) => json,
            Doc::Broken(text) => return failure_event(text, self.receipt.ms(), &mut self.failures),
        };
        let parsed = match self.text {
            Some(text) if self.within(json) => {
                // Documents are trimmed of ASCII only, so they start and end on character
                // boundaries of `text`.
                let at = json.as_ptr() as usize - self.body.as_ptr() as usize;
                Fields::from_json_str(&text[at..at + json.len()])
            }
            _ => Fields::from_json_slice(json),
        };
        match parsed {
            Ok(fields) => Event::from_fields_at(fields, &self.receipt),
            Err(_) => failure_event(json, self.receipt.ms(), &mut self.failures),
        }
    }

    fn within(&self, part: &[u8]) -> bool {
        let start = self.body.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        at >= start && at + part.len() <= start + self.body.len()
    }
}

/// The tagged event of text that is not a JSON object; the whole text is kept (a body is at
/// most `max_body_size`).
pub fn failure_event(text: &[u8], received: i64, failures: &mut u64) -> Event {
    *failures += 1;
    let mut e = Event::from_message(String::from_utf8_lossy(text).into_owned(), received);
    e.add_tag("_jsonparsefailure");
    e
}

/// One document: a JSON object becomes an event, anything else an event with `message` = the
/// text and tag `_jsonparsefailure` (counted in `failures`). `sheepdog tap` decodes with it too.
pub fn parse_object(line: &[u8], received: i64, failures: &mut u64) -> Event {
    match Fields::from_json_slice(line) {
        Ok(fields) => Event::from_fields(fields, received),
        Err(_) => failure_event(line, received, failures),
    }
}

/// Turns a whole in-memory body into events: a JSON array of objects, a single (possibly
/// pretty-printed) object, or NDJSON. Nothing is dropped: what does not parse becomes a tagged
/// event. The input decodes the same way a chunk at a time; this is for tools, benches and the
/// fuzz target.
pub fn decode_body(body: &[u8], received: i64, failures: &mut u64) -> Vec<Event> {
    let docs = Documents::new(body);
    let mut decoder = Decoder::new(docs.body(), received);
    let events = docs.map(|d| decoder.event(d)).collect();
    *failures += decoder.failures;
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(body: &str) -> (Vec<Event>, u64) {
        let mut failures = 0;
        let events = decode_body(body.as_bytes(), 7, &mut failures);
        (events, failures)
    }

    fn docs(body: &str) -> Vec<Doc<'_>> {
        Documents::new(body.as_bytes()).collect()
    }

    #[test]
    fn three_body_shapes() {
        let (e, f) = decode(r#"{"a":1}"#);
        assert_eq!((e.len(), f), (1, 0));
        assert_eq!(e[0].fields()["a"], json!(1));
        let (e, f) = decode("[{\"a\":1},{\"a\":2}]");
        assert_eq!((e.len(), f), (2, 0));
        let (e, f) = decode("{\"a\":1}\n{\"a\":2}\r\n\n{\"a\":3}\n");
        assert_eq!((e.len(), f), (3, 0));
        assert_eq!(e[2].fields()["a"], json!(3));
        let (e, f) = decode("{\n  \"a\": 1,\n  \"b\": [1,2]\n}\n");
        assert_eq!((e.len(), f), (1, 0));
        assert_eq!(e[0].fields()["b"], json!([1, 2]));
    }

    #[test]
    fn array_elements_are_found_without_decoding() {
        let body = r#" [ {"a":"x,]}\"[{"}, {"b":[1,{"c":"]"}]} ,5,"s" ] "#;
        assert_eq!(
            docs(body),
            vec![
                Doc::Json(br#"{"a":"x,]}\"[{"}"#),
                Doc::Json(br#"{"b":[1,{"c":"]"}]}"#),
                Doc::Json(b"5"),
                Doc::Json(b"\"s\""),
            ]
        );
        assert_eq!(docs("[]"), vec![]);
        assert_eq!(docs("[{}, ,{}]").len(), 2);
        assert_eq!(
            docs("[{\"a\":1}] trailing"),
            vec![Doc::Json(b"{\"a\":1}"), Doc::Broken(b"trailing")]
        );
        assert_eq!(docs("[] x"), vec![Doc::Broken(b"x")]);
        assert_eq!(
            docs("[{\"a\":1}, {\"b\":\"unterminated"),
            vec![
                Doc::Json(b"{\"a\":1}"),
                Doc::Broken(b", {\"b\":\"unterminated")
            ]
        );
    }

    #[test]
    fn bad_input_becomes_tagged_events() {
        let (e, f) = decode("{\"a\":1}\nnot json\n{\"a\":3}");
        assert_eq!((e.len(), f), (3, 1));
        assert_eq!(e[1].fields()["message"], json!("not json"));
        assert!(e[1].has_tag("_jsonparsefailure"));
        assert!(!e[0].has_tag("_jsonparsefailure"));
        let (e, f) = decode("hello world");
        assert_eq!((e.len(), f), (1, 1));
        assert_eq!(e[0].fields()["message"], json!("hello world"));
        let (e, f) = decode("[{\"a\":1}, 5]");
        assert_eq!((e.len(), f), (2, 1));
        assert_eq!(e[1].fields()["message"], json!("5"));
        // A truncated array keeps what came before the cut, and the cut-off tail.
        let (e, f) = decode("[{\"a\":1}, ");
        assert_eq!((e.len(), f), (2, 1));
        assert_eq!(e[1].fields()["message"], json!(","));
        let (e, _) = decode("   \n ");
        assert!(e.is_empty());
    }

    #[test]
    fn deep_nesting_is_a_tagged_event_not_a_stack_overflow() {
        for open in ["[", "{", "{\"a\":"] {
            let body = open.repeat(100_000);
            let (e, f) = decode(&body);
            assert_eq!((e.len(), f), (1, 1), "{open}");
            assert!(e[0].has_tag("_jsonparsefailure"));
            let closed = format!("[{}{}]", "[".repeat(50_000), "]".repeat(50_000));
            let (e, f) = decode(&closed);
            assert_eq!((e.len(), f), (1, 1));
        }
    }

    #[test]
    fn invalid_utf8_lines_fail_alone() {
        let body = b"{\"a\":1}\n{\"b\":\"\xff\"}\n {\"c\":\"\xc3\xa9\"} \r\n";
        let mut failures = 0;
        let e = decode_body(body, 7, &mut failures);
        assert_eq!((e.len(), failures), (3, 1));
        assert_eq!(e[0].fields()["a"], json!(1));
        assert!(e[1].has_tag("_jsonparsefailure"));
        assert_eq!(e[1].fields()["message"], json!("{\"b\":\"\u{fffd}\"}"));
        assert_eq!(e[2].fields()["c"], json!("é"));
        let (e, f) = decode("{\"s\":\"日本\"}\n{\"t\":\"🐑\"}");
        assert_eq!((e.len(), f), (2, 0));
        assert_eq!(e[1].fields()["t"], json!("🐑"));
        let body = b"[{\"a\":\"\xff\"},{\"b\":2}]";
        let e = decode_body(body, 7, &mut failures);
        assert_eq!(e.len(), 2);
        assert!(e[0].has_tag("_jsonparsefailure"));
        assert_eq!(e[1].fields()["b"], json!(2));
    }
}
