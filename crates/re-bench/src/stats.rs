//! Run bounds, progress, latency histograms and the result tables.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Stops a run after `count` operations or `duration`, whichever comes first.
pub struct Bound {
    count: Option<u64>,
    deadline: Option<Instant>,
    issued: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    start: Instant,
    bar: ProgressBar,
    unit: &'static str,
}

impl Bound {
    pub fn new(count: Option<u64>, duration: Option<Duration>, unit: &'static str, progress: bool) -> Arc<Self> {
        let start = Instant::now();
        let bar = if !progress {
            ProgressBar::hidden()
        } else if let Some(n) = count {
            ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr())
        } else {
            let ms = duration.map(|d| d.as_millis() as u64).unwrap_or(0);
            ProgressBar::with_draw_target(Some(ms), ProgressDrawTarget::stderr())
        };
        let template = if count.is_some() {
            "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}"
        } else {
            "{elapsed_precise} [{bar:40}] {msg}"
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
        let b = Arc::new(Self {
            count,
            deadline: duration.map(|d| start + d),
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            start,
            bar,
            unit,
        });
        // Redraw a few times a second: position (by time when there is no
        // count) and the running rate.
        let weak = Arc::downgrade(&b);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Some(b) = weak.upgrade() else { return };
                if b.bar.is_finished() {
                    return;
                }
                let done = b.done.load(Ordering::Relaxed);
                let secs = b.start.elapsed().as_secs_f64().max(1e-9);
                if b.count.is_none() {
                    b.bar.set_position(b.start.elapsed().as_millis() as u64);
                }
                b.bar.set_message(format!("{done} {} ({:.1}/s)", b.unit, done as f64 / secs));
            }
        });
        b
    }

    /// The index of the next operation to run, or None once the bound is hit.
    pub fn next(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.count {
            Some(n) if i >= n => None,
            _ => Some(i),
        }
    }

    /// Marks one operation finished.
    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if self.count.is_some() {
            self.bar.inc(1);
        }
    }

    /// Makes every worker stop (after an error).
    pub fn abort(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn completed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A spinner for untimed set-up phases.
pub fn spinner(progress: bool, msg: impl Into<String>) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"));
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(150));
    pb
}

/// Latency histograms per RPC (or per phase), in nanoseconds.
#[derive(Default)]
pub struct Recorder {
    hist: BTreeMap<&'static str, Histogram<u64>>,
}

