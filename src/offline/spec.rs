//! Pipeline test files (`sheepdog test`): TOML with `[[tests]]`, each one or more input events
//! and what the filter chain must make of them. Parsed and checked in one pass; every problem
//! is reported at file:line:column like a pipeline file's.

use crate::config::de::deserialize_at;
use crate::config::problem::{PathSeg, Problem};
use crate::config::{ConfigErrors, LocatedProblem, Source};
use crate::event::FieldPath;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A parsed test file.
#[derive(Debug)]
pub struct TestFile {
    pub source: Source,
    /// `[env]`: variables for `${VAR}` in the pipeline file, over the process environment.
    pub env: BTreeMap<String, String>,
    pub cases: Vec<TestCase>,
}

/// One `[[tests]]` entry, checked.
#[derive(Debug)]
pub struct TestCase {
    pub name: String,
    /// Line of the `[[tests]]` table, for reports.
    pub line: usize,
    /// Where the case sits in the document (`tests[3]`), for problems found later.
    pub path: Vec<PathSeg>,
    /// The receipt time of events without a `@timestamp` (epoch ms); `None` is now.
    pub now_ms: Option<i64>,
    /// Each input event as a JSON object.
    pub inputs: Vec<Vec<u8>>,
    pub expect: Vec<FieldExpect>,
    pub expect_tags: Vec<String>,
    pub expect_no_tags: Vec<String>,
    pub expect_absent: Vec<(String, FieldPath)>,
    pub expect_index: Option<String>,
    pub expect_outputs: Option<Vec<String>>,
}

/// `expect` entry: the field as written, its path and the value it must hold.
#[derive(Debug)]
pub struct FieldExpect {
    pub name: String,
    pub path: FieldPath,
    pub value: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    now: Option<toml::Value>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    tests: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    now: Option<toml::Value>,
    input: Option<toml::Table>,
    inputs: Option<Vec<toml::Table>>,
    #[serde(default)]
    expect: toml::Table,
    #[serde(default)]
    expect_tags: Vec<String>,
    #[serde(default)]
    expect_no_tags: Vec<String>,
    #[serde(default)]
    expect_absent: Vec<String>,
    expect_index: Option<String>,
    expect_outputs: Option<Vec<String>>,
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_string())
}

/// Parses a test file; `Err` holds every problem found.
pub fn parse(source: Source) -> Result<TestFile, ConfigErrors> {
    let value: toml::Value = match toml::from_str::<toml::Table>(&source.text) {
        Ok(t) => toml::Value::Table(t),
        Err(e) => {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, column) = crate::config::line_col(&source.text, offset);
            return Err(ConfigErrors(vec![LocatedProblem {
                file: source.name.clone(),
                line,
                column,
                problem: Problem::at("", format!("not valid TOML: {}", e.message()))
                    .hint("check quotes and brackets near this position"),
            }]));
        }
    };
    let mut problems = Vec::new();
    let Some(raw) = deserialize_at::<RawFile>(value, &[], &mut problems) else {
        return Err(located(&source, problems));
    };
    let file_now = raw
        .now
        .and_then(|v| parse_now(v, vec![key("now")], &mut problems));
    if raw.tests.is_empty() {
        problems.push(
            Problem::at("tests", "the file has no tests")
                .hint("add [[tests]] with name, input and expect"),
        );
    }
    let mut cases = Vec::new();
    for (i, value) in raw.tests.into_iter().enumerate() {
        let path = vec![key("tests"), PathSeg::Index(i)];
        let Some(test) = deserialize_at::<RawTest>(value, &path, &mut problems) else {
            continue;
        };
        let line = source.locate(Problem::at_path(path.clone(), "")).line;
        if let Some(case) = check_case(test, path, line, file_now, &mut problems) {
            if cases.iter().any(|c: &TestCase| c.name == case.name) {
                problems.push(
                    Problem::at_path(case.path.clone(), format!("duplicate test `{}`", case.name))
                        .hint("give each test a distinct name"),
                );
            }
            cases.push(case);
        }
    }
    if problems.iter().any(Problem::is_error) {
        return Err(located(&source, problems));
    }
    Ok(TestFile {
        source,
        env: raw.env,
        cases,
    })
}

