//! Lumberjack v2 (the Beats protocol) as a `tokio_util` decoder: bytes in, window sizes and
//! batches of raw events out, with every length bounded and every event counted against its
//! window as it is decoded. JSON is parsed by the connection.
//!
//! Wire format (big-endian u32 integers, every frame starts with version `'2'`):
//! `W` count | `J` seq len json | `D` seq pairs (klen key vlen value)* | `C` len zlib | `A` seq.
//!
//! What a hostile client can make the decoder hold:
//! - A header reserves nothing: a frame's bytes are buffered as they arrive, up to
//!   `max_frame` on the wire.
//! - A compressed frame is inflated in one libdeflate call only while it fits
//!   [`FAST_INFLATE_MAX`] (a Filebeat window, about 2.4 MB, does; libdeflate is about twice as
//!   fast as a streaming inflater). A larger one is inflated as a stream, [`CHUNK`] bytes at a
//!   time, its frames decoded between chunks.
//! - Inflated bytes are counted per window against `max_window_bytes`, and events against the
//!   announced window: the event after the last one the window announced is an error at once,
//!   even in the middle of a compressed frame, so a small frame inflating to millions of tiny
//!   events costs one chunk.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

pub const VERSION: u8 = b'2';
pub const WINDOW: u8 = b'W';
pub const JSON: u8 = b'J';
pub const DATA: u8 = b'D';
pub const COMPRESSED: u8 = b'C';
pub const ACK: u8 = b'A';

/// Compressed frames inside compressed frames deeper than this are refused.
const MAX_NESTING: usize = 3;
/// Events handed out in one `Frame::Events`.
const MAX_BATCH: usize = 4096;
/// Largest compressed frame inflated in one call; larger ones are streamed. Three times a
/// Filebeat window of 2048 typical events.
pub const FAST_INFLATE_MAX: usize = 8 << 20;
/// Inflated bytes produced per step of a streamed compressed frame.
pub const CHUNK: usize = 256 << 10;

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `W`: this many events follow and will be acknowledged together.
    Window(u32),
    /// Consecutive `J`/`D` frames, in wire order, all inside the announced window.
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

impl Body {
    /// The bytes the client sent for this event.
    pub fn len(&self) -> usize {
        match self {
            Body::Json(b) => b.len(),
            Body::Pairs(p) => p.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one connection's decoder may hold or accept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame on the wire, and largest `J`/`D` frame inside an inflated one, in bytes.
    pub max_frame: usize,
    /// Largest window a client may announce, in events.
    pub max_window: u32,
    /// Most bytes the compressed frames of one window may inflate to.
    pub max_window_bytes: usize,
}

impl Limits {
    /// `max_frame` for frames and inflated windows alike, windows of up to 16384 events.
    pub fn frames_of(max_frame: usize) -> Limits {
        Limits {
            max_frame,
            max_window: 16384,
            max_window_bytes: max_frame,
        }
    }
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
    #[error(
        "the window's compressed frames inflate to more than {limit} bytes (max_window_bytes)"
    )]
    WindowBytes { limit: usize },
    #[error("compressed frame is not a valid zlib stream: {0}")]
    Zlib(String),
    #[error("compressed frames nested more than {MAX_NESTING} deep")]
    Nesting,
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    #[error("window of {0} events exceeds max_window_size {1}")]
    WindowTooLarge(u32, u32),
    #[error("events sent before a window size frame")]
    EventOutsideWindow,
    #[error("more events than the announced window of {0}")]
    WindowOverflow(u32),
    #[error("new window announced after {got} of {expected} events")]
    WindowIncomplete { expected: u32, got: u32 },
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
            ProtocolError::WindowBytes { .. } => "window_bytes",
            ProtocolError::Zlib(_) => "bad_zlib",
            ProtocolError::Nesting => "nesting",
            ProtocolError::Truncated(_) => "truncated",
            ProtocolError::WindowTooLarge(..) => "window_too_large",
            ProtocolError::EventOutsideWindow => "event_outside_window",
            ProtocolError::WindowOverflow(_) => "window_overflow",
            ProtocolError::WindowIncomplete { .. } => "window_incomplete",
            ProtocolError::Io(_) => "io",
        }
    }
}

