//! re-server's Prometheus metrics: one registry and the metric families the
//! other crates record into, each through a layer around its interface
//! (`re_cas::metered`, `re_action_cache::metered`, the execution crate's
//! scheduler hooks, the binary's gRPC layer). Gauges that describe state
//! (queue length, workers by state, bytes stored) are set when scraped.
//! Names follow Prometheus conventions: the `re_server_` prefix, base units
//! in the name, `_total` on counters. Exposed in the Prometheus text format
//! (0.0.4), which every scraper and `promtool check metrics` read.
pub mod grpc_layer;

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

fn seconds_buckets() -> Vec<f64> {
    // 1 ms to about 9 hours.
    exponential_buckets(0.001, 2.5, 15).expect("valid buckets")
}

fn bytes_buckets() -> Vec<f64> {
    // 1 MiB to 64 GiB.
    exponential_buckets(1048576.0, 2.0, 17).expect("valid buckets")
}

/// Every metric re-server exports.
pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: the gauges it resets and refills are never
    /// read half-filled by another.
    scrape: std::sync::Mutex<()>,
    // Execution.
    pub queue_length: IntGaugeVec,
    pub running_actions: IntGauge,
    pub workers: IntGaugeVec,
    pub actions_started: IntCounter,
    pub actions_finished: IntCounterVec,
    pub actions_retried: IntCounter,
    pub execute_cache_hits: IntCounter,
    pub queue_seconds: Histogram,
    pub run_seconds: Histogram,
    pub action_cpu_seconds: Histogram,
    pub action_peak_memory_bytes: Histogram,
    /// Worker agents' input blobs, by where they came from (cache, fetched).
    pub agent_input_blobs: IntCounterVec,
    pub agent_input_bytes: IntCounterVec,
    // Storage.
    pub cas_stored_bytes: IntGauge,
    pub cas_disk_bytes: IntGauge,
    pub cas_blobs_written: IntCounter,
    pub cas_bytes_written: IntCounter,
    pub cas_reads: IntCounterVec,
    pub cas_evictions: IntGauge,
    pub action_cache_lookups: IntCounterVec,
    // gRPC.
    pub grpc_requests: IntCounterVec,
    pub grpc_received_bytes: IntCounterVec,
    pub grpc_sent_bytes: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("re_server".into()), None).expect("valid prefix");
        fn add<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
            registry.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let counter = |name: &str, help: &str| add(&registry, IntCounter::new(name, help).expect("valid name"));
        let counters = |name: &str, help: &str, labels: &[&str]| {
            add(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid name"))
        };
        let gauge = |name: &str, help: &str| add(&registry, IntGauge::new(name, help).expect("valid name"));
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            add(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid name"))
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            add(&registry, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid name"))
        };
        Self {
            queue_length: gauges("queued_actions", "Actions waiting for a worker, by priority.", &["priority"]),
            running_actions: gauge("running_actions", "Actions being run by a worker."),
            workers: gauges("workers", "Workers by state and type.", &["state", "type"]),
            actions_started: counter("actions_started_total", "Actions a worker started."),
            actions_finished: counters(
                "actions_finished_total",
                "Actions finished, by outcome (succeeded, failed: non-zero exit, timed_out, cancelled, aborted, \
                 lost, error).",
                &["outcome"],
            ),
            actions_retried: counter("actions_retried_total", "Actions run again after their worker was lost."),
            execute_cache_hits: counter("execute_cache_hits_total", "Execute requests answered from the action cache."),
            queue_seconds: histogram("action_queue_seconds", "Time actions waited for a worker.", seconds_buckets()),
            run_seconds: histogram("action_run_seconds", "Time a worker spent on an action.", seconds_buckets()),
            action_cpu_seconds: histogram(
                "action_cpu_seconds",
                "User and system CPU time of an action.",
                seconds_buckets(),
            ),
            action_peak_memory_bytes: histogram(
                "action_peak_memory_bytes",
                "Peak resident memory of an action.",
                bytes_buckets(),
            ),
            agent_input_blobs: counters(
                "agent_input_blobs_total",
                "Input blobs of actions run by worker agents, by source: cache (already on the agent) or \
                 fetched (downloaded from this server).",
                &["source", "worker"],
            ),
            agent_input_bytes: counters(
                "agent_input_bytes_total",
                "Bytes of input blobs of actions run by worker agents, by source (cache, fetched).",
                &["source", "worker"],
            ),
            cas_stored_bytes: gauge("cas_stored_bytes", "Bytes of blobs in the CAS."),
            cas_disk_bytes: gauge(
                "cas_disk_bytes",
                "Bytes the CAS takes: its blobs plus space not reclaimed yet (evicted blobs in packs).",
            ),
            cas_blobs_written: counter("cas_blobs_written_total", "Blobs stored in the CAS."),
            cas_bytes_written: counter("cas_written_bytes_total", "Bytes of blobs stored in the CAS."),
            cas_reads: counters("cas_reads_total", "Blob reads, by result (hit, miss).", &["result"]),
            cas_evictions: gauge("cas_evicted_blobs", "Blobs evicted from the CAS since the start."),
            action_cache_lookups: counters(
                "action_cache_lookups_total",
                "Action-cache lookups, by result (hit, miss).",
                &["result"],
            ),
            grpc_requests: counters(
                "grpc_requests_total",
                "gRPC requests, by method and status code.",
                &["method", "code"],
            ),
            grpc_received_bytes: counters(
                "grpc_received_bytes_total",
                "Request body bytes received, by method (ByteStream Write: upload data).",
                &["method"],
            ),
            grpc_sent_bytes: counters(
                "grpc_sent_bytes_total",
                "Response body bytes sent, by method (ByteStream Read: download data).",
                &["method"],
            ),
            registry,
            scrape: std::sync::Mutex::new(()),
        }
    }

    /// Refreshes the pool's gauges with `refresh`, then encodes, while no
    /// other scrape runs.
    pub fn scrape(&self, refresh: impl FnOnce()) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        refresh();
        self.encode()
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("writing to a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    pub fn finished(&self, outcome: &str) {
        self.actions_finished.with_label_values(&[outcome]).inc();
    }

    pub fn cas_read(&self, hit: bool) {
        self.cas_reads.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
    }

    pub fn action_cache_lookup(&self, hit: bool) {
        self.action_cache_lookups.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
    }

    /// Sets the queue gauges: queued actions by priority (0 when empty).
    pub fn set_queued(&self, by_priority: &BTreeMap<i32, usize>) {
        self.queue_length.reset();
        if by_priority.is_empty() {
            self.queue_length.with_label_values(&["0"]).set(0);
        }
        for (priority, n) in by_priority {
            self.queue_length.with_label_values(&[&priority.to_string()]).set(*n as i64);
        }
    }

    /// Clears the workers gauge before `set_workers` fills it again.
    pub fn clear_workers(&self) {
        self.workers.reset();
    }

    pub fn set_workers(&self, state: &str, kind: &str, n: usize) {
        self.workers.with_label_values(&[state, kind]).set(n as i64);
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_families_encode_as_prometheus_text() {
        let m = Metrics::new();
        m.actions_started.inc();
        m.finished("succeeded");
        m.cas_read(true);
        m.queue_seconds.observe(0.5);
        let text = m.encode();
        assert!(text.contains("# HELP re_server_actions_started_total Actions a worker started."), "{text}");
        assert!(text.contains("re_server_actions_started_total 1"), "{text}");
        assert!(text.contains("re_server_actions_finished_total{outcome=\"succeeded\"} 1"), "{text}");
        assert!(text.contains("re_server_action_queue_seconds_bucket{le=\"0.001\"} 0"), "{text}");
        assert!(text.contains("re_server_cas_reads_total{result=\"hit\"} 1"), "{text}");
    }
}
