//! Runs actions in Docker containers through bollard.
//!
//! Each worker owns a host directory `<work_dir>/<worker id>/mnt`, bind-mounted
//! into every container it creates at `/re-server`. The action's input tree is
//! materialised on the host into `mnt/exec` (so inside the container the input
//! root is always [`EXEC_ROOT`]), the command runs with its working directory
//! below it, and outputs are collected from the host directory afterwards.
//! That needs an engine that sees the server's filesystem (`file_transfer =
//! "mount"`, the default for a local socket). With `file_transfer =
//! "archive"` (the default for a tcp:// engine, e.g. another machine's) there
//! is no bind mount: the input tree is streamed into the container as a tar
//! before the action runs, and the declared outputs are streamed back out
//! into the same host directory afterwards (`docker_archive`), so the rest
//! of the worker is the same in both modes.
//!
//! Two modes:
//! - `warm = true`: one started container per worker (its main process is a
//!   small `/bin/sh` loop, so the image needs `/bin/sh`); each action runs via
//!   `exec`. After each action a cleanup exec kills whatever the action left
//!   running and reads the memory cgroup's `oom_kill` counter. The container
//!   is replaced after `tasks_max` actions, after `seconds_idle` unused, when
//!   an action needs a different image / network / user, and after a timeout
//!   or cancellation (the container is removed, killing the action). The loop
//!   exits by itself (and the engine removes it) when the server stops renewing
//!   its lease file for [`LEASE_EXPIRY_SECS`], so a crashed server leaks nothing.
//! - `warm = false`: a fresh container per action whose main process is the
//!   action (`docker run --rm` semantics); removed afterwards, whatever happened.
//!
//! Every container gets the configured limits (NanoCpus, Memory = MemorySwap,
//! NetworkMode, User, volumes) and the labels `re-server=1`,
//! `re-server.worker=<id>` and `re-server.dir=<worker dir>`. At start (first
//! successful contact with the engine) containers labelled with this worker's
//! id and directory — left by a previous run — are removed.
//!
//! Platform properties an action may set (the worker advertises them with the
//! value `*`, which the matcher treats as "any value"; this worker then
//! decides):
//! - `container-image`: `docker://NAME` or `NAME`; must match one of
//!   `allowed_images` (glob, `*` = any run of characters; default: only
//!   `image`), else the action fails with FAILED_PRECONDITION naming the
//!   allowed images.
//! - `dockerNetwork`: `off` (or `none`) always gets no network; `bridge` gets
//!   the bridge only if the worker's `network_mode` is `bridge` or `host`
//!   (with `none` it silently stays without network: an action never gets more
//!   network than the worker allows). Unset: the worker's `network_mode`.
//! - `dockerUser`: the user inside the container. Any user is honoured,
//!   except root (`root`, `0`, `0:…`) when the worker's `user` is set to a
//!   non-root user: that fails with PERMISSION_DENIED. Unset: `user`.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{Stream, StreamExt};
use re_cas::BlobStore;
use re_proto::reapi::{ActionResult, ExecutedActionMetadata};
use re_proto::{Error, Result};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::action::PreparedAction;
use crate::docker_archive;
use crate::docker_config::{DockerWorkerConfig, FileTransfer, NetworkMode};
use crate::input_tree::{self, LinkMode};
use crate::outputs;
use crate::platform::Properties;
use crate::worker::{RunOutcome, Worker};

/// Where the worker's directory is mounted in every container.
pub const MOUNT_POINT: &str = "/re-server";
/// The action's input root inside the container.
pub const EXEC_ROOT: &str = "/re-server/exec";
/// A warm container exits when its lease was not renewed for this long.
pub const LEASE_EXPIRY_SECS: u32 = 15;
const LEASE_RENEW: Duration = Duration::from_secs(3);
/// Pulls never take longer than this (nor than the action's timeout).
const PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a health answer is reused.
const HEALTH_TTL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Seconds bollard waits for any one engine request.
const CLIENT_TIMEOUT_SECS: u64 = 120;

/// Non-running containers of a deleted worker directory older than this are removed.
const ORPHAN_AGE_SECS: i64 = 120;

/// The platform keys a docker worker decides itself (advertised as `*`).
pub const DOCKER_KEYS: [&str; 3] = ["container-image", "dockerNetwork", "dockerUser"];

type LogStream = Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>>;

/// What one action needs from a container, decided from its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    image: String,
    network: NetworkMode,
    user: Option<String>,
}

/// The action's environment (`K=V`) and working directory inside the container.
struct Launch {
    env: Vec<String>,
    wd: String,
    /// stdout and stderr files.
    io: (tokio::fs::File, tokio::fs::File),
}

struct Warm {
    id: String,
    spec: Spec,
    tasks: u64,
    last_used: Instant,
    oom_kills: u64,
}

