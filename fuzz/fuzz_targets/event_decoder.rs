//! Fuzzes the event JSON decoder against serde_json: for any UTF-8 text both accept it or both
//! refuse it, and what they build is equal; nothing panics, however deep or odd the input.
#![no_main]

// The decoder and what it builds on, compiled in from the daemon's sources.
#[path = "../../src/json/mod.rs"]
#[allow(dead_code)]
mod json;
#[path = "../../src/event"]
#[allow(dead_code)]
mod event {
    mod fields;
    pub use fields::Fields;
}

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ours = event::Fields::from_json_str(text);
    let theirs = serde_json::from_str::<Map<String, Value>>(text);
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => assert_eq!(Value::from(ours), Value::Object(theirs)),
        (Err(_), Err(_)) => {}
        (ours, theirs) => panic!("decoders disagree on {text:?}: ours {ours:?}, serde_json {theirs:?}"),
    }
});
