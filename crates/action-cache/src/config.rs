//! `[storage.action_cache]` section.
use std::path::{Path, PathBuf};

use re_proto::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActionCacheBackend {
    Memory,
    #[default]
    Filesystem,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionCacheConfig {
    pub backend: ActionCacheBackend,
    /// Where the filesystem backend keeps results; unset (empty) means
    /// `<data_dir>/cache`, filled in by [`ActionCacheConfig::resolve`].
    pub root_dir: PathBuf,
    /// The memory backend keeps at most this many results (least recently used go first).
    pub max_entries: usize,
}

impl Default for ActionCacheConfig {
    fn default() -> Self {
        Self { backend: ActionCacheBackend::Filesystem, root_dir: PathBuf::new(), max_entries: 1_000_000 }
    }
}

impl ActionCacheConfig {
    /// Fills unset paths from the data directory and checks the values.
    pub fn resolve(&mut self, data_dir: &Path) -> Result<(), ConfigError> {
        if self.root_dir.as_os_str().is_empty() {
            self.root_dir = data_dir.join("cache");
        }
        if self.max_entries == 0 {
            return Err(ConfigError::new("max_entries", "must be at least 1"));
        }
        Ok(())
    }
}
