//! Fuzzes the Lumberjack v2 decoder: arbitrary bytes must never panic, hang or allocate
//! without bound, and decoding in two reads must give the same events and the same error as
//! decoding in one (a partial frame is only ever "need more bytes").
#![no_main]

#[path = "../../src/inputs/beats/codec.rs"]
#[allow(dead_code)]
mod codec;

use bytes::BytesMut;
use codec::{BeatsCodec, Body, Frame, Limits};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// Small enough that zlib bombs and huge announced lengths are cheap to reject (frames and
/// inflated windows alike).
const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, PartialEq)]
enum Item {
    Window(u32),
    Json(u32, Vec<u8>),
    Pairs(u32, Vec<(Vec<u8>, Vec<u8>)>),
}

fn flatten(frame: Frame, out: &mut Vec<Item>) {
    match frame {
        Frame::Window(n) => out.push(Item::Window(n)),
        Frame::Events(events) => {
            for e in events {
                out.push(match e.body {
                    Body::Json(b) => Item::Json(e.seq, b.to_vec()),
                    Body::Pairs(p) => Item::Pairs(
                        e.seq,
                        p.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
                    ),
                });
            }
        }
    }
}

/// Decodes `data`, delivered as `data[..cut]` then the rest; returns the items and the kind
/// of the error that ended the stream, if any.
fn decode(data: &[u8], cut: usize) -> (Vec<Item>, Option<&'static str>) {
    let mut codec = BeatsCodec::new(Limits::frames_of(MAX_FRAME));
    let mut buf = BytesMut::from(&data[..cut]);
    let mut items = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(f)) => flatten(f, &mut items),
            Ok(None) => break,
            Err(e) => return (items, Some(e.kind())),
        }
    }
    buf.extend_from_slice(&data[cut..]);
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => flatten(f, &mut items),
            Ok(None) => return (items, None),
            Err(e) => return (items, Some(e.kind())),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let whole = decode(data, data.len());
    let cut = if data.is_empty() {
        0
    } else {
        first as usize % data.len()
    };
    let split = decode(data, cut);
    assert_eq!(whole, split, "cut at {cut}");
});
