//! `sheepdog test`: runs the cases of test files through a pipeline's filter chain and checks
//! each resulting event. The checks are pure functions of the event and its route.

use super::spec::{self, TestCase, TestFile};
use super::{Chain, Routed};
use crate::config::problem::{PathSeg, Problem};
use crate::config::{ConfigErrors, Source};
use crate::event::{now_ms, Event};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Exit code when every test passed.
pub const PASSED: u8 = 0;
/// Exit code when a test failed.
pub const FAILED: u8 = 1;
/// Exit code when a test file or the pipeline file is malformed (nothing ran).
pub const INVALID: u8 = 2;

/// Relative tolerance of numeric comparisons.
pub const TOLERANCE: f64 = 1e-9;

/// One expectation an event did not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `[cost_usd]`, `tags`, `index` or `outputs`.
    pub what: String,
    pub expected: String,
    pub actual: String,
}

/// Passed and failed counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
}

/// Runs `sheepdog test` with the process's stdout; returns the exit code.
pub fn command(config: &Path, files: &[PathBuf]) -> u8 {
    let mut parsed = Vec::new();
    for path in files {
        let parsed_file = Source::read(path)
            .map_err(|e| format!("{e:#}"))
            .and_then(|s| spec::parse(s).map_err(|e| e.to_string()));
        match parsed_file {
            Ok(f) => parsed.push(f),
            Err(text) => eprintln!("{text}"),
        }
    }
    if parsed.len() < files.len() {
        return INVALID;
    }
    let mut out = io::stdout().lock();
    match run_files(config, &parsed, &mut out) {
        Ok(Some(totals)) if totals.failed == 0 => PASSED,
        Ok(Some(_)) => FAILED,
        Ok(None) => INVALID,
        Err(e) => {
            eprintln!("sheepdog test: {e}");
            FAILED
        }
    }
}

/// Loads the pipeline once per distinct `[env]` and runs every file; `None` when the pipeline
/// (or an output a test names) is invalid, after printing why to stderr.
pub fn run_files(
    config: &Path,
    files: &[TestFile],
    out: &mut impl Write,
) -> io::Result<Option<Totals>> {
    let mut totals = Totals::default();
    let mut loaded: Option<(&BTreeMap<String, String>, Chain)> = None;
    for file in files {
        if loaded.as_ref().is_none_or(|(env, _)| *env != &file.env) {
            let lookup = |name: &str| {
                file.env
                    .get(name)
                    .cloned()
                    .or_else(|| crate::config::process_env(name))
            };
            match Chain::load(config, &lookup) {
                Ok((chain, warnings)) => {
                    for w in &warnings {
                        eprintln!("{w}");
                    }
                    loaded = Some((&file.env, chain));
                }
                Err(text) => {
                    eprintln!("{text}");
                    return Ok(None);
                }
            }
        }
        let chain = &loaded.as_ref().expect("loaded above").1;
        if let Err(errors) = check_outputs(file, chain) {
            eprintln!("{errors}");
            return Ok(None);
        }
        let t = run_file(file, chain, out)?;
        totals.passed += t.passed;
        totals.failed += t.failed;
    }
    writeln!(out, "\n{} passed, {} failed", totals.passed, totals.failed)?;
    Ok(Some(totals))
}

