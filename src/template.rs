//! `%{...}` string templates compiled once at start-up: field references (`%{[a][b]}`,
//! `%{name}`) and dates from the event's `@timestamp` in UTC (`%{+YYYY.MM.dd}`, Joda-style).

use crate::event::{Event, FieldPath, FieldPathError};
use chrono::{Datelike, TimeZone, Timelike, Utc};
use serde_json::Value;
use std::fmt::Write as _;

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Field(FieldPath),
    Date(Vec<DatePart>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DatePart {
    Year4,
    Year2,
    WeekYear,
    Week,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millis,
    Literal(char),
}

/// Why a template could not be compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("`%{{` at byte {0} is never closed with `}}`")]
    Unclosed(usize),
    #[error("empty reference `%{{}}`")]
    Empty,
    #[error(transparent)]
    Path(#[from] FieldPathError),
    #[error("unsupported date pattern letter `{0}` (use yyyy/YYYY, yy, xxxx, ww, MM, dd, HH, mm, ss, SSS)")]
    DateLetter(char),
}

/// A referenced field is absent from the event, so the template has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingField<'a>(pub &'a FieldPath);

impl Template {
    pub fn compile(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(start) = rest.find("%{") {
            literal.push_str(&rest[..start]);
            let inner_start = start + 2;
            let Some(len) = rest[inner_start..].find('}') else {
                return Err(TemplateError::Unclosed(offset + start));
            };
            let inner = rest[inner_start..inner_start + len].trim();
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(compile_reference(inner)?);
            let consumed = inner_start + len + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the template has no references.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// True when the output depends on nothing but the event time (index names such as
    /// `logs-%{+YYYY.MM.dd}`), so callers may cache it per day.
    pub fn depends_only_on_date(&self) -> bool {
        self.parts.iter().all(|p| !matches!(p, Part::Field(_)))
    }

    /// The constant text, when [`Template::is_constant`].
    pub fn as_constant(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Appends the rendering for `event` to `out`. On a missing field, `out` may hold a partial
    /// rendering and the caller decides (Logstash would write the literal template instead).
    pub fn render_into<'a>(
        &'a self,
        event: &Event,
        out: &mut String,
    ) -> Result<(), MissingField<'a>> {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(path) => match event.get(path) {
                    Some(value) if !value.is_null() => push_value(value, out),
                    _ => return Err(MissingField(path)),
                },
                Part::Date(pattern) => push_date(pattern, event.timestamp_ms(), out),
            }
        }
        Ok(())
    }

    /// The rendering for `event`, or `None` when a referenced field is missing.
    pub fn render(&self, event: &Event) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        self.render_into(event, &mut out).ok()?;
        Some(out)
    }

    /// Renders a template that depends only on the date for the given epoch milliseconds.
    pub fn render_for_time(&self, timestamp_ms: i64, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(path) => {
                    let _ = write!(out, "%{{{path}}}");
                }
                Part::Date(pattern) => push_date(pattern, timestamp_ms, out),
            }
        }
    }
}

fn compile_reference(inner: &str) -> Result<Part, TemplateError> {
    if inner.is_empty() {
        return Err(TemplateError::Empty);
    }
    if let Some(pattern) = inner.strip_prefix('+') {
        return Ok(Part::Date(compile_date_pattern(pattern)?));
    }
    Ok(Part::Field(FieldPath::parse(inner)?))
}

fn compile_date_pattern(pattern: &str) -> Result<Vec<DatePart>, TemplateError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let part = match (c, run) {
            ('y' | 'Y', 4) => DatePart::Year4,
            ('y' | 'Y', 2) => DatePart::Year2,
            ('x', 4) => DatePart::WeekYear,
            ('w', 2) => DatePart::Week,
            ('M', 2) => DatePart::Month,
            ('d', 2) => DatePart::Day,
            ('H', 2) => DatePart::Hour,
            ('m', 2) => DatePart::Minute,
            ('s', 2) => DatePart::Second,
            ('S', 3) => DatePart::Millis,
            (c, _) if c.is_ascii_alphabetic() => return Err(TemplateError::DateLetter(c)),
            (c, _) => {
                parts.push(DatePart::Literal(c));
                i += 1;
                continue;
            }
        };
        parts.push(part);
        i += run;
    }
    Ok(parts)
}

fn push_value(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => {}
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

fn push_padded(out: &mut String, value: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(value);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

fn push_date(pattern: &[DatePart], timestamp_ms: i64, out: &mut String) {
    let dt = Utc
        .timestamp_millis_opt(timestamp_ms)
        .single()
        .unwrap_or_default();
    for part in pattern {
        match *part {
            DatePart::Year4 => push_padded(out, dt.year().max(0) as u32, 4),
            DatePart::Year2 => push_padded(out, (dt.year().max(0) % 100) as u32, 2),
            DatePart::WeekYear => push_padded(out, dt.iso_week().year().max(0) as u32, 4),
            DatePart::Week => push_padded(out, dt.iso_week().week(), 2),
            DatePart::Month => push_padded(out, dt.month(), 2),
            DatePart::Day => push_padded(out, dt.day(), 2),
            DatePart::Hour => push_padded(out, dt.hour(), 2),
            DatePart::Minute => push_padded(out, dt.minute(), 2),
            DatePart::Second => push_padded(out, dt.second(), 2),
            DatePart::Millis => push_padded(out, dt.timestamp_subsec_millis(), 3),
            DatePart::Literal(c) => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: Value, ts: i64) -> Event {
        Event::from_map(v.as_object().unwrap().clone(), ts)
    }

    #[test]
    fn renders_fields_and_dates() {
        // 2026-11-27T10:15:02.123Z
        let e = event(
            json!({"fields": {"environment": "prod"}, "n": 3, "model": "gpt-4.1"}),
            1_795_774_502_123,
        );
        let t = Template::compile("holysheep-logs-%{+YYYY.MM.dd}").unwrap();
        assert_eq!(t.render(&e).unwrap(), "holysheep-logs-2026.11.27");
        assert!(t.depends_only_on_date());
        let t = Template::compile("%{[fields][environment]}/%{n}/%{model}").unwrap();
        assert_eq!(t.render(&e).unwrap(), "prod/3/gpt-4.1");
        assert!(!t.depends_only_on_date());
        let t = Template::compile("%{+yyyy-MM-dd'T'HH:mm:ss.SSS}").unwrap_err();
        assert_eq!(t, TemplateError::DateLetter('T'));
        let t = Template::compile("%{+HH:mm:ss.SSS xxxx-ww}").unwrap();
        assert_eq!(t.render(&e).unwrap(), "10:15:02.123 2026-48");
    }

    #[test]
    fn missing_field_is_reported_not_rendered_literally() {
        let e = event(json!({}), 0);
        let t = Template::compile("%{[fields][service]}").unwrap();
        assert_eq!(t.render(&e), None);
        let mut out = String::new();
        let err = t.render_into(&e, &mut out).unwrap_err();
        assert_eq!(err.0.to_string(), "[fields][service]");
    }

    #[test]
    fn constants_and_errors() {
        let t = Template::compile("plain").unwrap();
        assert!(t.is_constant());
        assert_eq!(t.as_constant(), Some("plain"));
        assert_eq!(
            Template::compile("a %{b").unwrap_err(),
            TemplateError::Unclosed(2)
        );
        assert_eq!(Template::compile("%{}").unwrap_err(), TemplateError::Empty);
        assert!(matches!(
            Template::compile("%{[a}").unwrap_err(),
            TemplateError::Path(_)
        ));
    }
}