/// Encodes an ACK frame.
pub fn ack(seq: u32) -> [u8; 6] {
    let s = seq.to_be_bytes();
    [VERSION, ACK, s[0], s[1], s[2], s[3]]
}

/// Where the stream stands with respect to windows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WindowState {
    /// No window announced yet.
    Unopened,
    /// `left` of `announced` events are still to come.
    Open { announced: u32, left: u32 },
    /// Every event of the last window (of `announced`) arrived.
    Complete { announced: u32 },
}

/// Windows and their event and inflated-byte counts.
#[derive(Debug)]
struct WindowCount {
    state: WindowState,
    /// Bytes inflated since the current window was announced.
    inflated: usize,
}

impl WindowCount {
    /// A `W` frame: allowed once the previous window is complete.
    fn open(&mut self, n: u32, limits: &Limits) -> Result<(), ProtocolError> {
        if let WindowState::Open { announced, left } = self.state {
            return Err(ProtocolError::WindowIncomplete {
                expected: announced,
                got: announced - left,
            });
        }
        if n > limits.max_window {
            return Err(ProtocolError::WindowTooLarge(n, limits.max_window));
        }
        self.state = match n {
            0 => WindowState::Complete { announced: 0 },
            n => WindowState::Open {
                announced: n,
                left: n,
            },
        };
        self.inflated = 0;
        Ok(())
    }

    /// One more event: refused, and the state left as it was, when no window has room.
    #[inline]
    fn event(&mut self) -> Result<(), ProtocolError> {
        match self.state {
            WindowState::Open { announced, left } => {
                self.state = if left == 1 {
                    WindowState::Complete { announced }
                } else {
                    WindowState::Open {
                        announced,
                        left: left - 1,
                    }
                };
                Ok(())
            }
            WindowState::Complete { announced } => Err(ProtocolError::WindowOverflow(announced)),
            WindowState::Unopened => Err(ProtocolError::EventOutsideWindow),
        }
    }

    /// `n` more inflated bytes in this window.
    fn inflated(&mut self, n: usize, limits: &Limits) -> Result<(), ProtocolError> {
        self.inflated = self.inflated.saturating_add(n);
        if self.inflated > limits.max_window_bytes {
            return Err(ProtocolError::WindowBytes {
                limit: limits.max_window_bytes,
            });
        }
        Ok(())
    }

    /// Inflated bytes this window may still produce.
    fn inflate_room(&self, limits: &Limits) -> usize {
        limits.max_window_bytes.saturating_sub(self.inflated)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn too_large(what: &'static str, len: u64, limits: &Limits) -> ProtocolError {
    ProtocolError::TooLarge {
        what,
        len,
        limit: limits.max_frame,
    }
}

fn check_len(limits: &Limits, what: &'static str, len: u32) -> Result<usize, ProtocolError> {
    let len = len as usize;
    if len > limits.max_frame {
        return Err(too_large(what, len as u64, limits));
    }
    Ok(len)
}

/// The length of the complete frame at the start of `buf`, or `None` when more bytes are
/// needed. Checks version, type and length limits from the header alone, so a garbage stream
/// fails on its first or second byte.
fn frame_len(limits: &Limits, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
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
            let len = check_len(limits, "compressed frame", be32(&buf[2..6]))?;
            Ok(need(6 + len))
        }
        JSON => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = check_len(limits, "JSON frame", be32(&buf[6..10]))?;
            Ok(need(10 + len))
        }
        DATA => data_frame_len(limits, buf),
        other => Err(ProtocolError::FrameType(other)),
    }
}

