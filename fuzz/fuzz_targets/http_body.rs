//! Fuzzes the HTTP input's body decoding as the daemon runs it: a body (one object, an array,
//! NDJSON), or a gzip body inflated (with the `MultiGzDecoder` the input reads it through) and
//! then decoded. Nothing panics; every non-blank NDJSON line becomes exactly one event; every
//! parse failure is counted and its event carries the text in `message`. The input's budgeted,
//! step-wise inflate and its limit are covered by the unit tests in `inputs/http/request.rs`.
#![no_main]

use flate2::{write::GzEncoder, Compression};
use libfuzzer_sys::fuzz_target;
use sheepdog::event::Event;
use sheepdog::inputs::http::decode_body;
use std::io::{Read, Write};

const RECEIVED: i64 = 1_795_774_502_123;
/// Small, so that gzip bombs reach it in a few bytes.
const LIMIT: usize = 256 * 1024;
const FAILURE: &str = "_jsonparsefailure";

fn message(event: &Event) -> Option<&str> {
    event.fields().get("message")?.as_str()
}

/// Whether `event` is a parse failure carrying `text`.
fn carries(event: &Event, text: &[u8]) -> bool {
    event.has_tag(FAILURE) && message(event) == Some(&*String::from_utf8_lossy(text))
}

/// Whether the body is read line by line: not an array, and not one pretty-printed object (a
/// body starting with `{` whose first line is not a whole JSON value).
fn is_ndjson(body: &[u8]) -> bool {
    match memchr::memchr(b'\n', body) {
        _ if body[0] == b'[' => false,
        None => true,
        Some(end) => {
            body[0] != b'{'
                || serde_json::from_slice::<serde::de::IgnoredAny>(body[..end].trim_ascii()).is_ok()
        }
    }
}

fn check_decode(body: &[u8]) {
    let mut failures = 0u64;
    let events = decode_body(body, RECEIVED, &mut failures);
    let body = body.trim_ascii();
    if body.is_empty() {
        assert!(events.is_empty() && failures == 0);
        return;
    }
    if is_ndjson(body) {
        let lines: Vec<&[u8]> = body
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(events.len(), lines.len(), "one event per non-blank line");
        let with_text = events
            .iter()
            .zip(&lines)
            .filter(|(e, l)| carries(e, l))
            .count();
        assert_eq!(with_text as u64, failures, "each failure carries its line");
    } else if body[0] == b'[' {
        let tagged = events
            .iter()
            .filter(|e| e.has_tag(FAILURE) && message(e).is_some_and(|m| !m.is_empty()));
        assert!(
            tagged.count() as u64 >= failures,
            "each failure carries its text"
        );
        assert!(failures <= events.len() as u64);
    } else {
        assert_eq!(events.len(), 1, "one pretty-printed document");
        assert_eq!(failures, u64::from(carries(&events[0], body)));
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    match mode % 3 {
        // A plain body.
        0 => check_decode(data),
        // Arbitrary bytes sent as `Content-Encoding: gzip`.
        1 => {
            let mut body = Vec::new();
            let inflated = flate2::bufread::MultiGzDecoder::new(data)
                .take(LIMIT as u64)
                .read_to_end(&mut body);
            if inflated.is_ok() {
                check_decode(&body);
            }
        }
        // A real gzip body: inflates to what was compressed, then decodes.
        _ => {
            let mut body = Vec::new();
            flate2::bufread::MultiGzDecoder::new(&gzip(data)[..])
                .read_to_end(&mut body)
                .expect("a gzip body we compressed inflates");
            assert_eq!(&body[..], data);
            check_decode(&body);
        }
    }
});