/// Every id in `expect_outputs` names an output of the pipeline.
fn check_outputs(file: &TestFile, chain: &Chain) -> Result<(), ConfigErrors> {
    let mut problems = Vec::new();
    for case in &file.cases {
        for id in case.expect_outputs.iter().flatten() {
            if !chain.has_output(id) {
                let mut path = case.path.clone();
                path.push(PathSeg::Key("expect_outputs".into()));
                problems.push(
                    file.source.locate(
                        Problem::at_path(path, format!("the pipeline has no output `{id}`"))
                            .hint("name outputs by their id"),
                    ),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(problems))
    }
}

/// Runs a file's cases, printing `ok` per passing case and the details of each failure.
pub fn run_file(file: &TestFile, chain: &Chain, out: &mut impl Write) -> io::Result<Totals> {
    let mut totals = Totals::default();
    for case in &file.cases {
        let events = run_case(case, chain);
        let failures: Vec<(usize, &Event, &Routed, Vec<Mismatch>)> = events
            .iter()
            .enumerate()
            .map(|(i, (e, r))| (i, e, r, check(case, e, r)))
            .filter(|(.., m)| !m.is_empty())
            .collect();
        if failures.is_empty() {
            totals.passed += 1;
            writeln!(out, "ok    {}", case.name)?;
            continue;
        }
        totals.failed += 1;
        writeln!(
            out,
            "FAIL  {} ({}:{})",
            case.name, file.source.name, case.line
        )?;
        for (i, event, routed, mismatches) in failures {
            let which = if events.len() > 1 {
                format!("input {}: ", i + 1)
            } else {
                String::new()
            };
            for m in mismatches {
                writeln!(
                    out,
                    "      {which}{}: expected {}, got {}",
                    m.what, m.expected, m.actual
                )?;
            }
            let doc = Value::from(super::event_json(event, routed));
            let pretty = serde_json::to_string_pretty(&doc).expect("JSON values serialise");
            writeln!(
                out,
                "      {which}event: {}",
                pretty.replace('\n', "\n      ")
            )?;
        }
    }
    Ok(totals)
}

/// The case's events after the chain, with their routes.
pub fn run_case(case: &TestCase, chain: &Chain) -> Vec<(Event, Routed)> {
    let received = case.now_ms.unwrap_or_else(now_ms);
    let mut failures = 0;
    let mut events: Vec<Event> = case
        .inputs
        .iter()
        .map(|json| crate::inputs::http::parse_object(json, received, &mut failures))
        .collect();
    chain.apply(&mut events);
    events
        .into_iter()
        .map(|e| {
            let routed = chain.route(&e);
            (e, routed)
        })
        .collect()
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".to_string(), Value::to_string)
}

/// Every expectation of `case` that `event` does not meet.
pub fn check(case: &TestCase, event: &Event, routed: &Routed) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut miss = |what: String, expected: String, actual: String| {
        out.push(Mismatch {
            what,
            expected,
            actual,
        })
    };
    for e in &case.expect {
        let actual = event.get(&e.path);
        if !actual.is_some_and(|a| same(&e.value, a)) {
            miss(e.path.to_string(), e.value.to_string(), show(actual));
        }
    }
    let tags = || show(event.get(&crate::event::FieldPath::top(crate::event::TAGS)));
    for tag in &case.expect_tags {
        if !event.has_tag(tag) {
            miss("tags".into(), format!("to contain {tag:?}"), tags());
        }
    }
    for tag in &case.expect_no_tags {
        if event.has_tag(tag) {
            miss("tags".into(), format!("not to contain {tag:?}"), tags());
        }
    }
    for (_, path) in &case.expect_absent {
        if let Some(v) = event.get(path) {
            miss(path.to_string(), "absent".into(), v.to_string());
        }
    }
    if let Some(index) = &case.expect_index {
        if routed.index.as_deref() != Some(index.as_str()) {
            let actual = routed
                .index
                .as_ref()
                .map_or_else(|| "no Elasticsearch output".into(), |i| format!("{i:?}"));
            miss("index".into(), format!("{index:?}"), actual);
        }
    }
    if let Some(outputs) = &case.expect_outputs {
        let mut want = outputs.clone();
        want.sort();
        let mut got = routed.outputs.clone();
        got.sort();
        if want != got {
            miss("outputs".into(), format!("{want:?}"), format!("{got:?}"));
        }
    }
    out
}

/// Equality with numbers compared to a relative [`TOLERANCE`] (in arrays and objects too).
pub fn same(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => {
            if a == b {
                return true;
            }
            match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= TOLERANCE * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| same(x, y)))
        }
        _ => expected == actual,
    }
}
