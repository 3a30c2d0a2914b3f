//! Docker workers: each action runs in a container of a Docker engine
//! (through bollard), inside the same action frame as host actions.
//!
//! Each worker owns a host directory `<work_dir>/<worker id>`: the action's
//! stdout and stderr files, and `mnt`, whose `exec` subdirectory is the
//! input root the frame materialises. With `file_transfer = "mount"` (the
//! default for a local socket) `mnt` is bind-mounted at `/re-server` in
//! every container, so inside it the input root is always [`EXEC_ROOT`].
//! With `file_transfer = "archive"` (the default for a tcp:// engine, which
//! cannot see the server's disk) there is no bind mount: the input tree is
//! streamed into the container as a tar before the action and the declared
//! outputs are streamed back into the same host directory after it
//! (`archive.rs`), so output collection is the same in both modes.
//!
//! | file         | concern                                                        |
//! |--------------|----------------------------------------------------------------|
//! | `config.rs`  | `[[execution.pool.workers]] type = "docker"` and its checks    |
//! | `spec.rs`    | image / network / user from platform properties; container limits (pure) |
//! | `engine.rs`  | connection, health, errors, container creation, pulls, removal, stale containers |
//! | `warm.rs`    | the warm container: lease, recycling, one exec per action      |
//! | `fresh.rs`   | a container per action                                         |
//! | `io.rs`      | the container's output into the stdout / stderr files          |
//! | `archive.rs` | inputs in and outputs out through the engine's tar API         |
//!
//! Every container gets the configured limits and the labels `re-server=1`,
//! `re-server.worker=<id>` and `re-server.dir=<worker dir>`; at the first
//! contact with the engine, containers a previous run of this worker left
//! are removed.
pub mod archive;
pub mod config;
pub mod engine;
pub mod fresh;
pub mod io;
pub mod spec;
pub mod warm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use re_proto::{Error, Result};
use tokio_util::sync::CancellationToken;

pub use config::{DockerWorkerConfig, FileTransfer, NetworkMode};
pub use spec::{EXEC_ROOT, MOUNT_POINT};
pub use warm::LEASE_EXPIRY_SECS;

use crate::action::PreparedAction;
use crate::input_tree::LinkMode;
use crate::platform::Properties;
use crate::run_frame::{ActionDir, DirAccess, Exit, Launcher, Probe};
use engine::Engine;
use fresh::{FreshContainers, FreshRun};
use spec::Spec;
use warm::{WarmContainer, WarmRun};

/// How the action's process is launched in a container.
pub struct Launch {
    /// `K=V`: whitelisted server variables, then the action's own.
    pub env: Vec<String>,
    /// The working directory inside the container.
    pub working_dir: String,
    /// The host directory to bind-mount (mount mode).
    pub mount: Option<PathBuf>,
}

pub struct DockerLauncher {
    id: String,
    properties: Properties,
    cfg: DockerWorkerConfig,
    /// `<work_dir>/<id>`: stdout/stderr files and `mnt`.
    dir: PathBuf,
    /// Bind-mounted at [`MOUNT_POINT`] (mount mode).
    mnt: PathBuf,
    base_env: Vec<String>,
    engine: Arc<Engine>,
    /// `file_transfer = "archive"`: no bind mount; files go through tar.
    archive: bool,
    warm: Option<Arc<WarmContainer>>,
    fresh: FreshContainers,
}

/// What `stage` made for one action.
pub enum Staged {
    Warm(WarmRun),
    Fresh(FreshRun),
}

/// The error for an action killed by its container's memory limit.
pub(crate) fn oom_error(cfg: &DockerWorkerConfig, worker: &str) -> Error {
    Error::ResourceExhausted(format!(
        "killed: memory limit of {} bytes exceeded (docker worker {worker})",
        cfg.memory_limit.map(|m| m.to_string()).unwrap_or_else(|| "the container's".into()),
    ))
}

