//! `[alerts]`: windowed rules over every event after the filters (error rate, percentiles,
//! sums per group), which Logstash lacks. Rules are fed like an output without `when` and
//! evaluated by their own task; a rule mails once when it starts firing and once when it
//! resolves, through the SMTP settings and recipients of a named `email` output.

pub mod rule;

use crate::clock::{self, Clock};
use crate::condition::Condition;
use crate::config::de;
use crate::config::problem::{did_you_mean, PathSeg, Problem};
use crate::event::{format_timestamp_ms, Event};
use crate::outputs::email::{self, Mail, MailHandle};
use crate::outputs::{BoxFuture, Output, Started};
use crate::BuildContext;
use rule::{format_value, parse_expr, Rule, Transition};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the rules read from the pipeline file.
pub struct Input<'a> {
    /// The `[alerts]` table as written.
    pub table: &'a toml::Value,
    /// The pipeline's `email` outputs by id, which `mail` may name.
    pub email_outputs: Vec<(&'a str, &'a email::Config)>,
}

/// The `[alerts]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Id of the `email` output whose server, sender and recipients rule mails use. Empty: rule
    /// transitions are only logged and shown in `/metrics`.
    #[serde(default)]
    pub mail: String,
    /// How often rules are evaluated. Default 1s.
    #[serde(default = "default_every", deserialize_with = "de::duration")]
    pub evaluate_every: Duration,
    /// Put before every rule mail's subject. Default `[sheepdog alert]`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_every() -> Duration {
    Duration::from_secs(1)
}

fn default_prefix() -> String {
    "[sheepdog alert]".into()
}

/// One `[[alerts.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name used in mails, logs and metrics.
    pub name: String,
    /// `MEASURE [by FIELD] OP THRESHOLD`: `error_rate > 1%`, `p99(latency_ms) > 100`,
    /// `sum(cost_usd) by user_id > 50`; measures are error_rate, count, sum, avg, min, max, pNN.
    pub expr: String,
    /// The sliding window, e.g. "5m" or "1d".
    #[serde(deserialize_with = "de::duration")]
    pub window: Duration,
    /// The rule only fires with at least this many events in the window. Default 1.
    #[serde(default = "one", deserialize_with = "de::from_str_or_value")]
    pub min_events: u64,
    /// Only events matching this condition count.
    #[serde(default)]
    pub when: Option<String>,
    /// For error_rate: what counts as an error. Default `"error" in [tags]`.
    #[serde(default)]
    pub error_when: Option<String>,
    /// Groups tracked at once with `by`; events of further groups are ignored and counted.
    /// Default 10000.
    #[serde(default = "default_groups", deserialize_with = "de::from_str_or_value")]
    pub max_groups: usize,
}

fn one() -> u64 {
    1
}

fn default_groups() -> usize {
    10_000
}

const DEFAULT_ERROR_WHEN: &str = "\"error\" in [tags]";

fn at(path: &[PathSeg], key: &str) -> Vec<PathSeg> {
    let mut p = path.to_vec();
    p.push(PathSeg::Key(key.into()));
    p
}

fn compile_condition(
    source: &str,
    path: Vec<PathSeg>,
    problems: &mut Vec<Problem>,
) -> Option<Condition> {
    match Condition::compile(source) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(
                Problem::at_path(path, format!("bad condition `{source}`: {e}"))
                    .hint("conditions look like: [status] == \"error\" or \"error\" in [tags]"),
            );
            None
        }
    }
}

/// The validated `[alerts]`.
struct Compiled {
    config: Config,
    rules: Vec<Rule>,
}

fn compile(input: &Input) -> Result<(Compiled, Vec<Problem>), Vec<Problem>> {
    let root = vec![PathSeg::Key("alerts".into())];
    let mut problems = Vec::new();
    let Some(config) = de::deserialize_at::<Config>(input.table.clone(), &root, &mut problems)
    else {
        return Err(problems);
    };
    check_mail(&config.mail, input, &root, &mut problems);
    if config.evaluate_every.is_zero() {
        problems.push(
            Problem::at_path(at(&root, "evaluate_every"), "must be longer than 0")
                .hint("e.g. \"1s\""),
        );
    }
    let mut rules = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, r) in config.rules.iter().enumerate() {
        let mut path = at(&root, "rules");
        path.push(PathSeg::Index(i));
        check_rule_name(&r.name, &names, &path, &mut problems);
        names.push(&r.name);
        rules.extend(compile_rule(r, &path, &mut problems));
    }
    if problems.iter().any(Problem::is_error) {
        return Err(problems);
    }
    Ok((Compiled { config, rules }, problems))
}

