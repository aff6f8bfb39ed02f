//! `useragent`: parses a User-Agent header with woothee into `name`, `version`, `os.name`,
//! `os.version`, `device` and `vendor` under `target`. API client libraries (the bulk of an
//! LLM API's traffic) are unknown to woothee, so a table of extra patterns answers for them;
//! operators extend it in the TOML. Results are cached, since a few hundred agents repeat.

use super::cache::ShardedCache;
use super::{parse_path, Filter};
use crate::config::de;
use crate::config::problem::{PathSeg, Problem};
use crate::event::{Event, FieldPath, SharedValue};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Agents longer than this are parsed but not cached, so odd clients cannot fill the cache
/// with large keys.
const MAX_CACHED_LEN: usize = 512;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field holding the User-Agent string.
    #[serde(default = "default_source")]
    pub source: String,
    /// Field that receives the parsed parts.
    #[serde(default = "default_target")]
    pub target: String,
    /// Parsed agents kept in memory; 0 disables the cache. Default 4096.
    #[serde(default = "default_cache", deserialize_with = "de::from_str_or_value")]
    pub cache_size: usize,
    /// Patterns tried before the built-in ones when woothee does not know an agent.
    #[serde(default)]
    pub extra_patterns: Vec<PatternConfig>,
}

fn default_source() -> String {
    "user_agent".into()
}
fn default_target() -> String {
    "ua".into()
}
fn default_cache() -> usize {
    4096
}

/// One extra pattern: `[[filters.extra_patterns]] pattern = '^MyClient/(\S+)' name = "MyClient"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    /// Regular expression matched against the whole User-Agent string.
    pub pattern: String,
    /// `name` written on a match.
    pub name: String,
    /// Capture group holding the version; default 1 when the pattern has a group, else none.
    #[serde(default, deserialize_with = "opt_usize")]
    pub version_group: Option<usize>,
    /// `device` written on a match. Default "library".
    #[serde(default)]
    pub device: Option<String>,
    /// `vendor` written on a match, if any.
    #[serde(default)]
    pub vendor: Option<String>,
}

fn opt_usize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    de::from_str_or_value(d).map(Some)
}

/// Built-in patterns for API client libraries and command-line tools: (regex, name, vendor).
/// The version is the first capture group.
const BUILTIN: &[(&str, &str, &str)] = &[
    (r"^OpenAI/Python (\d[\w.\-+]*)", "OpenAI/Python", "OpenAI"),
    (r"^OpenAI/JS (\d[\w.\-+]*)", "OpenAI/JS", "OpenAI"),
    (
        r"^OpenAI/(?:Go|Java|DotNet|Ruby)[ /](\d[\w.\-+]*)",
        "OpenAI SDK",
        "OpenAI",
    ),
    (
        r"^Anthropic/Python (\d[\w.\-+]*)",
        "Anthropic/Python",
        "Anthropic",
    ),
    (r"^Anthropic/JS (\d[\w.\-+]*)", "Anthropic/JS", "Anthropic"),
    (
        r"^Anthropic/(?:Go|Java|Ruby)[ /](\d[\w.\-+]*)",
        "Anthropic SDK",
        "Anthropic",
    ),
    (r"^python-httpx/(\d[\w.\-+]*)", "python-httpx", ""),
    (r"^python-requests/(\d[\w.\-+]*)", "python-requests", ""),
    (r"^Python/\d[\d.]* aiohttp/(\d[\w.\-+]*)", "aiohttp", ""),
    (r"^Python-urllib/(\d[\w.\-+]*)", "Python-urllib", ""),
    (r"^axios/(\d[\w.\-+]*)", "axios", ""),
    (r"^node-fetch(?:/(\d[\w.\-+]*))?", "node-fetch", ""),
    (r"^undici(?:/(\d[\w.\-+]*))?", "undici", ""),
    (r"^Go-http-client/(\d[\w.\-+]*)", "Go-http-client", ""),
    (r"^okhttp/(\d[\w.\-+]*)", "okhttp", ""),
    (r"^Java-http-client/(\d[\w.\-+]*)", "Java HttpClient", ""),
    (
        r"^Apache-HttpClient/(\d[\w.\-+]*)",
        "Apache-HttpClient",
        "Apache",
    ),
    (r"^Java/(\d[\w.\-+]*)", "Java", ""),
    (r"^Faraday v(\d[\w.\-+]*)", "Faraday", ""),
    (r"^Ruby$", "Ruby", ""),
    (r"^rest-client/(\d[\w.\-+]*)", "rest-client", ""),
    (r"^Dart/(\d[\w.\-+]*)", "Dart", ""),
    (r"^reqwest/(\d[\w.\-+]*)", "reqwest", ""),
    (
        r"^PostmanRuntime/(\d[\w.\-+]*)",
        "PostmanRuntime",
        "Postman",
    ),
    (r"^insomnia/(\d[\w.\-+]*)", "Insomnia", "Kong"),
    (r"^Wget/(\d[\w.\-+]*)", "Wget", "GNU"),
    (r"^curl/(\d[\w.\-+]*)", "curl", ""),
    (r"^HTTPie/(\d[\w.\-+]*)", "HTTPie", ""),
    (r"^langchain[\w\-]*/(\d[\w.\-+]*)", "LangChain", ""),
    (r"^litellm/(\d[\w.\-+]*)", "LiteLLM", ""),
];

