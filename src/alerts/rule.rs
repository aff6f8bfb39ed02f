//! One windowed alert rule: its expression (`error_rate > 1%`, `p99(latency_ms) > 100`,
//! `sum(cost_usd) by user_id > 50`), and the sliding-window state per group kept in a fixed ring
//! of time buckets (at most [`BUCKETS`] per window), so observing an event allocates nothing
//! once its group and bucket exist.

use crate::condition::Condition;
use crate::event::{Event, FieldPath};
use serde_json::Value;
use std::collections::HashMap;

/// Most time buckets per window: the window slides in steps of `window / BUCKETS`, at least 1s
/// (so a 5m window moves in 5s steps, a 3s window in 1s steps).
pub const BUCKETS: i64 = 60;

/// What a rule measures over its window.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// Share of events matching the rule's `error_when` (default: tagged `error`).
    ErrorRate,
    Count,
    Sum(FieldPath),
    Avg(FieldPath),
    Min(FieldPath),
    Max(FieldPath),
    /// Quantile in 0..1 of a field, e.g. 0.99 for `p99(...)`.
    Percentile(f64, FieldPath),
}

impl Measure {
    fn field(&self) -> Option<&FieldPath> {
        match self {
            Measure::ErrorRate | Measure::Count => None,
            Measure::Sum(f)
            | Measure::Avg(f)
            | Measure::Min(f)
            | Measure::Max(f)
            | Measure::Percentile(_, f) => Some(f),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
        }
    }
}

/// A parsed rule expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub measure: Measure,
    pub group_by: Option<FieldPath>,
    pub op: Op,
    /// For `error_rate`, a fraction (1% is 0.01).
    pub threshold: f64,
    pub source: String,
}

/// Parses `MEASURE [by FIELD] OP NUMBER[%]`.
pub fn parse_expr(source: &str) -> Result<Expr, String> {
    let s = source.trim();
    let ops = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)];
    let (pos, text, op) = ops
        .iter()
        .filter_map(|(t, op)| s.find(t).map(|p| (p, *t, *op)))
        .min_by_key(|(p, t, _)| (*p, std::cmp::Reverse(t.len())))
        .ok_or_else(|| {
            format!(
                "`{s}` has no comparison; write e.g. `error_rate > 1%` or `p99(latency_ms) > 100`"
            )
        })?;
    let left = s[..pos].trim();
    let right = s[pos + text.len()..].trim();

    let (measure_text, group_by) = match left.split_once(" by ") {
        Some((m, g)) => {
            let g = g.trim();
            let path = FieldPath::parse(g).map_err(|e| format!("bad group field: {e}"))?;
            (m.trim(), Some(path))
        }
        None => (left, None),
    };
    let measure = parse_measure(measure_text)?;

    let (number, percent) = match right.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (right, false),
    };
    let mut threshold: f64 = number
        .parse()
        .map_err(|_| format!("threshold `{right}` is not a number"))?;
    if !threshold.is_finite() {
        return Err(format!("threshold `{right}` is not a finite number"));
    }
    if measure == Measure::ErrorRate {
        if percent {
            threshold /= 100.0;
        } else if threshold > 1.0 {
            return Err(format!(
                "error_rate is a fraction; `{right}` is above 1 (write `{right}%` or a fraction such as 0.01)"
            ));
        }
    } else if percent {
        return Err(format!(
            "`%` only applies to error_rate; write the threshold of `{measure_text}` as a plain number"
        ));
    }
    Ok(Expr {
        measure,
        group_by,
        op,
        threshold,
        source: s.to_string(),
    })
}

fn parse_measure(text: &str) -> Result<Measure, String> {
    let text = text.trim();
    if text == "error_rate" {
        return Ok(Measure::ErrorRate);
    }
    if text == "count" || text == "count()" {
        return Ok(Measure::Count);
    }
    let (name, arg) = text
        .strip_suffix(')')
        .and_then(|t| t.split_once('('))
        .ok_or_else(|| {
            format!(
                "unknown measure `{text}`; use error_rate, count, sum(f), avg(f), min(f), max(f) or pNN(f)"
            )
        })?;
    let field = FieldPath::parse(arg.trim()).map_err(|e| e.to_string())?;
    let name = name.trim();
    Ok(match name {
        "sum" => Measure::Sum(field),
        "avg" => Measure::Avg(field),
        "min" => Measure::Min(field),
        "max" => Measure::Max(field),
        _ => {
            let q = name
                .strip_prefix('p')
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|q| *q > 0.0 && *q < 100.0)
                .ok_or_else(|| {
                    format!("unknown function `{name}`; use sum, avg, min, max or a percentile such as p99 or p99.9")
                })?;
            Measure::Percentile(q / 100.0, field)
        }
    })
}

/// Log-scale histogram bins: 2% wide from 0.01 up to 1e6, so a percentile is within 1%.
const HIST_MIN: f64 = 0.01;
const HIST_BASE: f64 = 1.02;
const HIST_BINS: usize = 932;

