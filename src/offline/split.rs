//! Splits a byte stream into documents without reading it whole, for `sheepdog tap`: JSON
//! objects (one per line, several on a line, or pretty-printed over many lines), the elements
//! of a JSON array of objects, and plain lines. Each document is handed on as bytes; decoding
//! (an object becomes an event, anything else a `_jsonparsefailure` event) is the HTTP input's.
//!
//! Rules, line-oriented where JSON does not say otherwise:
//! - a `{` starts an object that ends where its braces balance (strings and escapes are
//!   respected). An object is given up at a newline inside a string (JSON strings hold no raw
//!   newline) or when the next line starts with `{`, so one broken line does not swallow the
//!   lines after it: what was read becomes one document, which then fails to decode;
//! - a `[` followed (after white space) by `{` or `]` starts an array; its elements are
//!   documents, read one at a time, so an array larger than memory streams;
//! - anything else runs to the end of its line (a log line such as `[INFO] started` too).

use std::io::{self, BufRead, BufReader, Read};

/// The largest document kept in memory (64 MiB); a larger one is an error.
pub const MAX_DOCUMENT: usize = 64 * 1024 * 1024;

/// Reads documents from `R` one at a time.
pub struct Splitter<R> {
    reader: BufReader<R>,
    doc: Vec<u8>,
    in_array: bool,
    /// Line of the next byte (1-based), for errors.
    line: usize,
    max_document: usize,
}

/// Where a structured scan stops.
enum Scan {
    /// The value closed.
    Closed,
    /// Broken (end of input, a raw newline in a string, or a line starting with `{`).
    GaveUp,
}

impl<R: Read> Splitter<R> {
    pub fn new(reader: R) -> Self {
        Splitter {
            reader: BufReader::with_capacity(256 * 1024, reader),
            doc: Vec::new(),
            in_array: false,
            line: 1,
            max_document: MAX_DOCUMENT,
        }
    }

    /// Lowers the document size limit (tests).
    pub fn with_max_document(mut self, max: usize) -> Self {
        self.max_document = max;
        self
    }

    /// Whether the next document can be read without waiting for more input: `tap` prints what
    /// it has before it blocks, so a slow producer (`tail -f`) sees its events at once.
    /// White space and array punctuation between documents are skipped as far as they are
    /// buffered, so a newline after the last document does not count.
    pub fn has_buffered(&mut self) -> bool {
        while let Some(&b) = self.reader.buffer().first() {
            match b {
                b',' if self.in_array => {}
                b']' if self.in_array => self.in_array = false,
                b if b.is_ascii_whitespace() => {}
                _ => return true,
            }
            self.bump();
        }
        false
    }