struct Pattern {
    regex: Regex,
    name: String,
    version_group: Option<usize>,
    device: String,
    vendor: Option<String>,
}

pub struct UseragentFilter {
    source: FieldPath,
    target: FieldPath,
    patterns: Vec<Pattern>,
    parser: woothee::parser::Parser,
    /// `None` in a value: the agent yields no fields. Results are shared with the events
    /// (a reference count, not a copy) and keep their JSON rendered for the outputs.
    cache: ShardedCache<Box<str>, Option<Arc<SharedValue>>>,
}

impl Config {
    pub fn build(&self) -> Result<UseragentFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let source = parse_path("source", &self.source, &mut problems);
        let target = parse_path("target", &self.target, &mut problems);
        let mut patterns = Vec::new();
        for (i, p) in self.extra_patterns.iter().enumerate() {
            let at = |key: &str| {
                vec![
                    PathSeg::Key("extra_patterns".into()),
                    PathSeg::Index(i),
                    PathSeg::Key(key.into()),
                ]
            };
            let regex = match Regex::new(&p.pattern) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(
                        Problem::at_path(at("pattern"), format!("bad regular expression: {e}"))
                            .hint(r"patterns look like '^MyClient/(\d[\w.]*)'"),
                    );
                    continue;
                }
            };
            let groups = regex.captures_len() - 1;
            let version_group = match p.version_group {
                Some(0) => None,
                Some(g) if g > groups => {
                    problems.push(
                        Problem::at_path(
                            at("version_group"),
                            format!("group {g} does not exist; the pattern has {groups}"),
                        )
                        .hint(
                            "use the number of the group that captures the version, or 0 for none",
                        ),
                    );
                    None
                }
                Some(g) => Some(g),
                None if groups >= 1 => Some(1),
                None => None,
            };
            if p.name.trim().is_empty() {
                problems.push(
                    Problem::at_path(at("name"), "empty name")
                        .hint("name the client, e.g. name = \"MyClient\""),
                );
            }
            patterns.push(Pattern {
                regex,
                name: p.name.clone(),
                version_group,
                device: p.device.clone().unwrap_or_else(|| "library".into()),
                vendor: p.vendor.clone().filter(|v| !v.is_empty()),
            });
        }
        for (re, name, vendor) in BUILTIN {
            patterns.push(Pattern {
                regex: Regex::new(re).expect("built-in user-agent patterns are valid"),
                name: (*name).into(),
                version_group: Some(1),
                device: "library".into(),
                vendor: (!vendor.is_empty()).then(|| (*vendor).to_string()),
            });
        }
        match (source, target) {
            (Some(source), Some(target)) if problems.is_empty() => Ok(UseragentFilter {
                source,
                target,
                patterns,
                parser: woothee::parser::Parser::new(),
                cache: ShardedCache::new(self.cache_size),
            }),
            _ => Err(problems),
        }
    }
}

/// woothee's placeholder for a part it does not know.
fn known(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN).then_some(s)
}

