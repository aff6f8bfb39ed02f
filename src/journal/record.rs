//! One record of the persisted queue: the documents an input queued at once, as the bytes it
//! received (no re-serialisation), with what it takes to rebuild the same events on replay.
//!
//! On disk: `[payload length u32][CRC-32 of the payload u32][payload]`, little-endian. The
//! payload: version, the input's id, its per-connection metadata (`[@metadata][input]`, as
//! JSON, or empty), its tags, then each document as `[kind u8][received ms i64][length u32]
//! [bytes]`.

use crate::event::{Event, Receipt, SharedValue};
use std::sync::Arc;

/// Bytes before the payload.
pub const HEADER: usize = 8;
/// Bytes a document takes in a record besides its own (kind, receipt time, length).
pub const DOC_OVERHEAD: usize = 13;
const VERSION: u8 = 1;

/// What a document was when the input received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// A JSON document: it becomes an event, or a `_jsonparsefailure` event if it does not
    /// parse as an object.
    Json = 0,
    /// Text the input already knew was not JSON: a `_jsonparsefailure` event.
    Broken = 1,
}

/// A record being built by an input, one document at a time.
pub struct RecordBuilder {
    buf: Vec<u8>,
    docs: u32,
    docs_at: usize,
}

impl RecordBuilder {
    /// A record for documents from input `source`, with the connection's metadata and the
    /// input's tags; `capacity` is a guess of the documents' bytes.
    pub fn new(
        source: &str,
        meta: Option<&SharedValue>,
        tags: &[String],
        capacity: usize,
    ) -> RecordBuilder {
        let meta = meta.map(SharedValue::json).unwrap_or_default();
        let mut buf = Vec::with_capacity(HEADER + 64 + source.len() + meta.len() + capacity);
        buf.extend_from_slice(&[0; HEADER]);
        buf.push(VERSION);
        put_short(&mut buf, source.as_bytes());
        buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        buf.extend_from_slice(meta);
        buf.extend_from_slice(&(tags.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for t in tags.iter().take(u16::MAX as usize) {
            put_short(&mut buf, t.as_bytes());
        }
        let docs_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        RecordBuilder {
            buf,
            docs: 0,
            docs_at,
        }
    }

    /// Adds one document as received.
    pub fn push(&mut self, kind: DocKind, received_ms: i64, bytes: &[u8]) {
        self.buf.push(kind as u8);
        self.buf.extend_from_slice(&received_ms.to_le_bytes());
        self.buf
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(bytes);
        self.docs += 1;
    }

    pub fn docs(&self) -> u32 {
        self.docs
    }

    /// The record's bytes on disk, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs == 0
    }

    /// The finished record: document count and checksum filled in.
    pub fn finish(mut self) -> Vec<u8> {
        let at = self.docs_at;
        self.buf[at..at + 4].copy_from_slice(&self.docs.to_le_bytes());
        let payload_len = (self.buf.len() - HEADER) as u32;
        let crc = crc32fast::hash(&self.buf[HEADER..]);
        self.buf[0..4].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

fn put_short(buf: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// What the header says about the record starting at `bytes`.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// A whole record of this many bytes (header included) whose checksum matches.
    Whole(usize),
    /// Fewer bytes than the header announces: the tail of a write cut short.
    Short,
    /// The checksum does not match.
    Corrupt,
}

/// Checks the record at the start of `bytes`.
pub fn framing(bytes: &[u8]) -> Framing {
    if bytes.len() < HEADER {
        return Framing::Short;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if bytes.len() < HEADER + len {
        return Framing::Short;
    }
    if crc32fast::hash(&bytes[HEADER..HEADER + len]) != crc {
        return Framing::Corrupt;
    }
    Framing::Whole(HEADER + len)
}

/// A decoded record: the input's id and the rebuilt events.
pub struct Decoded {
    pub source: Arc<str>,
    pub events: Vec<Event>,
    /// Documents that did not parse (they are kept as tagged events).
    pub failures: u64,
}

/// Rebuilds the events of a whole, checked record (`framing` said `Whole`) exactly as the
/// input built them.
pub fn decode(record: &[u8]) -> Result<Decoded, String> {
    let mut r = Reader {
        bytes: &record[HEADER..],
        at: 0,
    };
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("unknown record version {version}"));
    }
    let source: Arc<str> = Arc::from(String::from_utf8_lossy(r.short()?).as_ref());
    let meta_len = r.u32()? as usize;
    let meta = match r.take(meta_len)? {
        [] => None,
        json => Some(SharedValue::new(
            serde_json::from_slice(json).map_err(|e| format!("bad input metadata: {e}"))?,
        )),
    };
    let tags: Vec<String> = (0..r.u16()?)
        .map(|_| r.short().map(|t| String::from_utf8_lossy(t).into_owned()))
        .collect::<Result<_, _>>()?;
    let docs = r.u32()? as usize;
    let mut out = Decoded {
        source,
        events: Vec::with_capacity(docs.min(65_536)),
        failures: 0,
    };
    let mut receipt = Receipt::new(0);
    for _ in 0..docs {
        let kind = r.u8()?;
        let received = r.i64()?;
        let len = r.u32()? as usize;
        let bytes = r.take(len)?;
        if receipt.ms() != received {
            receipt = Receipt::new(received);
        }
        let mut event = rebuild(kind, bytes, &receipt, &mut out.failures);
        if let Some(m) = &meta {
            event.metadata_mut().insert_shared("input", Arc::clone(m));
        }
        for t in &tags {
            event.add_tag(t);
        }
        out.events.push(event);
    }
    Ok(out)
}

/// One document's event, as the HTTP and Beats inputs make it.
fn rebuild(kind: u8, bytes: &[u8], receipt: &Receipt, failures: &mut u64) -> Event {
    if kind == DocKind::Json as u8 {
        if let Ok(fields) = crate::event::Fields::from_json_slice(bytes) {
            return Event::from_fields_at(fields, receipt);
        }
    }
    crate::inputs::http::failure_event(bytes, receipt.ms(), failures)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("record ends inside a field at byte {}", self.at));
        };
        let part = &self.bytes[self.at..end];
        self.at = end;
        Ok(part)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn short(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_rebuilds_the_events_the_input_made() {
        let meta = SharedValue::new(json!({"beats": {"peer": "127.0.0.1:5000"}}));
        let mut b = RecordBuilder::new("beats", Some(&meta), &["shipped".to_string()], 100);
        b.push(
            DocKind::Json,
            1_000,
            br#"{"a":1,"@timestamp":"2026-01-02T03:04:05.000Z"}"#,
        );
        b.push(DocKind::Json, 2_000, br#"{"b":2}"#);
        b.push(DocKind::Json, 2_000, b"not json");
        b.push(DocKind::Broken, 2_000, br#"{"c":3}"#);
        let record = b.finish();
        assert_eq!(framing(&record), Framing::Whole(record.len()));
        let d = decode(&record).unwrap();
        assert_eq!(&*d.source, "beats");
        assert_eq!(d.events.len(), 4);
        assert_eq!(d.failures, 2);
        let e = &d.events;
        assert_eq!(e[0].timestamp_ms(), 1_767_323_045_000);
        assert_eq!(e[1].timestamp_ms(), 2_000);
        assert!(e[1].stamped_at_receipt());
        assert!(e[1].has_tag("shipped"));
        assert!(e[2].has_tag("_jsonparsefailure"));
        assert!(
            e[3].has_tag("_jsonparsefailure"),
            "kept as text, as received"
        );
        let path = crate::event::FieldPath::parse("[@metadata][input][beats][peer]").unwrap();
        assert_eq!(e[0].get(&path), Some(&json!("127.0.0.1:5000")));
    }

    #[test]
    fn torn_and_corrupt_records_are_told_apart() {
        let mut b = RecordBuilder::new("http", None, &[], 10);
        b.push(DocKind::Json, 1, br#"{"x":1}"#);
        let mut record = b.finish();
        for cut in [0, 3, HEADER, record.len() - 1] {
            assert_eq!(framing(&record[..cut]), Framing::Short, "cut at {cut}");
        }
        let last = record.len() - 1;
        record[last] ^= 0xff;
        assert_eq!(framing(&record), Framing::Corrupt);
    }
}
