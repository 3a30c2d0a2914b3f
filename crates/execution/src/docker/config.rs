//! `[[execution.pool.workers]] type = "docker"`: workers that run each action
//! in a container of a Docker engine (through bollard).
//!
//! ```toml
//! [[execution.pool.workers]]
//! type = "docker"
//! count = 2
//! image = "ubuntu:22.04"        # used when the action names no container-image
//! always_pull = false           # true: pull before creating each container
//! cpu_limit = 2.0               # cores (NanoCpus)
//! memory_limit = 4294967296     # bytes (Memory and MemorySwap)
//! network_mode = "none"         # none | bridge | host
//! user = "1000:1000"            # user[:group] inside the container
//! allowed_images = ["*"]        # container-image values an action may ask for
//! docker_host = "unix:///run/docker-b.sock"   # or tcp://HOST:2376 + tls_*
//! warm = true                   # reuse one started container (exec per action)
//! tasks_max = 100               # ... recycled after this many actions
//! seconds_idle = 300            # ... or after this long unused
//! file_transfer = "archive"     # mount (default for local sockets) | archive (default for tcp://)
//! [[execution.pool.workers.volumes]]
//! host_path = "/var/cache/build"
//! container_path = "/cache"
//! read_only = true
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use re_proto::ConfigError;
use serde::Deserialize;

/// Where the container's network comes from (Docker's HostConfig.NetworkMode).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only a loopback interface (the default: actions are hermetic).
    #[default]
    None,
    /// The engine's default bridge: outbound network access.
    Bridge,
    /// The host's network namespace.
    Host,
}

impl NetworkMode {
    pub fn as_docker(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
        }
    }
}