impl Recorder {
    pub fn record(&mut self, name: &'static str, d: Duration) {
        let h = self
            .hist
            .entry(name)
            .or_insert_with(|| Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).expect("histogram bounds"));
        h.saturating_record(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Times `f` and records it under `name`.
    pub async fn time<T, F: std::future::Future<Output = T>>(&mut self, name: &'static str, f: F) -> T {
        let t = Instant::now();
        let out = f.await;
        self.record(name, t.elapsed());
        out
    }

    pub fn merge(&mut self, other: Recorder) {
        for (k, h) in other.hist {
            match self.hist.get_mut(k) {
                Some(mine) => mine.add(&h).expect("same bounds"),
                None => {
                    self.hist.insert(k, h);
                }
            }
        }
    }

    pub fn summary(&self) -> Vec<Latency> {
        self.hist
            .iter()
            .map(|(name, h)| Latency {
                name: name.to_string(),
                count: h.len(),
                mean_ms: h.mean() / 1e6,
                p50_ms: h.value_at_quantile(0.5) as f64 / 1e6,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1e6,
                p999_ms: h.value_at_quantile(0.999) as f64 / 1e6,
                max_ms: h.max() as f64 / 1e6,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub name: String,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Writes `[(name, value)]` as a JSON object, keeping the order.
fn as_map<S: serde::Serializer, V: Serialize>(pairs: &[(String, V)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        m.serialize_entry(k, v)?;
    }
    m.end()
}

/// What one run of a scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Top-level operations finished (uploads, calls, batches, actions).
    pub ops: u64,
    pub elapsed_s: f64,
    /// Named rates, the headline first ("MB/s", "calls/s", "blobs/s", ...).
    #[serde(serialize_with = "as_map")]
    pub rates: Vec<(String, f64)>,
    /// Named counters (bytes, hits, misses, ...).
    #[serde(serialize_with = "as_map")]
    pub counters: Vec<(String, u64)>,
    pub latency: Vec<Latency>,
}

impl RunResult {
    pub fn new(ops: u64, elapsed: Duration, latency: Vec<Latency>) -> Self {
        Self { ops, elapsed_s: elapsed.as_secs_f64(), rates: Vec::new(), counters: Vec::new(), latency }
    }

    pub fn rate(mut self, name: &str, value: f64) -> Self {
        self.rates.push((name.into(), value));
        self
    }

    pub fn counter(mut self, name: &str, value: u64) -> Self {
        self.counters.push((name.into(), value));
        self
    }
}

/// Median over runs of each rate and each latency figure.
#[derive(Debug, Clone, Serialize)]
pub struct Median {
    #[serde(serialize_with = "as_map")]
    pub rates: Vec<(String, f64)>,
    pub latency: Vec<Latency>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median_of(runs: &[RunResult]) -> Median {
    let first = &runs[0];
    let rates = first
        .rates
        .iter()
        .map(|(name, _)| {
            let vals = runs.iter().filter_map(|r| r.rates.iter().find(|(n, _)| n == name).map(|(_, v)| *v));
            (name.clone(), median(vals.collect()))
        })
        .collect();
    let latency = first
        .latency
        .iter()
        .map(|l| {
            let rows: Vec<&Latency> = runs.iter().filter_map(|r| r.latency.iter().find(|x| x.name == l.name)).collect();
            let m = |f: fn(&Latency) -> f64| median(rows.iter().map(|x| f(x)).collect());
            Latency {
                name: l.name.clone(),
                count: rows.iter().map(|x| x.count).sum::<u64>() / rows.len().max(1) as u64,
                mean_ms: m(|x| x.mean_ms),
                p50_ms: m(|x| x.p50_ms),
                p99_ms: m(|x| x.p99_ms),
                p999_ms: m(|x| x.p999_ms),
                max_ms: m(|x| x.max_ms),
            }
        })
        .collect();
    Median { rates, latency }
}

/// The whole report of one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub endpoint: String,
    pub instance: String,
    pub params: BTreeMap<String, String>,
    pub runs: Vec<RunResult>,
    pub median: Median,
}

impl Report {
    /// The human-readable summary table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "scenario {}  endpoint {}  instance '{}'", self.scenario, self.endpoint, self.instance);
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "params   {}", params.join(" "));
        let _ = writeln!(s);
        let first = &self.runs[0];
        let mut header = format!("{:<8}{:>10}{:>11}", "run", "ops", "elapsed_s");
        for (name, _) in &first.rates {
            let _ = write!(header, "{:>14}", name);
        }
        for (name, _) in &first.counters {
            let _ = write!(header, "{:>14}", name);
        }
        let _ = writeln!(s, "{header}");
        for (i, r) in self.runs.iter().enumerate() {
            let mut line = format!("{:<8}{:>10}{:>11.2}", i + 1, r.ops, r.elapsed_s);
            for (_, v) in &r.rates {
                let _ = write!(line, "{:>14.1}", v);
            }
            for (_, v) in &r.counters {
                let _ = write!(line, "{:>14}", v);
            }
            let _ = writeln!(s, "{line}");
        }
        if self.runs.len() > 1 {
            let mut line = format!("{:<8}{:>10}{:>11}", "median", "", "");
            for (_, v) in &self.median.rates {
                let _ = write!(line, "{:>14.1}", v);
            }
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s);
        let title = if self.runs.len() > 1 { "latency, ms (median of runs)" } else { "latency, ms" };
        let _ = writeln!(
            s,
            "{:<28}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            title, "count", "mean", "p50", "p99", "p999", "max"
        );
        for l in &self.median.latency {
            let _ = writeln!(
                s,
                "{:<28}{:>10}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}",
                l.name, l.count, l.mean_ms, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn recorder_merges_and_summarises() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for ms in 1..=100 {
            a.record("x", Duration::from_millis(ms));
        }
        b.record("x", Duration::from_millis(1000));
        b.record("y", Duration::from_micros(10));
        a.merge(b);
        let s = a.summary();
        assert_eq!(s.len(), 2);
        let x = &s[0];
        assert_eq!(x.count, 101);
        assert!((x.p50_ms - 51.0).abs() < 0.5, "{}", x.p50_ms);
        assert!(x.max_ms >= 999.0);
    }

    #[tokio::test]
    async fn bound_by_count() {
        let b = Bound::new(Some(3), None, "ops", false);
        let mut n = 0;
        while b.next().is_some() {
            n += 1;
            b.done();
        }
        assert_eq!(n, 3);
        assert_eq!(b.completed(), 3);
    }
}
