//! `json`: parses a JSON string field (default `message`) into `target`, or into the event root
//! when no target is given. Invalid JSON tags the event `_jsonparsefailure` and leaves it as is.

use super::{parse_path, Filter};
use crate::config::problem::Problem;
use crate::event::{Event, FieldPath};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field holding the JSON text. Default `message`.
    #[serde(default = "default_source")]
    pub source: String,
    /// Where the parsed value goes; absent means merge the parsed object into the root.
    #[serde(default)]
    pub target: Option<String>,
    /// Tags added when the text is not valid JSON. Default `["_jsonparsefailure"]`.
    #[serde(default = "default_failure_tags")]
    pub tag_on_failure: Vec<String>,
}

fn default_source() -> String {
    "message".into()
}

fn default_failure_tags() -> Vec<String> {
    vec!["_jsonparsefailure".into()]
}

pub struct JsonFilter {
    source: FieldPath,
    target: Option<FieldPath>,
    tag_on_failure: Vec<String>,
}

impl Config {
    pub fn build(&self) -> Result<JsonFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let source = parse_path("source", &self.source, &mut problems);
        let target = match &self.target {
            Some(t) => parse_path("target", t, &mut problems).map(Some),
            None => Some(None),
        };
        match (source, target) {
            (Some(source), Some(target)) if problems.is_empty() => Ok(JsonFilter {
                source,
                target,
                tag_on_failure: self.tag_on_failure.clone(),
            }),
            _ => Err(problems),
        }
    }
}

impl JsonFilter {
    fn fail(&self, event: &mut Event) -> bool {
        for tag in &self.tag_on_failure {
            event.add_tag(tag);
        }
        false
    }
}

impl Filter for JsonFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let parsed: Value = match event.get(&self.source) {
            Some(Value::String(text)) => match serde_json::from_str(text) {
                Ok(v) => v,
                Err(_) => return self.fail(event),
            },
            // Nothing to parse is not a failure (Logstash skips a missing source too).
            None => return true,
            Some(_) => return self.fail(event),
        };
        match (&self.target, parsed) {
            (Some(target), value) => event.insert(target, value),
            (None, Value::Object(map)) => {
                for (k, v) in map {
                    event.insert(&FieldPath::top(&k), v);
                }
            }
            (None, _) => return self.fail(event),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(toml_text: &str) -> JsonFilter {
        toml::from_str::<Config>(toml_text)
            .unwrap()
            .build()
            .unwrap()
    }

    fn ev(v: Value) -> Event {
        Event::from_map(v.as_object().unwrap().clone(), 0)
    }

    #[test]
    fn parses_into_target() {
        let f = filter("source = \"message\"\ntarget = \"parsed\"");
        let mut e = ev(json!({"message": "{\"model\":\"gpt-4.1\",\"n\":[1,2]}"}));
        assert!(f.apply(&mut e));
        assert_eq!(
            e.fields()["parsed"],
            json!({"model": "gpt-4.1", "n": [1, 2]})
        );
        assert_eq!(
            e.fields()["message"],
            json!("{\"model\":\"gpt-4.1\",\"n\":[1,2]}")
        );
    }

    #[test]
    fn merges_into_root_without_target() {
        let f = filter("");
        let mut e = ev(json!({"message": "{\"model\":\"x\"}"}));
        assert!(f.apply(&mut e));
        assert_eq!(e.fields()["model"], json!("x"));
    }

    #[test]
    fn invalid_json_is_tagged_and_kept() {
        let f = filter("target = \"parsed\"");
        let mut e = ev(json!({"message": "{not json"}));
        assert!(!f.apply(&mut e));
        assert!(e.has_tag("_jsonparsefailure"));
        assert_eq!(e.fields()["message"], json!("{not json"));
        assert!(!e.fields().contains_key("parsed"));
        // a non-object without target cannot be merged
        let f = filter("");
        let mut e = ev(json!({"message": "[1]"}));
        assert!(!f.apply(&mut e));
        // a missing source is left alone
        let mut e = ev(json!({}));
        assert!(f.apply(&mut e));
        assert!(!e.has_tag("_jsonparsefailure"));
    }

    #[test]
    fn bad_paths_are_config_problems() {
        let errs = toml::from_str::<Config>("source = \"[a\"")
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert_eq!(
            errs[0].path[0],
            crate::config::problem::PathSeg::Key("source".into())
        );
    }
}