/// Reports a `mail` that names no email output of the pipeline.
fn check_mail(mail: &str, input: &Input, root: &[PathSeg], problems: &mut Vec<Problem>) {
    if mail.is_empty() {
        return;
    }
    let email_ids: Vec<&str> = input.email_outputs.iter().map(|(id, _)| *id).collect();
    if !email_ids.contains(&mail) {
        let mut p = Problem::at_path(
            at(root, "mail"),
            format!("there is no email output with id `{mail}`"),
        );
        p = match did_you_mean(mail, &email_ids) {
            Some(s) => p.hint(format!("did you mean `{s}`?")),
            None if email_ids.is_empty() => {
                p.hint("add an [[outputs]] table with type = \"email\" and an id, or remove `mail`")
            }
            None => p.hint(format!("email outputs: {}", email_ids.join(", "))),
        };
        problems.push(p);
    }
}

/// Reports a rule name that is empty or used by an earlier rule (`names`).
fn check_rule_name(name: &str, names: &[&str], path: &[PathSeg], problems: &mut Vec<Problem>) {
    if name.trim().is_empty() {
        problems.push(
            Problem::at_path(at(path, "name"), "a rule needs a name")
                .hint("e.g. name = \"error_rate\""),
        );
    } else if names.contains(&name) {
        problems.push(
            Problem::at_path(at(path, "name"), format!("duplicate rule name `{name}`"))
                .hint("give each rule a distinct name"),
        );
    }
}

/// Compiles one rule at `path`; `None` when its expression or a condition does not compile.
fn compile_rule(r: &RuleConfig, path: &[PathSeg], problems: &mut Vec<Problem>) -> Option<Rule> {
    let expr = match parse_expr(&r.expr) {
        Ok(e) => Some(e),
        Err(msg) => {
            problems.push(Problem::at_path(at(path, "expr"), msg).hint(
                "write MEASURE [by FIELD] OP THRESHOLD, e.g. `error_rate > 1%`, `p99(latency_ms) > 100`, `sum(cost_usd) by user_id > 50`",
            ));
            None
        }
    };
    if r.window < Duration::from_secs(1) {
        problems.push(
            Problem::at_path(at(path, "window"), "the window must be at least 1s")
                .hint("e.g. \"5m\""),
        );
    }
    let when = r
        .when
        .as_ref()
        .map(|w| compile_condition(w, at(path, "when"), problems));
    let error_when = compile_condition(
        r.error_when.as_deref().unwrap_or(DEFAULT_ERROR_WHEN),
        at(path, "error_when"),
        problems,
    );
    if r.error_when.is_some()
        && expr
            .as_ref()
            .is_some_and(|e| e.measure != rule::Measure::ErrorRate)
    {
        problems.push(
            Problem::at_path(
                at(path, "error_when"),
                "error_when only applies to error_rate rules",
            )
            .hint("remove it, or use `when` to filter the events this rule counts")
            .warning(),
        );
    }
    let when_ok = !matches!(when, Some(None));
    let (Some(expr), Some(error_when), true) = (expr, error_when, when_ok) else {
        return None;
    };
    Some(Rule::new(
        r.name.clone(),
        expr,
        r.window.as_millis() as i64,
        r.min_events,
        when.flatten(),
        error_when,
        r.max_groups,
    ))
}

/// Every problem in `[alerts]`, located under `alerts`.
pub fn validate(input: &Input) -> Vec<Problem> {
    match compile(input) {
        Ok((_, warnings)) => warnings,
        Err(problems) => problems,
    }
}

/// The compiled rules; tests drive them with their own clock.
pub struct Engine {
    pub rules: Vec<Rule>,
}

impl Engine {
    pub fn observe(&self, events: &[&Event], now_ms: i64) {
        for rule in &self.rules {
            rule.observe(events, now_ms);
        }
    }

    pub fn evaluate(&self, now_ms: i64) -> Vec<(usize, Transition)> {
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            out.extend(rule.evaluate(now_ms).into_iter().map(|t| (i, t)));
        }
        out
    }
}

/// A read-only view of the rules' state, for the status page.
#[derive(Clone)]
pub struct States(Arc<Engine>);