/// How the action's files reach the container.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileTransfer {
    /// Bind-mount the worker's host directory: the engine must see the
    /// server's filesystem (a local engine).
    Mount,
    /// Copy inputs in and outputs out through the engine's archive API:
    /// works with an engine on another machine.
    Archive,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DockerVolume {
    pub host_path: PathBuf,
    pub container_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerWorkerConfig {
    /// The group's name (status API, `POST /api/workers/add`).
    pub name: Option<String>,
    pub count: usize,
    /// The image for actions without a `container-image` property.
    pub image: String,
    /// Pull the image before creating each container (bounded by a timeout);
    /// false: the image must already be on the engine.
    pub always_pull: bool,
    /// CPU cores per container (HostConfig.NanoCpus).
    pub cpu_limit: Option<f64>,
    /// Bytes of memory per container (Memory; MemorySwap is set equal, so no swap).
    pub memory_limit: Option<u64>,
    /// The most network an action may get; see `docker_worker` for `dockerNetwork`.
    pub network_mode: NetworkMode,
    /// `user[:group]` (names or ids, as `docker run --user`); unset = the image's user.
    pub user: Option<String>,
    /// Glob patterns (`*` matches anything) of the `container-image` values an
    /// action may ask for; unset = only `image`.
    pub allowed_images: Option<Vec<String>>,
    /// `unix:///path`, `tcp://host:port` (`http://`, `https://`); unset =
    /// `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
    /// PEM files for a TLS `tcp://` engine; all three or none.
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Parent of the per-worker directories bind-mounted into containers;
    /// unset (empty) means `<data_dir>/work`. In `mount` mode the engine
    /// must see the same filesystem.
    pub work_dir: PathBuf,
    /// Server environment variables passed into the container (besides the
    /// image's environment and the action's own variables). Default: none.
    pub env_whitelist: Vec<String>,
    /// Added to what the worker advertises.
    pub properties: BTreeMap<String, String>,
    /// A warm container is replaced after this many actions.
    pub tasks_max: u64,
    /// A warm container unused this long is removed.
    pub seconds_idle: u64,
    /// true: one started container per worker, each action runs via `exec`;
    /// false: a fresh container per action, removed afterwards.
    pub warm: bool,
    /// Unset: `mount` for a local socket, `archive` for a tcp:// engine.
    pub file_transfer: Option<FileTransfer>,
    pub volumes: Vec<DockerVolume>,
}

impl Default for DockerWorkerConfig {
    fn default() -> Self {
        Self {
            name: None,
            count: 1,
            image: String::new(),
            always_pull: false,
            cpu_limit: None,
            memory_limit: None,
            network_mode: NetworkMode::None,
            user: None,
            allowed_images: None,
            docker_host: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            work_dir: PathBuf::new(),
            env_whitelist: Vec::new(),
            properties: BTreeMap::new(),
            tasks_max: 100,
            seconds_idle: 300,
            warm: true,
            file_transfer: None,
            volumes: Vec::new(),
        }
    }
}

impl DockerWorkerConfig {
    /// Fills unset paths from the data directory and checks what serde
    /// cannot, so a bad config stops the server at start.
    pub fn resolve(&mut self, data_dir: &Path) -> Result<(), ConfigError> {
        if self.work_dir.as_os_str().is_empty() {
            self.work_dir = data_dir.join("work");
        }
        self.check().map_err(|(key, reason)| ConfigError::new(key, reason))
    }

    /// The first bad value as (key, reason).
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.image.trim().is_empty() {
            return Err(("image", "must be set: the image for actions that name no container-image".into()));
        }
        if let Some(c) = self.cpu_limit {
            if !(c.is_finite() && c > 0.0) {
                return Err(("cpu_limit", format!("must be a positive number of cores, not {c}")));
            }
        }
        if let Some(m) = self.memory_limit {
            // Docker refuses less than 6 MiB.
            if m < 6 * 1024 * 1024 || m > i64::MAX as u64 {
                return Err(("memory_limit", format!("must be at least 6291456 bytes (6 MiB), not {m}")));
            }
        }
        if self.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(("user", "must not be empty (leave it out for the image's user)".into()));
        }
        if self.tasks_max == 0 {
            return Err(("tasks_max", "must be at least 1".into()));
        }
        let tls = [&self.tls_ca, &self.tls_cert, &self.tls_key].iter().filter(|t| t.is_some()).count();
        if tls != 0 && tls != 3 {
            return Err(("tls_ca", "tls_ca, tls_cert and tls_key go together: set all three or none".into()));
        }
        if let Some(h) = &self.docker_host {
            let known = ["unix://", "tcp://", "http://", "https://"];
            if !known.iter().any(|p| h.starts_with(p)) {
                return Err(("docker_host", format!("'{h}' must start with unix://, tcp://, http:// or https://")));
            }
            if tls == 3 && h.starts_with("unix://") {
                return Err(("tls_ca", "tls_* files only apply to a tcp:// docker_host".into()));
            }
        }
        for v in &self.volumes {
            if !v.host_path.is_absolute() || !v.container_path.starts_with('/') {
                return Err((
                    "volumes",
                    format!("{} -> {}: both paths must be absolute", v.host_path.display(), v.container_path),
                ));
            }
            if v.container_path == "/re-server" || v.container_path.starts_with("/re-server/") {
                return Err(("volumes", format!("container_path {} is reserved for action files", v.container_path)));
            }
        }
        Ok(())
    }

    pub fn transfer(&self) -> FileTransfer {
        let remote = self.docker_host.as_deref().is_some_and(|h| !h.starts_with("unix://"));
        self.file_transfer.unwrap_or(if remote { FileTransfer::Archive } else { FileTransfer::Mount })
    }

    /// The patterns `container-image` values are checked against.
    pub fn allowed_patterns(&self) -> Vec<String> {
        self.allowed_images.clone().unwrap_or_else(|| vec![self.image.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::result::Result<DockerWorkerConfig, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = parse("image = \"busybox\"").unwrap();
        assert_eq!(c.count, 1);
        assert!(c.warm);
        assert_eq!(c.tasks_max, 100);
        assert_eq!(c.seconds_idle, 300);
        assert_eq!(c.network_mode, NetworkMode::None);
        assert_eq!(c.allowed_patterns(), vec!["busybox".to_string()]);
        assert_eq!(c.transfer(), FileTransfer::Mount);
        let mut remote = c.clone();
        remote.docker_host = Some("tcp://127.0.0.1:2376".into());
        assert_eq!(remote.transfer(), FileTransfer::Archive, "a tcp engine cannot see our files");
        remote.file_transfer = Some(FileTransfer::Mount);
        assert_eq!(remote.transfer(), FileTransfer::Mount);
        assert!(c.check().is_ok());
        let err = parse("image = \"busybox\"\nnetwork = \"host\"").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        assert_eq!(parse("user = \"bob\"").unwrap().check().unwrap_err().0, "image", "image is required");
    }

    #[test]
    fn validation() {
        let mut c = parse("image = \"busybox\"").unwrap();
        c.memory_limit = Some(1024);
        assert!(c.check().is_err());
        c.memory_limit = Some(32 << 20);
        c.cpu_limit = Some(0.0);
        assert!(c.check().is_err());
        c.cpu_limit = Some(0.5);
        c.tls_ca = Some("/ca.pem".into());
        assert!(c.check().is_err(), "tls files go together");
        c.tls_ca = None;
        c.docker_host = Some("ssh://x".into());
        assert!(c.check().is_err());
        c.docker_host = Some("tcp://10.0.0.1:2376".into());
        assert!(c.check().is_ok());
        c.volumes = vec![DockerVolume { host_path: "rel".into(), container_path: "/x".into(), read_only: true }];
        assert!(c.check().is_err());
        c.volumes =
            vec![DockerVolume { host_path: "/a".into(), container_path: "/re-server/x".into(), read_only: false }];
        assert!(c.check().is_err());
    }
}