fn located(source: &Source, problems: Vec<Problem>) -> ConfigErrors {
    let mut located: Vec<LocatedProblem> = problems.into_iter().map(|p| source.locate(p)).collect();
    located.sort_by_key(|p| (p.line, p.column));
    ConfigErrors(located)
}

/// `now` as a TOML date-time or an ISO 8601 string.
fn parse_now(value: toml::Value, path: Vec<PathSeg>, problems: &mut Vec<Problem>) -> Option<i64> {
    let text = match value {
        toml::Value::String(s) => s,
        toml::Value::Datetime(d) => d.to_string(),
        other => other.to_string(),
    };
    let ms = crate::event::parse_timestamp_ms(&text);
    if ms.is_none() {
        problems.push(
            Problem::at_path(path, format!("`{text}` is not a timestamp"))
                .hint("write e.g. now = \"2026-11-27T10:00:00Z\""),
        );
    }
    ms
}

fn check_case(
    test: RawTest,
    path: Vec<PathSeg>,
    line: usize,
    file_now: Option<i64>,
    problems: &mut Vec<Problem>,
) -> Option<TestCase> {
    let at = |k: &str| {
        let mut p = path.clone();
        p.push(key(k));
        p
    };
    let before = problems.len();
    let expects_something = !(test.expect.is_empty()
        && test.expect_tags.is_empty()
        && test.expect_no_tags.is_empty()
        && test.expect_absent.is_empty()
        && test.expect_index.is_none()
        && test.expect_outputs.is_none());
    let now_ms = match test.now {
        Some(v) => parse_now(v, at("now"), problems),
        None => file_now,
    };
    let inputs = check_inputs(test.input, test.inputs, &path, problems);
    let mut expect = Vec::new();
    for (name, value) in test.expect {
        let mut p = at("expect");
        p.push(key(&name));
        match (FieldPath::parse(&name), to_json(value)) {
            (Ok(path), Ok(value)) => expect.push(FieldExpect { name, path, value }),
            (Err(e), _) => problems.push(
                Problem::at_path(p, e.to_string())
                    .hint("write a field as \"[a][b]\" or a top-level name"),
            ),
            (_, Err(e)) => problems.push(Problem::at_path(p, e)),
        }
    }
    let mut expect_absent = Vec::new();
    for (j, name) in test.expect_absent.into_iter().enumerate() {
        match FieldPath::parse(&name) {
            Ok(p) => expect_absent.push((name, p)),
            Err(e) => {
                let mut p = at("expect_absent");
                p.push(PathSeg::Index(j));
                problems.push(Problem::at_path(p, e.to_string()));
            }
        }
    }
    let case = TestCase {
        name: test.name,
        line,
        path,
        now_ms,
        inputs,
        expect,
        expect_tags: test.expect_tags,
        expect_no_tags: test.expect_no_tags,
        expect_absent,
        expect_index: test.expect_index,
        expect_outputs: test.expect_outputs,
    };
    if !expects_something {
        problems.push(
            Problem::at_path(case.path.clone(), format!("test `{}` expects nothing", case.name))
                .hint("add expect, expect_tags, expect_no_tags, expect_absent, expect_index or expect_outputs"),
        );
    }
    (problems.len() == before).then_some(case)
}

fn check_inputs(
    input: Option<toml::Table>,
    inputs: Option<Vec<toml::Table>>,
    path: &[PathSeg],
    problems: &mut Vec<Problem>,
) -> Vec<Vec<u8>> {
    let tables = match (input, inputs) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() => many,
        (Some(_), Some(_)) => {
            problems.push(
                Problem::at_path(path.to_vec(), "both `input` and `inputs`")
                    .hint("give one event as `input` or several as `inputs`"),
            );
            return Vec::new();
        }
        _ => {
            problems.push(
                Problem::at_path(path.to_vec(), "the test has no input event")
                    .hint("add input = { message = \"...\" } or inputs = [{ ... }, { ... }]"),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        match to_json(toml::Value::Table(table)) {
            Ok(v) => out.push(serde_json::to_vec(&v).expect("JSON values serialise")),
            Err(e) => problems.push(Problem::at_path(path.to_vec(), e)),
        }
    }
    out
}

/// A TOML value as JSON: date-times become their text.
pub fn to_json(value: toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(t) => Value::Object(
            t.into_iter()
                .map(|(k, v)| Ok((k, to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}
