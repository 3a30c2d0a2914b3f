//! re-bench: a load generator for any REAPI v2 endpoint.
//!
//! `re-bench --endpoint grpc://HOST:PORT --instance NAME SCENARIO [--duration S] [--count N]`
//! runs one scenario (see `--help`), shows a progress bar on stderr and prints
//! a summary table (or `--json`) on stdout.
mod conn;
mod data;
mod raw_bytestream;
mod scenarios;
mod stats;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use crate::conn::{Clients, ConnOpts};
use crate::stats::{median_of, Bound, Report, RunResult};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// ByteStream.Write of one large blob (new content each time); MB/s.
    CasUpload,
    /// ByteStream.Read of one large blob; MB/s.
    CasDownload,
    /// FindMissingBlobs from concurrent clients, half of the digests present; calls/s, latency.
    FindMissing,
    /// BatchUpdateBlobs of small blobs from concurrent clients; blobs/s.
    BatchUpdate,
    /// Execute unique no-op actions (cache misses); actions/s, end-to-end latency.
    ExecNoop,
    /// Execute the same actions again (cache hits through Execute); actions/s, latency.
    ExecCached,
    /// A Bazel-shaped mix: GetActionResult, FindMissingBlobs, uploads, Execute or UpdateActionResult.
    BazelLike,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "re-bench",
    version,
    about = "Load generator for any REAPI v2 endpoint (remote cache / remote execution)",
    after_help = "Each run stops after --count operations or --duration seconds, whichever comes first \
                  (default: 10 seconds). An operation is one transfer (cas-*), one call (find-missing), \
                  one batch (batch-update) or one action (exec-*, bazel-like)."
)]
struct Cli {
    /// The scenario to run (or --scenario).
    #[arg(value_enum)]
    scenario: Option<Scenario>,
    /// The scenario to run (same as the positional argument).
    #[arg(long = "scenario", value_enum, conflicts_with = "scenario")]
    scenario_opt: Option<Scenario>,

    #[command(flatten)]
    conn: ConnOpts,

    /// Stop each run after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop each run after this many operations.
    #[arg(long)]
    count: Option<u64>,
    /// Run the scenario this many times (set-up is shared) and report the median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress bar on stderr.
    #[arg(long)]
    no_progress: bool,

    #[command(flatten)]
    opts: Opts,
}

/// Knobs of the scenarios (each uses the ones that apply to it).
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// cas-*: size of the large blob (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// cas-*, bazel-like: ByteStream.Write chunk size.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub chunk: u64,
    /// cas-download: hash what was read and compare with the digest (costs client CPU).
    #[arg(long)]
    pub verify: bool,
    /// find-missing, batch-update: concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// find-missing: digests per call (half of them present).
    #[arg(long, default_value_t = 1000)]
    pub digests: usize,
    /// batch-update: size of each blob.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    pub blob_size: u64,
    /// batch-update: blobs per BatchUpdateBlobs call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// exec-*, bazel-like: actions in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// exec-*, bazel-like: the command to run, split on whitespace.
    #[arg(long, default_value = "/bin/true")]
    pub command: String,
    /// exec-*, bazel-like: platform property KEY=VALUE for each action (repeatable).
    #[arg(long)]
    pub platform: Vec<String>,
    /// exec-noop: input files every action gets (one input root shared by all
    /// actions, uploaded before timing); 0 = an empty input root.
    #[arg(long, default_value_t = 0)]
    pub input_files: usize,
    /// exec-noop: size of each of those input files.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub input_size: u64,
    /// exec-noop: set skip_cache_lookup on ExecuteRequest.
    #[arg(long)]
    pub skip_cache_lookup: bool,
    /// exec-cached, bazel-like: distinct cached actions prepared before timing.
    #[arg(long, default_value_t = 200)]
    pub distinct: usize,
    /// bazel-like: fraction of actions that are action-cache hits.
    #[arg(long, default_value_t = 0.5)]
    pub hit_rate: f64,
    /// bazel-like: input files per action.
    #[arg(long, default_value_t = 20)]
    pub inputs: usize,
    /// bazel-like: fraction of inputs drawn from a pool shared by all actions (uploaded before timing).
    #[arg(long, default_value_t = 0.75)]
    pub shared_inputs: f64,
    /// bazel-like: largest small input; sizes are log-uniform between 100 bytes and this.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub max_input_size: u64,
    /// bazel-like: chance that a new input is large (2-8 MiB, sent with ByteStream).
    #[arg(long, default_value_t = 0.02)]
    pub large_fraction: f64,
    /// bazel-like: never call Execute; store results with UpdateActionResult as a cache-only client does.
    #[arg(long)]
    pub no_exec: bool,
    /// bazel-like: recover from eviction as Bazel does instead of failing:
    /// a cached action whose result is gone is run again, and an Execute
    /// refused for MISSING inputs re-uploads them and retries (3 times).
    /// Both are counted (evicted_hits, missing_retries).
    #[arg(long)]
    pub recover: bool,
}

