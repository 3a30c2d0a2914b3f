//! The whole TOML file: each crate owns its section's structs; this module
//! only composes them and reports errors as `file: key: reason`.
use std::fmt;
use std::path::{Path, PathBuf};

use re_action_cache::ActionCacheConfig;
use re_cas::compression::Compressor;
use re_cas::CasConfig;
use re_execution::ExecutionConfig;
use re_proto::ConfigError;
use serde::Deserialize;

/// Used when `re-server` runs without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub capabilities: CapabilitiesConfig,
    pub execution: ExecutionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub address: String,
    pub instance_name: String,
    /// Base for storage directories that are not set explicitly; unset
    /// (empty): `$XDG_DATA_HOME/re-server` or `~/.local/share/re-server`.
    pub data_dir: PathBuf,
    /// On SIGTERM, running actions may finish for this long; then they are
    /// stopped and their clients told to retry.
    pub shutdown_grace_seconds: u64,
    /// Connections open at once; more wait until one closes.
    pub max_connections: usize,
    /// HTTP/2 streams (RPCs in flight) per connection.
    pub max_streams_per_connection: u32,
    /// The status page, its JSON API and `/metrics`, kept off the gRPC port;
    /// empty turns the HTTP surface off.
    pub http_address: String,
    /// A file whose first line is the token the HTTP API's POST routes (and,
    /// off loopback, its GET routes) require as `Authorization: Bearer`.
    pub admin_token_file: Option<PathBuf>,
    /// Record Prometheus metrics (served at `/metrics`).
    pub metrics: bool,
    pub auth: AuthConfig,
    /// TLS on the gRPC port (`tls.rs`).
    pub tls: Option<crate::tls::TlsConfig>,
}

/// `[server.auth]`: who may call the gRPC port (`crates/auth`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens and their roles; unset: every call is allowed.
    pub tokens_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8980".into(),
            instance_name: String::new(),
            data_dir: PathBuf::new(),
            shutdown_grace_seconds: 60,
            max_connections: 1024,
            max_streams_per_connection: 256,
            http_address: "127.0.0.1:8981".into(),
            admin_token_file: None,
            metrics: true,
            auth: AuthConfig::default(),
            tls: None,
        }
    }
}

impl ServerConfig {
    fn resolve(&mut self) -> Result<(), ConfigError> {
        self.address
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::new("address", format!("'{}' is not HOST:PORT: {e}", self.address)))?;
        if !self.http_address.is_empty() {
            self.http_address.parse::<std::net::SocketAddr>().map_err(|e| {
                ConfigError::new(
                    "http_address",
                    format!("'{}' is not HOST:PORT (or \"\" for none): {e}", self.http_address),
                )
            })?;
        }
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new("admin_token_file", format!("cannot read {}: {e}", path.display())))?;
            if text.lines().next().unwrap_or("").trim().len() < 16 {
                return Err(ConfigError::new(
                    "admin_token_file",
                    format!("{}: the token (its first line) must have at least 16 characters", path.display()),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            // The error starts with the key it is about (cert_file, key_file, client_ca_file).
            crate::tls::ReloadableTls::load(tls).map_err(|e| {
                let (key, reason) = e.split_once(": ").unwrap_or(("", e.as_str()));
                ConfigError::new(format!("tls.{key}"), reason.to_string())
            })?;
        }
        if let Some(path) = &self.auth.tokens_file {
            re_auth::TokensFile::load(path).map_err(|e| ConfigError::new("auth.tokens_file", e))?;
        }
        if self.data_dir.as_os_str().is_empty() {
            self.data_dir = default_data_dir();
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub cas: CasConfig,
    pub action_cache: ActionCacheConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapabilitiesConfig {
    pub digest_functions: Vec<String>,
    pub max_batch_total_size_bytes: u64,
    pub supported_compressors: Vec<String>,
    pub exec_enabled: bool,
    pub action_cache_update_enabled: bool,
}

impl Default for CapabilitiesConfig {
    fn default() -> Self {
        Self {
            digest_functions: vec!["SHA256".into()],
            max_batch_total_size_bytes: 4 * 1024 * 1024,
            supported_compressors: vec!["ZSTD".into(), "DEFLATE".into()],
            exec_enabled: true,
            action_cache_update_enabled: true,
        }
    }
}

impl CapabilitiesConfig {
    /// Parsed `supported_compressors` (validated at load).
    pub fn compressors(&self) -> Vec<Compressor> {
        self.supported_compressors.iter().filter_map(|c| Compressor::from_config_name(c)).collect()
    }

    fn resolve(&self) -> Result<(), ConfigError> {
        if self.digest_functions.is_empty() || self.digest_functions.iter().any(|d| !d.eq_ignore_ascii_case("SHA256")) {
            return Err(ConfigError::new(
                "digest_functions",
                format!("{:?}: only \"SHA256\" is supported", self.digest_functions),
            ));
        }
        for c in &self.supported_compressors {
            if matches!(Compressor::from_config_name(c), Some(Compressor::Identity) | None) {
                return Err(ConfigError::new(
                    "supported_compressors",
                    format!("'{c}' is not one of \"ZSTD\", \"DEFLATE\""),
                ));
            }
        }
        if self.max_batch_total_size_bytes < 1024 {
            return Err(ConfigError::new("max_batch_total_size_bytes", "must be at least 1024"));
        }
        Ok(())
    }
}

/// Command-line values that take the place of config keys.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--address`: `[server] address`.
    pub address: Option<String>,
    /// `--data-dir`: `[server] data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `--http-address`: `[server] http_address`.
    pub http_address: Option<String>,
}

/// A configuration problem, reported as one line naming file, key and reason.
#[derive(Debug)]
pub struct ConfigFileError {
    pub file: String,
    pub error: ConfigError,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.error)
    }
}

