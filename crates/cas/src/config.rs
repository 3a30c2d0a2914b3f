//! `[storage.cas]` section.
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CasBackend {
    Memory,
    #[default]
    Filesystem,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasConfig {
    #[serde(default)]
    pub backend: CasBackend,
    /// Where the filesystem backend keeps blobs; defaults to `<data_dir>/cas`.
    pub root_dir: Option<PathBuf>,
    /// Least-recently-used blobs are evicted beyond this many bytes.
    #[serde(default = "default_max_size")]
    pub max_size_bytes: u64,
    /// fsync each blob before it becomes visible (survives power loss, slower).
    #[serde(default)]
    pub fsync_writes: bool,
}

fn default_max_size() -> u64 {
    10 * 1024 * 1024 * 1024
}

impl Default for CasConfig {
    fn default() -> Self {
        Self {
            backend: CasBackend::Filesystem,
            root_dir: None,
            max_size_bytes: default_max_size(),
            fsync_writes: false,
        }
    }
}

impl CasConfig {
    pub fn root_dir_or_default(&self) -> PathBuf {
        self.root_dir.clone().unwrap_or_else(|| PathBuf::from("re-server-data/cas"))
    }
}
