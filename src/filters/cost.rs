//! `cost`: backfills `cost_usd` from token counts and a per-model price table (USD per million
//! tokens). A model may have one price, or separate `input`/`output` prices that price
//! `prompt_tokens` and `completion_tokens` apart. Counts given as numeric strings are accepted;
//! counts that are not numbers tag the event `_costfailure`.

use super::{parse_path, Filter};
use crate::config::problem::Problem;
use crate::event::{Event, FieldPath};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Price {
    /// One price for every token.
    Flat(f64),
    /// Separate prices for prompt (input) and completion (output) tokens.
    Split { input: f64, output: f64 },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field naming the model. Default `model`.
    #[serde(default = "d_model")]
    pub model_field: String,
    /// Total token count. Default `total_tokens`.
    #[serde(default = "d_total")]
    pub tokens_field: String,
    /// Prompt token count, for split prices. Default `prompt_tokens`.
    #[serde(default = "d_prompt")]
    pub prompt_tokens_field: String,
    /// Completion token count, for split prices. Default `completion_tokens`.
    #[serde(default = "d_completion")]
    pub completion_tokens_field: String,
    /// Where the cost goes. Default `cost_usd`.
    #[serde(default = "d_target")]
    pub target: String,
    /// Where the applied flat price per million tokens goes (as Logstash's
    /// `cost_per_1m_tokens`); empty to skip. Default `cost_per_1m_tokens`.
    #[serde(default = "d_rate")]
    pub rate_field: String,
    /// Decimal places of the cost. Default 6.
    #[serde(default = "d_decimals")]
    pub decimals: u32,
    /// Price for models not in the table (USD per million tokens). Default 8.0.
    #[serde(default = "d_default_price")]
    pub default_price: Price,
    /// Model name to price (USD per million tokens).
    #[serde(default)]
    pub prices: HashMap<String, Price>,
    /// Tags added when token counts are not numbers. Default `["_costfailure"]`.
    #[serde(default = "d_tags")]
    pub tag_on_failure: Vec<String>,
}

fn d_model() -> String {
    "model".into()
}
fn d_total() -> String {
    "total_tokens".into()
}
fn d_prompt() -> String {
    "prompt_tokens".into()
}
fn d_completion() -> String {
    "completion_tokens".into()
}
fn d_target() -> String {
    "cost_usd".into()
}
fn d_rate() -> String {
    "cost_per_1m_tokens".into()
}
fn d_decimals() -> u32 {
    6
}
fn d_default_price() -> Price {
    Price::Flat(8.0)
}
fn d_tags() -> Vec<String> {
    vec!["_costfailure".into()]
}

pub struct CostFilter {
    model: FieldPath,
    total: FieldPath,
    prompt: FieldPath,
    completion: FieldPath,
    target: FieldPath,
    rate: Option<FieldPath>,
    scale: f64,
    default_price: Price,
    prices: HashMap<String, Price>,
    tag_on_failure: Vec<String>,
}

fn check_price(key: &str, price: &Price, problems: &mut Vec<Problem>) {
    let ok = match price {
        Price::Flat(p) => p.is_finite() && *p >= 0.0,
        Price::Split { input, output } => {
            input.is_finite() && output.is_finite() && *input >= 0.0 && *output >= 0.0
        }
    };
    if !ok {
        problems.push(
            Problem::at(key, "a price must be a non-negative number")
                .hint("USD per million tokens, e.g. 8.0 or { input = 3.0, output = 15.0 }"),
        );
    }
}

impl Config {
    pub fn build(&self) -> Result<CostFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let model = parse_path("model_field", &self.model_field, &mut problems);
        let total = parse_path("tokens_field", &self.tokens_field, &mut problems);
        let prompt = parse_path(
            "prompt_tokens_field",
            &self.prompt_tokens_field,
            &mut problems,
        );
        let completion = parse_path(
            "completion_tokens_field",
            &self.completion_tokens_field,
            &mut problems,
        );
        let target = parse_path("target", &self.target, &mut problems);
        let rate = if self.rate_field.is_empty() {
            None
        } else {
            parse_path("rate_field", &self.rate_field, &mut problems)
        };
        check_price("default_price", &self.default_price, &mut problems);
        for (model, price) in &self.prices {
            check_price(&format!("prices.{model}"), price, &mut problems);
        }
        if self.decimals > 12 {
            problems.push(Problem::at("decimals", "at most 12 decimal places"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CostFilter {
            model: model.unwrap(),
            total: total.unwrap(),
            prompt: prompt.unwrap(),
            completion: completion.unwrap(),
            target: target.unwrap(),
            rate,
            scale: 10f64.powi(self.decimals as i32),
            default_price: self.default_price,
            prices: self.prices.clone(),
            tag_on_failure: self.tag_on_failure.clone(),
        })
    }
}

/// A token count from a number or a numeric string; `Err` when present but not a count.
fn token_count(value: Option<&Value>) -> Result<Option<f64>, ()> {
    let n = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64().ok_or(())?,
        Some(Value::String(s)) => s.trim().parse::<f64>().map_err(|_| ())?,
        Some(_) => return Err(()),
    };
    if n.is_finite() && n >= 0.0 {
        Ok(Some(n))
    } else {
        Err(())
    }
}