fn bin_of(v: f64) -> usize {
    if v.is_nan() || v <= HIST_MIN {
        return 0;
    }
    let i = ((v / HIST_MIN).ln() / HIST_BASE.ln()) as usize + 1;
    i.min(HIST_BINS - 1)
}

fn bin_value(i: usize) -> f64 {
    if i == 0 {
        return 0.0;
    }
    HIST_MIN * HIST_BASE.powf(i as f64 - 0.5)
}

#[derive(Debug, Clone)]
struct Bucket {
    slot: i64,
    count: u64,
    errors: u64,
    values: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Per-bin counts, allocated on first use and kept when the bucket is recycled.
    hist: Vec<u32>,
}

impl Bucket {
    fn empty() -> Self {
        Bucket {
            slot: i64::MIN,
            count: 0,
            errors: 0,
            values: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            hist: Vec::new(),
        }
    }
}

/// One group's sliding window.
#[derive(Debug)]
struct Window {
    buckets: Vec<Bucket>,
    /// Sum of every live bucket's histogram, kept up to date so evaluation is one pass.
    hist: Vec<u32>,
    firing_since: Option<i64>,
}

impl Window {
    fn new(buckets: i64) -> Self {
        Window {
            buckets: vec![Bucket::empty(); buckets as usize],
            hist: Vec::new(),
            firing_since: None,
        }
    }

    fn recycle(hist: &mut [u32], b: &mut Bucket, slot: i64) {
        for (total, n) in hist.iter_mut().zip(b.hist.iter_mut()) {
            *total -= *n;
            *n = 0;
        }
        b.slot = slot;
        b.count = 0;
        b.errors = 0;
        b.values = 0;
        b.sum = 0.0;
        b.min = f64::INFINITY;
        b.max = f64::NEG_INFINITY;
    }

    fn observe(&mut self, slot: i64, error: bool, value: Option<f64>, histogram: bool) {
        let n = self.buckets.len() as i64;
        let b = &mut self.buckets[slot.rem_euclid(n) as usize];
        if b.slot < slot {
            Self::recycle(&mut self.hist, b, slot);
        }
        // A worker holding a slightly older `now` adds to the newer bucket: skew of one step.
        b.count += 1;
        b.errors += error as u64;
        if let Some(v) = value {
            b.values += 1;
            b.sum += v;
            b.min = b.min.min(v);
            b.max = b.max.max(v);
            if histogram {
                if b.hist.is_empty() {
                    b.hist = vec![0; HIST_BINS];
                }
                if self.hist.is_empty() {
                    self.hist = vec![0; HIST_BINS];
                }
                let i = bin_of(v);
                b.hist[i] += 1;
                self.hist[i] += 1;
            }
        }
    }

    /// Events in the window ending at `slot`, and the measured value (None without values).
    fn measure(&mut self, slot: i64, measure: &Measure) -> (u64, Option<f64>) {
        let oldest = slot - self.buckets.len() as i64 + 1;
        let (mut count, mut errors, mut values, mut sum) = (0u64, 0u64, 0u64, 0.0f64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for b in self.buckets.iter_mut() {
            if b.slot < oldest {
                if b.count > 0 {
                    Self::recycle(&mut self.hist, b, i64::MIN);
                }
                continue;
            }
            count += b.count;
            errors += b.errors;
            values += b.values;
            sum += b.sum;
            min = min.min(b.min);
            max = max.max(b.max);
        }
        let value = match measure {
            Measure::ErrorRate => (count > 0).then(|| errors as f64 / count as f64),
            Measure::Count => Some(count as f64),
            Measure::Sum(_) => (values > 0).then_some(sum),
            Measure::Avg(_) => (values > 0).then(|| sum / values as f64),
            Measure::Min(_) => (values > 0).then_some(min),
            Measure::Max(_) => (values > 0).then_some(max),
            Measure::Percentile(q, _) => {
                let total: u64 = self.hist.iter().map(|&n| n as u64).sum();
                (total > 0).then(|| {
                    let rank = ((q * total as f64).ceil() as u64).max(1);
                    let mut seen = 0u64;
                    let mut at = 0;
                    for (i, &n) in self.hist.iter().enumerate() {
                        seen += n as u64;
                        if seen >= rank {
                            at = i;
                            break;
                        }
                    }
                    bin_value(at)
                })
            }
        };
        (count, value)
    }
}

/// A rule starting or ending.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub rule: String,
    pub group: Option<String>,
    pub firing: bool,
    /// The measured value (for error_rate a fraction).
    pub value: Option<f64>,
    pub events: u64,
    pub at_ms: i64,
    /// When the rule started firing (for a resolution: how long it fired).
    pub since_ms: i64,
}

/// A compiled rule with its state.
pub struct Rule {
    pub name: String,
    pub expr: Expr,
    pub window_ms: i64,
    /// Buckets per window and their width: `buckets * bucket_ms` covers the window.
    pub buckets: i64,
    pub bucket_ms: i64,
    pub min_events: u64,
    pub when: Option<Condition>,
    pub error_when: Condition,
    pub max_groups: usize,
    state: std::sync::Mutex<RuleState>,
}

