//! The rendered text against the rules of the Prometheus text format 0.0.4, and the
//! registration rules that keep it valid.

use super::*;
use std::collections::{HashMap, HashSet};

/// A registry with every kind of metric, two families registered interleaved (as two inputs
/// do), and label values that need escaping.
fn sample_registry() -> Arc<Registry> {
    let r = Registry::new();
    let events = "sheepdog_input_events_total";
    r.counter(events, "Events accepted", &[("input", "http")])
        .add(3);
    r.gauge("sheepdog_queue_events", "Events queued", &[])
        .set(7);
    r.counter(events, "Events accepted", &[("input", "beats")])
        .inc();
    r.counter(
        "sheepdog_alert_transitions_total",
        "Transitions",
        &[("rule", "a\\b \"c\"\nd")],
    );
    let h = r.histogram(
        "sheepdog_bulk_seconds",
        "Bulk latency",
        &[("output", "es")],
        &[0.1, 1.0],
    );
    h.observe(0.0625);
    h.observe(0.5);
    h.observe(2.0);
    r.gauge("sheepdog_queue_capacity_events", "Capacity", &[])
        .set(4096);
    r
}

#[test]
fn renders_the_prometheus_text_format() {
    let expected = "\
# HELP sheepdog_alert_transitions_total Transitions
# TYPE sheepdog_alert_transitions_total counter
sheepdog_alert_transitions_total{rule=\"a\\\\b \\\"c\\\"\\nd\"} 0
# HELP sheepdog_bulk_seconds Bulk latency
# TYPE sheepdog_bulk_seconds histogram
sheepdog_bulk_seconds_bucket{output=\"es\",le=\"0.1\"} 1
sheepdog_bulk_seconds_bucket{output=\"es\",le=\"1\"} 2
sheepdog_bulk_seconds_bucket{output=\"es\",le=\"+Inf\"} 3
sheepdog_bulk_seconds_sum{output=\"es\"} 2.5625
sheepdog_bulk_seconds_count{output=\"es\"} 3
# HELP sheepdog_input_events_total Events accepted
# TYPE sheepdog_input_events_total counter
sheepdog_input_events_total{input=\"beats\"} 1
sheepdog_input_events_total{input=\"http\"} 3
# HELP sheepdog_queue_capacity_events Capacity
# TYPE sheepdog_queue_capacity_events gauge
sheepdog_queue_capacity_events 4096
# HELP sheepdog_queue_events Events queued
# TYPE sheepdog_queue_events gauge
sheepdog_queue_events 7
";
    assert_eq!(sample_registry().render(), expected);
}

#[test]
fn rendered_text_keeps_the_exposition_rules() {
    let text = sample_registry().render();
    assert_eq!(check_exposition(&text), Ok(()), "{text}");
}

#[test]
fn the_rule_checker_finds_broken_text() {
    let help = "# HELP a_total A\n";
    let cases = [
        (
            "no trailing newline",
            format!("{help}# TYPE a_total counter\na_total 1"),
        ),
        (
            "one name under two TYPE lines",
            format!("{help}# TYPE a_total counter\na_total 1\n# TYPE a_total gauge\na_total 2\n"),
        ),
        (
            "a family split by another",
            format!(
                "{help}# TYPE a_total counter\na_total{{x=\"1\"}} 1\n\
                 # HELP b B\n# TYPE b gauge\nb 1\na_total{{x=\"2\"}} 1\n"
            ),
        ),
        (
            "a counter without _total",
            "# HELP a A\n# TYPE a counter\na 1\n".into(),
        ),
        (
            "an unknown escape",
            format!("{help}# TYPE a_total counter\na_total{{x=\"\\t\"}} 1\n"),
        ),
        (
            "an unescaped quote",
            format!("{help}# TYPE a_total counter\na_total{{x=\"\"\"}} 1\n"),
        ),
        ("a sample without TYPE", format!("{help}a_total 1\n")),
        (
            "a histogram without +Inf",
            "# HELP h H\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n".into(),
        ),
        (
            "a histogram whose count is not the +Inf bucket",
            "# HELP h H\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n".into(),
        ),
        (
            "decreasing buckets",
            "# HELP h H\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\n\
             h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n"
                .into(),
        ),
    ];
    for (what, text) in cases {
        assert!(check_exposition(&text).is_err(), "{what} passed:\n{text}");
    }
}

#[test]
fn a_name_takes_one_type() {
    let r = Registry::new();
    r.counter("sheepdog_things_total", "Things", &[("input", "a")])
        .inc();
    let refused = r.register("sheepdog_things_total", "Things", &[], Kind::Gauge, || {
        Metric::Gauge(Gauge::default())
    });
    assert_eq!(
        refused.map(|_| ()),
        Err(RegisterError::TypeConflict {
            name: "sheepdog_things_total".into(),
            registered: Kind::Counter,
            requested: Kind::Gauge,
        })
    );
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.histogram("sheepdog_things_total", "Things", &[], LATENCY_BOUNDS)
    }));
    let message = refused.expect_err("a second type was accepted");
    assert_eq!(
        message.downcast_ref::<String>().map(String::as_str),
        Some(
            "metric sheepdog_things_total is already registered as a counter, it cannot also \
             be a histogram: one name has one type"
        )
    );
    // The refused registrations left nothing behind.
    let text = r.render();
    assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
    assert_eq!(check_exposition(&text), Ok(()), "{text}");
}

#[test]
fn names_that_break_the_format_are_refused() {
    let r = Registry::new();
    let counter = |name: &str, labels: &[(&str, &str)]| {
        r.register(name, "h", labels, Kind::Counter, || {
            Metric::Counter(Counter::default())
        })
        .map(|_| ())
    };
    assert_eq!(
        counter("sheepdog_events", &[]),
        Err(RegisterError::CounterSuffix("sheepdog_events".into()))
    );
    assert_eq!(
        counter("sheepdog-events_total", &[]),
        Err(RegisterError::BadName("sheepdog-events_total".into()))
    );
    assert_eq!(
        counter("9_total", &[]),
        Err(RegisterError::BadName("9_total".into()))
    );
    for label in ["a-b", "__name", "1x", ""] {
        assert_eq!(
            counter("x_total", &[(label, "v")]),
            Err(RegisterError::BadLabel {
                name: "x_total".into(),
                label: label.into()
            })
        );
    }
    let le = r.register("h", "h", &[("le", "1")], Kind::Histogram, || {
        Metric::Histogram(Histogram::new(&[1.0]))
    });
    assert!(matches!(le, Err(RegisterError::BadLabel { .. })));
    assert_eq!(r.render(), "");
}

#[test]
fn the_same_name_and_labels_share_one_series() {
    let r = Registry::new();
    let labels = [("input", "http")];
    r.counter("sheepdog_events_in_total", "Events", &labels)
        .add(3);
    r.counter("sheepdog_events_in_total", "Events", &labels)
        .inc();
    r.gauge("sheepdog_queue_depth", "Depth", &[]).add(5);
    r.gauge("sheepdog_queue_depth", "Depth", &[]).sub(2);
    r.histogram("sheepdog_bulk_seconds", "Bulk", &[], &[1.0])
        .observe(0.5);
    assert_eq!(r.value("sheepdog_events_in_total", &labels), Some(4.0));
    assert_eq!(r.value("sheepdog_queue_depth", &[]), Some(3.0));
    assert_eq!(r.value("sheepdog_events_in_total", &[]), None);
    assert_eq!(r.value("sheepdog_bulk_seconds", &[]), None);
    let text = r.render();
    assert!(
        text.contains("\nsheepdog_events_in_total{input=\"http\"} 4\n"),
        "{text}"
    );
}

#[test]
fn float_counters_sum_fractions_and_share_the_counter_type() {
    let r = Registry::new();
    let name = "sheepdog_llm_cost_usd_total";
    let cost = r.float_counter(name, "Cost", &[("model", "gpt-4.1")]);
    cost.add(0.25);
    cost.add(0.000125);
    // Counters only go up: negative and non-finite additions are ignored.
    cost.add(-1.0);
    cost.add(f64::NAN);
    cost.add(f64::INFINITY);
    r.float_counter(name, "Cost", &[("model", "other")]);
    r.counter(name, "Cost", &[("model", "integer")]).add(2);
    assert_eq!(r.value(name, &[("model", "gpt-4.1")]), Some(0.250125));
    let text = r.render();
    assert_eq!(
        text,
        "# HELP sheepdog_llm_cost_usd_total Cost\n\
         # TYPE sheepdog_llm_cost_usd_total counter\n\
         sheepdog_llm_cost_usd_total{model=\"gpt-4.1\"} 0.250125\n\
         sheepdog_llm_cost_usd_total{model=\"integer\"} 2\n\
         sheepdog_llm_cost_usd_total{model=\"other\"} 0.0\n"
    );
    assert_eq!(check_exposition(&text), Ok(()), "{text}");
    let refused =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.gauge(name, "Cost", &[])));
    assert!(refused.is_err());
}

#[test]
fn histogram_buckets_are_inclusive_upper_bounds() {
    let r = Registry::new();
    let h = r.histogram("latency_ms", "Latency", &[], &[50.0, 100.0, 200.0, 500.0]);
    for v in [
        0.0,
        49.9,
        50.0,
        50.1,
        100.0,
        199.0,
        200.0,
        500.0,
        500.5,
        12000.0,
        f64::NAN,
    ] {
        h.observe(v);
    }
    assert_eq!(h.bucket_counts(), vec![3, 2, 2, 1, 3]);
    let text = r.render();
    let buckets: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        buckets[..5],
        [
            "latency_ms_bucket{le=\"50\"} 3",
            "latency_ms_bucket{le=\"100\"} 5",
            "latency_ms_bucket{le=\"200\"} 7",
            "latency_ms_bucket{le=\"500\"} 8",
            "latency_ms_bucket{le=\"+Inf\"} 11",
        ],
        "{text}"
    );
    assert!(text.ends_with("latency_ms_count 11\n"), "{text}");
    assert_eq!(
        check_exposition(&text.replace(" NaN", " 0")),
        Ok(()),
        "{text}"
    );
}

#[test]
fn concurrent_observations_are_all_counted() {
    let r = Registry::new();
    let h = r.histogram("h", "H", &[], &[1.0]);
    let c = r.float_counter("c_total", "C", &[]);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..10_000 {
                    h.observe(f64::from(i % 2) * 2.0);
                    c.add(0.5);
                }
            });
        }
    });
    assert_eq!(h.bucket_counts(), vec![20_000, 20_000]);
    assert_eq!(r.value("c_total", &[]), Some(20_000.0));
    assert!(r.render().contains("\nh_sum 40000.0\n"));
}

