//! `[storage.cas]` section.
use std::path::{Path, PathBuf};

use re_proto::ConfigError;
use serde::Deserialize;

/// Packing pays off for blobs a file costs more than their bytes; beyond
/// this a file (hard-linkable into actions) is the better home.
pub const MAX_SMALL_BLOB_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CasBackend {
    Memory,
    #[default]
    Filesystem,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CasConfig {
    pub backend: CasBackend,
    /// Where the filesystem backend keeps blobs; unset (empty) means
    /// `<data_dir>/cas`, filled in by [`CasConfig::resolve`].
    pub root_dir: PathBuf,
    /// Least-recently-used blobs are evicted beyond this many bytes.
    pub max_size_bytes: u64,
    /// fsync each blob before it becomes visible (survives power loss, slower).
    pub fsync_writes: bool,
    /// An interrupted ByteStream upload can be resumed (QueryWriteStatus)
    /// for this long after its last data; then its temp file is deleted.
    pub upload_resume_seconds: u64,
    /// Blobs of at most this many bytes are appended to pack files instead
    /// of getting a file each (0: every blob is a file).
    pub small_blob_max_bytes: u64,
}

impl Default for CasConfig {
    fn default() -> Self {
        Self {
            backend: CasBackend::Filesystem,
            root_dir: PathBuf::new(),
            max_size_bytes: 10 << 30,
            fsync_writes: false,
            upload_resume_seconds: 10,
            small_blob_max_bytes: 16 << 10,
        }
    }
}

impl CasConfig {
    /// Fills unset paths from the data directory and checks the values.
    pub fn resolve(&mut self, data_dir: &Path) -> Result<(), ConfigError> {
        if self.root_dir.as_os_str().is_empty() {
            self.root_dir = data_dir.join("cas");
        }
        if self.max_size_bytes == 0 {
            return Err(ConfigError::new("max_size_bytes", "must be greater than 0"));
        }
        if self.small_blob_max_bytes > MAX_SMALL_BLOB_BYTES {
            return Err(ConfigError::new(
                "small_blob_max_bytes",
                format!("must be at most {MAX_SMALL_BLOB_BYTES} (bigger blobs are better off as files)"),
            ));
        }
        Ok(())
    }
}
