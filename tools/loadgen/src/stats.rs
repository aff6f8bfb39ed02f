//! Measurement helpers shared by the sender and the sink: a log-bucket latency histogram, the
//! process CPU/RSS reader behind `procstat`, and the wall clock in unix microseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 64;
/// Buckets per power of two above `LINEAR`: relative error at most 1/32 (about 3%).
const SUB: u64 = 32;
const BUCKETS: usize = (LINEAR + (63 - 6 + 1) * SUB) as usize;

/// Latency histogram in microseconds with HDR-like logarithmic buckets. Fixed size, so recording
/// never allocates.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - u64::from(v.leading_zeros());
    let shift = e - 5;
    let m = v >> shift;
    (LINEAR + (e - 6) * SUB + (m - SUB)) as usize
}

/// Inclusive value range covered by bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, i);
    }
    let k = i - LINEAR;
    let e = k / SUB + 6;
    let m = k % SUB + SUB;
    let shift = e - 5;
    let low = m << shift;
    let high = low.saturating_add((1u64 << shift) - 1);
    (low, high)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Value at quantile `q` (0..=1): the midpoint of the bucket holding that rank, capped at the
    /// exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// CPU time and memory of one process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    pub utime_s: f64,
    pub stime_s: f64,
    pub vm_hwm_kb: u64,
    pub vm_rss_kb: u64,
}

impl ProcStat {
    pub fn cpu_s(&self) -> f64 {
        self.utime_s + self.stime_s
    }

    pub fn to_json(self, pid: &str) -> String {
        format!(
            r#"{{"pid":{},"cpu_s":{:.3},"utime_s":{:.3},"stime_s":{:.3},"vm_hwm_kb":{},"vm_rss_kb":{}}}"#,
            if pid == "self" {
                std::process::id().to_string()
            } else {
                pid.to_string()
            },
            self.cpu_s(),
            self.utime_s,
            self.stime_s,
            self.vm_hwm_kb,
            self.vm_rss_kb
        )
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` times. Asked once from `getconf CLK_TCK`;
/// 100 is the value on every Linux architecture we run on.
pub fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Reads the stats of `pid` ("self" for this process).
pub fn read_proc(pid: &str) -> Result<ProcStat> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    parse_proc(&stat, &status, clk_tck()).with_context(|| format!("parsing {stat_path}"))
}

pub fn parse_proc(stat: &str, status: &str, tck: f64) -> Result<ProcStat> {
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')'
    // start at field 3 (state), so utime (field 14) and stime (field 15) are at 11 and 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        let v: u64 = fields
            .get(i)
            .with_context(|| format!("stat has only {} fields after the name", fields.len()))?
            .parse()
            .with_context(|| format!("stat field {} is not a number", i + 3))?;
        Ok(v as f64 / tck)
    };
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcStat {
        utime_s: ticks(11)?,
        stime_s: ticks(12)?,
        vm_hwm_kb: kb("VmHWM:"),
        vm_rss_kb: kb("VmRSS:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_contiguously() {
        let mut expect_low = 0u64;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_range(i);
            assert_eq!(lo, expect_low, "bucket {i}");
            assert!(hi >= lo);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            if hi == u64::MAX {
                assert_eq!(i, BUCKETS - 1);
                return;
            }
            expect_low = hi + 1;
        }
        panic!("buckets do not reach u64::MAX");
    }

    #[test]
    fn percentiles_of_uniform_values_within_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - want).abs() / want < 0.035,
                "q{q}: got {got}, want {want}"
            );
        }
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn small_values_are_exact_and_empty_is_zero() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in [3, 3, 3, 7] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.99), 7);
    }

    #[test]
    fn proc_stat_parses_name_with_spaces() {
        let stat = "1234 (tokio runtime) worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        let status = "Name:\tx\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        let p = parse_proc(stat, status, 100.0).unwrap();
        assert_eq!(p.utime_s, 2.5);
        assert_eq!(p.stime_s, 0.5);
        assert_eq!(p.cpu_s(), 3.0);
        assert_eq!(p.vm_hwm_kb, 204_800);
        assert_eq!(p.vm_rss_kb, 102_400);
    }

    #[test]
    fn reads_own_process() {
        let p = read_proc("self").unwrap();
        assert!(p.vm_rss_kb > 0);
    }
}