pub struct DockerWorker {
    id: String,
    properties: Properties,
    cas: Arc<dyn BlobStore>,
    cfg: DockerWorkerConfig,
    allowed: Vec<String>,
    /// `<work_dir>/<id>`: stdout/stderr files and `mnt`.
    dir: PathBuf,
    /// Bind-mounted at [`MOUNT_POINT`].
    mnt: PathBuf,
    base_env: Vec<String>,
    labels: HashMap<String, String>,
    engine_name: String,
    client: parking_lot::Mutex<Option<Docker>>,
    health: parking_lot::Mutex<Option<(Instant, bool)>>,
    /// Version negotiated and stale containers removed.
    ready: AtomicBool,
    warm: tokio::sync::Mutex<Option<Warm>>,
    /// The warm container's id, readable while an action holds `warm`
    /// (archive mode renews the lease inside it).
    warm_id: parking_lot::Mutex<Option<String>>,
    lease: AtomicU64,
    /// `file_transfer = "archive"`: no bind mount; files go through tar.
    archive: bool,
}

/// What every docker worker advertises before its configured properties.
pub fn docker_properties() -> Properties {
    let mut p: Properties = vec![("OSFamily".into(), "linux".into()), ("container".into(), "docker".into())];
    p.extend(DOCKER_KEYS.iter().map(|k| (k.to_string(), crate::platform::ANY_VALUE.to_string())));
    p
}

/// `*` matches any run of characters (including `/` and `:`); the rest literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Hard links share the CAS's inodes: only a numeric uid that is neither
/// root nor the server's own uid surely cannot chmod and rewrite them.
fn may_hard_link(user: Option<&str>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let server = unsafe { libc::geteuid() };
    let uid = user.and_then(|u| u.split(':').next()).and_then(|u| u.parse::<u32>().ok());
    uid.is_some_and(|uid| uid != 0 && uid != server)
}

fn is_root(user: &str) -> bool {
    matches!(user.split(':').next().unwrap_or(""), "root" | "0")
}

/// `name[:tag]` or `name@digest` → (name, tag-or-digest) for the pull API.
fn split_reference(image: &str) -> (String, String) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name.to_string(), digest.to_string());
    }
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => (image[..slash + i].to_string(), image[slash + i + 1..].to_string()),
        None => (image.to_string(), "latest".to_string()),
    }
}

fn prop<'a>(job: &'a PreparedAction, key: &str) -> Option<&'a str> {
    job.platform.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
}

/// The `oom_kill` counter from memory.oom_control (v1) or memory.events (v2).
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
}

fn connect(cfg: &DockerWorkerConfig) -> std::result::Result<Docker, bollard::errors::Error> {
    let v = bollard::API_DEFAULT_VERSION;
    let docker = match cfg.docker_host.as_deref() {
        None => Docker::connect_with_local_defaults()?,
        Some(h) if h.starts_with("unix://") => Docker::connect_with_unix(h, CLIENT_TIMEOUT_SECS, v)?,
        Some(h) => match (&cfg.tls_ca, &cfg.tls_cert, &cfg.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Docker::connect_with_ssl(h, key, cert, ca, CLIENT_TIMEOUT_SECS, v)?,
            _ => Docker::connect_with_http(h, CLIENT_TIMEOUT_SECS, v)?,
        },
    };
    Ok(docker.with_timeout(Duration::from_secs(CLIENT_TIMEOUT_SECS)))
}

