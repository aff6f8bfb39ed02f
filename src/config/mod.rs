//! The pipeline TOML: loading, `${VAR}` substitution, structure (unknown keys are errors) and
//! locating every problem at file:line:column in one pass. Component configs live beside their
//! components (`inputs/`, `filters/`, `outputs/`); this module only dispatches on `type`, and
//! components import only its leaf modules `de`, `problem` and `secret`, never this one.

pub mod de;
pub mod env;
pub mod problem;
pub mod secret;

use de::deserialize_at;
use problem::{did_you_mean, PathSeg, Problem};

use crate::{filters::FilterConfig, inputs::InputConfig, outputs::OutputConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Daemon-wide settings (`[pipeline]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Filter worker tasks; 0 means one per core.
    #[serde(deserialize_with = "de::from_str_or_value")]
    pub workers: usize,
    /// Capacity of the queue between inputs and filter workers, in events, counting the batches
    /// the workers hold until the outputs took them. Default 4096: four 1000-event HTTP bodies
    /// or two Beats windows, enough to keep two workers busy; peak RSS grows with it.
    #[serde(deserialize_with = "de::from_str_or_value")]
    pub queue_capacity: usize,
    /// Largest batch an input hands to the queue at once, in events.
    #[serde(deserialize_with = "de::from_str_or_value")]
    pub batch_size: usize,
    /// How long shutdown may take to drain the queue and flush outputs.
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_timeout: Duration,
    /// Directory for the dead-letter file and other state.
    pub data_dir: PathBuf,
    /// The memory budget in bytes over everything held for clients: bodies and Beats windows
    /// being read, inflated and decoded, events in the queue and documents in the outputs.
    /// Once it is spent, inputs wait and then refuse (HTTP 429, withheld Beats ACK) instead of
    /// growing. Default `256MiB`.
    #[serde(deserialize_with = "de::bytes")]
    pub memory_limit: u64,
    /// `"memory"` (the default) or `"persisted"`: a write-ahead log under
    /// `data_dir/queue/`; clients are answered once their events are written to it, and it
    /// keeps them until the outputs confirmed them, across crashes and restarts.
    pub queue: QueueKind,
    /// The persisted queue's limit in bytes, from the oldest unconfirmed record to the newest.
    /// Default `1GiB`.
    #[serde(deserialize_with = "de::bytes")]
    pub queue_max_bytes: u64,
    /// When the persisted queue syncs to disk: `"always"` (before every answer) or at most
    /// an interval after a write (default `"1s"`).
    pub queue_sync: String,
    /// When inputs answer their clients (HTTP 200, Beats ACK): `"queued"` (the default: once
    /// the events are queued, and with the persisted queue written) or `"delivered"` (once
    /// every output that confirms delivery has, e.g. a `kafka` output in a shipper tier).
    pub acknowledge: AckPoint,
    /// With `acknowledge = "delivered"`: how long an HTTP request waits for delivery before
    /// it is answered 503 (the events stay in the pipeline; a resend is absorbed by document
    /// ids). Beats waits as long as it takes, with keepalives.
    #[serde(deserialize_with = "de::duration")]
    pub delivery_timeout: Duration,
}

/// When inputs acknowledge events to their clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPoint {
    #[default]
    Queued,
    Delivered,
}

/// Where the pipeline queue keeps events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    #[default]
    Memory,
    Persisted,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            workers: 0,
            queue_capacity: 4096,
            batch_size: 1024,
            shutdown_timeout: Duration::from_secs(30),
            data_dir: PathBuf::from("data"),
            memory_limit: crate::budget::DEFAULT_LIMIT,
            queue: QueueKind::Memory,
            queue_max_bytes: 1 << 30,
            queue_sync: "1s".into(),
            acknowledge: AckPoint::Queued,
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

/// The monitoring API (`[api]`): `/health`, `/metrics` and the status page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Listen address; empty disables the API.
    pub address: String,
    /// `[api.status_page]`: the live page at `/` and `/status.json`.
    pub status_page: crate::status::Settings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            address: "127.0.0.1:9600".into(),
            status_page: crate::status::Settings::default(),
        }
    }
}

/// A component with its place in the file and the options shared by every stage.
#[derive(Debug, Clone)]
pub struct Stage<T> {
    /// `id` from the file, or `<type>` / `<type>_<n>` when absent; used in metrics and logs.
    pub id: String,
    /// The `when` condition source, if any.
    pub when: Option<String>,
    pub config: T,
    /// Where the stage sits in the document, for problems found later.
    pub path: Vec<PathSeg>,
}

/// The parsed pipeline file.
#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    pub pipeline: PipelineSettings,
    pub api: ApiSettings,
    pub inputs: Vec<Stage<InputConfig>>,
    pub filters: Vec<Stage<FilterConfig>>,
    pub outputs: Vec<Stage<OutputConfig>>,
    /// `[alerts]`, handed to the alerting component as TOML.
    pub alerts: Option<toml::Value>,
}

/// A problem located in a file.
#[derive(Debug, Clone)]
pub struct LocatedProblem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub problem: Problem,
}

impl std::fmt::Display for LocatedProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.problem
        )
    }
}

/// Every problem found in a file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<LocatedProblem>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The source text of a configuration file, for locating problems.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
    doc: Option<toml_edit::Document<String>>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let doc = toml_edit::Document::parse(text.clone()).ok();
        Source {
            name: name.into(),
            text,
            doc,
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read pipeline file {}", path.display()))?;
        Ok(Source::new(path.display().to_string(), text))
    }

    /// Places `problem` at the line and column of the deepest part of its path that exists.
    pub fn locate(&self, problem: Problem) -> LocatedProblem {
        let offset = self.offset_of(&problem.path).unwrap_or(0);
        let (line, column) = line_col(&self.text, offset);
        LocatedProblem {
            file: self.name.clone(),
            line,
            column,
            problem,
        }
    }

    fn offset_of(&self, path: &[PathSeg]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut item: Option<Located> = Some(Located::Table(doc.as_table()));
        for seg in path {
            let Some(current) = item else { break };
            let (next, span) = current.step(seg);
            if span.is_some() {
                best = span;
            }
            item = next;
        }
        best
    }
}

enum Located<'a> {
    Table(&'a toml_edit::Table),
    Inline(&'a toml_edit::InlineTable),
    Aot(&'a toml_edit::ArrayOfTables),
    Array(&'a toml_edit::Array),
    Leaf,
}

impl<'a> Located<'a> {
    fn from_item(item: &'a toml_edit::Item) -> Located<'a> {
        match item {
            toml_edit::Item::Table(t) => Located::Table(t),
            toml_edit::Item::ArrayOfTables(a) => Located::Aot(a),
            toml_edit::Item::Value(v) => Located::from_value(v),
            toml_edit::Item::None => Located::Leaf,
        }
    }

    fn from_value(v: &'a toml_edit::Value) -> Located<'a> {
        match v {
            toml_edit::Value::InlineTable(t) => Located::Inline(t),
            toml_edit::Value::Array(a) => Located::Array(a),
            _ => Located::Leaf,
        }
    }

    fn step(&self, seg: &PathSeg) -> (Option<Located<'a>>, Option<usize>) {
        match (self, seg) {
            (Located::Table(t), PathSeg::Key(k)) => match t.get_key_value(k) {
                Some((key, item)) => {
                    let span = key.span().or_else(|| item.span()).map(|r| r.start);
                    (Some(Located::from_item(item)), span)
                }
                None => (None, t.span().map(|r| r.start)),
            },
            (Located::Inline(t), PathSeg::Key(k)) => match t.get_key_value(k) {
                Some((key, item)) => (
                    Some(Located::from_item(item)),
                    key.span().or_else(|| item.span()).map(|r| r.start),
                ),
                None => (None, t.span().map(|r| r.start)),
            },
            (Located::Aot(a), PathSeg::Index(i)) => match a.get(*i) {
                Some(t) => (Some(Located::Table(t)), t.span().map(|r| r.start)),
                None => (None, None),
            },
            (Located::Array(a), PathSeg::Index(i)) => match a.get(*i) {
                Some(v) => (Some(Located::from_value(v)), v.span().map(|r| r.start)),
                None => (None, a.span().map(|r| r.start)),
            },
            _ => (None, None),
        }
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map(|i| before[i + 1..].chars().count())
        .unwrap_or(before.chars().count())
        + 1;
    (line, column)
}

const TOP_KEYS: &[&str] = &["pipeline", "api", "inputs", "filters", "outputs", "alerts"];

/// Parses and structurally validates a pipeline file; `lookup` resolves `${VAR}`.
/// Returns every problem found (errors and warnings) alongside the config when there is no error.
pub fn parse(
    source: &Source,
    lookup: env::Lookup,
) -> Result<(PipelineConfig, Vec<LocatedProblem>), ConfigErrors> {
    let (config, located) = parse_partial(source, lookup)?;
    if located.iter().any(|p| p.problem.is_error()) {
        Err(ConfigErrors(located))
    } else {
        Ok((config, located))
    }
}

/// Like [`parse`], but returns the stages that did parse together with every problem, so a
/// caller (`sheepdog check`) can go on validating them. Only a TOML syntax error is `Err`.
pub fn parse_partial(
    source: &Source,
    lookup: env::Lookup,
) -> Result<(PipelineConfig, Vec<LocatedProblem>), ConfigErrors> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut root = toml::Value::Table(parse_toml(source)?);
    substitute_env(&mut root, &mut Vec::new(), lookup, &mut problems);
    let toml::Value::Table(mut table) = root else {
        unreachable!()
    };
    check_sections(&table, &mut problems);

    let mut config = PipelineConfig::default();
    if let Some(v) = table.remove("pipeline") {
        if let Some(s) = deserialize_at(v, &[PathSeg::Key("pipeline".into())], &mut problems) {
            config.pipeline = s;
        }
    }
    if let Some(v) = table.remove("api") {
        if let Some(s) = deserialize_at(v, &[PathSeg::Key("api".into())], &mut problems) {
            config.api = s;
        }
    }
    config.inputs = parse_stages(
        table.remove("inputs"),
        "inputs",
        crate::inputs::TYPES,
        InputConfig::parse,
        &mut problems,
    );
    config.filters = parse_stages(
        table.remove("filters"),
        "filters",
        crate::filters::TYPES,
        FilterConfig::parse,
        &mut problems,
    );
    config.outputs = parse_stages(
        table.remove("outputs"),
        "outputs",
        crate::outputs::TYPES,
        OutputConfig::parse,
        &mut problems,
    );
    config.alerts = table.remove("alerts");
    check_inputs_and_outputs(&config, &mut problems);

    let mut located: Vec<LocatedProblem> = problems.into_iter().map(|p| source.locate(p)).collect();
    located.sort_by_key(|p| (p.line, p.column));
    Ok((config, located))
}

/// Parses the file as TOML; a syntax error is the one problem that stops everything.
fn parse_toml(source: &Source) -> Result<toml::Table, ConfigErrors> {
    toml::from_str(&source.text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let (line, column) = line_col(&source.text, offset);
        ConfigErrors(vec![LocatedProblem {
            file: source.name.clone(),
            line,
            column,
            problem: Problem::at("", format!("not valid TOML: {}", e.message()))
                .hint("check quotes and brackets near this position"),
        }])
    })
}

/// Reports every top-level key that is not a known section.
fn check_sections(table: &toml::Table, problems: &mut Vec<Problem>) {
    for key in table.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            let mut p = Problem::at_path(
                vec![PathSeg::Key(key.clone())],
                format!("unknown section `{key}`"),
            );
            if let Some(s) = did_you_mean(key, TOP_KEYS) {
                p = p.hint(format!("did you mean `{s}`?"));
            } else {
                p = p.hint(format!("sections are {}", TOP_KEYS.join(", ")));
            }
            problems.push(p);
        }
    }
}

/// Reports a pipeline without inputs or without outputs, unless that section already has a
/// problem of its own.
fn check_inputs_and_outputs(config: &PipelineConfig, problems: &mut Vec<Problem>) {
    if config.inputs.is_empty()
        && !problems
            .iter()
            .any(|p| p.path.first() == Some(&PathSeg::Key("inputs".into())))
    {
        problems.push(
            Problem::at("inputs", "the pipeline has no inputs")
                .hint("add an [[inputs]] table with type = \"http\""),
        );
    }
    if config.outputs.is_empty()
        && !problems
            .iter()
            .any(|p| p.path.first() == Some(&PathSeg::Key("outputs".into())))
    {
        problems.push(
            Problem::at("outputs", "the pipeline has no outputs")
                .hint("add an [[outputs]] table with type = \"elasticsearch\""),
        );
    }
}

type StageParser<T> = fn(&str, toml::Value, &[PathSeg], &mut Vec<Problem>) -> Option<T>;

/// Parses one `[[inputs]]`/`[[filters]]`/`[[outputs]]` list: each entry's `type`, `id` and
/// `when`, then the component's own options through `parse`.
fn parse_stages<T>(
    value: Option<toml::Value>,
    section: &str,
    types: &[&str],
    parse: StageParser<T>,
    problems: &mut Vec<Problem>,
) -> Vec<Stage<T>> {
    let Some(value) = value else {
        return Vec::new();
    };
    let toml::Value::Array(items) = value else {
        problems.push(
            Problem::at(section, format!("`{section}` must be a list of tables"))
                .hint(format!("write each one as [[{section}]]")),
        );
        return Vec::new();
    };
    let mut stages = Vec::new();
    let mut seen_ids: Vec<String> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let path = vec![PathSeg::Key(section.into()), PathSeg::Index(index)];
        let toml::Value::Table(mut table) = item else {
            problems.push(
                Problem::at_path(path, "each entry must be a table")
                    .hint(format!("write it as [[{section}]]")),
            );
            continue;
        };
        let Some(kind) = stage_type(&mut table, &path, section, types, problems) else {
            continue;
        };
        let id = stage_id(&mut table, &path, &kind, &mut seen_ids, problems);
        let when = stage_when(&mut table, &path, problems);
        if let Some(config) = parse(&kind, toml::Value::Table(table), &path, problems) {
            stages.push(Stage {
                id,
                when,
                config,
                path,
            });
        }
    }
    stages
}

/// `path` extended by `key`.
fn key_path(path: &[PathSeg], key: &str) -> Vec<PathSeg> {
    let mut p = path.to_vec();
    p.push(PathSeg::Key(key.into()));
    p
}

/// Takes the entry's `type`; `None` (with the problem reported) when it is missing, not a
/// string, or not one of `types`.
fn stage_type(
    table: &mut toml::Table,
    path: &[PathSeg],
    section: &str,
    types: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let kind = match table.remove("type") {
        Some(toml::Value::String(s)) => s,
        Some(_) => {
            problems.push(Problem::at_path(
                key_path(path, "type"),
                "`type` must be a string",
            ));
            return None;
        }
        None => {
            problems.push(
                Problem::at_path(path.to_vec(), "missing `type`")
                    .hint(format!("one of: {}", types.join(", "))),
            );
            return None;
        }
    };
    if !types.contains(&kind.as_str()) {
        let mut p = Problem::at_path(
            key_path(path, "type"),
            format!("unknown {} type `{kind}`", section.trim_end_matches('s')),
        );
        p = match did_you_mean(&kind, types) {
            Some(s) => p.hint(format!("did you mean `{s}`?")),
            None => p.hint(format!("one of: {}", types.join(", "))),
        };
        problems.push(p);
        return None;
    }
    Some(kind)
}

/// Takes the entry's `id`, or names it `<type>` / `<type>_<n>`; reports a duplicate and
/// records the id in `seen_ids`.
fn stage_id(
    table: &mut toml::Table,
    path: &[PathSeg],
    kind: &str,
    seen_ids: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) -> String {
    let id = match table.remove("id") {
        Some(toml::Value::String(s)) => s,
        Some(_) => {
            problems.push(Problem::at_path(
                key_path(path, "id"),
                "`id` must be a string",
            ));
            kind.to_string()
        }
        None => {
            let n = seen_ids
                .iter()
                .filter(|i| i.as_str() == kind || i.starts_with(&format!("{kind}_")))
                .count();
            if n == 0 {
                kind.to_string()
            } else {
                format!("{kind}_{}", n + 1)
            }
        }
    };
    if seen_ids.contains(&id) {
        problems.push(
            Problem::at_path(key_path(path, "id"), format!("duplicate id `{id}`"))
                .hint("give each stage a distinct id"),
        );
    }
    seen_ids.push(id.clone());
    id
}

/// Takes the entry's `when`; a condition that does not compile is reported and dropped.
fn stage_when(
    table: &mut toml::Table,
    path: &[PathSeg],
    problems: &mut Vec<Problem>,
) -> Option<String> {
    match table.remove("when") {
        Some(toml::Value::String(s)) => {
            // Reported here, once: a condition that does not compile is not handed on, so
            // stage validation does not report it a second time.
            match crate::condition::Condition::compile(&s) {
                Ok(_) => Some(s),
                Err(e) => {
                    problems.push(
                        Problem::at_path(
                            key_path(path, "when"),
                            format!("bad condition `{s}`: {e}"),
                        )
                        .hint(
                            "conditions look like: [status] == \"success\" or \"error\" in [tags]",
                        ),
                    );
                    None
                }
            }
        }
        Some(_) => {
            problems.push(Problem::at_path(
                key_path(path, "when"),
                "`when` must be a string holding a condition",
            ));
            None
        }
        None => None,
    }
}

fn substitute_env(
    value: &mut toml::Value,
    path: &mut Vec<PathSeg>,
    lookup: env::Lookup,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(s) => match env::substitute(s, lookup) {
            Ok(out) => *s = out,
            Err(errors) => {
                for e in errors {
                    let p = match e {
                        env::EnvError::Unset(name) => Problem::at_path(
                            path.clone(),
                            format!("environment variable `{name}` is not set"),
                        )
                        .hint(format!(
                            "export {name}=... or give a default: ${{{name}:-value}}"
                        )),
                        env::EnvError::Malformed(text) => Problem::at_path(
                            path.clone(),
                            format!("malformed variable reference `{text}`"),
                        )
                        .hint("write ${NAME} or ${NAME:-default}; $${ for a literal ${"),
                    };
                    problems.push(p);
                }
            }
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(PathSeg::Index(i));
                substitute_env(item, path, lookup, problems);
                path.pop();
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                path.push(PathSeg::Key(k.clone()));
                substitute_env(v, path, lookup, problems);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The process environment, for the daemon.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests;
