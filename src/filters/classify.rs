//! `classify`: an ordered list of rules, first match wins, like Logstash's `if / else if /
//! else` chain. A rule sets `target` to its `value` and adds its `tags`; `default` applies
//! when no rule matches. The shipped pipeline uses it for `status_category`.

use super::{parse_path, Filter};
use crate::condition::Condition;
use crate::config::problem::Problem;
use crate::event::{Event, FieldPath};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Condition for this rule.
    pub when: String,
    /// Value written to `target`.
    #[serde(default)]
    pub value: Option<String>,
    /// Tags added.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field that receives the matching rule's value.
    pub target: String,
    /// Rules in order; the first whose condition holds applies.
    pub rules: Vec<Rule>,
    /// Applied when no rule matches.
    #[serde(default)]
    pub default: Option<Outcome>,
}

struct CompiledRule {
    when: Option<Condition>,
    value: Option<Value>,
    tags: Vec<String>,
}

pub struct ClassifyFilter {
    target: FieldPath,
    rules: Vec<CompiledRule>,
}

impl Config {
    pub fn build(&self) -> Result<ClassifyFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let target = parse_path("target", &self.target, &mut problems);
        let mut rules = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            match Condition::compile(&rule.when) {
                Ok(c) => rules.push(CompiledRule {
                    when: Some(c),
                    value: rule.value.clone().map(Value::String),
                    tags: rule.tags.clone(),
                }),
                Err(e) => problems.push(
                    Problem::at_path(
                        vec![
                            crate::config::problem::PathSeg::Key("rules".into()),
                            crate::config::problem::PathSeg::Index(i),
                            crate::config::problem::PathSeg::Key("when".into()),
                        ],
                        format!("bad condition `{}`: {e}", rule.when),
                    )
                    .hint("conditions look like: [status] == \"success\""),
                ),
            }
        }
        if let Some(d) = &self.default {
            rules.push(CompiledRule {
                when: None,
                value: d.value.clone().map(Value::String),
                tags: d.tags.clone(),
            });
        }
        if self.rules.is_empty() {
            problems.push(
                Problem::at("rules", "no rules given")
                    .hint("add [[filters.rules]] tables with when and value"),
            );
        }
        match target {
            Some(target) if problems.is_empty() => Ok(ClassifyFilter { target, rules }),
            _ => Err(problems),
        }
    }
}

impl Filter for ClassifyFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.when.as_ref().is_none_or(|c| c.matches(event)))
        else {
            return true;
        };
        for t in &rule.tags {
            event.add_tag(t);
        }
        if let Some(v) = &rule.value {
            event.insert(&self.target, v.clone());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub const SHIPPED: &str = r#"
        target = "status_category"
        [[rules]]
        when = '[status] == "success" or [status_code] == 200'
        value = "success"
        tags = ["success"]
        [[rules]]
        when = '[status] == "pending"'
        value = "pending"
        tags = ["pending"]
        [default]
        value = "error"
        tags = ["error"]
    "#;

    fn run(v: Value) -> Event {
        let f = toml::from_str::<Config>(SHIPPED).unwrap().build().unwrap();
        let mut e = Event::from_map(v.as_object().unwrap().clone(), 0);
        f.apply(&mut e);
        e
    }

    #[test]
    fn first_matching_rule_wins() {
        let table = [
            (json!({"status": "success"}), "success"),
            (json!({"status": "error", "status_code": 200}), "success"),
            (json!({"status": "pending"}), "pending"),
            (json!({"status": "error"}), "error"),
            (json!({"status": "exception"}), "error"),
            (json!({}), "error"),
        ];
        for (input, want) in table {
            let e = run(input.clone());
            assert_eq!(e.fields()["status_category"], json!(want), "{input}");
            assert_eq!(e.fields()["tags"], json!([want]), "{input}");
        }
    }

    #[test]
    fn bad_rule_condition_is_located() {
        let cfg = "target = \"x\"\n[[rules]]\nwhen = \"[a] ==\"\nvalue = \"v\"";
        let errs = toml::from_str::<Config>(cfg)
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert_eq!(
            crate::config::problem::path_to_string(&errs[0].path),
            "rules[0].when"
        );
    }
}
