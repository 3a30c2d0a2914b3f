//! `[worker]`: the agent's own section of `worker.toml` (the rest of the
//! file is `[execution]`, exactly as in the server's config).
use std::path::{Path, PathBuf};

use re_proto::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The local content cache (inputs fetched from the server, kept and
    /// hard-linked into action directories); action directories go beside
    /// it unless the worker tables say otherwise.
    pub cache_dir: PathBuf,
    /// The cache's size; least recently used blobs go first.
    pub cache_max_bytes: u64,
    /// A file whose first line is a token with the `worker` role.
    pub token_file: Option<PathBuf>,
    /// Names the agent's workers (`NAME/host-worker-1`); default: the host name.
    pub name: String,
    /// CA certificate (PEM) that signed the server's certificate, for a
    /// `grpcs://` server under a private CA; default: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate and key the agent presents to a server that requires
    /// client certificates (`[server.tls] client_ca_file`).
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
    /// The server's REAPI instance name.
    pub instance_name: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::new(),
            cache_max_bytes: 10 << 30,
            token_file: None,
            name: String::new(),
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            instance_name: String::new(),
        }
    }
}

impl AgentConfig {
    /// Fills the name and checks every value; keys are relative to `[worker]`.
    pub fn resolve(&mut self) -> Result<(), ConfigError> {
        if self.cache_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("cache_dir", "is required: where the agent keeps the inputs it fetched"));
        }
        if !self.cache_dir.is_absolute() {
            return Err(ConfigError::new("cache_dir", "must be an absolute path"));
        }
        if self.cache_max_bytes < 1 << 20 {
            return Err(ConfigError::new("cache_max_bytes", "must be at least 1 MiB (1048576)"));
        }
        if self.tls_client_cert_file.is_some() != self.tls_client_key_file.is_some() {
            return Err(ConfigError::new("tls_client_cert_file", "and tls_client_key_file go together"));
        }
        let files = [
            ("token_file", &self.token_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_client_cert_file", &self.tls_client_cert_file),
            ("tls_client_key_file", &self.tls_client_key_file),
        ];
        for (key, file) in files {
            if let Some(f) = file {
                std::fs::metadata(f).map_err(|e| ConfigError::new(key, format!("{}: {e}", f.display())))?;
            }
        }
        if self.name.is_empty() {
            self.name = re_execution::worker_status::hostname();
        }
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(ConfigError::new("name", "must be a non-empty name without spaces"));
        }
        Ok(())
    }

    /// The directory the agent's default work directories go under.
    pub fn data_dir(&self) -> &Path {
        &self.cache_dir
    }
}
