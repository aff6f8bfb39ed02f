//! `bucket`: maps a number to a label by ascending upper bounds (exclusive), e.g. latency
//! buckets ultra_fast < 50 ms ≤ fast < 100 ≤ normal < 200 ≤ slow < 500 ≤ critical. Numeric
//! strings are accepted; a value that is not a number tags the event `_bucketfailure`.

use super::{parse_path, Filter};
use crate::config::problem::Problem;
use crate::event::{Event, FieldPath};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Exclusive upper bound.
    pub below: f64,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: String,
    pub target: String,
    /// Ranges in ascending order of `below`.
    pub ranges: Vec<Range>,
    /// Label for values at or above the last bound.
    pub default: String,
    #[serde(default = "d_tags")]
    pub tag_on_failure: Vec<String>,
}

fn d_tags() -> Vec<String> {
    vec!["_bucketfailure".into()]
}

pub struct BucketFilter {
    source: FieldPath,
    target: FieldPath,
    bounds: Vec<f64>,
    labels: Vec<Value>,
    tag_on_failure: Vec<String>,
}

impl Config {
    pub fn build(&self) -> Result<BucketFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let source = parse_path("source", &self.source, &mut problems);
        let target = parse_path("target", &self.target, &mut problems);
        if self.ranges.windows(2).any(|w| w[0].below >= w[1].below)
            || self.ranges.iter().any(|r| !r.below.is_finite())
        {
            problems.push(
                Problem::at("ranges", "bounds must be finite and strictly ascending")
                    .hint("list ranges from the smallest `below` to the largest"),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut labels: Vec<Value> = self
            .ranges
            .iter()
            .map(|r| Value::String(r.value.clone()))
            .collect();
        labels.push(Value::String(self.default.clone()));
        Ok(BucketFilter {
            source: source.unwrap(),
            target: target.unwrap(),
            bounds: self.ranges.iter().map(|r| r.below).collect(),
            labels,
            tag_on_failure: self.tag_on_failure.clone(),
        })
    }
}

impl BucketFilter {
    /// The pure rule: index of the label for `x`.
    pub fn bucket_index(&self, x: f64) -> usize {
        self.bounds
            .iter()
            .position(|b| x < *b)
            .unwrap_or(self.bounds.len())
    }
}

impl Filter for BucketFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let number = match event.get(&self.source) {
            None | Some(Value::Null) => return true,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            Some(_) => None,
        };
        match number {
            Some(x) => {
                let label = self.labels[self.bucket_index(x)].clone();
                event.insert(&self.target, label);
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

    const SHIPPED: &str = r#"
        source = "latency_ms"
        target = "latency_bucket"
        default = "critical"
        ranges = [
          { below = 50, value = "ultra_fast" },
          { below = 100, value = "fast" },
          { below = 200, value = "normal" },
          { below = 500, value = "slow" },
        ]
    "#;

    #[test]
    fn latency_buckets_at_their_edges() {
        let f = toml::from_str::<Config>(SHIPPED).unwrap().build().unwrap();
        let table = [
            (json!(0), "ultra_fast"),
            (json!(49.99), "ultra_fast"),
            (json!(50), "fast"),
            (json!(99.9), "fast"),
            (json!(100), "normal"),
            (json!(199.99), "normal"),
            (json!(200), "slow"),
            (json!(499), "slow"),
            (json!(500), "critical"),
            (json!(12000.5), "critical"),
            (json!("43.17"), "ultra_fast"),
        ];
        for (latency, want) in table {
            let mut e = Event::from_map(
                json!({"latency_ms": latency}).as_object().unwrap().clone(),
                0,
            );
            assert!(f.apply(&mut e));
            assert_eq!(e.fields()["latency_bucket"], json!(want), "{latency}");
        }
        let mut e = Event::from_map(
            json!({"latency_ms": "slowish"})
                .as_object()
                .unwrap()
                .clone(),
            0,
        );
        assert!(!f.apply(&mut e));
        assert!(e.has_tag("_bucketfailure"));
        assert!(!e.fields().contains_key("latency_bucket"));
    }

    #[test]
    fn unordered_ranges_are_rejected() {
        let cfg = "source = \"a\"\ntarget = \"b\"\ndefault = \"c\"\nranges = [{ below = 5, value = \"x\" }, { below = 1, value = \"y\" }]";
        assert!(toml::from_str::<Config>(cfg).unwrap().build().is_err());
    }
}