/// One rule as the status page shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleState {
    pub name: String,
    pub expr: String,
    pub window: String,
    /// "firing" when any group fires, else "ok".
    pub state: &'static str,
    /// Groups firing (for a rule without `by`: 0 or 1).
    pub firing: usize,
    /// Up to [`States::GROUPS`] firing groups (rules with `by`), by name.
    pub groups: Vec<String>,
    /// When the earliest listed group started firing (ms since the epoch).
    pub since_ms: Option<i64>,
}

impl States {
    /// Firing groups listed per rule.
    pub const GROUPS: usize = 10;

    pub fn new(engine: Arc<Engine>) -> Self {
        States(engine)
    }

    /// Every rule's state, in the order of the file.
    pub fn snapshot(&self) -> Vec<RuleState> {
        self.0
            .rules
            .iter()
            .map(|rule| {
                let (firing, groups) = rule.firing_groups(Self::GROUPS);
                RuleState {
                    name: rule.name.clone(),
                    expr: rule.expr.source.clone(),
                    window: humantime(rule.window_ms),
                    state: if firing > 0 { "firing" } else { "ok" },
                    firing,
                    since_ms: groups.iter().map(|(_, since)| *since).min(),
                    groups: match rule.expr.group_by {
                        Some(_) => groups.into_iter().map(|(g, _)| g).collect(),
                        None => Vec::new(),
                    },
                }
            })
            .collect()
    }
}

/// Compiles `[alerts]` (for tests and tools).
pub fn engine(input: &Input) -> Result<Engine, Vec<Problem>> {
    Ok(Engine {
        rules: compile(input)?.0.rules,
    })
}

/// Starts the rules when `[alerts]` has any: a sink for the workers and the evaluation task,
/// and a view of their state.
pub fn start(input: &Input, ctx: &BuildContext) -> anyhow::Result<Option<(Started, States)>> {
    start_with_clock(input, ctx, clock::system())
}

pub fn start_with_clock(
    input: &Input,
    ctx: &BuildContext,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Option<(Started, States)>> {
    let (Compiled { config, rules }, _) = compile(input).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::anyhow!("invalid [alerts]: {}", text.join("; "))
    })?;
    if rules.is_empty() {
        return Ok(None);
    }
    let mail = start_mail(input, &config, ctx, clock.clone())?;
    let (queue, mail_task) = match mail {
        Some((q, t)) => (Some(q), Some(t)),
        None => (None, None),
    };
    let engine = Arc::new(Engine { rules });
    let closed = CancellationToken::new();
    let eval = Evaluator {
        engine: engine.clone(),
        clock: clock.clone(),
        queue,
        prefix: config.subject_prefix.clone(),
        firing: engine
            .rules
            .iter()
            .map(|r| {
                ctx.metrics.gauge(
                    "sheepdog_alert_firing",
                    "Groups of an alert rule currently firing",
                    &[("rule", r.name.as_str())],
                )
            })
            .collect(),
        transitions: engine
            .rules
            .iter()
            .map(|r| {
                ctx.metrics.counter(
                    "sheepdog_alert_transitions_total",
                    "Times an alert rule started firing or resolved",
                    &[("rule", r.name.as_str())],
                )
            })
            .collect(),
        dropped_groups: engine
            .rules
            .iter()
            .map(|r| {
                ctx.metrics.counter(
                    "sheepdog_alert_dropped_group_events_total",
                    "Events of new groups ignored because max_groups groups were tracked",
                    &[("rule", r.name.as_str())],
                )
            })
            .collect(),
    };
    tracing::info!(rules = engine.rules.len(), mail = %config.mail, "alert rules on");
    let every = config.evaluate_every;
    let eval_closed = closed.clone();
    let task = tokio::spawn(async move {
        eval.run(every, eval_closed).await;
        if let Some(t) = mail_task {
            let _ = t.await;
        }
    });
    let states = States::new(engine.clone());
    let started = Started {
        output: Box::new(AlertSink {
            engine,
            clock,
            closed,
        }),
        task,
    };
    Ok(Some((started, states)))
}

