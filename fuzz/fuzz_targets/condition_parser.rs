//! Fuzzes the `when`-condition parser: no UTF-8 text panics it, and every condition that
//! compiles prints as source that compiles to the same tree and prints the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sheepdog::condition::Condition;

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