impl UseragentFilter {
    /// Parses `agent` without the cache: the object written to `target`, or `None` when
    /// nothing is known about it.
    pub fn parse(&self, agent: &str) -> Option<Value> {
        let agent = agent.trim();
        if agent.is_empty() {
            return None;
        }
        let result = self.parser.parse(agent);
        let generic = match &result {
            None => true,
            Some(r) => known(r.name).is_none() || r.name == "HTTP Library",
        };
        if generic {
            if let Some(v) = self.match_pattern(agent) {
                return Some(v);
            }
        }
        let r = result?;
        let mut out = Map::new();
        let put = |m: &mut Map<String, Value>, key: &str, v: &str| {
            if let Some(v) = known(v) {
                m.insert(key.into(), Value::from(v));
            }
        };
        put(&mut out, "name", r.name);
        put(&mut out, "version", r.version);
        let mut os = Map::new();
        put(&mut os, "name", r.os);
        put(&mut os, "version", &r.os_version);
        if !os.is_empty() {
            out.insert("os".into(), Value::Object(os));
        }
        put(&mut out, "device", r.category);
        put(&mut out, "vendor", r.vendor);
        (!out.is_empty()).then_some(Value::Object(out))
    }

    fn match_pattern(&self, agent: &str) -> Option<Value> {
        for p in &self.patterns {
            let Some(caps) = p.regex.captures(agent) else {
                continue;
            };
            let mut out = Map::new();
            out.insert("name".into(), Value::from(p.name.as_str()));
            if let Some(v) = p
                .version_group
                .and_then(|g| caps.get(g))
                .map(|m| m.as_str())
                .filter(|v| !v.is_empty())
            {
                out.insert("version".into(), Value::from(v));
            }
            out.insert("device".into(), Value::from(p.device.as_str()));
            if let Some(v) = &p.vendor {
                out.insert("vendor".into(), Value::from(v.as_str()));
            }
            return Some(Value::Object(out));
        }
        None
    }

    /// [`UseragentFilter::parse`] through the cache.
    pub fn parse_cached(&self, agent: &str) -> Option<Arc<SharedValue>> {
        if let Some(hit) = self.cache.get(agent) {
            return hit;
        }
        let parsed = self.parse(agent).map(SharedValue::new);
        if agent.len() <= MAX_CACHED_LEN {
            self.cache.insert(agent.into(), parsed.clone());
        }
        parsed
    }
}

