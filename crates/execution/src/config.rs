//! `[execution]`, `[execution.pool]` and `[[execution.pool.workers]]`:
//! defaults (written once, in the `Default` impls), and `resolve`, the one
//! pass that fills paths from the data directory and checks every value.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use re_proto::ConfigError;
use serde::Deserialize;

use crate::docker::DockerWorkerConfig;
use crate::platform::MatchMode;
use crate::user::UserIds;

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
#[serde(default, deny_unknown_fields)]
pub struct ExecutionConfig {
    pub backend: ExecutionBackend,
    pub pool: PoolConfig,
}

impl ExecutionConfig {
    /// Fills defaults that depend on the data directory and the machine, and
    /// checks every value; keys in errors are relative to `[execution]`.
    pub fn resolve(&mut self, data_dir: &Path) -> Result<(), ConfigError> {
        if self.backend == ExecutionBackend::None {
            return Ok(());
        }
        self.pool.resolve(data_dir).map_err(|e| e.within("pool"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Queued actions beyond this are refused with RESOURCE_EXHAUSTED.
    pub max_queue_size: usize,
    /// Idle workers rescan the queue at least this often.
    pub scheduler_interval_ms: u64,
    /// Used when the Action sets no timeout.
    pub default_task_timeout_seconds: u64,
    /// Actions asking for a longer timeout are rejected (the spec requires it).
    pub max_task_timeout_seconds: u64,
    /// Finished operations stay reachable (WaitExecution, GetOperation) this long.
    pub result_ttl_seconds: u64,
    /// An action nobody waits on any more is cancelled after this long.
    pub abandon_grace_seconds: u64,
    /// Entries (files, directories, symlinks) of one action's input tree.
    pub max_input_entries: usize,
    /// Disk one action may use: its inputs, and what it writes while it runs
    /// (an action that writes more is killed with RESOURCE_EXHAUSTED).
    pub max_action_disk_bytes: u64,
    /// A worker with no heartbeat for this long shows as stalled.
    pub stall_seconds: u64,
    /// Runs of one action lost with their worker (container vanished, engine
    /// gone, worker panicked) before the action fails with the last error.
    pub crashes_max: u32,
    /// A worker agent's session ends when it has not called for this long;
    /// the action it ran is queued again (under `crashes_max`).
    pub agent_session_timeout_seconds: u64,
    /// `false`: no worker runs on this machine; agents serve the pool (the
    /// pool then has no `[[execution.pool.workers]]` tables).
    pub local_workers: bool,
    /// Per-property match mode: `exact` (default), `minimum`, `ignore`.
    pub platform_match: HashMap<String, MatchMode>,
    /// Worker groups; without any, one host group with one worker per CPU.
    pub workers: Vec<WorkerConfig>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_queue_size: 1000,
            scheduler_interval_ms: 100,
            default_task_timeout_seconds: 3600,
            max_task_timeout_seconds: 24 * 3600,
            result_ttl_seconds: 300,
            abandon_grace_seconds: 60,
            max_input_entries: 1_000_000,
            max_action_disk_bytes: 16 << 30,
            stall_seconds: 180,
            crashes_max: 3,
            agent_session_timeout_seconds: 30,
            local_workers: true,
            platform_match: HashMap::new(),
            workers: Vec::new(),
        }
    }
}

impl PoolConfig {
    pub fn action_limits(&self) -> crate::action::ActionLimits {
        crate::action::ActionLimits {
            default_timeout: std::time::Duration::from_secs(self.default_task_timeout_seconds),
            max_timeout: std::time::Duration::from_secs(self.max_task_timeout_seconds),
            max_input_entries: self.max_input_entries,
            max_disk_bytes: self.max_action_disk_bytes,
        }
    }

