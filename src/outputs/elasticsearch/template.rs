//! The composable index template installed at start-up (`PUT _index_template/<name>`): the
//! mappings the shipped Kibana queries rely on (keyword terms, numeric sums and percentiles,
//! dates, `error_message.keyword`, GeoIP points), and other strings as keywords.

use serde_json::{json, Value};

/// Fields aggregated with `terms` or filtered with `term`.
const KEYWORDS: &[&str] = &[
    "model",
    "request_id",
    "user_id",
    "status",
    "status_category",
    "endpoint",
    "latency_bucket",
    "environment",
    "service",
    "tags",
];
const FLOATS: &[&str] = &["latency_ms", "cost_usd", "cost_per_1m_tokens"];
const LONGS: &[&str] = &["prompt_tokens", "completion_tokens", "total_tokens"];
const DATES: &[&str] = &["@timestamp", "timestamp"];
/// Free text that is also grouped on exactly (`error_message.keyword`).
const TEXTS: &[&str] = &["error_message", "message"];

/// The template body for indices matching `pattern`, attaching the ILM policy `ilm_policy`
/// (`index.lifecycle.name`) when given.
pub fn body(pattern: &str, ilm_policy: Option<&str>) -> Value {
    let mut properties = serde_json::Map::new();
    for name in KEYWORDS {
        properties.insert(
            (*name).into(),
            json!({"type": "keyword", "ignore_above": 1024}),
        );
    }
    for name in FLOATS {
        properties.insert((*name).into(), json!({"type": "float"}));
    }
    for name in LONGS {
        properties.insert((*name).into(), json!({"type": "long"}));
    }
    for name in DATES {
        properties.insert((*name).into(), json!({"type": "date"}));
    }
    for name in TEXTS {
        properties.insert(
            (*name).into(),
            json!({
                "type": "text",
                "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}
            }),
        );
    }
    properties.insert(
        "geoip".into(),
        json!({
            "properties": {
                "ip": {"type": "ip"},
                "geo": {"properties": {"location": {"type": "geo_point"}}}
            }
        }),
    );
    let mut index_settings = json!({"refresh_interval": "5s"});
    if let Some(policy) = ilm_policy {
        index_settings["lifecycle"] = json!({"name": policy});
    }
    json!({
        "index_patterns": [pattern],
        "priority": 200,
        "template": {
            "settings": {"index": index_settings},
            "mappings": {
                "dynamic_templates": [{
                    "strings_as_keyword": {
                        "match_mapping_type": "string",
                        "mapping": {"type": "keyword", "ignore_above": 1024}
                    }
                }],
                "properties": properties
            }
        },
        "_meta": {"managed_by": "sheepdog"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_fields_the_dashboards_use() {
        let t = body("holysheep-logs-*", None);
        assert_eq!(
            t["template"]["settings"],
            json!({"index": {"refresh_interval": "5s"}}),
            "no lifecycle setting without ilm_policy"
        );
        assert_eq!(t["index_patterns"], json!(["holysheep-logs-*"]));
        let p = &t["template"]["mappings"]["properties"];
        assert_eq!(p["model"]["type"], "keyword");
        assert_eq!(p["tags"]["type"], "keyword");
        assert_eq!(p["cost_usd"]["type"], "float");
        assert_eq!(p["total_tokens"]["type"], "long");
        assert_eq!(p["@timestamp"]["type"], "date");
        assert_eq!(p["error_message"]["type"], "text");
        assert_eq!(p["error_message"]["fields"]["keyword"]["type"], "keyword");
        assert_eq!(
            p["geoip"]["properties"]["geo"]["properties"]["location"]["type"],
            "geo_point"
        );
        assert_eq!(p["geoip"]["properties"]["ip"]["type"], "ip");
        let dynamic = &t["template"]["mappings"]["dynamic_templates"][0]["strings_as_keyword"];
        assert_eq!(dynamic["mapping"]["type"], "keyword");
    }

    #[test]
    fn ilm_policy_goes_into_the_index_settings() {
        let t = body("holysheep-logs-*", Some("holysheep-30d"));
        assert_eq!(
            t["template"]["settings"],
            json!({"index": {"refresh_interval": "5s", "lifecycle": {"name": "holysheep-30d"}}})
        );
    }
}