fn start_mail(
    input: &Input,
    config: &Config,
    ctx: &BuildContext,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Option<(MailHandle, tokio::task::JoinHandle<()>)>> {
    if config.mail.is_empty() {
        tracing::info!("alert rules have no `mail` output: transitions are logged only");
        return Ok(None);
    }
    let email = input
        .email_outputs
        .iter()
        .find_map(|(id, c)| (*id == config.mail).then_some(*c));
    let Some(email) = email else {
        anyhow::bail!("alerts.mail: no email output `{}`", config.mail);
    };
    let settings = email.mail_settings().map_err(|problems| {
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::anyhow!("alerts.mail `{}`: {}", config.mail, text.join("; "))
    })?;
    let Some(settings) = settings else {
        tracing::warn!("alert rule mail off: the `{}` output has no recipients (ALERT_TO is empty); transitions are logged only", config.mail);
        return Ok(None);
    };
    let health = ctx.health.register("alerts mail");
    Ok(Some(settings.start("alerts", health, ctx, clock)?))
}

/// Feeds every event after the filters to the rules.
struct AlertSink {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    closed: CancellationToken,
}

impl Drop for AlertSink {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl Output for AlertSink {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        self.engine.observe(events, self.clock.now_ms());
        Box::pin(async {})
    }
}

struct Evaluator {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    queue: Option<MailHandle>,
    prefix: String,
    firing: Vec<crate::metrics::Gauge>,
    transitions: Vec<crate::metrics::Counter>,
    dropped_groups: Vec<crate::metrics::Counter>,
}

impl Evaluator {
    async fn run(self, every: Duration, closed: CancellationToken) {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => self.evaluate(),
                _ = closed.cancelled() => return,
            }
        }
    }

    fn evaluate(&self) {
        let now = self.clock.now_ms();
        for (i, t) in self.engine.evaluate(now) {
            let rule = &self.engine.rules[i];
            self.transitions[i].inc();
            let value = t
                .value
                .map(|v| format_value(&rule.expr.measure, v))
                .unwrap_or_else(|| "no data".into());
            if t.firing {
                tracing::warn!(rule = %rule.name, group = ?t.group, value = %value, expr = %rule.expr.source, events = t.events, "alert firing");
            } else {
                tracing::info!(rule = %rule.name, group = ?t.group, value = %value, expr = %rule.expr.source, events = t.events, "alert resolved");
            }
            if let Some(q) = &self.queue {
                q.offer(rule_mail(rule, &t, &self.prefix));
            }
        }
        for (i, rule) in self.engine.rules.iter().enumerate() {
            self.firing[i].set(rule.firing() as i64);
            let dropped = rule.take_dropped_groups();
            if dropped > 0 {
                self.dropped_groups[i].add(dropped);
            }
        }
    }
}

fn humantime(ms: i64) -> String {
    let s = ms / 1000;
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The mail for a rule that started firing or resolved.
pub fn rule_mail(rule: &Rule, t: &Transition, prefix: &str) -> Mail {
    let m = &rule.expr.measure;
    let value = t
        .value
        .map(|v| format_value(m, v))
        .unwrap_or_else(|| "no data".into());
    let threshold = format_value(m, rule.expr.threshold);
    let state = if t.firing { "FIRING" } else { "RESOLVED" };
    let who = match &t.group {
        Some(g) => format!("{} [{}]", rule.name, g),
        None => rule.name.clone(),
    };
    let window = humantime(rule.window_ms);
    let subject = format!(
        "{prefix} {state} {who}: {value} (threshold {}{threshold}, {window} window)",
        match rule.expr.op {
            rule::Op::Gt => "> ",
            rule::Op::Ge => ">= ",
            rule::Op::Lt => "< ",
            rule::Op::Le => "<= ",
        }
    );
    let mut text = String::new();
    let _ = writeln!(text, "Rule:       {}", rule.name);
    let _ = writeln!(text, "State:      {state}");
    if let Some(g) = &t.group {
        let _ = writeln!(text, "Group:      {g}");
    }
    let _ = writeln!(text, "Expression: {}", rule.expr.source);
    let _ = writeln!(text, "Measured:   {value} over the last {window}");
    let _ = writeln!(text, "Threshold:  {threshold}");
    let _ = writeln!(
        text,
        "Events:     {} in the window (minimum {})",
        t.events, rule.min_events
    );
    if let Some(w) = &rule.when {
        let _ = writeln!(text, "Counting:   events where {}", w.source());
    }
    let _ = writeln!(text, "At:         {}", format_timestamp_ms(t.at_ms));
    if !t.firing {
        let _ = writeln!(
            text,
            "Fired:      from {} for {}",
            format_timestamp_ms(t.since_ms),
            humantime(((t.at_ms - t.since_ms) / 1000) * 1000)
        );
    }
    Mail {
        subject,
        text,
        html: None,
        events: t.events,
    }
}

#[cfg(test)]
mod tests;
