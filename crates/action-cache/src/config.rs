//! `[storage.action_cache]` section.
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActionCacheBackend {
    Memory,
    #[default]
    Filesystem,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionCacheConfig {
    #[serde(default)]
    pub backend: ActionCacheBackend,
    /// Where the filesystem backend keeps results; defaults to `<data_dir>/cache`.
    pub root_dir: Option<PathBuf>,
    /// The memory backend keeps at most this many results (least recently used go first).
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

fn default_max_entries() -> usize {
    1_000_000
}

impl Default for ActionCacheConfig {
    fn default() -> Self {
        Self { backend: ActionCacheBackend::Filesystem, root_dir: None, max_entries: default_max_entries() }
    }
}
