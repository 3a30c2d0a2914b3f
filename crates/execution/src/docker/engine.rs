//! One docker worker's view of its engine (through bollard): the connection,
//! health (a ping, its answer kept briefly), engine errors mapped to the
//! statuses clients see, and the containers the worker owns: labels,
//! creation, pulls, removal, and removal of what a previous run left.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use re_proto::{Error, Result};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::DockerWorkerConfig;
use super::spec::split_reference;

/// How long a health answer is reused.
const HEALTH_TTL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Seconds bollard waits for any one engine request.
const CLIENT_TIMEOUT_SECS: u64 = 120;
/// Pulls never take longer than this (nor than the action's timeout).
const PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// Non-running containers of a deleted worker directory older than this are removed.
const ORPHAN_AGE_SECS: i64 = 120;

pub struct Engine {
    /// The worker this view belongs to (messages, labels).
    worker: String,
    /// `docker_host` as configured, or the local socket.
    name: String,
    cfg: DockerWorkerConfig,
    /// `re-server=1`, `re-server.worker=<id>`, `re-server.dir=<worker dir>`.
    labels: HashMap<String, String>,
    dir: PathBuf,
    client: parking_lot::Mutex<Option<Docker>>,
    health: parking_lot::Mutex<Option<(Instant, bool)>>,
    /// Version negotiated and stale containers removed.
    ready: AtomicBool,
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
pub fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The HTTP status of an engine answer, `None` if the engine gave none.
pub fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl Engine {
    /// Contacting the engine is left to the first health check, so an engine
    /// that is down does not stop the server.
    pub fn new(worker: &str, cfg: &DockerWorkerConfig, dir: &Path) -> Self {
        let labels = HashMap::from([
            ("re-server".to_string(), "1".to_string()),
            ("re-server.worker".to_string(), worker.to_string()),
            ("re-server.dir".to_string(), dir.display().to_string()),
        ]);
        let name = cfg
            .docker_host
            .clone()
            .unwrap_or_else(|| std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()));
        let client = match connect(cfg) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(worker, engine = %name, error = %e, "docker engine not reachable yet");
                None
            }
        };
        Self {
            worker: worker.to_string(),
            name,
            cfg: cfg.clone(),
            labels,
            dir: dir.to_path_buf(),
            client: parking_lot::Mutex::new(client),
            health: parking_lot::Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Labels for a container of this worker, with its mode (`warm`/`fresh`).
    pub fn labels(&self, mode: &str) -> HashMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("re-server.mode".into(), mode.into());
        labels
    }

    pub fn client(&self) -> Result<Docker> {
        let mut c = self.client.lock();
        if c.is_none() {
            *c = Some(connect(&self.cfg).map_err(|e| self.unavailable("connecting", &e))?);
        }
        Ok(c.clone().expect("client set"))
    }

    fn unavailable(&self, what: &str, e: &bollard::errors::Error) -> Error {
        Error::Unavailable(format!("docker engine {} ({}) failed while {what}: {e}", self.name, self.worker))
    }

    /// Maps an engine error; connection failures also mark the engine unhealthy.
    pub fn error(&self, what: &str, e: bollard::errors::Error) -> Error {
        match status_of(&e) {
            Some(_) => Error::Internal(format!("docker engine {}: {what}: {}", self.name, engine_message(&e))),
            None => {
                *self.health.lock() = Some((Instant::now(), false));
                self.unavailable(what, &e)
            }
        }
    }

    /// Pings the engine (answer reused for [`HEALTH_TTL`]).
    pub async fn is_healthy(&self) -> bool {
        let cached = *self.health.lock();
        if let Some((at, ok)) = cached {
            if at.elapsed() < HEALTH_TTL {
                return ok;
            }
        }
        let ok = self.check().await;
        if cached.map(|(_, was)| was) != Some(ok) {
            if ok {
                info!(worker = %self.worker, engine = %self.name, "docker engine is reachable");
            } else {
                warn!(worker = %self.worker, engine = %self.name, "docker engine is unreachable; worker paused");
            }
        }
        *self.health.lock() = Some((Instant::now(), ok));
        ok
    }

    async fn check(&self) -> bool {
        let Ok(docker) = self.client() else { return false };
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(worker = %self.worker, error = %e, "docker ping failed");
                return false;
            }
            Err(_) => return false,
        }
        if !self.ready.load(Ordering::Acquire) {
            // Shared by every clone of this client.
            if let Ok(Err(e)) = tokio::time::timeout(PING_TIMEOUT, docker.clone().negotiate_version()).await {
                warn!(worker = %self.worker, error = %e, "docker API version negotiation failed");
                return false;
            }
            if let Err(e) = self.remove_stale(&docker).await {
                warn!(worker = %self.worker, error = %e, "could not remove stale containers");
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
            vec![format!("re-server.worker={}", self.worker), format!("re-server.dir={}", self.dir.display())],
        )]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let stale = docker.list_containers(Some(opts)).await?;
        for c in &stale {
            if let Some(id) = &c.id {
                self.remove(docker, id).await;
            }
        }
        if !stale.is_empty() {
            info!(worker = %self.worker, count = stale.len(), "removed stale containers of a previous run");
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
                    info!(worker = %self.worker, container = %id, dir = ?dir, "removing an orphaned container");
                    self.remove(docker, id).await;
                }
            }
        }
        Ok(())
    }

    /// Force-removes a container (killing what runs in it); errors are logged.
    pub async fn remove(&self, docker: &Docker, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match docker.remove_container(id, Some(opts)).await {
            Ok(()) => debug!(worker = %self.worker, container = %id, "container removed"),
            // Gone already, or the engine is removing it (auto-remove).
            Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => {}
            Err(e) => warn!(worker = %self.worker, container = %id, error = %e, "could not remove container"),
        }
    }

    /// Pulls `image` if configured to; bounded by a timeout and `cancel`.
    pub async fn pull(&self, docker: &Docker, image: &str, limit: Duration, cancel: &CancellationToken) -> Result<()> {
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
                        self.error(&format!("pulling {image}"), e)
                    }
                    _ => Error::FailedPrecondition(format!(
                        "docker engine {} could not pull {image}: {}",
                        self.name,
                        engine_message(&e)
                    )),
                })?;
            }
            Ok(())
        };
        tokio::select! {
            r = pull => r,
            _ = tokio::time::sleep(limit) => Err(Error::DeadlineExceeded(format!(
                "pulling {image} on docker engine {} did not finish within {}s", self.name, limit.as_secs()))),
            _ = cancel.cancelled() => Err(Error::Cancelled("action was cancelled while its image was pulled".into())),
        }
    }

    pub async fn create(&self, docker: &Docker, body: ContainerCreateBody, image: &str) -> Result<String> {
        match docker.create_container(None, body).await {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(404) => Err(Error::FailedPrecondition(format!(
                "docker engine {}: {}{}",
                self.name,
                engine_message(&e),
                if self.cfg.always_pull {
                    String::new()
                } else {
                    format!(" (always_pull = false: {image} must already be on the engine)")
                }
            ))),
            Err(e) => Err(self.error(&format!("creating a container from {image}"), e)),
        }
    }

    /// Runs a short command as root in `container`; returns (exit code, stdout).
    pub async fn exec_capture(&self, docker: &Docker, container: &str, script: &str) -> Result<(i64, String)> {
        let opts = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec!["/bin/sh", "-c", script]),
            user: Some("0"),
            working_dir: Some("/"),
            ..Default::default()
        };
        let exec = docker.create_exec(container, opts).await.map_err(|e| self.error("exec", e))?;
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&exec.id, None).await.map_err(|e| self.error("exec", e))?
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
        let code = docker.inspect_exec(&exec.id).await.map_err(|e| self.error("exec", e))?.exit_code;
        Ok((code.unwrap_or(-1), text))
    }
}