impl std::error::Error for ConfigFileError {}

/// `worker.toml` of a worker agent (`re-server worker`): its `[worker]`
/// section and the `[execution]` tables its local workers come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    pub worker: re_agent::AgentConfig,
    #[serde(default)]
    pub execution: ExecutionConfig,
}

impl WorkerFile {
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let file = path.display().to_string();
        let fail = |error| ConfigFileError { file: file.clone(), error };
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(ConfigError::new("", format!("cannot read: {e}"))))?;
        let de = toml::Deserializer::new(&text);
        let mut config: WorkerFile = serde_path_to_error::deserialize(de).map_err(|e| fail(syntax_error(&text, e)))?;
        config.worker.resolve().map_err(|e| fail(e.within("worker")))?;
        let data_dir = config.worker.data_dir().to_path_buf();
        config.execution.resolve(&data_dir).map_err(|e| fail(e.within("execution")))?;
        Ok(config)
    }
}

impl Config {
    /// Reads, parses and resolves a config file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
            file: file.clone(),
            error: ConfigError::new("", format!("cannot read: {e}")),
        })?;
        Self::parse(&text, &file, overrides)
    }

    /// Parses `text`, applies `overrides`, then resolves every section once:
    /// defaults that depend on the data directory are filled in and every
    /// value is checked. The result is what the server runs with.
    pub fn parse(text: &str, file: &str, overrides: &Overrides) -> Result<Self, ConfigFileError> {
        let fail = |error| ConfigFileError { file: file.to_string(), error };
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| fail(syntax_error(text, e)))?;
        if let Some(a) = &overrides.address {
            config.server.address = a.clone();
        }
        if let Some(d) = &overrides.data_dir {
            config.server.data_dir = d.clone();
        }
        if let Some(a) = &overrides.http_address {
            config.server.http_address = a.clone();
        }
        config.resolve().map_err(fail)?;
        Ok(config)
    }

    fn resolve(&mut self) -> Result<(), ConfigError> {
        self.server.resolve().map_err(|e| e.within("server"))?;
        let data_dir = self.server.data_dir.clone();
        self.capabilities.resolve().map_err(|e| e.within("capabilities"))?;
        self.storage.cas.resolve(&data_dir).map_err(|e| e.within("storage.cas"))?;
        self.storage.action_cache.resolve(&data_dir).map_err(|e| e.within("storage.action_cache"))?;
        self.execution.resolve(&data_dir).map_err(|e| e.within("execution"))
    }
}

/// Where storage goes when neither the file nor `--data-dir` says.
fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("re-server");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/re-server"),
        None => PathBuf::from("/var/lib/re-server"),
    }
}

