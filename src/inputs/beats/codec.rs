//! Lumberjack v2 (the Beats protocol) as a `tokio_util` decoder: bytes in, window sizes and
//! batches of raw events out, with every length bounded. Compressed frames are inflated into
//! one buffer and the events inside are slices of it; JSON is parsed by the connection.
//!
//! Wire format (big-endian u32 integers, every frame starts with version `'2'`):
//! `W` count | `J` seq len json | `D` seq pairs (klen key vlen value)* | `C` len zlib | `A` seq.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use tokio_util::codec::Decoder;

pub const VERSION: u8 = b'2';
pub const WINDOW: u8 = b'W';
pub const JSON: u8 = b'J';
pub const DATA: u8 = b'D';
pub const COMPRESSED: u8 = b'C';
pub const ACK: u8 = b'A';

/// Compressed frames inside compressed frames deeper than this are refused.
const MAX_NESTING: usize = 3;
/// Events collected into one `Frame::Events` from an uncompressed stream of J/D frames.
const MAX_BATCH: usize = 4096;

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `W`: this many events follow and will be acknowledged together.
    Window(u32),
    /// Consecutive `J`/`D` frames, in wire order.
    Events(Vec<RawEvent>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    pub seq: u32,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A `J` frame's JSON bytes (not yet parsed).
    Json(Bytes),
    /// A `D` frame's key/value strings (the legacy format), as raw bytes.
    Pairs(Vec<(Bytes, Bytes)>),
}

/// Why a stream is not valid Lumberjack v2; each closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("unsupported protocol version byte 0x{0:02x} (only Lumberjack v2, '2', is spoken)")]
    Version(u8),
    #[error("unknown frame type 0x{0:02x}")]
    FrameType(u8),
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes (max_frame_size)")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: usize,
    },
    #[error("compressed frame is not a valid zlib stream: {0}")]
    Zlib(String),
    #[error("compressed frames nested more than {MAX_NESTING} deep")]
    Nesting,
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// A short stable name for metrics (`kind` label).
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::Version(_) => "bad_version",
            ProtocolError::FrameType(_) => "unknown_frame",
            ProtocolError::TooLarge { .. } => "too_large",
            ProtocolError::Zlib(_) => "bad_zlib",
            ProtocolError::Nesting => "nesting",
            ProtocolError::Truncated(_) => "truncated",
            ProtocolError::Io(_) => "io",
        }
    }
}

/// Encodes an ACK frame.
pub fn ack(seq: u32) -> [u8; 6] {
    let s = seq.to_be_bytes();
    [VERSION, ACK, s[0], s[1], s[2], s[3]]
}

/// The decoder. `max_frame` bounds a frame on the wire and what a compressed frame inflates to.
#[derive(Debug)]
pub struct BeatsCodec {
    max_frame: usize,
    /// Frames already decoded from an inflated buffer, handed out one per `decode` call.
    pending: VecDeque<Frame>,
    /// The last window's inflated buffer, lent to its events (slices, no copies) and taken
    /// back for the next window once they are gone, so the buffer (about 2.4 MB for a Filebeat
    /// window) is allocated once per connection: a new one of that size comes fresh from the
    /// kernel, zero-filled page by page, every time.
    lent: Option<Bytes>,
}

impl BeatsCodec {
    pub fn new(max_frame: usize) -> Self {
        BeatsCodec {
            max_frame: max_frame.max(16),
            pending: VecDeque::new(),
            lent: None,
        }
    }

