//! The whole TOML file: each crate owns its section's structs; this module
//! only composes them and reports errors as `file: key: reason`.
use std::fmt;
use std::path::{Path, PathBuf};

use re_action_cache::ActionCacheConfig;
use re_cas::compression::Compressor;
use re_cas::CasConfig;
use re_execution::ExecutionConfig;
use serde::Deserialize;

/// Used when `re-server` runs without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub capabilities: CapabilitiesConfig,
    #[serde(default)]
    pub execution: ExecutionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_address")]
    pub address: String,
    #[serde(default)]
    pub instance_name: String,
    /// Base for storage directories that are not set explicitly.
    pub data_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { address: default_address(), instance_name: String::new(), data_dir: None }
    }
}

fn default_address() -> String {
    "127.0.0.1:8980".into()
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub cas: CasConfig,
    #[serde(default)]
    pub action_cache: ActionCacheConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesConfig {
    #[serde(default = "default_digest_functions")]
    pub digest_functions: Vec<String>,
    #[serde(default = "default_max_batch")]
    pub max_batch_total_size_bytes: u64,
    #[serde(default = "default_compressors")]
    pub supported_compressors: Vec<String>,
    #[serde(default = "yes")]
    pub exec_enabled: bool,
    #[serde(default = "yes")]
    pub action_cache_update_enabled: bool,
}

impl Default for CapabilitiesConfig {
    fn default() -> Self {
        Self {
            digest_functions: default_digest_functions(),
            max_batch_total_size_bytes: default_max_batch(),
            supported_compressors: default_compressors(),
            exec_enabled: true,
            action_cache_update_enabled: true,
        }
    }
}

fn default_digest_functions() -> Vec<String> {
    vec!["SHA256".into()]
}
fn default_max_batch() -> u64 {
    4 * 1024 * 1024
}
fn default_compressors() -> Vec<String> {
    vec!["ZSTD".into(), "DEFLATE".into()]
}
fn yes() -> bool {
    true
}

impl CapabilitiesConfig {
    /// Parsed `supported_compressors` (validated at load).
    pub fn compressors(&self) -> Vec<Compressor> {
        self.supported_compressors.iter().filter_map(|c| Compressor::from_config_name(c)).collect()
    }
}

/// A configuration problem, reported as one line naming file, key and reason.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // For an unknown field the span covers its table; point at the key itself.
            let unknown = inner.message().strip_prefix("unknown field `").and_then(|m| m.split('`').next());
            let key_line = unknown.and_then(|k| {
                text.lines()
                    .position(|l| l.trim_start().strip_prefix(k).is_some_and(|r| r.trim_start().starts_with('=')))
            });
            let line = key_line
                .map(|i| i + 1)
                .or_else(|| inner.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)));
            let reason = match line {
                Some(l) => format!("{} (line {l})", inner.message()),
                None => inner.message().to_string(),
            };
            ConfigError { file: file.to_string(), key: if key == "." { String::new() } else { key }, reason }
        })?;
        config.validate().map_err(|(key, reason)| ConfigError { file: file.to_string(), key: key.into(), reason })?;
        config.execution.check().map_err(|(key, reason)| ConfigError { file: file.to_string(), key, reason })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.server
            .address
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ("server.address", format!("'{}' is not HOST:PORT: {e}", self.server.address)))?;
        let caps = &self.capabilities;
        if caps.digest_functions.is_empty() || caps.digest_functions.iter().any(|d| !d.eq_ignore_ascii_case("SHA256")) {
            return Err((
                "capabilities.digest_functions",
                format!("{:?}: only \"SHA256\" is supported", caps.digest_functions),
            ));
        }
        for c in &caps.supported_compressors {
            match Compressor::from_config_name(c) {
                Some(Compressor::Identity) | None => {
                    return Err((
                        "capabilities.supported_compressors",
                        format!("'{c}' is not one of \"ZSTD\", \"DEFLATE\""),
                    ))
                }
                _ => {}
            }
        }
        if caps.max_batch_total_size_bytes < 1024 {
            return Err(("capabilities.max_batch_total_size_bytes", "must be at least 1024".into()));
        }
        if self.storage.cas.max_size_bytes == 0 {
            return Err(("storage.cas.max_size_bytes", "must be greater than 0".into()));
        }
        Ok(())
    }

    /// Directory under which unset storage paths go.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.server.data_dir {
            return d.clone();
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(d).join("re-server");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".local/share/re-server"),
            None => PathBuf::from("/var/lib/re-server"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let c = Config::parse(DEFAULT_CONFIG, "<default>").unwrap();
        assert_eq!(c.server.address, "127.0.0.1:8980");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = Config::parse("[storage.cas]\nbackend = \"memory\"\nbogus = 1\n", "x.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.toml: key `storage.cas"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        assert!(msg.contains("(line 3)"), "{msg}");
    }

    #[test]
    fn example_configs_parse() {
        for name in ["pool.toml", "host-only.toml", "docker.toml", "default.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn bad_docker_worker_values_name_the_key() {
        let text = "[[execution.pool.workers]]\ntype = \"host\"\n\
                    [[execution.pool.workers]]\ntype = \"docker\"\nimage = \"busybox\"\nmemory_limit = 1024\n";
        let err = Config::parse(text, "x.toml").unwrap_err();
        assert_eq!(err.key, "execution.pool.workers[1].memory_limit", "{err}");
        assert!(err.to_string().contains("6 MiB"), "{err}");
        let text = "[[execution.pool.workers]]\ntype = \"docker\"\nimage = \"busybox\"\nnetwork_mode = \"wifi\"\n";
        let err = Config::parse(text, "x.toml").unwrap_err();
        assert!(err.to_string().contains("wifi"), "{err}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = Config::parse("[storage.cas]\nbackend = \"tape\"\n", "x.toml").unwrap_err();
        assert_eq!(err.key, "storage.cas.backend");
        let err = Config::parse("[capabilities]\ndigest_functions = [\"MD5\"]\n", "x.toml").unwrap_err();
        assert_eq!(err.key, "capabilities.digest_functions");
        let err = Config::parse("[server]\naddress = \"nope\"\n", "x.toml").unwrap_err();
        assert_eq!(err.key, "server.address");
    }
}