/// A TOML or type error, keyed by its path and pointing at its line.
fn syntax_error(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let key = e.path().to_string();
    let inner = e.into_inner();
    // For an unknown field the span covers its table; point at the key itself.
    let unknown = inner.message().strip_prefix("unknown field `").and_then(|m| m.split('`').next());
    let key_line = unknown.and_then(|k| {
        text.lines().position(|l| l.trim_start().strip_prefix(k).is_some_and(|r| r.trim_start().starts_with('=')))
    });
    let line = key_line
        .map(|i| i + 1)
        .or_else(|| inner.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)));
    let reason = match line {
        Some(l) => format!("{} (line {l})", inner.message()),
        None => inner.message().to_string(),
    };
    ConfigError::new(if key == "." { String::new() } else { key }, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let c = Config::parse(DEFAULT_CONFIG, "<default>", &Overrides::default()).unwrap();
        assert_eq!(c.server.address, "127.0.0.1:8980");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = Config::parse("[storage.cas]\nbackend = \"memory\"\nbogus = 1\n", "x.toml", &Overrides::default())
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.toml: key `storage.cas"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        assert!(msg.contains("(line 3)"), "{msg}");
    }

    /// The TOML a Kubernetes ConfigMap of deploy/kubernetes carries under `key`.
    fn config_map_toml(file: &str, key: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes").join(file);
        let yaml = std::fs::read_to_string(path).unwrap();
        let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
        lines.next().unwrap_or_else(|| panic!("{file} has no {key}"));
        let body: Vec<&str> = lines.take_while(|l| l.is_empty() || l.starts_with("    ")).collect();
        body.iter().map(|l| l.strip_prefix("    ").unwrap_or(l)).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn example_worker_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/worker.toml");
        let file = WorkerFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file.execution.pool.workers.len(), 1);
        let bad = std::env::temp_dir().join(format!("worker-{}.toml", std::process::id()));
        std::fs::write(&bad, "[worker]\ncache_dir = \"/tmp/x\"\ncache_size = 5\n").unwrap();
        let err = WorkerFile::load(&bad).unwrap_err().to_string();
        let _ = std::fs::remove_file(&bad);
        assert!(err.contains("worker") && err.contains("cache_size") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn kubernetes_config_maps_hold_configs_these_structs_accept() {
        let server: Config = toml::from_str(&config_map_toml("server-config.yaml", "server.toml")).unwrap();
        assert!(!server.execution.pool.local_workers);
        let agent: WorkerFile = toml::from_str(&config_map_toml("agent-config.yaml", "worker.toml")).unwrap();
        assert!(agent.worker.token_file.is_some());
    }

    #[test]
    fn example_configs_parse() {
        for name in ["pool.toml", "host-only.toml", "docker.toml", "default.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
            Config::load(&path, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn bad_docker_worker_values_name_the_key() {
        let text = "[[execution.pool.workers]]\ntype = \"host\"\n\
                    [[execution.pool.workers]]\ntype = \"docker\"\nimage = \"busybox\"\nmemory_limit = 1024\n";
        let err = Config::parse(text, "x.toml", &Overrides::default()).unwrap_err();
        assert_eq!(err.error.key, "execution.pool.workers[1].memory_limit", "{err}");
        assert!(err.to_string().contains("6 MiB"), "{err}");
        let text = "[[execution.pool.workers]]\ntype = \"docker\"\nimage = \"busybox\"\nnetwork_mode = \"wifi\"\n";
        let err = Config::parse(text, "x.toml", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("wifi"), "{err}");
    }

    #[test]
    fn run_as_group_alone_and_an_unreachable_work_dir_are_refused_at_load() {
        let text = "[[execution.pool.workers]]\ntype = \"host\"\nrun_as_group = \"nogroup\"\n";
        let err = Config::parse(text, "x.toml", &Overrides::default()).unwrap_err();
        assert_eq!(err.error.key, "execution.pool.workers[0].run_as_group", "{err}");
        assert!(err.to_string().contains("needs run_as_user"), "{err}");

        // A work_dir below a directory only its owner may enter.
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let text = format!(
            "[[execution.pool.workers]]\ntype = \"host\"\nrun_as_user = \"nobody\"\nwork_dir = \"{}/work\"\n",
            dir.path().display()
        );
        let err = Config::parse(&text, "x.toml", &Overrides::default()).unwrap_err();
        assert_eq!(err.error.key, "execution.pool.workers[0].work_dir", "{err}");
        assert!(err.to_string().contains("nobody"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Config::parse(&text, "x.toml", &Overrides::default()).unwrap();
    }

    #[test]
    fn unset_paths_come_from_the_data_dir() {
        let overrides = Overrides { data_dir: Some("/srv/re".into()), ..Default::default() };
        let c = Config::parse("[[execution.pool.workers]]\ntype = \"docker\"\nimage = \"busybox\"\n", "x", &overrides)
            .unwrap();
        assert_eq!(c.storage.cas.root_dir, std::path::Path::new("/srv/re/cas"));
        assert_eq!(c.storage.action_cache.root_dir, std::path::Path::new("/srv/re/cache"));
        match &c.execution.pool.workers[0] {
            re_execution::config::WorkerConfig::Docker(d) => {
                assert_eq!(d.work_dir, std::path::Path::new("/srv/re/work"))
            }
            other => panic!("{other:?}"),
        }
        let c = Config::parse("", "x", &overrides).unwrap();
        assert!(!c.execution.pool.workers.is_empty(), "the default pool has host workers");
    }

    #[test]
    fn bad_value_names_key() {
        let err = Config::parse("[storage.cas]\nbackend = \"tape\"\n", "x.toml", &Overrides::default()).unwrap_err();
        assert_eq!(err.error.key, "storage.cas.backend");
        let err = Config::parse("[capabilities]\ndigest_functions = [\"MD5\"]\n", "x.toml", &Overrides::default())
            .unwrap_err();
        assert_eq!(err.error.key, "capabilities.digest_functions");
        let err = Config::parse("[server]\naddress = \"nope\"\n", "x.toml", &Overrides::default()).unwrap_err();
        assert_eq!(err.error.key, "server.address");
    }
}