#[derive(Default)]
struct RuleState {
    groups: HashMap<String, Window>,
    /// Events of new groups ignored because `max_groups` were tracked.
    dropped_groups: u64,
}

/// Reads a number from a JSON number or a numeric string.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Rule {
    pub fn new(
        name: String,
        expr: Expr,
        window_ms: i64,
        min_events: u64,
        when: Option<Condition>,
        error_when: Condition,
        max_groups: usize,
    ) -> Self {
        let window_ms = window_ms.max(1000);
        let buckets = ((window_ms + 999) / 1000).clamp(1, BUCKETS);
        let bucket_ms = (window_ms + buckets - 1) / buckets;
        Rule {
            name,
            expr,
            window_ms,
            buckets,
            bucket_ms,
            min_events,
            when,
            error_when,
            max_groups: max_groups.max(1),
            state: std::sync::Mutex::new(RuleState::default()),
        }
    }

    /// Adds a batch of events seen at `now_ms`. One short lock per batch.
    pub fn observe(&self, events: &[&Event], now_ms: i64) {
        let slot = now_ms.div_euclid(self.bucket_ms);
        let field = self.expr.measure.field();
        let histogram = matches!(self.expr.measure, Measure::Percentile(..));
        let rate = self.expr.measure == Measure::ErrorRate;
        // Held for one batch; never across an await.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let RuleState {
            groups,
            dropped_groups,
        } = &mut *state;
        let mut scratch = String::new();
        for event in events {
            if let Some(when) = &self.when {
                if !when.matches(event) {
                    continue;
                }
            }
            let error = rate && self.error_when.matches(event);
            let value = field.and_then(|f| event.get(f)).and_then(number);
            let group: &str = match &self.expr.group_by {
                None => "",
                Some(path) => match event.get(path) {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => "(none)",
                    Some(other) => {
                        scratch.clear();
                        scratch.push_str(&other.to_string());
                        &scratch
                    }
                },
            };
            let window = match groups.get_mut(group) {
                Some(w) => w,
                None => {
                    if groups.len() >= self.max_groups {
                        *dropped_groups += 1;
                        continue;
                    }
                    groups
                        .entry(group.to_string())
                        .or_insert_with(|| Window::new(self.buckets))
                }
            };
            window.observe(slot, error, value, histogram);
        }
    }

    /// Evaluates every group at `now_ms`; returns the groups that started or stopped firing.
    /// Below `min_events` a group keeps its state; an empty window resolves it.
    pub fn evaluate(&self, now_ms: i64) -> Vec<Transition> {
        let slot = now_ms.div_euclid(self.bucket_ms);
        let mut out = Vec::new();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.groups.retain(|group, window| {
            let (events, value) = window.measure(slot, &self.expr.measure);
            let verdict = if events == 0 {
                Some(false)
            } else if events < self.min_events {
                None
            } else {
                value.map(|v| self.expr.op.holds(v, self.expr.threshold))
            };
            let group_label = self.expr.group_by.as_ref().map(|_| group.clone());
            match (window.firing_since, verdict) {
                (None, Some(true)) => {
                    window.firing_since = Some(now_ms);
                    out.push(Transition {
                        rule: self.name.clone(),
                        group: group_label,
                        firing: true,
                        value,
                        events,
                        at_ms: now_ms,
                        since_ms: now_ms,
                    });
                }
                (Some(since), Some(false)) => {
                    window.firing_since = None;
                    out.push(Transition {
                        rule: self.name.clone(),
                        group: group_label,
                        firing: false,
                        value,
                        events,
                        at_ms: now_ms,
                        since_ms: since,
                    });
                }
                _ => {}
            }
            events > 0 || window.firing_since.is_some()
        });
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }

    /// Groups currently firing.
    pub fn firing(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .groups
            .values()
            .filter(|w| w.firing_since.is_some())
            .count()
    }

    /// How many groups fire, and the first `limit` of them by name with when each started
    /// firing (ms); the group of a rule without `by` is "".
    pub fn firing_groups(&self, limit: usize) -> (usize, Vec<(String, i64)>) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut firing: Vec<(String, i64)> = state
            .groups
            .iter()
            .filter_map(|(g, w)| Some((g.clone(), w.firing_since?)))
            .collect();
        firing.sort();
        let n = firing.len();
        firing.truncate(limit);
        (n, firing)
    }

    /// Events ignored because too many groups were tracked (and resets the count).
    pub fn take_dropped_groups(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut state.dropped_groups)
    }
}

/// Formats a measured value or threshold the way the rule is written.
pub fn format_value(measure: &Measure, v: f64) -> String {
    match measure {
        Measure::ErrorRate => format!("{}%", trim(v * 100.0)),
        _ => trim(v),
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests;
