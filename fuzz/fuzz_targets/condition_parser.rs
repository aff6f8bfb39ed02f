//! Fuzzes the `when`-condition parser: no UTF-8 text panics it, and every condition that
//! compiles prints as source that compiles to the same tree and prints the same again.
#![no_main]

// The parser and the event module its trees refer to, compiled in from the daemon's sources.
#[path = "../../src/condition/mod.rs"]
#[allow(dead_code)]
mod condition;
#[path = "../../src/event/mod.rs"]
#[allow(dead_code, unused_imports)]
mod event;
#[path = "../../src/json_bytes.rs"]
#[allow(dead_code)]
mod json_bytes;
#[path = "../../src/ser.rs"]
#[allow(dead_code)]
mod ser;

use condition::Condition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = Condition::compile(source) else {
        return;
    };
    let printed = parsed.to_string();
    let reparsed = match Condition::compile(&printed) {
        Ok(c) => c,
        Err(e) => panic!("{source:?} printed as {printed:?}, which does not compile: {e}"),
    };
    assert_eq!(
        reparsed, parsed,
        "{source:?} printed as {printed:?}, which parses to another tree"
    );
    assert_eq!(
        reparsed.to_string(),
        printed,
        "the print of {source:?} is not a fixed point"
    );
});