    /// The next document, trimmed of white space; `None` at the end of the input.
    pub fn next_document(&mut self) -> io::Result<Option<&[u8]>> {
        self.doc.clear();
        loop {
            self.skip_whitespace()?;
            let Some(b) = self.peek()? else {
                return Ok(None);
            };
            if self.in_array {
                match b {
                    b']' => {
                        self.in_array = false;
                        self.bump();
                        continue;
                    }
                    b',' => {
                        self.bump();
                        continue;
                    }
                    _ => self.value(false)?,
                }
            } else {
                match b {
                    b'{' => {
                        self.structured(true)?;
                    }
                    b'[' => {
                        if self.array_start()? {
                            continue;
                        }
                        // A `[` alone on its line is that line; otherwise the line goes on.
                        if !self.doc.contains(&b'\n') {
                            self.rest_of_line()?;
                        }
                    }
                    _ => self.rest_of_line()?,
                }
            }
            return Ok(Some(self.doc.trim_ascii()));
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        loop {
            match self.reader.fill_buf() {
                Ok(buf) => return Ok(buf.first().copied()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes the byte `peek` returned.
    fn bump(&mut self) {
        if self.reader.buffer().first() == Some(&b'\n') {
            self.line += 1;
        }
        self.reader.consume(1);
    }

    /// Consumes the peeked byte into the document.
    fn take(&mut self, b: u8) -> io::Result<()> {
        if self.doc.len() >= self.max_document {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "line {}: a document larger than {} bytes",
                    self.line, self.max_document
                ),
            ));
        }
        self.doc.push(b);
        self.bump();
        Ok(())
    }

    fn skip_whitespace(&mut self) -> io::Result<()> {
        while let Some(b) = self.peek()? {
            if !b.is_ascii_whitespace() {
                break;
            }
            self.bump();
        }
        Ok(())
    }

    /// After `[`: true (array mode, nothing kept) when objects follow, false when this is a
    /// plain line that starts with `[` (what was read stays in the document).
    fn array_start(&mut self) -> io::Result<bool> {
        self.take(b'[')?;
        while let Some(b) = self.peek()? {
            match b {
                b'{' | b']' => {
                    self.doc.clear();
                    self.in_array = true;
                    return Ok(true);
                }
                b if b.is_ascii_whitespace() => self.take(b)?,
                _ => break,
            }
        }
        Ok(false)
    }

    /// Everything up to the end of the line (the newline is consumed, not kept).
    fn rest_of_line(&mut self) -> io::Result<()> {
        while let Some(b) = self.peek()? {
            if b == b'\n' {
                self.bump();
                break;
            }
            self.take(b)?;
        }
        Ok(())
    }

    /// One array element: an object or array, a string, or a bare scalar.
    fn value(&mut self, top_level: bool) -> io::Result<()> {
        match self.peek()? {
            Some(b'{' | b'[') => {
                self.structured(top_level)?;
            }
            Some(b'"') => {
                let b = b'"';
                self.take(b)?;
                self.string()?;
            }
            _ => {
                while let Some(b) = self.peek()? {
                    if b == b',' || b == b']' || b.is_ascii_whitespace() {
                        break;
                    }
                    self.take(b)?;
                }
            }
        }
        Ok(())
    }

    /// The rest of a string after its opening quote; false when a raw newline or the end of
    /// the input came first (the newline is not consumed).
    fn string(&mut self) -> io::Result<bool> {
        let mut escaped = false;
        while let Some(b) = self.peek()? {
            if b == b'\n' {
                return Ok(false);
            }
            self.take(b)?;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// An object or array up to where its brackets balance. At the top level a line starting
    /// with `{` inside it gives it up (see the module rules).
    fn structured(&mut self, top_level: bool) -> io::Result<Scan> {
        let mut depth = 0usize;
        while let Some(b) = self.peek()? {
            match b {
                b'"' => {
                    self.take(b)?;
                    if !self.string()? {
                        return Ok(Scan::GaveUp);
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.take(b)?;
                        return Ok(Scan::Closed);
                    }
                }
                b'\n' if top_level => {
                    self.take(b)?;
                    if self.peek()? == Some(b'{') {
                        return Ok(Scan::GaveUp);
                    }
                    continue;
                }
                _ => {}
            }
            self.take(b)?;
        }
        Ok(Scan::GaveUp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &str) -> Vec<String> {
        let mut s = Splitter::new(input.as_bytes());
        let mut out = Vec::new();
        while let Some(doc) = s.next_document().unwrap() {
            out.push(String::from_utf8(doc.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn ndjson_and_plain_lines() {
        assert_eq!(
            split("{\"a\":1}\n\nnot json\r\n{\"b\":\"}{\"}\n[INFO] started\n"),
            ["{\"a\":1}", "not json", "{\"b\":\"}{\"}", "[INFO] started"]
        );
        assert_eq!(split(""), Vec::<String>::new());
        assert_eq!(split("  \n \n"), Vec::<String>::new());
        assert_eq!(
            split("last line without newline"),
            ["last line without newline"]
        );
    }

    #[test]
    fn pretty_printed_and_concatenated_objects() {
        let pretty = "{\n  \"a\": {\n    \"b\": [1, 2]\n  },\n  \"s\": \"x\\\"}\"\n}\n";
        assert_eq!(
            split(&format!("{pretty}{pretty}")),
            [pretty.trim(), pretty.trim()]
        );
        assert_eq!(
            split("{\"a\":1}{\"b\":2} {\"c\":3}"),
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]
        );
    }

    #[test]
    fn arrays_stream_element_by_element() {
        assert_eq!(
            split("[{\"a\":1},\n {\"b\":[2,{}]}, 5, \"s,]\", null]\n{\"c\":3}\n[]"),
            [
                "{\"a\":1}",
                "{\"b\":[2,{}]}",
                "5",
                "\"s,]\"",
                "null",
                "{\"c\":3}"
            ]
        );
        assert_eq!(
            split("[\n  {\n    \"a\": 1\n  }\n]"),
            ["{\n    \"a\": 1\n  }"]
        );
        // Not an array of objects: a plain line.
        assert_eq!(
            split("[1, 2]\n[ x ]\n[\nline"),
            ["[1, 2]", "[ x ]", "[", "line"]
        );
    }

    #[test]
    fn a_broken_object_does_not_swallow_the_next_lines() {
        assert_eq!(
            split("{broken\n{\"a\":1}\n{\"s\": \"unterminated\n{\"b\":2}\n{\"open\": 1\n"),
            [
                "{broken",
                "{\"a\":1}",
                "{\"s\": \"unterminated",
                "{\"b\":2}",
                "{\"open\": 1"
            ]
        );
    }

    #[test]
    fn documents_are_bounded() {
        let mut s = Splitter::new("{\"a\":1}\n{\"long\":\"xxxxxxxxxxxxxxxxxxxx\"}".as_bytes())
            .with_max_document(16);
        assert_eq!(s.next_document().unwrap().unwrap(), b"{\"a\":1}");
        let err = s.next_document().unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn what_is_buffered_excludes_separators() {
        let mut s = Splitter::new("{\"a\":1}\n \n[{\"b\":2} , ]\n".as_bytes());
        assert_eq!(s.next_document().unwrap().unwrap(), b"{\"a\":1}");
        assert!(s.has_buffered());
        assert_eq!(s.next_document().unwrap().unwrap(), b"{\"b\":2}");
        assert!(!s.has_buffered());
        assert_eq!(s.next_document().unwrap(), None);
    }

    #[test]
    fn reads_through_a_small_buffer() {
        // Every document straddles the reader's buffer: nothing depends on one fill.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = 1.min(self.0.len()).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let text = "[ {\"a\":1} ,{\"b\":\"]\"}]\nplain\n{\n \"c\": 3\n}";
        let mut s = Splitter::new(Trickle(text.as_bytes()));
        let mut out = Vec::new();
        while let Some(doc) = s.next_document().unwrap() {
            out.push(String::from_utf8(doc.to_vec()).unwrap());
        }
        assert_eq!(out, split(text));
        assert_eq!(
            out,
            ["{\"a\":1}", "{\"b\":\"]\"}", "plain", "{\n \"c\": 3\n}"]
        );
    }
}