/// The pure pricing rule: cost in USD, before rounding.
pub fn price_tokens(
    price: Price,
    total: Option<f64>,
    prompt: Option<f64>,
    completion: Option<f64>,
) -> Option<f64> {
    match price {
        Price::Flat(rate) => {
            let tokens = total.or_else(|| Some(prompt? + completion?))?;
            Some(tokens / 1_000_000.0 * rate)
        }
        Price::Split { input, output } => match (prompt, completion) {
            (Some(p), Some(c)) => Some(p / 1_000_000.0 * input + c / 1_000_000.0 * output),
            // Only a total is known: price it at the input rate.
            _ => Some(total? / 1_000_000.0 * input),
        },
    }
}

impl CostFilter {
    fn fail(&self, event: &mut Event) -> bool {
        for t in &self.tag_on_failure {
            event.add_tag(t);
        }
        false
    }
}

impl Filter for CostFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let price = match event.get(&self.model) {
            Some(Value::String(m)) => self
                .prices
                .get(m.as_str())
                .copied()
                .unwrap_or(self.default_price),
            _ => self.default_price,
        };
        let (Ok(total), Ok(prompt), Ok(completion)) = (
            token_count(event.get(&self.total)),
            token_count(event.get(&self.prompt)),
            token_count(event.get(&self.completion)),
        ) else {
            return self.fail(event);
        };
        let Some(cost) = price_tokens(price, total, prompt, completion) else {
            // No token counts at all: nothing to price.
            return true;
        };
        let rounded = (cost * self.scale).round() / self.scale;
        if let (Some(rate_field), Price::Flat(rate)) = (&self.rate, price) {
            event.insert(rate_field, Value::from(rate));
        }
        event.insert(&self.target, Value::from(rounded));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHIPPED: &str = r#"
        default_price = 8.0
        [prices]
        "gpt-4.1" = 8.0
        "claude-sonnet-4.5" = 15.0
        "deepseek-v3.2" = 0.42
        "gemini-2.5-flash" = 2.50
        "split-model" = { input = 3.0, output = 15.0 }
    "#;

    fn run(v: Value) -> Event {
        let f = toml::from_str::<Config>(SHIPPED).unwrap().build().unwrap();
        let mut e = Event::from_map(v.as_object().unwrap().clone(), 0);
        f.apply(&mut e);
        e
    }

    #[test]
    fn prices_each_model_from_the_table() {
        let cases = [
            ("gpt-4.1", 1042, 0.008336, 8.0),
            ("claude-sonnet-4.5", 1042, 0.01563, 15.0),
            ("deepseek-v3.2", 1042, 0.000438, 0.42),
            ("gemini-2.5-flash", 1000, 0.0025, 2.5),
            ("unknown-model", 1000, 0.008, 8.0),
        ];
        for (model, tokens, cost, rate) in cases {
            let e = run(json!({"model": model, "total_tokens": tokens}));
            assert_eq!(e.fields()["cost_usd"], json!(cost), "{model}");
            assert_eq!(e.fields()["cost_per_1m_tokens"], json!(rate), "{model}");
        }
    }

    #[test]
    fn numeric_strings_are_priced_and_garbage_is_tagged() {
        let e = run(json!({"model": "deepseek-v3.2", "total_tokens": "1042"}));
        assert_eq!(e.fields()["cost_usd"], json!(0.000438));
        let e = run(json!({"model": "gpt-4.1", "total_tokens": "lots"}));
        assert!(e.has_tag("_costfailure"));
        assert!(!e.fields().contains_key("cost_usd"));
        let e = run(json!({"model": "gpt-4.1", "total_tokens": -5}));
        assert!(e.has_tag("_costfailure"));
    }

    #[test]
    fn split_prices_use_prompt_and_completion() {
        let e = run(
            json!({"model": "split-model", "prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000}),
        );
        assert_eq!(e.fields()["cost_usd"], json!(0.033));
        assert!(!e.fields().contains_key("cost_per_1m_tokens"));
        let e = run(json!({"model": "split-model", "total_tokens": 1000}));
        assert_eq!(e.fields()["cost_usd"], json!(0.003));
    }

    #[test]
    fn nothing_to_price_is_not_a_failure() {
        let e = run(json!({"model": "gpt-4.1"}));
        assert!(!e.fields().contains_key("cost_usd"));
        assert!(!e.has_tag("_costfailure"));
    }

    #[test]
    fn negative_prices_are_rejected() {
        let errs = toml::from_str::<Config>("default_price = -1.0")
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert_eq!(
            errs[0].path[0],
            crate::config::problem::PathSeg::Key("default_price".into())
        );
    }
}
