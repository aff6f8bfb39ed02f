//! `mutate`: adds fields from templates, adds tags, renames, copies, converts and removes fields.
//! Unlike Logstash, a template whose field is missing leaves the target unset instead of
//! writing the literal `%{[fields][environment]}`, and `add_field` never turns an existing
//! value into an array: it leaves an existing field alone (use `replace` to overwrite).

use super::{parse_path, parse_template, Filter};
use crate::config::problem::Problem;
use crate::event::{Event, FieldPath};
use crate::template::Template;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Conversion {
    Integer,
    Float,
    String,
    Boolean,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field path to template; set when the field is absent and every reference resolves.
    #[serde(default)]
    pub add_field: BTreeMap<String, String>,
    /// Field path to template; always overwrites when every reference resolves.
    #[serde(default)]
    pub replace: BTreeMap<String, String>,
    /// Old path to new path.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Source path to destination path.
    #[serde(default)]
    pub copy: BTreeMap<String, String>,
    /// Field path to `integer`, `float`, `string` or `boolean`.
    #[serde(default)]
    pub convert: BTreeMap<String, Conversion>,
    /// Tags (templates) to add.
    #[serde(default)]
    pub add_tag: Vec<String>,
    /// Fields to remove.
    #[serde(default)]
    pub remove_field: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    pub remove_tag: Vec<String>,
}

pub struct MutateFilter {
    rename: Vec<(FieldPath, FieldPath)>,
    copy: Vec<(FieldPath, FieldPath)>,
    convert: Vec<(FieldPath, Conversion)>,
    add_field: Vec<(FieldPath, Template)>,
    replace: Vec<(FieldPath, Template)>,
    add_tag: Vec<Template>,
    remove_field: Vec<FieldPath>,
    remove_tag: Vec<String>,
}

fn path_pairs(
    section: &str,
    map: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<(FieldPath, FieldPath)> {
    map.iter()
        .filter_map(|(from, to)| {
            let key = format!("{section}.{from}");
            Some((
                parse_path(&key, from, problems)?,
                parse_path(&key, to, problems)?,
            ))
        })
        .collect()
}

fn template_fields(
    section: &str,
    map: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<(FieldPath, Template)> {
    map.iter()
        .filter_map(|(field, template)| {
            let key = format!("{section}.{field}");
            Some((
                parse_path(&key, field, problems)?,
                parse_template(&key, template, problems)?,
            ))
        })
        .collect()
}

impl Config {
    pub fn build(&self) -> Result<MutateFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let filter = MutateFilter {
            rename: path_pairs("rename", &self.rename, &mut problems),
            copy: path_pairs("copy", &self.copy, &mut problems),
            convert: self
                .convert
                .iter()
                .filter_map(|(f, c)| {
                    Some((parse_path(&format!("convert.{f}"), f, &mut problems)?, *c))
                })
                .collect(),
            add_field: template_fields("add_field", &self.add_field, &mut problems),
            replace: template_fields("replace", &self.replace, &mut problems),
            add_tag: self
                .add_tag
                .iter()
                .filter_map(|t| parse_template("add_tag", t, &mut problems))
                .collect(),
            remove_field: self
                .remove_field
                .iter()
                .filter_map(|f| parse_path("remove_field", f, &mut problems))
                .collect(),
            remove_tag: self.remove_tag.clone(),
        };
        if problems.is_empty() {
            Ok(filter)
        } else {
            Err(problems)
        }
    }
}

/// Converts a value; `None` when it cannot be converted.
pub fn convert(value: &Value, to: Conversion) -> Option<Value> {
    match (to, value) {
        (Conversion::Integer, Value::Number(n)) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_f64().map(|f| Value::from(f.trunc() as i64))),
        (Conversion::Integer, Value::String(s)) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(|f| f.trunc() as i64)
                })
                .map(Value::from)
        }
        (Conversion::Integer, Value::Bool(b)) => Some(Value::from(*b as i64)),
        (Conversion::Float, Value::Number(n)) => n.as_f64().map(Value::from),
        (Conversion::Float, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from),
        (Conversion::Float, Value::Bool(b)) => Some(Value::from(if *b { 1.0 } else { 0.0 })),
        (Conversion::String, Value::String(_)) => Some(value.clone()),
        (Conversion::String, Value::Null) => None,
        (Conversion::String, other) => Some(Value::String(other.to_string())),
        (Conversion::Boolean, Value::Bool(_)) => Some(value.clone()),
        (Conversion::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Some(Value::Bool(true)),
            "false" | "f" | "no" | "n" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        (Conversion::Boolean, Value::Number(n)) => n.as_f64().map(|f| Value::Bool(f != 0.0)),
        _ => None,
    }
}