#[test]
fn declare_claims_a_name_and_reports_a_type_conflict() {
    let r = Registry::new();
    assert_eq!(
        r.declare("llm_total", "L", &["model"], Kind::Counter),
        Ok(())
    );
    assert_eq!(r.render(), "# HELP llm_total L\n# TYPE llm_total counter\n");
    assert_eq!(
        r.declare("llm_total", "L", &["model"], Kind::Counter),
        Ok(())
    );
    assert_eq!(
        r.declare("llm_total", "L", &[], Kind::Histogram),
        Err(RegisterError::TypeConflict {
            name: "llm_total".into(),
            registered: Kind::Counter,
            requested: Kind::Histogram,
        })
    );
    assert!(matches!(
        r.declare("h", "H", &["le"], Kind::Histogram),
        Err(RegisterError::BadLabel { .. })
    ));
    assert_eq!(
        r.declare("llm", "L", &[], Kind::Counter),
        Err(RegisterError::CounterSuffix("llm".into()))
    );
}

#[test]
fn content_type_is_text_format_0_0_4() {
    assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
}

/// What the checker knows of one family: its TYPE and, for histograms, each series' buckets.
#[derive(Default)]
struct FamilyState {
    help: bool,
    kind: Option<String>,
    samples: bool,
    /// Per series (labels without `le`): the last bucket bound and count, `_count`, `_sum`.
    buckets: HashMap<String, Buckets>,
}