/// Parses `4096`, `4K`, `4KiB`, `256MiB`, `1G`... (K/M/G are powers of 1024 too).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size '{s}'"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in '{s}'")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' is too large"))
}

/// What every scenario gets.
pub struct Ctx {
    pub clients: Arc<Clients>,
    pub opts: Opts,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub progress: bool,
    /// Random per invocation, mixed into every generated blob and action.
    pub nonce: u64,
}

impl Ctx {
    pub fn bound(&self, unit: &'static str) -> Arc<Bound> {
        Bound::new(self.count, self.duration, unit, self.progress)
    }

    pub fn command_args(&self) -> Vec<String> {
        self.opts.command.split_whitespace().map(str::to_string).collect()
    }
}

fn main() -> ExitCode {
    keep_freed_buffers();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("re-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(scenario) = cli.scenario.or(cli.scenario_opt) else {
        bail!(
            "name a scenario: {}",
            Scenario::value_variants().iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        );
    };
    if cli.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let duration = match (cli.duration, cli.count) {
        (Some(d), _) if d <= 0.0 => bail!("--duration must be positive"),
        (Some(d), _) => Some(Duration::from_secs_f64(d)),
        (None, None) => Some(Duration::from_secs(10)),
        (None, Some(_)) => None,
    };
    if cli.opts.command.split_whitespace().next().is_none() {
        bail!("--command is empty");
    }
    let clients = Arc::new(cli.conn.connect().await?);
    let ctx = Ctx {
        clients,
        opts: cli.opts.clone(),
        count: cli.count,
        duration,
        progress: !cli.no_progress,
        nonce: data::run_nonce(),
    };
    let mut params = params(scenario, &cli, &ctx);
    let runs: Vec<RunResult> = scenarios::run(scenario, &ctx, cli.repeat, &mut params).await?;
    let report = Report {
        scenario: scenario.name(),
        endpoint: cli.conn.endpoint.clone(),
        instance: cli.conn.instance.clone(),
        params,
        median: median_of(&runs),
        runs,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The parameters that shaped a run, for the report.
fn params(s: Scenario, cli: &Cli, ctx: &Ctx) -> BTreeMap<String, String> {
    let o = &cli.opts;
    let mut p = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        p.insert(k.to_string(), v);
    };
    if let Some(d) = ctx.duration {
        set("duration_s", format!("{}", d.as_secs_f64()));
    }
    if let Some(n) = ctx.count {
        set("count", n.to_string());
    }
    set("repeat", cli.repeat.to_string());
    set("connections", cli.conn.connections.to_string());
    set(
        "window",
        if cli.conn.adaptive_window {
            "adaptive".into()
        } else if cli.conn.window_mib == 0 {
            "default".into()
        } else {
            format!("{}MiB", cli.conn.window_mib)
        },
    );
    set("exec_enabled", ctx.clients.exec_enabled.to_string());
    match s {
        Scenario::CasUpload | Scenario::CasDownload => {
            set("size", o.size.to_string());
            set("chunk", o.chunk.to_string());
            set("client", if cli.conn.tonic_client { "tonic" } else { "raw" }.into());
            if cli.conn.max_frame_kib > 0 {
                set("max_frame_kib", cli.conn.max_frame_kib.to_string());
            }
        }
        Scenario::FindMissing => {
            set("clients", o.clients.to_string());
            set("digests", o.digests.to_string());
        }
        Scenario::BatchUpdate => {
            set("clients", o.clients.to_string());
            set("blob_size", o.blob_size.to_string());
            set("batch", o.batch.to_string());
        }
        Scenario::ExecNoop | Scenario::ExecCached => {
            set("concurrency", o.concurrency.to_string());
            set("command", o.command.clone());
        }
        Scenario::BazelLike => {
            set("concurrency", o.concurrency.to_string());
            set("hit_rate", o.hit_rate.to_string());
            set("inputs", o.inputs.to_string());
            set("shared_inputs", o.shared_inputs.to_string());
            set("large_fraction", o.large_fraction.to_string());
        }
    }
    p
}

/// glibc hands large freed buffers back to the kernel, so every 1 MiB message
/// the client receives lands in freshly faulted, zeroed pages: on the 2-core
/// benchmark machine that cost a download 8-15 % of its throughput, measuring
/// the load generator instead of the server. Keep them in the heap instead.
fn keep_freed_buffers() {
    // SAFETY: mallopt only sets allocator parameters; this runs first in main,
    // before any other thread allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::try_parse_from(["re-bench", "cas-upload", "--count", "2"]).unwrap();
        Cli::try_parse_from(["re-bench", "--scenario", "find-missing"]).unwrap();
        assert!(Cli::try_parse_from(["re-bench", "nope"]).is_err());
    }
}