impl Filter for UseragentFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let Some(Value::String(agent)) = event.get(&self.source) else {
            return true;
        };
        if let Some(v) = self.parse_cached(agent) {
            event.insert_shared(&self.target, &v);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(extra: &str) -> UseragentFilter {
        toml::from_str::<Config>(extra).unwrap().build().unwrap()
    }

    #[test]
    fn api_client_libraries() {
        let f = filter("");
        let table = [
            ("python-httpx/0.27.0", "python-httpx", "0.27.0"),
            ("OpenAI/Python 1.54.0", "OpenAI/Python", "1.54.0"),
            ("Anthropic/Python 0.39.0", "Anthropic/Python", "0.39.0"),
            ("OpenAI/JS 4.73.0", "OpenAI/JS", "4.73.0"),
            ("Anthropic/JS 0.32.1", "Anthropic/JS", "0.32.1"),
            ("axios/1.7.2", "axios", "1.7.2"),
            (
                "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
                "node-fetch",
                "1.0",
            ),
            ("Go-http-client/2.0", "Go-http-client", "2.0"),
            ("okhttp/4.12.0", "okhttp", "4.12.0"),
            ("python-requests/2.32.3", "python-requests", "2.32.3"),
            ("Python/3.11 aiohttp/3.9.5", "aiohttp", "3.9.5"),
            ("Java-http-client/17.0.9", "Java HttpClient", "17.0.9"),
            (
                "Apache-HttpClient/4.5.14 (Java/17.0.9)",
                "Apache-HttpClient",
                "4.5.14",
            ),
            ("PostmanRuntime/7.39.0", "PostmanRuntime", "7.39.0"),
            ("Wget/1.21.4", "Wget", "1.21.4"),
            ("curl/8.5.0", "curl", "8.5.0"),
        ];
        for (agent, name, version) in table {
            let v = f
                .parse(agent)
                .unwrap_or_else(|| panic!("{agent}: no answer"));
            assert_eq!(v["name"], json!(name), "{agent}");
            assert_eq!(v["version"], json!(version), "{agent}");
            assert_eq!(v["device"], json!("library"), "{agent}");
            assert!(v.get("os").is_none(), "{agent}");
        }
        let ruby = f.parse("Ruby").unwrap();
        assert_eq!(ruby, json!({"name": "Ruby", "device": "library"}));
    }

    #[test]
    fn browsers_and_crawlers_come_from_woothee() {
        let f = filter("");
        let chrome = f
            .parse("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36")
            .unwrap();
        assert_eq!(
            chrome,
            json!({"name": "Chrome", "version": "126.0.0.0", "os": {"name": "Windows 10", "version": "NT 10.0"}, "device": "pc", "vendor": "Google"})
        );
        let iphone = f
            .parse("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")
            .unwrap();
        assert_eq!(iphone["device"], json!("smartphone"));
        assert_eq!(iphone["os"]["name"], json!("iPhone"));
        let bot = f
            .parse("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
            .unwrap();
        assert_eq!(bot["device"], json!("crawler"));
        assert_eq!(bot["name"], json!("Googlebot"));
        // UNKNOWN placeholders are left out, never indexed.
        for v in [&chrome, &iphone, &bot] {
            assert!(!v.to_string().contains("UNKNOWN"), "{v}");
        }
    }

    #[test]
    fn empty_and_garbage_yield_nothing() {
        let f = filter("");
        for agent in [
            "",
            "   ",
            "-",
            "\u{0}\u{1}\u{ffff}",
            "???",
            &"x".repeat(10_000),
        ] {
            assert_eq!(f.parse(agent), None, "{agent:?}");
            let mut e =
                Event::from_map(json!({"user_agent": agent}).as_object().unwrap().clone(), 0);
            assert!(f.apply(&mut e));
            assert!(e.fields().get("ua").is_none());
        }
        let mut e = Event::from_map(json!({"user_agent": 42}).as_object().unwrap().clone(), 0);
        assert!(f.apply(&mut e));
        assert!(e.fields().get("ua").is_none());
    }

    #[test]
    fn operator_patterns_come_first() {
        let f = filter(
            r#"
            [[extra_patterns]]
            pattern = '^holysheep-cli/(\d[\w.]*) \((\w+)\)'
            name = "holysheep-cli"
            version_group = 1
            device = "cli"
            vendor = "HolySheep"
            [[extra_patterns]]
            pattern = '^curl/'
            name = "curl (ops)"
            "#,
        );
        assert_eq!(
            f.parse("holysheep-cli/2.1.0 (linux)").unwrap(),
            json!({"name": "holysheep-cli", "version": "2.1.0", "device": "cli", "vendor": "HolySheep"})
        );
        assert_eq!(
            f.parse("curl/8.5.0").unwrap(),
            json!({"name": "curl (ops)", "device": "library"})
        );
    }

    #[test]
    fn bad_patterns_are_located() {
        let cfg = "[[extra_patterns]]\npattern = '(unclosed'\nname = \"x\"\n[[extra_patterns]]\npattern = '^a/(\\d+)'\nname = \"a\"\nversion_group = 3";
        let errs = toml::from_str::<Config>(cfg)
            .unwrap()
            .build()
            .err()
            .unwrap();
        let paths: Vec<String> = errs
            .iter()
            .map(|p| crate::config::problem::path_to_string(&p.path))
            .collect();
        assert_eq!(
            paths,
            [
                "extra_patterns[0].pattern",
                "extra_patterns[1].version_group"
            ]
        );
    }

    #[test]
    fn cached_results_match_uncached() {
        let cached = filter("cache_size = 8");
        let plain = filter("cache_size = 0");
        let agents = [
            "curl/8.5.0",
            "OpenAI/Python 1.54.0",
            "garbage",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ];
        for round in 0..3 {
            for (i, a) in agents.iter().cycle().take(40).enumerate() {
                let got = cached.parse_cached(a).map(|v| v.value().clone());
                assert_eq!(got, plain.parse(a), "round {round} item {i}: {a}");
            }
        }
        assert!(cached.cache.len() <= cached.cache.capacity());
    }
}