impl Filter for MutateFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let mut ok = true;
        for (from, to) in &self.rename {
            if let Some(v) = event.remove(from) {
                event.insert(to, v);
            }
        }
        for (from, to) in &self.copy {
            if let Some(v) = event.get(from).cloned() {
                event.insert(to, v);
            }
        }
        for (field, to) in &self.convert {
            if let Some(v) = event.get(field) {
                match convert(v, *to) {
                    Some(new) => event.insert(field, new),
                    None => ok = false,
                }
            }
        }
        for (field, template) in &self.add_field {
            if event.contains(field) {
                continue;
            }
            if let Some(text) = template.render(event) {
                event.insert(field, Value::String(text));
            }
        }
        for (field, template) in &self.replace {
            if let Some(text) = template.render(event) {
                event.insert(field, Value::String(text));
            }
        }
        for tag in &self.add_tag {
            if let Some(text) = tag.render(event) {
                event.add_tag(&text);
            }
        }
        for field in &self.remove_field {
            event.remove(field);
        }
        if !self.remove_tag.is_empty() {
            if let Some(Value::Array(tags)) = event.fields_mut().get_mut(crate::event::TAGS) {
                tags.retain(|t| {
                    !t.as_str()
                        .is_some_and(|s| self.remove_tag.iter().any(|r| r == s))
                });
            }
        }
        if !ok {
            event.add_tag("_mutate_error");
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(cfg: &str, v: Value) -> Event {
        let f = toml::from_str::<Config>(cfg).unwrap().build().unwrap();
        let mut e = Event::from_map(v.as_object().unwrap().clone(), 0);
        f.apply(&mut e);
        e
    }

    const SHIPPED: &str = r#"add_field = { environment = "%{[fields][environment]}", service = "%{[fields][service]}" }"#;

    #[test]
    fn add_field_from_nested_fields() {
        let e = run(
            SHIPPED,
            json!({"fields": {"environment": "production", "service": "holysheep-api"}}),
        );
        assert_eq!(e.fields()["environment"], json!("production"));
        assert_eq!(e.fields()["service"], json!("holysheep-api"));
    }

    #[test]
    fn missing_reference_leaves_field_unset_and_root_values_alone() {
        let e = run(SHIPPED, json!({"model": "x"}));
        assert!(!e.fields().contains_key("environment"));
        assert!(!e.fields().contains_key("service"));
        // fields_under_root: the value is already at the root and must stay as it is
        let e = run(SHIPPED, json!({"environment": "production"}));
        assert_eq!(e.fields()["environment"], json!("production"));
    }

    #[test]
    fn other_operations() {
        let cfg = r#"
            rename = { "old" = "[new][place]" }
            copy = { "a" = "b" }
            convert = { "n" = "integer", "f" = "float", "flag" = "boolean", "bad" = "integer" }
            replace = { "r" = "%{a}-x" }
            add_tag = ["t_%{a}"]
            remove_field = ["gone"]
            remove_tag = ["drop"]
        "#;
        let e = run(
            cfg,
            json!({"old": 1, "a": "v", "n": "42", "f": "1.5", "flag": "yes", "bad": "x", "r": "prev", "gone": 1, "tags": ["drop", "keep"]}),
        );
        let f = e.fields();
        assert_eq!(f["new"], json!({"place": 1}));
        assert!(!f.contains_key("old"));
        assert_eq!(f["b"], json!("v"));
        assert_eq!(f["n"], json!(42));
        assert_eq!(f["f"], json!(1.5));
        assert_eq!(f["flag"], json!(true));
        assert_eq!(f["bad"], json!("x"));
        assert_eq!(f["r"], json!("v-x"));
        assert!(!f.contains_key("gone"));
        assert_eq!(f["tags"], json!(["keep", "t_v", "_mutate_error"]));
    }

    #[test]
    fn bad_template_is_a_config_problem() {
        let errs = toml::from_str::<Config>("add_field = { x = \"%{[a\" }")
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert!(errs[0].message.contains("bad template"));
    }
}
