//! Configuration tests from TOML strings: substitution, unknown keys, locations.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "HTTP_ADDR" => Some("127.0.0.1:18080".into()),
        _ => None,
    }
}

fn parse_str(text: &str) -> Result<(PipelineConfig, Vec<LocatedProblem>), ConfigErrors> {
    parse(&Source::new("test.toml", text), &env)
}

const MINIMAL: &str = r#"
[[inputs]]
type = "http"
address = "${HTTP_ADDR:-0.0.0.0:8080}"
tags = ["direct-upload"]

[[filters]]
type = "json"
when = '[message] =~ /^\{/'
target = "parsed"

[[outputs]]
type = "stdout"
"#;

#[test]
fn pipeline_defaults_bound_memory() {
    let (c, _) = parse_str(MINIMAL).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.pipeline.queue_capacity, 4096);
    assert_eq!(c.pipeline.batch_size, 1024);
}

#[test]
fn parses_a_minimal_pipeline_with_env() {
    let (cfg, warnings) = parse_str(MINIMAL).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(cfg.inputs.len(), 1);
    assert_eq!(cfg.inputs[0].id, "http");
    match &cfg.inputs[0].config {
        crate::inputs::InputConfig::Http(h) => assert_eq!(h.address, "127.0.0.1:18080"),
        other => panic!("expected the http input, got {other:?}"),
    }
    assert_eq!(cfg.filters[0].when.as_deref(), Some("[message] =~ /^\\{/"));
}

#[test]
fn reports_every_problem_with_line_and_column() {
    let text = r#"
[pipelin]
workers = 2

[[inputs]]
type = "http"
adress = "0.0.0.0:8080"

[[filters]]
type = "jsn"

[[filters]]
type = "json"
when = "[a] =="

[[outputs]]
type = "stdout"
path = "${UNSET_VAR}"
"#;
    let errs = parse_str(text).unwrap_err().0;
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let all = lines.join("\n");
    assert!(all.contains("test.toml:2:2: error: pipelin: unknown section `pipelin` (hint: did you mean `pipeline`?)"), "{all}");
    assert!(all.contains("test.toml:7:1: error: inputs[0].adress: unknown key `adress` (hint: did you mean `address`?)"), "{all}");
    assert!(all.contains("test.toml:10:1: error: filters[0].type: unknown filter type `jsn` (hint: did you mean `json`?)"), "{all}");
    assert!(
        all.contains("test.toml:14:1: error: filters[1].when: bad condition"),
        "{all}"
    );
    assert!(
        all.contains(
            "test.toml:18:1: error: outputs[0].path: environment variable `UNSET_VAR` is not set"
        ),
        "{all}"
    );
}

#[test]
fn syntax_errors_are_located() {
    let errs = parse_str("[[inputs]\ntype = 1").unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 1);
    assert!(errs[0].problem.message.contains("not valid TOML"));
}

#[test]
fn empty_pipeline_needs_inputs_and_outputs() {
    let errs = parse_str("").unwrap_err().0;
    let all: Vec<String> = errs.iter().map(|e| e.problem.message.clone()).collect();
    assert_eq!(
        all,
        ["the pipeline has no inputs", "the pipeline has no outputs"]
    );
}

#[test]
fn wrong_types_name_the_key() {
    let text = "[pipeline]\nworkers = \"many\"\n[[inputs]]\ntype = \"http\"\naddress = \"x\"\n[[outputs]]\ntype = \"stdout\"\n";
    let errs = parse_str(text).unwrap_err().0;
    assert_eq!(errs[0].line, 2);
    assert!(
        errs[0].to_string().contains("pipeline.workers"),
        "{}",
        errs[0]
    );
}

/// The shipped pipeline's metrics stage validates, and a broken one is located in the file.
#[test]
fn metrics_stage_from_toml_validates_and_locates_its_problems() {
    let shipped = include_str!("../../pipelines/holysheep.toml");
    let start = shipped.find("[[filters]]\ntype = \"metrics\"").unwrap();
    let end = start + shipped[start..].find("\n# Logstash").unwrap();
    let stage = &shipped[start..end];
    let good = format!("{MINIMAL}\n{stage}");
    let (cfg, _) = parse_str(&good).unwrap_or_else(|e| panic!("{e:?}"));
    let ctx = crate::BuildContext::new(std::env::temp_dir(), Default::default());
    assert_eq!(crate::pipeline::validate(&cfg, &ctx), Vec::new());
    let text = ctx.metrics.render();
    for family in [
        "sheepdog_llm_requests_total counter",
        "sheepdog_llm_cost_usd_total counter",
        "sheepdog_llm_tokens_total counter",
        "sheepdog_llm_latency_ms histogram",
    ] {
        assert!(text.contains(&format!("# TYPE {family}\n")), "{text}");
    }

    let bad = good.replace("buckets = [50, 100, 200, 500]", "buckets = [500, 50]");
    let source = Source::new("test.toml", bad.as_str());
    let (cfg, _) = parse(&source, &env).unwrap();
    let ctx = crate::BuildContext::new(std::env::temp_dir(), Default::default());
    let located: Vec<String> = crate::pipeline::validate(&cfg, &ctx)
        .into_iter()
        .map(|p| source.locate(p).to_string())
        .collect();
    let line = bad
        .lines()
        .position(|l| l == "buckets = [500, 50]")
        .unwrap()
        + 1;
    assert_eq!(
        located,
        [format!(
            "test.toml:{line}:1: error: filters[1].metrics[5].buckets: needs finite, strictly \
             ascending upper bounds (hint: e.g. buckets = [50, 100, 200, 500]; +Inf is implied)"
        )]
    );
}

#[test]
fn secrets_never_show_in_a_printed_config_or_its_problems() {
    let text = r#"
[[inputs]]
type = "http"
address = "127.0.0.1:0"
token = "t0ken-4411"

[[inputs]]
type = "http"
id = "basic"
address = "127.0.0.1:0"
user = "app"
password = "pw-4412"

[[outputs]]
type = "elasticsearch"
hosts = "http://elastic:url-pw-4413@es:9200"
index = "x"

[[outputs]]
type = "elasticsearch"
id = "keyed"
hosts = "http://es:9200"
index = "x"
api_key = "key-4414"

[[outputs]]
type = "email"
to = "ops@example.com"
username = "u"
password = "smtp-4415"
"#;
    let (config, _) = parse_str(text).unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{config:?}");
    assert!(!debug.contains("441"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");

    // A secret written as a number is refused without quoting it back.
    let text = text.replace("\"pw-4412\"", "4412");
    let errors = parse_str(&text).unwrap_err().to_string();
    assert!(
        errors.contains("inputs[1].password: a secret must be a string, not a number"),
        "{errors}"
    );
    assert!(!errors.contains("441"), "{errors}");
}
