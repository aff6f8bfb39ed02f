//! Fuzzes the pipeline loader `sheepdog check` runs (TOML parse, `${VAR}` substitution,
//! validation of every stage) on arbitrary text: nothing panics, a refused file names at least
//! one error, and every problem is placed at a line and column inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sheepdog::config::{LocatedProblem, Source};
use sheepdog::Verify;

/// A fixed environment: two variables set, the rest unset.
fn lookup(name: &str) -> Option<String> {
    match name {
        "ES_HOSTS" => Some("http://127.0.0.1:9200".into()),
        "HTTP_ADDR" => Some("127.0.0.1:0".into()),
        _ => None,
    }
}

fn check_location(text: &str, p: &LocatedProblem) {
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        p.line >= 1 && p.line <= lines.len(),
        "line {} of {}: {p}",
        p.line,
        lines.len()
    );
    let width = lines[p.line - 1].chars().count();
    assert!(
        p.column >= 1 && p.column <= width + 1,
        "column {} of a {width}-character line: {p}",
        p.column
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::new("fuzz.toml", text);
    // Background: GeoIP databases are not walked (the fuzzer gives no real paths anyway).
    match sheepdog::load_source(&source, &lookup, Verify::Background) {
        Ok(loaded) => loaded.warnings.iter().for_each(|p| check_location(text, p)),
        Err(errors) => {
            assert!(
                errors.0.iter().any(|p| p.problem.is_error()),
                "refused without an error"
            );
            errors.0.iter().for_each(|p| check_location(text, p));
        }
    }
});