    fn resolve(&mut self, data_dir: &Path) -> Result<(), ConfigError> {
        if self.scheduler_interval_ms == 0 {
            return Err(ConfigError::new("scheduler_interval_ms", "must be at least 1"));
        }
        if self.default_task_timeout_seconds == 0 {
            return Err(ConfigError::new("default_task_timeout_seconds", "must be at least 1"));
        }
        if self.max_task_timeout_seconds < self.default_task_timeout_seconds {
            return Err(ConfigError::new(
                "max_task_timeout_seconds",
                format!("must not be below default_task_timeout_seconds ({})", self.default_task_timeout_seconds),
            ));
        }
        if self.crashes_max == 0 {
            return Err(ConfigError::new("crashes_max", "must be at least 1 (one run)"));
        }
        if self.agent_session_timeout_seconds < 2 {
            return Err(ConfigError::new("agent_session_timeout_seconds", "must be at least 2"));
        }
        if !self.local_workers {
            if !self.workers.is_empty() {
                return Err(ConfigError::new(
                    "local_workers",
                    "is false but [[execution.pool.workers]] tables are configured; remove one or the other",
                ));
            }
            return Ok(());
        }
        if self.workers.is_empty() {
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            self.workers.push(WorkerConfig::Host(HostWorkerConfig { count: cpus, ..Default::default() }));
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let resolved = match w {
                WorkerConfig::Host(h) => h.resolve(data_dir),
                WorkerConfig::Docker(d) => d.resolve(data_dir),
            };
            resolved.map_err(|e| e.within(&format!("workers[{i}]")))?;
            let name = w.name(i);
            if !names.insert(name.clone()) {
                return Err(
                    ConfigError::new("name", format!("'{name}' names two groups")).within(&format!("workers[{i}]"))
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WorkerConfig {
    Host(HostWorkerConfig),
    Docker(DockerWorkerConfig),
}

impl WorkerConfig {
    /// The group's name: its `name` key, or `host-N` / `docker-N` for the
    /// N-th table of the file.
    pub fn name(&self, index: usize) -> String {
        let (name, kind) = match self {
            WorkerConfig::Host(h) => (&h.name, "host"),
            WorkerConfig::Docker(d) => (&d.name, "docker"),
        };
        name.clone().unwrap_or_else(|| format!("{kind}-{index}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostWorkerConfig {
    /// The group's name (status API, `POST /api/workers/add`).
    pub name: Option<String>,
    pub count: usize,
    /// Parent of the per-action directories; unset (empty) means `<data_dir>/work`.
    pub work_dir: PathBuf,
    /// Server environment variables an action may see (besides its own).
    pub env_whitelist: Vec<String>,
    pub run_as_user: Option<String>,
    pub run_as_group: Option<String>,
    /// Added to what the worker advertises.
    pub properties: BTreeMap<String, String>,
    /// Hard-link inputs from a filesystem CAS instead of copying them.
    pub link_inputs: bool,
    /// Memory one of these workers needs: adding one through the status API
    /// is refused while the machine has less available (unless forced).
    pub memory_per_worker_bytes: u64,
    /// Run each action in a bubblewrap sandbox (`sandbox.rs`); the key of the
    /// worker framework these configs come from.
    pub use_chroot: bool,
    /// Read-only host paths a sandboxed action sees.
    pub sandbox_paths: Vec<PathBuf>,
    /// Whether a sandboxed action keeps the host's network.
    pub sandbox_network: bool,
    /// `run_as_user` / `run_as_group` looked up by `resolve`.
    #[serde(skip)]
    user: Option<UserIds>,
    /// Built by `resolve` when `use_chroot` is on.
    #[serde(skip)]
    sandbox: Option<crate::sandbox::Sandbox>,
}

impl Default for HostWorkerConfig {
    fn default() -> Self {
        Self {
            name: None,
            count: 1,
            work_dir: PathBuf::new(),
            env_whitelist: ["PATH", "HOME", "USER", "TMPDIR"].iter().map(|s| s.to_string()).collect(),
            run_as_user: None,
            run_as_group: None,
            properties: BTreeMap::new(),
            link_inputs: true,
            memory_per_worker_bytes: 512 << 20,
            use_chroot: false,
            sandbox_paths: crate::sandbox::DEFAULT_SANDBOX_PATHS.iter().map(PathBuf::from).collect(),
            sandbox_network: false,
            user: None,
            sandbox: None,
        }
    }
}

impl HostWorkerConfig {
    /// The user actions run as (after `resolve`).
    pub fn user_ids(&self) -> Option<UserIds> {
        self.user
    }

    /// The sandbox actions run in (after `resolve`), if `use_chroot`.
    pub fn sandbox(&self) -> Option<&crate::sandbox::Sandbox> {
        self.sandbox.as_ref()
    }

    fn resolve(&mut self, data_dir: &Path) -> Result<(), ConfigError> {
        if self.work_dir.as_os_str().is_empty() {
            self.work_dir = data_dir.join("work");
        }
        if self.use_chroot {
            self.sandbox = Some(crate::sandbox::Sandbox::new(&self.sandbox_paths, self.sandbox_network)?);
        }
        let Some(name) = &self.run_as_user else {
            return match self.run_as_group {
                Some(_) => Err(ConfigError::new("run_as_group", "needs run_as_user (the user actions run as)")),
                None => Ok(()),
            };
        };
        let ids = crate::user::resolve(name, self.run_as_group.as_deref())?;
        if let Some(blocked) = crate::user::unreachable_dir(&self.work_dir, ids) {
            return Err(ConfigError::new(
                "work_dir",
                format!(
                    "{} is out of reach of run_as_user '{name}' (uid {}): it cannot enter {}; \
                     choose a work_dir that user can reach",
                    self.work_dir.display(),
                    ids.uid,
                    blocked.display()
                ),
            ));
        }
        self.user = Some(ids);
        Ok(())
    }
}
