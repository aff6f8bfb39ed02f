//! Deserializing one part of the pipeline file into its config type ([`deserialize_at`], which
//! turns a serde error into a located [`Problem`]), and serde helpers for values that operators
//! write as strings (often from `${VAR}`): durations (`"5s"`, `"250ms"`, `"5m"`), byte sizes
//! (`"10MiB"`), numbers and booleans given as strings, and lists given as comma-separated strings.

use super::problem::{did_you_mean, PathSeg, Problem};
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;
use std::str::FromStr;
use std::time::Duration;

/// Deserializes `value` into `T`, recording a located problem (with the exact key path) on failure.
pub fn deserialize_at<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &[PathSeg],
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(err) => {
            let mut path = prefix.to_vec();
            for seg in err.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => {
                        path.push(PathSeg::Index(*index))
                    }
                    serde_path_to_error::Segment::Map { key } => {
                        path.push(PathSeg::Key(key.clone()))
                    }
                    serde_path_to_error::Segment::Enum { variant } => {
                        path.push(PathSeg::Key(variant.clone()))
                    }
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let message = err.inner().to_string();
            let mut problem = Problem::at_path(path.clone(), message.clone());
            if let Some(field) = unknown_field_name(&message) {
                if path.last() != Some(&PathSeg::Key(field.to_string())) {
                    path.push(PathSeg::Key(field.to_string()));
                }
                problem.path = path;
                problem.message = format!("unknown key `{field}`");
                let expected = expected_fields(&message);
                let expected_refs: Vec<&str> = expected.iter().map(String::as_str).collect();
                problem.hint = Some(match did_you_mean(field, &expected_refs) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if !expected.is_empty() => {
                        format!("valid keys here: {}", expected.join(", "))
                    }
                    None => "remove it".to_string(),
                });
            } else if message.starts_with("missing field") {
                problem.hint = Some("add this key".into());
            }
            problems.push(problem);
            None
        }
    }
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(&rest[..rest.find('`')?])
}

fn expected_fields(message: &str) -> Vec<String> {
    let Some(idx) = message.find("expected ") else {
        return Vec::new();
    };
    message[idx..]
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// A number or boolean written as itself or as a string (`port = "${SMTP_PORT:-25}"`).
pub fn from_str_or_value<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text = match StrOrNum::deserialize(d)? {
        StrOrNum::Int(i) => i.to_string(),
        StrOrNum::Float(f) => f.to_string(),
        StrOrNum::Bool(b) => b.to_string(),
        StrOrNum::Str(s) => s.trim().to_string(),
    };
    text.parse::<T>()
        .map_err(|e| de::Error::custom(format!("invalid value `{text}`: {e}")))
}

/// Parses `"30s"`, `"250ms"`, `"5m"`, `"1h"`, `"1d"`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("`{text}` is not a duration; write e.g. \"500ms\", \"30s\", \"5m\", \"1h\"")
    })?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}` (use ms, s, m, h, d)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = match StrOrNum::deserialize(d)? {
        StrOrNum::Int(i) => i.to_string(),
        StrOrNum::Float(f) => f.to_string(),
        StrOrNum::Str(s) => s,
        StrOrNum::Bool(_) => return Err(de::Error::custom("a duration cannot be a boolean")),
    };
    parse_duration(&text).map_err(de::Error::custom)
}

pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Parses `"10MiB"`, `"512KiB"`, `"5MB"`, `"1048576"`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. \"10MiB\" or \"512KiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        "GiB" | "G" => 1024 * 1024 * 1024,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB)"
            ))
        }
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = match StrOrNum::deserialize(d)? {
        StrOrNum::Int(i) if i >= 0 => return Ok(i as u64),
        StrOrNum::Str(s) => s,
        _ => {
            return Err(de::Error::custom(
                "a size is a number of bytes or a string like \"10MiB\"",
            ))
        }
    };
    parse_bytes(&text).map_err(de::Error::custom)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    Str(String),
    List(Vec<String>),
}

/// A list written as an array or as a comma-separated string (`"${ES_HOSTS}"`). Empty items
/// are dropped, so an empty string is an empty list.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items = match StrOrList::deserialize(d)? {
        StrOrList::Str(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .collect::<Vec<_>>(),
        StrOrList::List(v) => v.into_iter().map(|x| x.trim().to_string()).collect(),
    };
    Ok(items.into_iter().filter(|x| !x.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_bytes("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("1XB").is_err());
    }

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "from_str_or_value")]
        port: u16,
        #[serde(deserialize_with = "string_list")]
        hosts: Vec<String>,
    }

    #[test]
    fn strings_or_values() {
        let t: T =
            toml::from_str("port = \"25\"\nhosts = \"http://a:9200, http://b:9200\"").unwrap();
        assert_eq!(t.port, 25);
        assert_eq!(t.hosts, ["http://a:9200", "http://b:9200"]);
        let t: T = toml::from_str("port = 587\nhosts = [\"x\"]").unwrap();
        assert_eq!(t.port, 587);
        assert!(toml::from_str::<T>("port = \"abc\"\nhosts = []").is_err());
    }
}