/// [`frame_len`] of a `D` frame: walks its key/value lengths.
fn data_frame_len(limits: &Limits, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 10 {
        return Ok(None);
    }
    let pairs = be32(&buf[6..10]) as u64;
    // Each pair takes at least 8 bytes, so the count alone can be bounded.
    if pairs * 8 > limits.max_frame as u64 {
        return Err(too_large("data frame", pairs * 8, limits));
    }
    let mut at = 10usize;
    for _ in 0..pairs {
        for what in ["data frame key", "data frame value"] {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let len = check_len(limits, what, be32(&buf[at..at + 4]))?;
            at += 4 + len;
            if at - 10 > limits.max_frame {
                return Err(too_large("data frame", at as u64, limits));
            }
        }
    }
    Ok((buf.len() >= at).then_some(at))
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

/// Inflates one zlib stream (checksum verified) into `out` in one call and returns its
/// inflated length, or `None` when it inflates to more than `limit` bytes. `out` keeps its
/// initialised length between calls and grows by doubling, up to `limit + 1` bytes.
fn inflate_whole(
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<Option<usize>, ProtocolError> {
    // A reused buffer larger than the limit is cut to it, so whether a stream fits does
    // not depend on the windows before it.
    out.truncate(limit + 1);
    // Filebeat's level-3 windows inflate about 6-10x; start there.
    let first = input.len().saturating_mul(8).max(1024).min(limit + 1);
    if out.len() < first {
        out.resize(first, 0);
    }
    let mut z = libdeflater::Decompressor::new();
    loop {
        match z.zlib_decompress(input, out) {
            Ok(n) if n > limit => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(libdeflater::DecompressionError::InsufficientSpace) => {
                if out.len() > limit {
                    return Ok(None);
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

/// A compressed frame's inflated bytes, decoded into frames as they come.
#[derive(Debug)]
struct Stage {
    /// Inflated bytes not decoded yet (a slice of the window buffer when inflated whole).
    out: Bytes,
    /// The zlib stream, while a streamed frame has more to inflate.
    stream: Option<Stream>,
}

/// A zlib stream inflated [`CHUNK`] bytes at a time.
struct Stream {
    input: Bytes,
    z: flate2::Decompress,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("input", &self.input.len())
            .field("consumed", &self.z.total_in())
            .finish()
    }
}

/// What a streaming inflater's state costs besides its buffers (zlib's 32 KiB window and
/// tables).
const INFLATER_STATE: usize = 48 << 10;

impl Stage {
    fn streamed(input: Bytes) -> Stage {
        Stage {
            out: Bytes::new(),
            stream: Some(Stream {
                input,
                z: flate2::Decompress::new(true),
            }),
        }
    }

    /// Inflates the next chunk behind the undecoded bytes, counting it against the window.
    /// False when the stream has ended.
    fn inflate_more(
        &mut self,
        count: &mut WindowCount,
        limits: &Limits,
    ) -> Result<bool, ProtocolError> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(false);
        };
        let carry = self.out.len();
        // A frame longer than a chunk doubles the room, so copying its head stays linear; one
        // byte past the window's room is enough to tell that it is exceeded.
        let room = CHUNK.max(carry).min(count.inflate_room(limits) + 1);
        let mut buf = BytesMut::with_capacity(carry + room);
        buf.extend_from_slice(&self.out);
        buf.resize(carry + room, 0);
        let (in_before, out_before) = (s.z.total_in(), s.z.total_out());
        let status =
            s.z.decompress(
                &s.input[in_before as usize..],
                &mut buf[carry..],
                flate2::FlushDecompress::None,
            )
            .map_err(|e| ProtocolError::Zlib(e.to_string()))?;
        let produced = (s.z.total_out() - out_before) as usize;
        let consumed = s.z.total_in() - in_before;
        buf.truncate(carry + produced);
        self.out = buf.freeze();
        count.inflated(produced, limits)?;
        if status == flate2::Status::StreamEnd {
            self.stream = None;
        } else if produced == 0 && consumed == 0 {
            return Err(ProtocolError::Zlib("truncated zlib stream".into()));
        }
        Ok(true)
    }

    fn held(&self) -> usize {
        match &self.stream {
            Some(s) => self.out.len() + s.input.len() + INFLATER_STATE,
            None => 0,
        }
    }
}

/// The decoder: one per connection.
#[derive(Debug)]
pub struct BeatsCodec {
    limits: Limits,
    count: WindowCount,
    /// Compressed frames being decoded, innermost last (nested ones are rare but legal).
    stages: Vec<Stage>,
    /// The last window's inflated buffer, lent to its events (slices, no copies) and taken
    /// back for the next window once they are gone, so the buffer (about 2.4 MB for a Filebeat
    /// window) is allocated once per connection: a new one of that size comes fresh from the
    /// kernel, zero-filled page by page, every time.
    lent: Option<Bytes>,
}

impl BeatsCodec {
    pub fn new(limits: Limits) -> Self {
        BeatsCodec {
            limits: Limits {
                max_frame: limits.max_frame.max(16),
                ..limits
            },
            count: WindowCount {
                state: WindowState::Unopened,
                inflated: 0,
            },
            stages: Vec::new(),
            lent: None,
        }
    }

    /// Bytes this decoder holds besides the read buffer: the window buffer and the streamed
    /// compressed frames.
    pub fn held(&self) -> usize {
        self.lent.as_ref().map_or(0, Bytes::len)
            + self.stages.iter().map(Stage::held).sum::<usize>()
    }

    /// Lets go of the window buffer kept for reuse (a connection gone quiet keeps nothing).
    pub fn shed(&mut self) {
        if self.stages.is_empty() {
            self.lent = None;
        }
    }

    /// Starts decoding a compressed frame from the wire: inflated whole into the window
    /// buffer when it fits [`FAST_INFLATE_MAX`], streamed otherwise.
    fn start_compressed(&mut self, input: Bytes) -> Result<(), ProtocolError> {
        let limit = FAST_INFLATE_MAX.min(self.count.inflate_room(&self.limits));
        let mut buf = self.reclaim_buffer();
        match inflate_whole(&input, limit, &mut buf)? {
            Some(n) => {
                let window = Bytes::from(buf);
                self.lent = Some(window.clone());
                self.count.inflated(n, &self.limits)?;
                self.stages.push(Stage {
                    out: window.slice(..n),
                    stream: None,
                });
            }
            // The buffer is dropped: a connection that sends such frames streams them.
            None => self.stages.push(Stage::streamed(input)),
        }
        Ok(())
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

    /// Takes every complete J/D frame already buffered (the first is `len` bytes long),
    /// each counted against the window; an error after the first is the next call's.
    fn wire_events(&mut self, src: &mut BytesMut, mut len: usize) -> Result<Frame, ProtocolError> {
        self.count.event()?;
        let mut run = Vec::with_capacity(16);
        loop {
            let frame = src.split_to(len).freeze();
            run.push(data_event(&frame));
            if run.len() >= MAX_BATCH || src.len() < 2 || !matches!(src[1], JSON | DATA) {
                break;
            }
            match frame_len(&self.limits, src) {
                Ok(Some(l)) => len = l,
                Ok(None) | Err(_) => break,
            }
            if self.count.event().is_err() {
                break;
            }
        }
        Ok(Frame::Events(run))
    }

    /// The next frame from the innermost compressed frame, or `None` when there is nothing to
    /// hand out yet (it ended, or a nested one started). Events decoded before an error come
    /// out first; the error (which changed nothing) recurs on the next call.
    fn next_inflated(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let mut run = Vec::new();
        match self.fill_run(&mut run) {
            Ok(next) if run.is_empty() => Ok(next),
            Err(e) if run.is_empty() => Err(e),
            Ok(_) | Err(_) => Ok(Some(Frame::Events(run))),
        }
    }

    /// Decodes the innermost stage's frames into `run` until it needs more inflated bytes, is
    /// full, or reaches a window or compressed frame (returned, or pushed as a new stage).
    /// Inflates only with `run` empty, so an inflate error is never behind events.
    fn fill_run(&mut self, run: &mut Vec<RawEvent>) -> Result<Option<Frame>, ProtocolError> {
        let depth = self.stages.len();
        let stage = self
            .stages
            .last_mut()
            .expect("a compressed frame is being decoded");
        loop {
            let Some(len) = frame_len(&self.limits, &stage.out)? else {
                if !run.is_empty() {
                    return Ok(None);
                }
                if stage.inflate_more(&mut self.count, &self.limits)? {
                    continue;
                }
                if !stage.out.is_empty() {
                    return Err(ProtocolError::Truncated(
                        "incomplete frame inside a compressed frame",
                    ));
                }
                self.stages.pop();
                return Ok(None);
            };
            match stage.out[1] {
                JSON | DATA => {
                    self.count.event()?;
                    run.push(data_event(&stage.out.split_to(len)));
                    if run.len() >= MAX_BATCH {
                        return Ok(None);
                    }
                }
                _ if !run.is_empty() => return Ok(None),
                WINDOW => {
                    let n = be32(&stage.out[2..6]);
                    self.count.open(n, &self.limits)?;
                    stage.out.advance(6);
                    return Ok(Some(Frame::Window(n)));
                }
                _ => {
                    if depth >= MAX_NESTING {
                        return Err(ProtocolError::Nesting);
                    }
                    let inner = stage.out.split_to(len).slice(6..);
                    self.stages.push(Stage::streamed(inner));
                    return Ok(None);
                }
            }
        }
    }
}

impl Decoder for BeatsCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if !self.stages.is_empty() {
                match self.next_inflated()? {
                    Some(frame) => return Ok(Some(frame)),
                    None => continue,
                }
            }
            // Nothing is reserved for an announced length: the read buffer grows with the
            // bytes that arrive.
            let Some(len) = frame_len(&self.limits, src)? else {
                return Ok(None);
            };
            match src[1] {
                WINDOW => {
                    let n = be32(&src[2..6]);
                    self.count.open(n, &self.limits)?;
                    src.advance(6);
                    return Ok(Some(Frame::Window(n)));
                }
                COMPRESSED => {
                    let frame = src.split_to(len).freeze();
                    self.start_compressed(frame.slice(6..))?;
                }
                _ => return self.wire_events(src, len).map(Some),
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

    fn codec(max_frame: usize) -> BeatsCodec {
        BeatsCodec::new(Limits::frames_of(max_frame))
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
        let frames = decode_all(&mut codec(1 << 20), &sample_stream()).unwrap();
        assert_eq!(flatten(&frames), SAMPLE);
        // the two J frames of one compressed frame arrive together
        assert!(matches!(&frames[1], Frame::Events(e) if e.len() == 2));
    }

    #[test]
    fn split_reads_at_every_byte_boundary() {
        let stream = sample_stream();
        for cut in 0..=stream.len() {
            let mut codec = codec(1 << 20);
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
        let mut codec = codec(1 << 20);
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
        error_with(bytes, Limits::frames_of(max))
    }

    fn error_with(bytes: &[u8], limits: Limits) -> &'static str {
        match decode_all(&mut BeatsCodec::new(limits), bytes) {
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
        let stream = |seq: u32| {
            let mut inner = window(50);
            let mut events = Vec::new();
            for i in 0..50 {
                events.extend(json(seq + i, &format!("{{\"n\":{:03}}}", seq + i)));
            }
            inner.extend(compressed(&events));
            inner
        };
        let mut codec = codec(1 << 20);
        let first = decode_all(&mut codec, &stream(100)).unwrap();
        let first_buffer = codec.lent.as_ref().unwrap().as_ptr();
        // While the events hold their bytes, the next window gets a buffer of its own.
        let second = decode_all(&mut codec, &stream(200)).unwrap();
        let second_buffer = codec.lent.as_ref().unwrap().as_ptr();
        assert_ne!(second_buffer, first_buffer);
        assert_eq!(flatten(&first).len(), 51);
        assert_eq!(flatten(&second).len(), 51);
        // Once they are dropped, the buffer comes back and the new events' bytes are intact.
        drop(first);
        drop(second);
        let third = decode_all(&mut codec, &stream(300)).unwrap();
        assert_eq!(codec.lent.as_ref().unwrap().as_ptr(), second_buffer);
        let items = flatten(&third);
        assert_eq!(items.len(), 51);
        assert_eq!(items[1], "J300:{\"n\":300}");
        assert_eq!(items[50], "J349:{\"n\":349}");
    }

    #[test]
    fn zlib_bombs_stop_at_the_limit() {
        // 8 MiB of one byte compresses to ~8 KiB
        let bomb = zlib(&vec![0u8; 8 << 20]);
        let mut frame = vec![VERSION, COMPRESSED];
        frame.extend_from_slice(&(bomb.len() as u32).to_be_bytes());
        frame.extend_from_slice(&bomb);
        assert_eq!(error_of(&frame, 64 << 10), "window_bytes");
        // within the limit it inflates (and then fails on the zero bytes: version 0x00)
        let small = compressed(&vec![0u8; 1000]);
        assert_eq!(error_of(&small, 1 << 20), "bad_version");
        let mut buf = Vec::new();
        assert_eq!(
            inflate_whole(&zlib(&[7u8; 5000]), 5000, &mut buf).unwrap(),
            Some(5000)
        );
        assert_eq!(
            inflate_whole(&zlib(&[7u8; 5001]), 5000, &mut buf).unwrap(),
            None
        );
    }

    #[test]
    fn uncompressed_events_are_batched() {
        let mut s = window(3);
        for i in 1..=3 {
            s.extend(json(i, "{}"));
        }
        let frames = decode_all(&mut codec(1024), &s).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(matches!(&frames[1], Frame::Events(e) if e.len() == 3));
    }

    #[test]
    fn events_before_a_bad_frame_come_out_first() {
        // found by the fuzzer: the run of events was lost when the next frame was bad
        let mut s = window(1);
        s.extend(data(1, &[]));
        s.extend(b"1D\0\0");
        let mut codec = codec(1024);
        let mut buf = BytesMut::from(&s[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Window(1)));
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Events(e))) if e.len() == 1));
        assert_eq!(codec.decode(&mut buf).unwrap_err().kind(), "bad_version");
    }

    #[test]
    fn empty_compressed_frame_yields_nothing() {
        let mut s = compressed(b"");
        s.extend(window(1));
        let frames = decode_all(&mut codec(1024), &s).unwrap();
        assert_eq!(frames, vec![Frame::Window(1)]);
    }

    /// `n` tiny J frames (12 bytes each), all with sequence number 1 so they compress well.
    fn tiny_events(n: u32) -> Vec<u8> {
        json(1, "{}").repeat(n as usize)
    }

    /// Decodes with `decode` (not at end of stream) until an error; returns the frames before
    /// it and the error's kind.
    fn until_error(codec: &mut BeatsCodec, bytes: &[u8]) -> (Vec<Frame>, &'static str) {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => panic!("no error; decoded {}", flatten(&frames).len()),
                Err(e) => return (frames, e.kind()),
            }
        }
    }

    #[test]
    fn the_event_after_the_window_is_an_error_even_inside_one_compressed_frame() {
        // Inflated whole (small): the window's one event comes out, then the error.
        let mut s = window(1);
        s.extend(compressed(&tiny_events(5000)));
        let (frames, kind) = until_error(&mut codec(64 << 20), &s);
        assert_eq!(kind, "window_overflow");
        assert_eq!(flatten(&frames), ["W1", "J1:{}"]);
        // Streamed (1,000,000 events inflate to 12 MB, beyond the one-call size): the error
        // comes after the first chunk, not after inflating the whole frame.
        let mut s = window(3);
        let bomb = compressed(&tiny_events(1_000_000));
        assert!(bomb.len() < 200_000, "a small frame: {}", bomb.len());
        s.extend(bomb);
        let mut c = codec(64 << 20);
        let (frames, kind) = until_error(&mut c, &s);
        assert_eq!(kind, "window_overflow");
        assert_eq!(flatten(&frames), ["W3", "J1:{}", "J1:{}", "J1:{}"]);
        assert!(c.count.inflated <= CHUNK, "inflated {}", c.count.inflated);
        assert!(c.held() < CHUNK + bomb_len_bound(), "held {}", c.held());
        // Events before any window, and a window announced before the last one is complete.
        assert_eq!(error_of(&json(1, "{}"), 1024), "event_outside_window");
        let mut s = window(2);
        s.extend(json(1, "{}"));
        s.extend(window(1));
        assert_eq!(error_of(&s, 1024), "window_incomplete");
        // An uncompressed run stops at the window's end too, handing out what it holds first.
        let mut s = window(2);
        s.extend(tiny_events(3));
        let (frames, kind) = until_error(&mut codec(1024), &s);
        assert_eq!((flatten(&frames).len(), kind), (3, "window_overflow"));
    }

    fn bomb_len_bound() -> usize {
        200_000 + INFLATER_STATE
    }

    #[test]
    fn windows_are_capped_in_events_and_inflated_bytes() {
        let limits = Limits {
            max_frame: 1 << 20,
            max_window: 100,
            max_window_bytes: 150_000,
        };
        assert_eq!(error_with(&window(101), limits), "window_too_large");
        // Two 100 KB events in one window: the second passes the window's byte cap, whether
        // they come in one compressed frame or two.
        let big = format!("\"{}\"", "x".repeat(100_000));
        let mut one = window(2);
        let mut pair = json(1, &big);
        pair.extend(json(2, &big));
        one.extend(compressed(&pair));
        assert_eq!(error_with(&one, limits), "window_bytes");
        let mut two = window(2);
        two.extend(compressed(&json(1, &big)));
        two.extend(compressed(&json(2, &big)));
        assert_eq!(error_with(&two, limits), "window_bytes");
        // The count starts again with each window.
        let mut ok = window(1);
        ok.extend(compressed(&json(1, &big)));
        ok.extend(window(1));
        ok.extend(compressed(&json(1, &big)));
        let frames = decode_all(&mut BeatsCodec::new(limits), &ok).unwrap();
        assert_eq!(frames.len(), 4);
    }

    #[test]
    fn a_window_too_large_to_inflate_at_once_is_streamed_intact() {
        // 1000 events of 9 KB: 9 MB inflated, beyond FAST_INFLATE_MAX.
        let body = |i: u32| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "y".repeat(9000));
        let mut inner = Vec::new();
        for i in 1..=1000 {
            inner.extend(json(i, &body(i)));
        }
        assert!(inner.len() > FAST_INFLATE_MAX);
        let mut s = window(1000);
        s.extend(compressed(&inner));
        s.extend(window(0));
        let mut c = codec(64 << 20);
        let frames = decode_all(&mut c, &s).unwrap();
        let items = flatten(&frames);
        assert_eq!(items.len(), 1002);
        for i in 1..=1000u32 {
            assert_eq!(items[i as usize], format!("J{i}:{}", body(i)));
        }
        assert!(
            c.lent.is_none(),
            "no window buffer kept for a streamed frame"
        );
        assert!(
            frames.len() > 3,
            "handed out chunk by chunk: {}",
            frames.len()
        );
    }

    #[test]
    fn an_announced_length_reserves_nothing() {
        let limits = Limits {
            max_frame: u32::MAX as usize,
            max_window: 16384,
            max_window_bytes: 64 << 20,
        };
        for header in [
            &b"2C\xff\xff\xff\xf0"[..],
            &b"2J\0\0\0\x01\xff\xff\xff\xf0"[..],
            &b"2D\0\0\0\x01\0\0\0\x01\xff\xff\xff\xf0"[..],
        ] {
            let mut c = BeatsCodec::new(limits);
            let mut buf = BytesMut::with_capacity(64);
            buf.extend_from_slice(&window(1));
            buf.extend_from_slice(header);
            assert_eq!(c.decode(&mut buf).unwrap(), Some(Frame::Window(1)));
            assert_eq!(c.decode(&mut buf).unwrap(), None);
            buf.extend_from_slice(&[b'x'; 30]);
            assert_eq!(c.decode(&mut buf).unwrap(), None);
            assert!(buf.capacity() <= 64, "{header:?}: {}", buf.capacity());
            assert_eq!(c.held(), 0);
        }
    }

    #[test]
    fn garbage_fails_on_its_first_bytes() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00"[..], // a TLS ClientHello on a plain port
            b"GET / HTTP/1.1\r\n",
            b"\x00",
        ] {
            let mut buf = BytesMut::from(garbage);
            let e = codec(1024).decode(&mut buf).unwrap_err();
            assert_eq!(e.kind(), "bad_version", "{garbage:?}");
        }
        let mut buf = BytesMut::from(&b"2Q"[..]);
        assert_eq!(
            codec(1024).decode(&mut buf).unwrap_err().kind(),
            "unknown_frame"
        );
    }

    #[test]
    fn ack_encoding() {
        assert_eq!(ack(2048), [b'2', b'A', 0, 0, 8, 0]);
    }
}