/// The engine's own message for a failed request.
fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerWorker {
    /// Builds the worker; contacting the engine is left to the first health
    /// check, so an engine that is down does not stop the server.
    pub fn start(id: String, cfg: &DockerWorkerConfig, dir: PathBuf, cas: Arc<dyn BlobStore>) -> Result<Arc<Self>> {
        cfg.validate()?;
        let mut properties = docker_properties();
        properties.extend(cfg.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base_env =
            cfg.env_whitelist.iter().filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}"))).collect();
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).map_err(|e| Error::io(format!("creating {}", mnt.display()), e))?;
        let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
        let mnt = dir.join("mnt");
        let labels = HashMap::from([
            ("re-server".to_string(), "1".to_string()),
            ("re-server.worker".to_string(), id.clone()),
            ("re-server.dir".to_string(), dir.display().to_string()),
        ]);
        let engine_name = cfg
            .docker_host
            .clone()
            .unwrap_or_else(|| std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()));
        let client = match connect(cfg) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(worker = %id, engine = %engine_name, error = %e, "docker engine not reachable yet");
                None
            }
        };
        let worker = Arc::new(Self {
            id,
            properties,
            cas,
            allowed: cfg.allowed_patterns(),
            cfg: cfg.clone(),
            dir,
            mnt,
            base_env,
            labels,
            engine_name,
            client: parking_lot::Mutex::new(client),
            health: parking_lot::Mutex::new(None),
            ready: AtomicBool::new(false),
            warm: tokio::sync::Mutex::new(None),
            warm_id: parking_lot::Mutex::new(None),
            lease: AtomicU64::new(0),
            archive: cfg.transfer() == FileTransfer::Archive,
        });
        worker.renew_lease();
        tokio::spawn(Self::housekeeping(Arc::downgrade(&worker)));
        Ok(worker)
    }

    pub fn engine(&self) -> &str {
        &self.engine_name
    }

    fn client(&self) -> Result<Docker> {
        let mut c = self.client.lock();
        if c.is_none() {
            *c = Some(connect(&self.cfg).map_err(|e| self.unavailable("connecting", &e))?);
        }
        Ok(c.clone().expect("client set"))
    }

    fn unavailable(&self, what: &str, e: &bollard::errors::Error) -> Error {
        Error::Unavailable(format!("docker engine {} ({}) failed while {what}: {e}", self.engine_name, self.id))
    }

    /// Maps an engine error; connection failures also mark the worker unhealthy.
    fn engine_error(&self, what: &str, e: bollard::errors::Error) -> Error {
        match status_of(&e) {
            Some(_) => Error::Internal(format!("docker engine {}: {what}: {}", self.engine_name, engine_message(&e))),
            None => {
                *self.health.lock() = Some((Instant::now(), false));
                self.unavailable(what, &e)
            }
        }
    }

    fn renew_lease(&self) -> u64 {
        let n = self.lease.fetch_add(1, Ordering::Relaxed) + 1;
        if let Err(e) = std::fs::write(self.mnt.join("lease"), format!("{n}\n")) {
            warn!(worker = %self.id, error = %e, "could not renew the warm container lease");
        }
        n
    }

    /// Archive mode: the container cannot see the host's lease file.
    async fn push_lease(&self, docker: &Docker, container: &str, n: u64) {
        let path = format!("{MOUNT_POINT}/lease");
        if let Err(e) = docker_archive::upload_file(docker, container, &path, format!("{n}\n").as_bytes()).await {
            debug!(worker = %self.id, container, error = %e, "could not renew the warm container lease");
        }
    }

    /// Renews the warm container's lease and removes it when idle too long.
    async fn housekeeping(worker: Weak<Self>) {
        loop {
            tokio::time::sleep(LEASE_RENEW).await;
            let Some(w) = worker.upgrade() else { return };
            let n = w.renew_lease();
            let warm_id = w.warm_id.lock().clone();
            if let (true, Some(id)) = (w.archive, warm_id) {
                if let Ok(docker) = w.client() {
                    w.push_lease(&docker, &id, n).await;
                }
            }
            let idle = Duration::from_secs(w.cfg.seconds_idle);
            if let Ok(mut warm) = w.warm.try_lock() {
                if warm.as_ref().is_some_and(|c| c.last_used.elapsed() >= idle) {
                    let c = warm.take().expect("checked");
                    debug!(worker = %w.id, container = %c.id, "removing idle warm container");
                    if let Ok(docker) = w.client() {
                        w.remove(&docker, &c.id).await;
                    }
                }
            };
        }
    }

    async fn check(&self) -> bool {
        let Ok(docker) = self.client() else { return false };
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(worker = %self.id, error = %e, "docker ping failed");
                return false;
            }
            Err(_) => return false,
        }
        if !self.ready.load(Ordering::Acquire) {
            // Shared by every clone of this client.
            if let Ok(Err(e)) = tokio::time::timeout(PING_TIMEOUT, docker.clone().negotiate_version()).await {
                warn!(worker = %self.id, error = %e, "docker API version negotiation failed");
                return false;
            }
            if let Err(e) = self.remove_stale(&docker).await {
                warn!(worker = %self.id, error = %e, "could not remove stale containers");
                return false;
            }
            self.ready.store(true, Ordering::Release);
        }
        true
    }

    /// Removes containers a previous run of this worker left behind.
    async fn remove_stale(&self, docker: &Docker) -> std::result::Result<(), bollard::errors::Error> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("re-server.worker={}", self.id), format!("re-server.dir={}", self.dir.display())],
        )]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let stale = docker.list_containers(Some(opts)).await?;
        for c in &stale {
            if let Some(id) = &c.id {
                self.remove(docker, id).await;
            }
        }
        if !stale.is_empty() {
            info!(worker = %self.id, count = stale.len(), "removed stale containers of a previous run");
        }
        // Orphans of any re-server whose directory is gone (its data dir was
        // deleted after a crash between create and remove): never started or
        // exited, and old enough that no live server is about to use them.
        let filters = HashMap::from([
            ("label".to_string(), vec!["re-server=1".to_string()]),
            ("status".to_string(), vec!["created".to_string(), "exited".to_string()]),
        ]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        for c in docker.list_containers(Some(opts)).await? {
            let dir = c.labels.as_ref().and_then(|l| l.get("re-server.dir"));
            let orphan = dir.is_some_and(|d| !Path::new(d).exists());
            if let (true, Some(id), Some(created)) = (orphan, &c.id, c.created) {
                if now - created > ORPHAN_AGE_SECS {
                    info!(worker = %self.id, container = %id, dir = ?dir, "removing an orphaned container");
                    self.remove(docker, id).await;
                }
            }
        }
        Ok(())
    }

    /// Force-removes a container (killing what runs in it); errors are logged.
    async fn remove(&self, docker: &Docker, id: &str) {
        {
            let mut warm_id = self.warm_id.lock();
            if warm_id.as_deref() == Some(id) {
                *warm_id = None;
            }
        }
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match docker.remove_container(id, Some(opts)).await {
            Ok(()) => debug!(worker = %self.id, container = %id, "container removed"),
            // Gone already, or the engine is removing it (auto-remove).
            Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => {}
            Err(e) => warn!(worker = %self.id, container = %id, error = %e, "could not remove container"),
        }
    }

    /// Image, network and user for `job`, checked against the configuration.
    fn spec(&self, job: &PreparedAction) -> Result<Spec> {
        let image = match prop(job, "container-image") {
            Some(v) => {
                let name = v.strip_prefix("docker://").unwrap_or(v).trim();
                if name.is_empty() {
                    return Err(Error::InvalidArgument(format!("container-image '{v}' names no image")));
                }
                if !self.allowed.iter().any(|p| glob_match(p, name)) {
                    return Err(Error::FailedPrecondition(format!(
                        "container-image '{v}' is not allowed on docker worker {}: allowed images are {} (allowed_images)",
                        self.id,
                        self.allowed.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ")
                    )));
                }
                name.to_string()
            }
            None => self.cfg.image.clone(),
        };
        let network = match prop(job, "dockerNetwork") {
            None => self.cfg.network_mode,
            Some("off") | Some("none") => NetworkMode::None,
            Some("bridge") => NetworkMode::Bridge.min(self.cfg.network_mode),
            Some(other) => {
                return Err(Error::InvalidArgument(format!("dockerNetwork '{other}' is not one of: off, bridge")))
            }
        };
        let user = match prop(job, "dockerUser") {
            None => self.cfg.user.clone(),
            Some(u) => {
                if let Some(own) = self.cfg.user.as_deref().filter(|c| is_root(u) && !is_root(c)) {
                    return Err(Error::PermissionDenied(format!(
                        "dockerUser '{u}' is not allowed: docker worker {} runs actions as '{own}' and never as root",
                        self.id
                    )));
                }
                Some(u.to_string())
            }
        };
        Ok(Spec { image, network, user })
    }

    fn host_config(&self, spec: &Spec, auto_remove: bool) -> HostConfig {
        let mut binds = Vec::new();
        if !self.archive {
            binds.push(format!("{}:{MOUNT_POINT}", self.mnt.display()));
        }
        binds.extend(self.cfg.volumes.iter().map(|v| {
            format!("{}:{}:{}", v.host_path.display(), v.container_path, if v.read_only { "ro" } else { "rw" })
        }));
        HostConfig {
            binds: Some(binds),
            nano_cpus: self.cfg.cpu_limit.map(|c| (c * 1e9).round() as i64),
            memory: self.cfg.memory_limit.map(|m| m as i64),
            memory_swap: self.cfg.memory_limit.map(|m| m as i64),
            network_mode: Some(spec.network.as_docker().to_string()),
            auto_remove: Some(auto_remove),
            ..Default::default()
        }
    }

    /// Pulls `image` if configured to; bounded by a timeout and `cancel`.
    async fn pull(&self, docker: &Docker, image: &str, limit: Duration, cancel: &CancellationToken) -> Result<()> {
        if !self.cfg.always_pull {
            return Ok(());
        }
        let (name, tag) = split_reference(image);
        let opts = CreateImageOptionsBuilder::default().from_image(&name).tag(&tag).build();
        let limit = limit.min(PULL_TIMEOUT);
        let pull = async {
            let mut stream = docker.create_image(Some(opts), None, None);
            while let Some(item) = stream.next().await {
                item.map_err(|e| match status_of(&e) {
                    None if !matches!(e, bollard::errors::Error::DockerStreamError { .. }) => {
                        self.engine_error(&format!("pulling {image}"), e)
                    }
                    _ => Error::FailedPrecondition(format!(
                        "docker engine {} could not pull {image}: {}",
                        self.engine_name,
                        engine_message(&e)
                    )),
                })?;
            }
            Ok(())
        };
        tokio::select! {
            r = pull => r,
            _ = tokio::time::sleep(limit) => Err(Error::DeadlineExceeded(format!(
                "pulling {image} on docker engine {} did not finish within {}s", self.engine_name, limit.as_secs()))),
            _ = cancel.cancelled() => Err(Error::Cancelled("action was cancelled while its image was pulled".into())),
        }
    }

    async fn create(&self, docker: &Docker, body: ContainerCreateBody, image: &str) -> Result<String> {
        match docker.create_container(None, body).await {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(404) => Err(Error::FailedPrecondition(format!(
                "docker engine {}: {}{}",
                self.engine_name,
                engine_message(&e),
                if self.cfg.always_pull {
                    String::new()
                } else {
                    format!(" (always_pull = false: {image} must already be on the engine)")
                }
            ))),
            Err(e) => Err(self.engine_error(&format!("creating a container from {image}"), e)),
        }
    }

    /// Runs the action's process in a fresh container (its main process).
    async fn run_fresh(
        &self,
        docker: &Docker,
        job: &PreparedAction,
        spec: &Spec,
        launch: Launch,
        cancel: &CancellationToken,
    ) -> Result<(i32, Option<Error>)> {
        self.pull(docker, &spec.image, job.timeout, cancel).await?;
        let Launch { env, wd, mut io } = launch;
        let io = &mut io;
        let args = &job.command.arguments;
        let mut labels = self.labels.clone();
        labels.insert("re-server.mode".into(), "fresh".into());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec![args[0].clone()]),
            cmd: Some(args[1..].to_vec()),
            env: Some(env),
            working_dir: Some(wd),
            user: spec.user.clone(),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(self.host_config(spec, false)),
            ..Default::default()
        };
        let id = self.create(docker, body, &spec.image).await?;
        let mut r = match self.upload_inputs(docker, &id).await {
            Ok(()) => self.fresh_body(docker, &id, job, io, cancel).await,
            Err(e) => Err(e),
        };
        if let Ok((_, None)) = &r {
            if let Err(e) = self.download_outputs(docker, &id, job).await {
                r = Err(e);
            }
        }
        self.remove(docker, &id).await;
        r
    }

    /// Archive mode: streams the materialised input tree into the container.
    async fn upload_inputs(&self, docker: &Docker, container: &str) -> Result<()> {
        if !self.archive {
            return Ok(());
        }
        let top = MOUNT_POINT.trim_start_matches('/');
        docker_archive::upload_dir(docker, container, self.mnt.join("exec"), top, "exec").await
    }

    /// Archive mode: copies the declared outputs back into the host
    /// directory, where `outputs::collect` finds them as in mount mode.
    async fn download_outputs(&self, docker: &Docker, container: &str, job: &PreparedAction) -> Result<()> {
        if !self.archive {
            return Ok(());
        }
        let cmd = &job.command;
        let wd = crate::paths::relative_path(&cmd.working_directory, "working_directory", true)?;
        let declared: Vec<&String> = if cmd.output_paths.is_empty() {
            cmd.output_files.iter().chain(&cmd.output_directories).collect()
        } else {
            cmd.output_paths.iter().collect()
        };
        for p in declared {
            let rel = crate::paths::relative_path(p, "output path", false)?;
            let local = self.mnt.join("exec").join(&wd).join(&rel);
            let Some(parent) = local.parent() else { continue };
            let remote = Path::new(EXEC_ROOT).join(&wd).join(&rel);
            docker_archive::download(docker, container, &remote.display().to_string(), parent).await?;
        }
        Ok(())
    }

    async fn fresh_body(
        &self,
        docker: &Docker,
        id: &str,
        job: &PreparedAction,
        io: &mut (tokio::fs::File, tokio::fs::File),
        cancel: &CancellationToken,
    ) -> Result<(i32, Option<Error>)> {
        let opts = AttachContainerOptionsBuilder::default().stream(true).stdout(true).stderr(true).build();
        let attached = docker.attach_container(id, Some(opts)).await.map_err(|e| self.engine_error("attaching", e))?;
        if let Err(e) = docker.start_container(id, None).await {
            let msg = engine_message(&e);
            // A program that cannot be started is the action's fault.
            let ours = status_of(&e).is_some()
                && ["executable file not found", "no such file or directory", "permission denied"]
                    .iter()
                    .any(|m| msg.contains(m));
            return Err(if ours {
                Error::InvalidArgument(format!("cannot start '{}': {msg}", job.command.arguments[0]))
            } else {
                self.engine_error("starting the container", e)
            });
        }
        if let Some(err) = self.pump(attached.output, io, job.timeout, cancel).await? {
            return Ok((-1, Some(err)));
        }
        // The output ended: the process has exited; wait for the engine to agree.
        let opts = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut wait = docker.wait_container(id, Some(opts));
        let _ = tokio::time::timeout(Duration::from_secs(30), wait.next()).await;
        let state = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| self.engine_error("inspecting the container", e))?
            .state
            .unwrap_or_default();
        let code = state.exit_code.unwrap_or(-1) as i32;
        // OOMKilled is set when any process of the container was killed; only
        // a failed action is blamed on it (one that recovered succeeded).
        if state.oom_killed == Some(true) && code != 0 {
            return Ok((code, Some(self.oom_error())));
        }
        Ok((code, None))
    }

    fn oom_error(&self) -> Error {
        Error::ResourceExhausted(format!(
            "killed: memory limit of {} bytes exceeded (docker worker {})",
            self.cfg.memory_limit.map(|m| m.to_string()).unwrap_or_else(|| "the container's".into()),
            self.id
        ))
    }

    /// Copies the output stream into the stdout/stderr files until it ends,
    /// the timeout passes or `cancel` fires (those return the error to report).
    async fn pump(
        &self,
        mut output: LogStream,
        io: &mut (tokio::fs::File, tokio::fs::File),
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Error>> {
        let (out, err) = io;
        let copy = async {
            while let Some(item) = output.next().await {
                let w = match item.map_err(|e| self.engine_error("reading the action's output", e))? {
                    LogOutput::StdErr { message } => err.write_all(&message).await,
                    LogOutput::StdOut { message } | LogOutput::Console { message } => out.write_all(&message).await,
                    LogOutput::StdIn { .. } => Ok(()),
                };
                w.map_err(|e| Error::io("writing the action's output", e))?;
            }
            out.flush().await.map_err(|e| Error::io("writing stdout", e))?;
            err.flush().await.map_err(|e| Error::io("writing stderr", e))?;
            Ok(None)
        };
        tokio::select! {
            r = copy => r,
            _ = tokio::time::sleep(timeout) => Ok(Some(Error::DeadlineExceeded(format!(
                "action timed out after {}s and was killed", timeout.as_secs())))),
            _ = cancel.cancelled() => Ok(Some(Error::Cancelled("action was cancelled".into()))),
        }
    }

    /// A started container to exec actions in, matching `spec`.
    async fn warm_container<'a>(
        &self,
        docker: &Docker,
        slot: &'a mut Option<Warm>,
        spec: &Spec,
        job: &PreparedAction,
        cancel: &CancellationToken,
    ) -> Result<&'a mut Warm> {
        if let Some(w) = slot.as_ref() {
            let why = if w.spec != *spec {
                Some("it was made for another image, network or user")
            } else if w.tasks >= self.cfg.tasks_max {
                Some("it ran tasks_max actions")
            } else if w.last_used.elapsed() >= Duration::from_secs(self.cfg.seconds_idle) {
                Some("it was idle for seconds_idle")
            } else {
                None
            };
            if let Some(why) = why {
                let old = slot.take().expect("checked");
                debug!(worker = %self.id, container = %old.id, "recycling warm container: {why}");
                self.remove(docker, &old.id).await;
            }
        }
        if slot.is_none() {
            self.pull(docker, &spec.image, job.timeout, cancel).await?;
            let mut labels = self.labels.clone();
            labels.insert("re-server.mode".into(), "warm".into());
            // Exits (and the engine removes it) once the lease stops changing.
            // Counts seconds from /proc/uptime, not loop turns: each cleanup
            // exec kills the loop's `sleep`, so turns can be much shorter.
            let keepalive = format!(
                "last=; read -r up _ < /proc/uptime; t=${{up%.*}}; \
                 while :; do sleep 1 || :; cur=; read -r cur < {MOUNT_POINT}/lease 2>/dev/null; \
                 read -r up _ < /proc/uptime; now=${{up%.*}}; \
                 if [ \"$cur\" != \"$last\" ]; then last=$cur; t=$now; \
                 elif [ $((now - t)) -ge {LEASE_EXPIRY_SECS} ]; then exit 0; fi; done"
            );
            let body = ContainerCreateBody {
                image: Some(spec.image.clone()),
                entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), keepalive]),
                cmd: Some(vec![]),
                working_dir: Some(MOUNT_POINT.into()),
                user: spec.user.clone(),
                labels: Some(labels),
                tty: Some(false),
                open_stdin: Some(false),
                host_config: Some(self.host_config(spec, true)),
                ..Default::default()
            };
            self.renew_lease();
            let id = self.create(docker, body, &spec.image).await?;
            if let Err(e) = docker.start_container(&id, None).await {
                self.remove(docker, &id).await;
                return Err(self.engine_error("starting the warm container", e));
            }
            debug!(worker = %self.id, container = %id, image = %spec.image, "warm container started");
            *self.warm_id.lock() = Some(id.clone());
            if self.archive {
                let n = self.renew_lease();
                self.push_lease(docker, &id, n).await;
            }
            let mut w = Warm { id, spec: spec.clone(), tasks: 0, last_used: Instant::now(), oom_kills: 0 };
            if let Ok((_, text)) = self.exec_capture(docker, &w.id, OOM_PROBE).await {
                w.oom_kills = parse_oom_kills(&text).unwrap_or(0);
            }
            *slot = Some(w);
        }
        Ok(slot.as_mut().expect("set above"))
    }

    /// Runs a short command as root in `container`; returns (exit code, stdout).
    async fn exec_capture(&self, docker: &Docker, container: &str, script: &str) -> Result<(i64, String)> {
        let opts = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec!["/bin/sh", "-c", script]),
            user: Some("0"),
            working_dir: Some("/"),
            ..Default::default()
        };
        let exec = docker.create_exec(container, opts).await.map_err(|e| self.engine_error("exec", e))?;
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&exec.id, None).await.map_err(|e| self.engine_error("exec", e))?
        {
            while let Some(Ok(item)) = tokio::time::timeout(Duration::from_secs(30), output.next())
                .await
                .map_err(|_| Error::Internal("a cleanup exec hung".into()))?
            {
                if let LogOutput::StdOut { message } = item {
                    text.push_str(&String::from_utf8_lossy(&message));
                }
            }
        }
        let code = docker.inspect_exec(&exec.id).await.map_err(|e| self.engine_error("exec", e))?.exit_code;
        Ok((code.unwrap_or(-1), text))
    }

    async fn run_warm(
        &self,
        docker: &Docker,
        job: &PreparedAction,
        spec: &Spec,
        launch: Launch,
        cancel: &CancellationToken,
        meta: &mut ExecutedActionMetadata,
    ) -> Result<(i32, Option<Error>)> {
        let Launch { env, wd, mut io } = launch;
        let io = &mut io;
        let mut slot = self.warm.lock().await;
        // A warm container that died (engine restart, lease expiry) is replaced once.
        let mut attempt = 0;
        let (container, exec_id) = loop {
            attempt += 1;
            let w = self.warm_container(docker, &mut slot, spec, job, cancel).await?;
            w.tasks += 1;
            w.last_used = Instant::now();
            if let Err(e) = self.upload_inputs(docker, &w.id).await {
                let old = slot.take().expect("set");
                self.remove(docker, &old.id).await;
                if attempt == 1 {
                    debug!(worker = %self.id, error = %e, "uploading inputs to the warm container failed; replacing it");
                    continue;
                }
                return Err(e);
            }
            let opts = CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(job.command.arguments.clone()),
                env: Some(env.clone()),
                user: spec.user.clone(),
                working_dir: Some(wd.clone()),
                ..Default::default()
            };
            match docker.create_exec(&w.id, opts).await {
                Ok(e) => break (w.id.clone(), e.id),
                Err(e) if attempt == 1 && matches!(status_of(&e), Some(404) | Some(409)) => {
                    debug!(worker = %self.id, error = %e, "warm container gone; replacing it");
                    let old = slot.take().expect("set");
                    self.remove(docker, &old.id).await;
                }
                Err(e) => {
                    let old = slot.take().expect("set");
                    self.remove(docker, &old.id).await;
                    return Err(self.engine_error("creating the exec", e));
                }
            }
        };
        meta.execution_start_timestamp = Some(SystemTime::now().into());
        let started = match docker.start_exec(&exec_id, None).await {
            Ok(StartExecResults::Attached { output, .. }) => self.pump(output, io, job.timeout, cancel).await,
            Ok(StartExecResults::Detached) => Err(Error::Internal("exec started detached".into())),
            Err(e) => Err(self.engine_error("starting the exec", e)),
        };
        match started {
            Ok(None) => {}
            Ok(Some(err)) => {
                // Timeout or cancel: removing the container kills the action.
                slot.take();
                self.remove(docker, &container).await;
                return Ok((-1, Some(err)));
            }
            Err(e) => {
                slot.take();
                self.remove(docker, &container).await;
                return Err(e);
            }
        }
        let code = match docker.inspect_exec(&exec_id).await {
            Ok(i) => i.exit_code.unwrap_or(-1) as i32,
            Err(e) => {
                slot.take();
                self.remove(docker, &container).await;
                return Err(self.engine_error("inspecting the exec", e));
            }
        };
        // Kill what the action left running; read the OOM counter.
        let mut error = None;
        let cleanup = self.exec_capture(docker, &container, CLEANUP).await;
        // Archive mode: outputs come out after leftovers were killed and
        // before the container is cleaned (or removed, if cleaning failed).
        if let Err(e) = self.download_outputs(docker, &container, job).await {
            slot.take();
            self.remove(docker, &container).await;
            return Err(e);
        }
        // Archive mode: the next action must not see this one's files.
        let cleared = !self.archive
            || cleanup.is_err()
            || matches!(self.exec_capture(docker, &container, CLEAR_EXEC_ROOT).await, Ok((0, _)));
        match cleanup {
            Ok((0, text)) if cleared => {
                let w = slot.as_mut().expect("still warm");
                let kills = parse_oom_kills(&text).unwrap_or(w.oom_kills);
                if kills > w.oom_kills && code != 0 {
                    error = Some(self.oom_error());
                }
                w.oom_kills = kills;
                w.last_used = Instant::now();
            }
            other => {
                debug!(worker = %self.id, result = ?other.map(|(c, _)| c), "cleanup exec failed; recycling the container");
                slot.take();
                self.remove(docker, &container).await;
                if code == 137 && self.cfg.memory_limit.is_some() {
                    warn!(worker = %self.id, "exit 137 and the OOM counter could not be read");
                }
            }
        }
        Ok((code, error))
    }

    async fn run_inner(
        &self,
        job: &PreparedAction,
        cancel: &CancellationToken,
        meta: &mut ExecutedActionMetadata,
    ) -> Result<(ActionResult, Option<Error>)> {
        let spec = self.spec(job)?;
        let docker = self.client()?;
        let exec_root = self.mnt.join("exec");
        if tokio::fs::symlink_metadata(&exec_root).await.is_ok() {
            crate::host_worker::remove_dir(exec_root.clone()).await;
        }
        tokio::fs::create_dir_all(&exec_root).await.map_err(|e| Error::io("creating action directory", e))?;

        meta.input_fetch_start_timestamp = Some(SystemTime::now().into());
        // In archive mode the container gets copies anyway; locally nothing
        // but the tar reader touches the links.
        let link =
            if self.archive || may_hard_link(spec.user.as_deref()) { LinkMode::HardLink } else { LinkMode::Copy };
        input_tree::materialise(&self.cas, &job.inputs, &exec_root, link).await?;
        let (root, command) = (exec_root.clone(), job.command.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            outputs::create_output_parents(&root, &command)?;
            open_dirs(&root)
        })
        .await
        .map_err(|e| Error::Internal(format!("prepare task failed: {e}")))??;
        meta.input_fetch_completed_timestamp = Some(SystemTime::now().into());

        let rel = crate::paths::relative_path(&job.command.working_directory, "working_directory", true)?;
        let wd = Path::new(EXEC_ROOT).join(rel).display().to_string();
        let mut env = self.base_env.clone();
        env.extend(job.command.environment_variables.iter().map(|v| format!("{}={}", v.name, v.value)));
        let (stdout_path, stderr_path) = (self.dir.join("stdout"), self.dir.join("stderr"));
        let create = |p: &Path| {
            std::fs::File::create(p).map(tokio::fs::File::from_std).map_err(|e| Error::io("creating output file", e))
        };
        let launch = Launch { env, wd, io: (create(&stdout_path)?, create(&stderr_path)?) };

        let (exit_code, error) = if self.cfg.warm {
            self.run_warm(&docker, job, &spec, launch, cancel, meta).await?
        } else {
            meta.execution_start_timestamp = Some(SystemTime::now().into());
            self.run_fresh(&docker, job, &spec, launch, cancel).await?
        };
        meta.execution_completed_timestamp = Some(SystemTime::now().into());

        let io = (stdout_path.as_path(), stderr_path.as_path());
        let result =
            outputs::action_result(&self.cas, &exec_root, &job.command, exit_code, error.is_none(), io, meta).await?;
        Ok((result, error))
    }
}