    fn check_len(&self, what: &'static str, len: u32) -> Result<usize, ProtocolError> {
        let len = len as usize;
        if len > self.max_frame {
            return Err(ProtocolError::TooLarge {
                what,
                len: len as u64,
                limit: self.max_frame,
            });
        }
        Ok(len)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The length of the complete frame at the start of `buf`, or `None` when more bytes are
/// needed. Checks version, type and length limits from the header alone.
fn frame_len(codec: &BeatsCodec, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(ProtocolError::Version(buf[0]));
    }
    if buf.len() < 2 {
        return Ok(None);
    }
    let need = |n: usize| -> Option<usize> { (buf.len() >= n).then_some(n) };
    match buf[1] {
        WINDOW => Ok(need(6)),
        COMPRESSED => {
            if buf.len() < 6 {
                return Ok(None);
            }
            let len = codec.check_len("compressed frame", be32(&buf[2..6]))?;
            Ok(need(6 + len))
        }
        JSON => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = codec.check_len("JSON frame", be32(&buf[6..10]))?;
            Ok(need(10 + len))
        }
        DATA => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let pairs = be32(&buf[6..10]) as u64;
            // Each pair takes at least 8 bytes, so the count alone can be bounded.
            if pairs * 8 > codec.max_frame as u64 {
                return Err(ProtocolError::TooLarge {
                    what: "data frame",
                    len: pairs * 8,
                    limit: codec.max_frame,
                });
            }
            let mut at = 10usize;
            for _ in 0..pairs {
                for what in ["data frame key", "data frame value"] {
                    if buf.len() < at + 4 {
                        return Ok(None);
                    }
                    let len = codec.check_len(what, be32(&buf[at..at + 4]))?;
                    at += 4 + len;
                    if at - 10 > codec.max_frame {
                        return Err(ProtocolError::TooLarge {
                            what: "data frame",
                            len: at as u64,
                            limit: codec.max_frame,
                        });
                    }
                }
            }
            Ok(need(at))
        }
        other => Err(ProtocolError::FrameType(other)),
    }
}

/// Splits a complete J or D frame (already measured by `frame_len`) into a raw event.
fn data_event(frame: &Bytes) -> RawEvent {
    let seq = be32(&frame[2..6]);
    if frame[1] == JSON {
        return RawEvent {
            seq,
            body: Body::Json(frame.slice(10..)),
        };
    }
    let pairs = be32(&frame[6..10]) as usize;
    let mut out = Vec::with_capacity(pairs.min(256));
    let mut at = 10;
    for _ in 0..pairs {
        let klen = be32(&frame[at..at + 4]) as usize;
        let key = frame.slice(at + 4..at + 4 + klen);
        at += 4 + klen;
        let vlen = be32(&frame[at..at + 4]) as usize;
        let value = frame.slice(at + 4..at + 4 + vlen);
        at += 4 + vlen;
        out.push((key, value));
    }
    RawEvent {
        seq,
        body: Body::Pairs(out),
    }
}

