//! `date`: parses a time field into `@timestamp` (or another target). Formats: `ISO8601`
//! (RFC 3339 and its common relatives), `UNIX` (seconds), `UNIX_MS`, or a chrono/strftime
//! pattern such as `%d/%b/%Y:%H:%M:%S %z`. Times without an offset are UTC. A value no format
//! accepts tags the event `_dateparsefailure` and leaves `@timestamp` at the time of receipt.

use super::{parse_path, Filter};
use crate::config::problem::Problem;
use crate::event::{parse_timestamp_ms, Event, FieldPath};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field holding the time. Default `timestamp`.
    #[serde(default = "d_source")]
    pub source: String,
    /// Formats tried in order. Default `["ISO8601"]`.
    #[serde(default = "d_formats")]
    pub formats: Vec<String>,
    /// Where the parsed time goes, as an RFC 3339 string. Default `@timestamp`.
    #[serde(default = "d_target")]
    pub target: String,
    /// Default `["_dateparsefailure"]`.
    #[serde(default = "d_tags")]
    pub tag_on_failure: Vec<String>,
}

fn d_source() -> String {
    "timestamp".into()
}
fn d_formats() -> Vec<String> {
    vec!["ISO8601".into()]
}
fn d_target() -> String {
    "@timestamp".into()
}
fn d_tags() -> Vec<String> {
    vec!["_dateparsefailure".into()]
}

#[derive(Debug, Clone, PartialEq)]
enum Format {
    Iso8601,
    Unix,
    UnixMs,
    Pattern(String),
}

pub struct DateFilter {
    source: FieldPath,
    target: FieldPath,
    formats: Vec<Format>,
    tag_on_failure: Vec<String>,
}

fn compile_format(text: &str) -> Result<Format, String> {
    Ok(match text {
        "ISO8601" => Format::Iso8601,
        "UNIX" => Format::Unix,
        "UNIX_MS" => Format::UnixMs,
        pattern if pattern.contains('%') => {
            // Reject patterns chrono cannot format (and so cannot parse) now, not per event.
            let items: Vec<_> = chrono::format::StrftimeItems::new(pattern).collect();
            if items
                .iter()
                .any(|i| matches!(i, chrono::format::Item::Error))
            {
                return Err(format!("`{pattern}` is not a valid strftime pattern"));
            }
            Format::Pattern(pattern.to_string())
        }
        other => return Err(format!("unknown date format `{other}`")),
    })
}

impl Config {
    pub fn build(&self) -> Result<DateFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let source = parse_path("source", &self.source, &mut problems);
        let target = parse_path("target", &self.target, &mut problems);
        let mut formats = Vec::new();
        for f in &self.formats {
            match compile_format(f) {
                Ok(f) => formats.push(f),
                Err(e) => problems.push(Problem::at("formats", e).hint(
                    "use ISO8601, UNIX, UNIX_MS or a strftime pattern like %Y-%m-%d %H:%M:%S",
                )),
            }
        }
        if self.formats.is_empty() {
            problems
                .push(Problem::at("formats", "no formats given").hint("formats = [\"ISO8601\"]"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(DateFilter {
            source: source.unwrap(),
            target: target.unwrap(),
            formats,
            tag_on_failure: self.tag_on_failure.clone(),
        })
    }
}

fn parse_with(format: &Format, value: &Value) -> Option<i64> {
    match (format, value) {
        (Format::Iso8601, Value::String(s)) => parse_timestamp_ms(s.trim()),
        (Format::Unix, Value::Number(n)) => n.as_f64().map(|s| (s * 1000.0).round() as i64),
        (Format::Unix, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .map(|s| (s * 1000.0).round() as i64),
        (Format::UnixMs, Value::Number(n)) => n.as_f64().map(|ms| ms.round() as i64),
        (Format::UnixMs, Value::String(s)) => {
            s.trim().parse::<f64>().ok().map(|ms| ms.round() as i64)
        }
        (Format::Pattern(p), Value::String(s)) => chrono::DateTime::parse_from_str(s.trim(), p)
            .map(|dt| dt.timestamp_millis())
            .ok()
            .or_else(|| {
                chrono::NaiveDateTime::parse_from_str(s.trim(), p)
                    .ok()
                    .map(|n| n.and_utc().timestamp_millis())
            }),
        _ => None,
    }
}

impl Filter for DateFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let Some(value) = event.get(&self.source) else {
            return true;
        };
        let parsed = self.formats.iter().find_map(|f| parse_with(f, value));
        match parsed {
            Some(ms) if self.target.is_timestamp() => {
                event.set_timestamp_ms(ms);
                true
            }
            Some(ms) => {
                event.insert(
                    &self.target,
                    Value::String(crate::event::format_timestamp_ms(ms)),
                );
                true
            }
            None => {
                for t in &self.tag_on_failure {
                    event.add_tag(t);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(cfg: &str, v: Value) -> Event {
        let f = toml::from_str::<Config>(cfg).unwrap().build().unwrap();
        let mut e = Event::from_map(v.as_object().unwrap().clone(), 42);
        f.apply(&mut e);
        e
    }

    #[test]
    fn iso8601_sets_timestamp() {
        let e = run("", json!({"timestamp": "2026-11-27T10:15:02.123456+00:00"}));
        assert_eq!(e.timestamp_ms(), 1_795_774_502_123);
        assert_eq!(e.fields()["@timestamp"], json!("2026-11-27T10:15:02.123Z"));
        let e = run("", json!({"timestamp": "2026-11-28T00:30:00+07:00"}));
        assert_eq!(e.fields()["@timestamp"], json!("2026-11-27T17:30:00.000Z"));
    }

    #[test]
    fn failure_is_tagged_and_receipt_time_kept() {
        let e = run("", json!({"timestamp": "not a time"}));
        assert!(e.has_tag("_dateparsefailure"));
        assert_eq!(e.timestamp_ms(), 42);
        let e = run("", json!({"timestamp": 17}));
        assert!(e.has_tag("_dateparsefailure"));
    }

    #[test]
    fn other_formats_and_targets() {
        let e = run("formats = [\"UNIX\"]", json!({"timestamp": 1_795_774_502}));
        assert_eq!(e.timestamp_ms(), 1_795_774_502_000);
        let e = run(
            "formats = [\"UNIX_MS\"]\ntarget = \"t\"",
            json!({"timestamp": "1795774502123"}),
        );
        assert_eq!(e.fields()["t"], json!("2026-11-27T10:15:02.123Z"));
        let e = run(
            "formats = [\"%d/%m/%Y %H:%M:%S\"]",
            json!({"timestamp": "27/11/2026 10:15:02"}),
        );
        assert_eq!(e.timestamp_ms(), 1_795_774_502_000);
        assert!(toml::from_str::<Config>("formats = [\"JODA\"]")
            .unwrap()
            .build()
            .is_err());
        assert!(toml::from_str::<Config>("formats = [\"%Q\"]")
            .unwrap()
            .build()
            .is_err());
    }
}