/// Read by the cleanup exec: cgroup v1, then v2.
const OOM_PROBE: &str = "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events 2>/dev/null; true";
/// Kills every process but the keepalive loop (PID 1 is immune), then probes.
const CLEANUP: &str = "kill -9 -1 2>/dev/null; cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events 2>/dev/null; true";

/// Archive mode: empties the action's directory inside a warm container.
const CLEAR_EXEC_ROOT: &str = "rm -rf /re-server/exec";

/// Lets any container user create outputs in the action's directories.
fn open_dirs(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("listing action directory", e))?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Worker for DockerWorker {
    fn id(&self) -> &str {
        &self.id
    }

    fn properties(&self) -> &Properties {
        &self.properties
    }

    /// Pings the engine (answer reused for [`HEALTH_TTL`]).
    async fn is_healthy(&self) -> bool {
        let cached = *self.health.lock();
        if let Some((at, ok)) = cached {
            if at.elapsed() < HEALTH_TTL {
                return ok;
            }
        }
        let ok = self.check().await;
        if cached.map(|(_, was)| was) != Some(ok) {
            if ok {
                info!(worker = %self.id, engine = %self.engine_name, "docker engine is reachable");
            } else {
                warn!(worker = %self.id, engine = %self.engine_name, "docker engine is unreachable; worker paused");
            }
        }
        *self.health.lock() = Some((Instant::now(), ok));
        ok
    }

    async fn run(&self, job: &PreparedAction, cancel: CancellationToken) -> RunOutcome {
        let mut meta = ExecutedActionMetadata {
            worker: self.id.clone(),
            worker_start_timestamp: Some(SystemTime::now().into()),
            ..Default::default()
        };
        let outcome = self.run_inner(job, &cancel, &mut meta).await;
        meta.worker_completed_timestamp = Some(SystemTime::now().into());
        crate::host_worker::remove_dir(self.mnt.join("exec")).await;
        let (mut result, error) = match outcome {
            Ok((r, e)) => (r, e),
            Err(e) => (ActionResult::default(), Some(e)),
        };
        crate::worker::set_virtual_duration(&mut meta);
        result.execution_metadata = Some(meta);
        RunOutcome { result, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything/at:all"));
        assert!(glob_match("ubuntu:22.04", "ubuntu:22.04"));
        assert!(!glob_match("ubuntu:22.04", "ubuntu:24.04"));
        assert!(glob_match("ubuntu:*", "ubuntu:24.04"));
        assert!(glob_match("gcr.io/proj/*", "gcr.io/proj/a/b:1"));
        assert!(!glob_match("gcr.io/proj/*", "gcr.io/other/a"));
        assert!(glob_match("*/busybox:*", "re-server-test/busybox:latest"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn references() {
        assert_eq!(split_reference("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_reference("ubuntu:22.04"), ("ubuntu".into(), "22.04".into()));
        assert_eq!(split_reference("localhost:5000/a/b"), ("localhost:5000/a/b".into(), "latest".into()));
        assert_eq!(split_reference("localhost:5000/a:1"), ("localhost:5000/a".into(), "1".into()));
        assert_eq!(split_reference("a@sha256:abc"), ("a".into(), "sha256:abc".into()));
    }

    #[test]
    fn oom_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_oom_kills(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n";
        assert_eq!(parse_oom_kills(v2), Some(2));
        assert_eq!(parse_oom_kills(""), None);
    }

    #[test]
    fn hard_links_only_for_other_numeric_users() {
        assert!(!may_hard_link(None));
        assert!(!may_hard_link(Some("0:0")));
        assert!(!may_hard_link(Some("builder")));
        let me = unsafe { libc::geteuid() };
        assert!(!may_hard_link(Some(&me.to_string())));
        assert!(may_hard_link(Some(&format!("{}:5", me + 12345))));
    }

    #[test]
    fn roots() {
        assert!(is_root("root"));
        assert!(is_root("0:0"));
        assert!(!is_root("1000:1000"));
        assert!(!is_root("rooty"));
    }
}