impl DockerLauncher {
    /// `cfg` is resolved (its `work_dir` set); the engine is contacted at
    /// the first health check, so one that is down does not stop the server.
    pub fn new(id: String, cfg: &DockerWorkerConfig) -> Result<Self> {
        let mut properties = spec::docker_properties();
        properties.extend(cfg.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base_env =
            cfg.env_whitelist.iter().filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}"))).collect();
        let dir = cfg.work_dir.join(&id);
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).map_err(|e| Error::io(format!("creating {}", mnt.display()), e))?;
        let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
        let mnt = dir.join("mnt");
        let engine = Arc::new(Engine::new(&id, cfg, &dir));
        let archive = cfg.transfer() == FileTransfer::Archive;
        let warm = cfg.warm.then(|| WarmContainer::start(&id, engine.clone(), cfg, mnt.clone(), archive));
        let fresh = FreshContainers { worker: id.clone(), engine: engine.clone(), cfg: cfg.clone() };
        Ok(Self { id, properties, cfg: cfg.clone(), dir, mnt, base_env, engine, archive, warm, fresh })
    }

    pub fn engine(&self) -> &str {
        self.engine.name()
    }
}

#[async_trait]
impl Launcher for DockerLauncher {
    type Plan = Spec;
    type Staged = Staged;

    fn id(&self) -> &str {
        &self.id
    }

    fn properties(&self) -> &Properties {
        &self.properties
    }

    async fn is_healthy(&self) -> bool {
        self.engine.is_healthy().await
    }

    fn plan(&self, job: &PreparedAction) -> Result<Spec> {
        spec::resolve(&job.platform, &self.cfg, &self.id)
    }

    fn action_dir(&self) -> ActionDir {
        let root = self.mnt.join("exec");
        ActionDir { stdout: self.dir.join("stdout"), stderr: self.dir.join("stderr"), scratch: root.clone(), root }
    }

    /// In archive mode the container gets copies anyway; locally nothing but
    /// the tar reader touches the links.
    fn link_mode(&self, spec: &Spec) -> LinkMode {
        if self.archive || spec::may_hard_link(spec.user.as_deref()) {
            LinkMode::HardLink
        } else {
            LinkMode::Copy
        }
    }

    fn dir_access(&self, _spec: &Spec) -> DirAccess {
        DirAccess::Anyone
    }

    async fn stage(
        &self,
        spec: Spec,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
    ) -> Result<Staged> {
        let docker = self.engine.client()?;
        let mut env = self.base_env.clone();
        env.extend(job.command.environment_variables.iter().map(|v| format!("{}={}", v.name, v.value)));
        let working_dir = Path::new(EXEC_ROOT).join(&job.working_directory).display().to_string();
        let mount = (!self.archive).then(|| self.mnt.clone());
        let launch = Launch { env, working_dir, mount };
        Ok(match &self.warm {
            Some(warm) => Staged::Warm(warm.stage(&docker, job, dir, &spec, launch, cancel).await?),
            None => Staged::Fresh(self.fresh.stage(&docker, job, dir, &spec, launch, cancel).await?),
        })
    }

    async fn run(
        &self,
        staged: &mut Staged,
        job: &PreparedAction,
        dir: &ActionDir,
        cancel: &CancellationToken,
        probe: &Probe,
    ) -> Result<Exit> {
        let docker = self.engine.client()?;
        match (staged, &self.warm) {
            (Staged::Warm(run), Some(warm)) => warm.run(&docker, run, job, dir, cancel, probe).await,
            (Staged::Fresh(run), _) => self.fresh.run(&docker, run, job, dir, cancel, probe).await,
            (Staged::Warm(_), None) => unreachable!("warm runs come from the warm container"),
        }
    }

    async fn retrieve(&self, staged: &mut Staged, job: &PreparedAction, dir: &ActionDir) -> Result<()> {
        if !self.archive {
            return Ok(());
        }
        let docker = self.engine.client()?;
        let container = match staged {
            Staged::Warm(run) => run.container(),
            Staged::Fresh(run) => run.container.as_str(),
        };
        archive::download_outputs(&docker, container, &dir.root, &job.outputs).await
    }

    async fn shutdown(&self) {
        if let (Some(warm), Ok(docker)) = (&self.warm, self.engine.client()) {
            warm.shutdown(&docker).await;
        }
    }

    async fn release(&self, staged: Staged) {
        let Ok(docker) = self.engine.client() else { return };
        match (staged, &self.warm) {
            (Staged::Warm(run), Some(warm)) => warm.release(&docker, run).await,
            (Staged::Warm(_), None) => {}
            (Staged::Fresh(run), _) => self.engine.remove(&docker, &run.container).await,
        }
    }
}