#[derive(Default)]
struct Buckets {
    last: Option<(f64, f64)>,
    count: Option<f64>,
    sum: bool,
}

/// Checks text against the Prometheus text format 0.0.4: a trailing newline, at most one HELP
/// and one TYPE per family before its samples, families contiguous, counters named `_total`,
/// label values with only `\\`, `\"` and `\n` escapes, histograms with cumulative `_bucket{le}`
/// series ending in `+Inf` that equals `_count`, and a `_sum`.
fn check_exposition(text: &str) -> Result<(), String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut checker = Checker::default();
    for line in text.lines() {
        checker.line(line).map_err(|e| format!("{e}: {line:?}"))?;
    }
    checker.close_current()
}

#[derive(Default)]
struct Checker {
    families: HashMap<String, FamilyState>,
    closed: HashSet<String>,
    current: Option<String>,
}

impl Checker {
    /// Checks one line, a descriptor or a sample.
    fn line(&mut self, line: &str) -> Result<(), String> {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let family = self.enter(name)?;
            if std::mem::replace(&mut family.help, true) {
                return Err("a second HELP".into());
            }
            Ok(())
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or("TYPE without a type")?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown type {kind}"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err("a counter not named _total".into());
            }
            let family = self.enter(name)?;
            if family.kind.replace(kind.to_string()).is_some() {
                return Err("a second TYPE".into());
            }
            if family.samples {
                return Err("TYPE after samples".into());
            }
            Ok(())
        } else if line.starts_with('#') || line.is_empty() {
            Ok(())
        } else {
            self.sample(line)
        }
    }

    /// Makes `name` the current family; a family left earlier may not come back.
    fn enter(&mut self, name: &str) -> Result<&mut FamilyState, String> {
        check_name(name, true)?;
        if self.current.as_deref() != Some(name) {
            self.close_current()?;
            if !self.closed.insert(name.to_string()) {
                return Err(format!("family {name} is not contiguous"));
            }
            self.current = Some(name.to_string());
        }
        Ok(self.families.entry(name.to_string()).or_default())
    }

    /// Checks the histograms of the family being left.
    fn close_current(&mut self) -> Result<(), String> {
        let Some(name) = self.current.take() else {
            return Ok(());
        };
        for (series, b) in &self.families[&name].buckets {
            match (b.last, b.count) {
                (Some((le, n)), Some(count)) if le == f64::INFINITY && n == count && b.sum => {}
                _ => {
                    return Err(format!(
                        "histogram {name}{{{series}}} needs +Inf = _count and _sum"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Checks a sample line: its family, its labels, its value.
    fn sample(&mut self, line: &str) -> Result<(), String> {
        let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
        let name = &line[..name_end];
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(inner) => parse_labels(inner)?,
            None => (Vec::new(), &line[name_end..]),
        };
        let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
        let value = value.split(' ').next().unwrap_or_default();
        let value = parse_value(value)?;
        let family = self.family_of(name);
        let state = self.enter(&family)?;
        state.samples = true;
        let kind = state.kind.clone().ok_or("a sample before its TYPE")?;
        if !state.help {
            return Err("a sample without HELP".into());
        }
        match (kind.as_str(), name.strip_prefix(family.as_str())) {
            ("histogram", Some(suffix)) => histogram_sample(state, suffix, &labels, value),
            ("histogram", None) => Err("not a histogram series name".into()),
            (_, Some("")) => Ok(()),
            _ => Err(format!("sample {name} outside family {family}")),
        }
    }

    /// The family a sample name belongs to: a histogram's `_bucket`, `_sum` and `_count` belong
    /// to the histogram.
    fn family_of(&self, name: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                let is_histogram = self.families.get(base).and_then(|f| f.kind.as_deref());
                if is_histogram == Some("histogram") {
                    return base.to_string();
                }
            }
        }
        name.to_string()
    }
}

/// Records one `_bucket`, `_sum` or `_count` sample of a histogram series.
fn histogram_sample(
    state: &mut FamilyState,
    suffix: &str,
    labels: &[(String, String)],
    value: f64,
) -> Result<(), String> {
    let series: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k != "le")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let b = state.buckets.entry(series.join(",")).or_default();
    match suffix {
        "_bucket" => {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .ok_or("a bucket without le")?;
            let le = parse_value(&le.1)?;
            if let Some((last_le, last_n)) = b.last {
                if le <= last_le || value < last_n {
                    return Err("buckets not in increasing le with cumulative counts".into());
                }
            }
            b.last = Some((le, value));
        }
        "_count" => b.count = Some(value),
        "_sum" => b.sum = true,
        _ => return Err(format!("{suffix} is not a histogram series")),
    }
    Ok(())
}

/// Parses `name="value",...}` and returns the labels (values unescaped) and the rest.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = s.split_once("=\"").ok_or("a label without =\"")?;
        check_name(name, false)?;
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label {name} twice"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("an unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("escape \\{other:?} in a label value")),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        s = &rest[end + 1..];
        if let Some(next) = s.strip_prefix(',') {
            s = next;
        } else if !s.starts_with('}') {
            return Err("labels not separated by , or closed by }".into());
        }
    }
}

/// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or label name (no `:`).
fn check_name(name: &str, metric: bool) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':');
    let first = name.chars().next().ok_or("an empty name")?;
    if first.is_ascii_digit() || !name.chars().all(ok) {
        return Err(format!("bad name {name:?}"));
    }
    Ok(())
}

/// A sample value: a float, `+Inf`, `-Inf` or `NaN`.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

#[test]
fn series_lists_every_counter_and_gauge_of_a_name() {
    let r = sample_registry();
    let series = r.series("sheepdog_input_events_total");
    let names: Vec<&str> = series.iter().map(|(l, _)| l[0].1.as_str()).collect();
    assert!(names.contains(&"http"), "{series:?}");
    assert!(series.iter().any(|(l, v)| l[0].1 == "http" && *v == 3.0));
    assert_eq!(r.series("sheepdog_queue_events"), [(vec![], 7.0)]);
    assert!(r.series("no_such_metric").is_empty());
}