/// Inflates one zlib stream, refusing to produce more than `limit` bytes (zlib bombs).
pub fn inflate(input: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    let n = inflate_into(input, limit, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Inflates one zlib stream (checksum verified) into `out` and returns its inflated length.
/// `out` keeps its initialised length between calls and grows by doubling, up to `limit + 1`
/// bytes: a stream that does not fit in that is refused. libdeflate inflates a whole buffer at
/// once, about twice as fast as a streaming inflater.
fn inflate_into(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    let too_large = |len: usize| ProtocolError::TooLarge {
        what: "inflated compressed frame",
        len: len as u64,
        limit,
    };
    // Filebeat's level-3 windows inflate about 6-10x; start there.
    let first = input.len().saturating_mul(8).clamp(1024, limit + 1);
    if out.len() < first {
        out.resize(first, 0);
    }
    let mut z = libdeflater::Decompressor::new();
    loop {
        match z.zlib_decompress(input, out) {
            Ok(n) if n > limit => return Err(too_large(n)),
            Ok(n) => return Ok(n),
            Err(libdeflater::DecompressionError::InsufficientSpace) => {
                if out.len() > limit {
                    return Err(too_large(out.len()));
                }
                let grown = out.len().saturating_mul(2).min(limit + 1);
                out.resize(grown, 0);
            }
            Err(libdeflater::DecompressionError::BadData) => {
                return Err(ProtocolError::Zlib(
                    "corrupt or truncated zlib stream".into(),
                ))
            }
        }
    }
}

impl BeatsCodec {
    /// Inflates a compressed frame's stream into the window buffer and decodes its frames; the
    /// events borrow their bytes from the buffer.
    fn unpack_compressed(&mut self, stream: &[u8]) -> Result<(), ProtocolError> {
        let mut buf = self.reclaim_buffer();
        let inflated = inflate_into(stream, self.max_frame, &mut buf);
        let window = Bytes::from(buf);
        self.lent = Some(window.clone());
        self.unpack(&window.slice(..inflated?), 1)
    }

    /// The buffer for the next window: the last one when its events have all been dropped
    /// (the usual case: they are decoded before the next window is read), else a new one.
    fn reclaim_buffer(&mut self) -> Vec<u8> {
        if let Some(lent) = self.lent.take() {
            if let Ok(back) = lent.try_into_mut() {
                return Vec::from(back);
            }
        }
        Vec::new()
    }

    /// Decodes every frame of an inflated buffer into `pending`, grouping runs of events (slices
    /// of `buf`).
    fn unpack(&mut self, buf: &Bytes, depth: usize) -> Result<(), ProtocolError> {
        if depth > MAX_NESTING {
            return Err(ProtocolError::Nesting);
        }
        let mut rest = buf.clone();
        let mut run: Vec<RawEvent> = Vec::new();
        while !rest.is_empty() {
            let Some(len) = frame_len(self, &rest)? else {
                return Err(ProtocolError::Truncated(
                    "incomplete frame inside a compressed frame",
                ));
            };
            let frame = rest.split_to(len);
            match frame[1] {
                JSON | DATA => run.push(data_event(&frame)),
                WINDOW => {
                    if !run.is_empty() {
                        self.pending
                            .push_back(Frame::Events(std::mem::take(&mut run)));
                    }
                    self.pending.push_back(Frame::Window(be32(&frame[2..6])));
                }
                COMPRESSED => {
                    if !run.is_empty() {
                        self.pending
                            .push_back(Frame::Events(std::mem::take(&mut run)));
                    }
                    let inner = inflate(&frame[6..], self.max_frame)?;
                    self.unpack(&Bytes::from(inner), depth + 1)?;
                }
                _ => unreachable!("frame_len accepts only known frame types"),
            }
        }
        if !run.is_empty() {
            self.pending.push_back(Frame::Events(run));
        }
        Ok(())
    }
}

impl Decoder for BeatsCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Ok(Some(f));
            }
            let Some(len) = frame_len(self, src)? else {
                // Reserve the whole announced frame at once so a 2 MB window is read into
                // one buffer instead of growing it step by step.
                if src.len() >= 6 && matches!(src[1], COMPRESSED | JSON) {
                    let announced = if src[1] == COMPRESSED {
                        6 + be32(&src[2..6]) as usize
                    } else if src.len() >= 10 {
                        10 + be32(&src[6..10]) as usize
                    } else {
                        0
                    };
                    src.reserve(announced.saturating_sub(src.len()));
                }
                return Ok(None);
            };
            match src[1] {
                WINDOW => {
                    let frame = src.split_to(len);
                    return Ok(Some(Frame::Window(be32(&frame[2..6]))));
                }
                COMPRESSED => {
                    let frame = src.split_to(len);
                    self.unpack_compressed(&frame[6..])?;
                    // An empty compressed frame yields nothing: look at the next frame.
                }
                _ => {
                    // Uncompressed J/D frames: take every complete one already buffered.
                    let mut run = Vec::with_capacity(16);
                    let mut len = len;
                    loop {
                        let frame = src.split_to(len).freeze();
                        run.push(data_event(&frame));
                        if run.len() >= MAX_BATCH || src.len() < 2 || !matches!(src[1], JSON | DATA)
                        {
                            break;
                        }
                        // A bad next frame is reported by the next call, after this run.
                        match frame_len(self, src) {
                            Ok(Some(l)) => len = l,
                            Ok(None) | Err(_) => break,
                        }
                    }
                    return Ok(Some(Frame::Events(run)));
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() => Ok(None),
            None => {
                src.advance(src.len());
                Err(ProtocolError::Truncated("connection closed inside a frame"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::ZlibEncoder;
    use std::io::Write;

    pub(crate) fn window(n: u32) -> Vec<u8> {
        let mut v = vec![VERSION, WINDOW];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    fn json(seq: u32, body: &str) -> Vec<u8> {
        let mut v = vec![VERSION, JSON];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body.as_bytes());
        v
    }

    fn data(seq: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut v = vec![VERSION, DATA];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
        for (k, val) in pairs {
            v.extend_from_slice(&(k.len() as u32).to_be_bytes());
            v.extend_from_slice(k.as_bytes());
            v.extend_from_slice(&(val.len() as u32).to_be_bytes());
            v.extend_from_slice(val.as_bytes());
        }
        v
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::new(3));
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn compressed(inner: &[u8]) -> Vec<u8> {
        let z = zlib(inner);
        let mut v = vec![VERSION, COMPRESSED];
        v.extend_from_slice(&(z.len() as u32).to_be_bytes());
        v.extend_from_slice(&z);
        v
    }

    fn decode_all(codec: &mut BeatsCodec, bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    /// Flattens frames into comparable items, ignoring how events were grouped.
    fn flatten(frames: &[Frame]) -> Vec<String> {
        let mut out = Vec::new();
        for f in frames {
            match f {
                Frame::Window(n) => out.push(format!("W{n}")),
                Frame::Events(evs) => {
                    for e in evs {
                        match &e.body {
                            Body::Json(b) => {
                                out.push(format!("J{}:{}", e.seq, String::from_utf8_lossy(b)))
                            }
                            Body::Pairs(p) => {
                                let kv: Vec<String> = p
                                    .iter()
                                    .map(|(k, v)| {
                                        format!(
                                            "{}={}",
                                            String::from_utf8_lossy(k),
                                            String::from_utf8_lossy(v)
                                        )
                                    })
                                    .collect();
                                out.push(format!("D{}:{}", e.seq, kv.join(",")))
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn sample_stream() -> Vec<u8> {
        let mut s = window(3);
        let mut inner = json(1, r#"{"message":"one"}"#);
        inner.extend(json(2, r#"{"message":"two"}"#));
        s.extend(compressed(&inner));
        s.extend(data(3, &[("line", "three"), ("host", "h1")]));
        s.extend(window(2));
        s.extend(json(1, r#"{"a":1}"#));
        // nested: a compressed frame holding a compressed frame holding a J frame
        s.extend(compressed(&compressed(&json(2, r#"{"a":2}"#))));
        s.extend(window(0));
        s
    }

    const SAMPLE: &[&str] = &[
        "W3",
        r#"J1:{"message":"one"}"#,
        r#"J2:{"message":"two"}"#,
        "D3:line=three,host=h1",
        "W2",
        r#"J1:{"a":1}"#,
        r#"J2:{"a":2}"#,
        "W0",
    ];

    #[test]
    fn every_frame_type_and_nested_compression() {
        let frames = decode_all(&mut BeatsCodec::new(1 << 20), &sample_stream()).unwrap();
        assert_eq!(flatten(&frames), SAMPLE);
        // the two J frames of one compressed frame arrive together
        assert!(matches!(&frames[1], Frame::Events(e) if e.len() == 2));
    }

    #[test]
    fn split_reads_at_every_byte_boundary() {
        let stream = sample_stream();
        for cut in 0..=stream.len() {
            let mut codec = BeatsCodec::new(1 << 20);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut frames = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
                frames.push(f);
            }
            assert_eq!(flatten(&frames), SAMPLE, "cut at {cut}");
        }
        // and one byte at a time
        let mut codec = BeatsCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in &stream {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(flatten(&frames), SAMPLE);
    }

    fn error_of(bytes: &[u8], max: usize) -> &'static str {
        match decode_all(&mut BeatsCodec::new(max), bytes) {
            Ok(f) => panic!("expected an error, decoded {f:?}"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn malformed_input_is_an_error_of_its_kind() {
        assert_eq!(error_of(b"1W\0\0\0\x01", 1024), "bad_version");
        assert_eq!(error_of(b"2X\0\0\0\x01", 1024), "unknown_frame");
        // ACK frames only travel from server to client
        assert_eq!(error_of(&ack(1), 1024), "unknown_frame");
        assert_eq!(error_of(&json(1, &"x".repeat(2000)), 1024), "too_large");
        assert_eq!(error_of(b"2J\0\0\0\x01\xff\xff\xff\xff", 1024), "too_large");
        assert_eq!(error_of(b"2C\xff\xff\xff\xff", 1024), "too_large");
        assert_eq!(error_of(b"2D\0\0\0\x01\x10\0\0\0", 1024), "too_large");
        assert_eq!(
            error_of(b"2D\0\0\0\x01\0\0\0\x01\xff\xff\xff\xff", 1024),
            "too_large"
        );
        // truncated at the end of the stream
        let j = json(1, "{}");
        assert_eq!(error_of(&j[..j.len() - 1], 1024), "truncated");
        assert_eq!(error_of(b"2", 1024), "truncated");
        // a compressed frame whose content ends inside a frame
        assert_eq!(error_of(&compressed(&j[..j.len() - 1]), 1024), "truncated");
        // garbage and cut-off zlib
        assert_eq!(error_of(b"2C\0\0\0\x04abcd", 1024), "bad_zlib");
        let c = compressed(&json(1, "{}"));
        let mut cut = c[..c.len() - 3].to_vec();
        cut[2..6].copy_from_slice(&((c.len() - 9) as u32).to_be_bytes());
        assert_eq!(error_of(&cut, 1024), "bad_zlib");
        // bad bytes inside the compressed payload
        assert_eq!(error_of(&compressed(b"2Z"), 1024), "unknown_frame");
        // nesting beyond the limit
        let mut deep = json(1, "{}");
        for _ in 0..=MAX_NESTING {
            deep = compressed(&deep);
        }
        assert_eq!(error_of(&deep, 1 << 20), "nesting");
    }

    #[test]
    fn a_window_buffer_is_reused_once_its_events_are_gone() {
        // Windows of one size, as a Filebeat connection sends them.
        let window = |seq: u32| {
            let mut inner = Vec::new();
            for i in 0..50 {
                inner.extend(json(seq + i, &format!("{{\"n\":{:03}}}", seq + i)));
            }
            compressed(&inner)
        };
        let mut codec = BeatsCodec::new(1 << 20);
        let first = decode_all(&mut codec, &window(100)).unwrap();
        let first_buffer = codec.lent.as_ref().unwrap().as_ptr();
        // While the events hold their bytes, the next window gets a buffer of its own.
        let second = decode_all(&mut codec, &window(200)).unwrap();
        let second_buffer = codec.lent.as_ref().unwrap().as_ptr();
        assert_ne!(second_buffer, first_buffer);
        assert_eq!(flatten(&first).len(), 50);
        assert_eq!(flatten(&second).len(), 50);
        // Once they are dropped, the buffer comes back and the new events' bytes are intact.
        drop(first);
        drop(second);
        let third = decode_all(&mut codec, &window(300)).unwrap();
        assert_eq!(codec.lent.as_ref().unwrap().as_ptr(), second_buffer);
        let items = flatten(&third);
        assert_eq!(items.len(), 50);
        assert_eq!(items[0], "J300:{\"n\":300}");
        assert_eq!(items[49], "J349:{\"n\":349}");
    }

    #[test]
    fn zlib_bombs_stop_at_the_limit() {
        // 8 MiB of one byte compresses to ~8 KiB
        let bomb = zlib(&vec![0u8; 8 << 20]);
        let mut frame = vec![VERSION, COMPRESSED];
        frame.extend_from_slice(&(bomb.len() as u32).to_be_bytes());
        frame.extend_from_slice(&bomb);
        assert_eq!(error_of(&frame, 64 << 10), "too_large");
        // within the limit it inflates (and then fails on the zero bytes: version 0x00)
        let small = compressed(&vec![0u8; 1000]);
        assert_eq!(error_of(&small, 1 << 20), "bad_version");
        assert_eq!(inflate(&zlib(&[7u8; 5000]), 5000).unwrap().len(), 5000);
        assert!(inflate(&zlib(&[7u8; 5001]), 5000).is_err());
    }

    #[test]
    fn uncompressed_events_are_batched() {
        let mut s = window(3);
        for i in 1..=3 {
            s.extend(json(i, "{}"));
        }
        let frames = decode_all(&mut BeatsCodec::new(1024), &s).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(matches!(&frames[1], Frame::Events(e) if e.len() == 3));
    }

    #[test]
    fn events_before_a_bad_frame_come_out_first() {
        // found by the fuzzer: the run of events was lost when the next frame was bad
        let mut s = window(1);
        s.extend(data(1, &[]));
        s.extend(b"1D\0\0");
        let mut codec = BeatsCodec::new(1024);
        let mut buf = BytesMut::from(&s[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Window(1)));
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Events(e))) if e.len() == 1));
        assert_eq!(codec.decode(&mut buf).unwrap_err().kind(), "bad_version");
    }

    #[test]
    fn empty_compressed_frame_yields_nothing() {
        let mut s = compressed(b"");
        s.extend(window(1));
        let frames = decode_all(&mut BeatsCodec::new(1024), &s).unwrap();
        assert_eq!(frames, vec![Frame::Window(1)]);
    }

    #[test]
    fn ack_encoding() {
        assert_eq!(ack(2048), [b'2', b'A', 0, 0, 8, 0]);
    }
}
