//! `[execution]`, `[execution.pool]` and `[[execution.pool.workers]]`.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Deserialize;

use crate::platform::MatchMode;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionBackend {
    /// The built-in pool scheduler with host / docker workers.
    #[default]
    Pool,
    /// No execution: a pure remote cache.
    None,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecutionConfig {
    #[serde(default)]
    pub backend: ExecutionBackend,
    #[serde(default)]
    pub pool: PoolConfig,
}

impl ExecutionConfig {
    /// Checks worker settings serde cannot: the first bad one as (key, reason),
    /// the key spelled as in the file (`execution.pool.workers[1].memory_limit`).
    pub fn check(&self) -> Result<(), (String, String)> {
        for (i, w) in self.pool.workers.iter().enumerate() {
            if let WorkerConfig::Docker(d) = w {
                d.check().map_err(|(key, reason)| (format!("execution.pool.workers[{i}].{key}"), reason))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Queued actions beyond this are refused with RESOURCE_EXHAUSTED.
    #[serde(default = "d_queue")]
    pub max_queue_size: usize,
    /// Idle workers rescan the queue at least this often.
    #[serde(default = "d_interval")]
    pub scheduler_interval_ms: u64,
    /// Used when the Action sets no timeout.
    #[serde(default = "d_timeout")]
    pub default_task_timeout_seconds: u64,
    /// Actions asking for a longer timeout are rejected (the spec requires it).
    #[serde(default = "d_max_timeout")]
    pub max_task_timeout_seconds: u64,
    /// Finished operations stay reachable (WaitExecution, GetOperation) this long.
    #[serde(default = "d_ttl")]
    pub result_ttl_seconds: u64,
    /// An action nobody waits on any more is cancelled after this long.
    #[serde(default = "d_grace")]
    pub abandon_grace_seconds: u64,
    /// Per-property match mode: `exact` (default), `minimum`, `ignore`.
    #[serde(default)]
    pub platform_match: HashMap<String, MatchMode>,
    /// Worker groups; without any, one host group with one worker per CPU.
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
}

fn d_queue() -> usize {
    1000
}
fn d_interval() -> u64 {
    100
}
fn d_timeout() -> u64 {
    3600
}
fn d_max_timeout() -> u64 {
    24 * 3600
}
fn d_ttl() -> u64 {
    300
}
fn d_grace() -> u64 {
    60
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_queue_size: d_queue(),
            scheduler_interval_ms: d_interval(),
            default_task_timeout_seconds: d_timeout(),
            max_task_timeout_seconds: d_max_timeout(),
            result_ttl_seconds: d_ttl(),
            abandon_grace_seconds: d_grace(),
            platform_match: HashMap::new(),
            workers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WorkerConfig {
    Host(HostWorkerConfig),
    Docker(crate::docker_config::DockerWorkerConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostWorkerConfig {
    #[serde(default = "d_count")]
    pub count: usize,
    /// Parent of the per-action directories; defaults to `<data_dir>/work`.
    pub work_dir: Option<PathBuf>,
    /// Server environment variables an action may see (besides its own).
    #[serde(default = "d_env")]
    pub env_whitelist: Vec<String>,
    pub run_as_user: Option<String>,
    pub run_as_group: Option<String>,
    /// Added to what the worker advertises.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Hard-link inputs from a filesystem CAS instead of copying them.
    #[serde(default = "d_true")]
    pub link_inputs: bool,
}

fn d_count() -> usize {
    1
}
fn d_env() -> Vec<String> {
    ["PATH", "HOME", "USER", "TMPDIR"].iter().map(|s| s.to_string()).collect()
}
fn d_true() -> bool {
    true
}

impl HostWorkerConfig {
    /// The embedded default: one host worker per CPU.
    pub fn default_for_cpus() -> Self {
        Self {
            count: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            work_dir: None,
            env_whitelist: d_env(),
            run_as_user: None,
            run_as_group: None,
            properties: BTreeMap::new(),
            link_inputs: true,
        }
    }
}
