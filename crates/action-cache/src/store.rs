//! Where encoded `ActionResult`s live.
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use re_proto::{DigestInfo, Error, Result};

use crate::config::{ActionCacheBackend, ActionCacheConfig};

#[async_trait]
pub trait ActionCacheStore: Send + Sync + 'static {
    /// The encoded ActionResult for an action digest.
    async fn get(&self, action: DigestInfo) -> Result<Option<Bytes>>;
    async fn put(&self, action: DigestInfo, result: Bytes) -> Result<()>;
    async fn remove(&self, action: DigestInfo) -> Result<()>;
}

pub async fn open_store(config: &ActionCacheConfig, default_root: PathBuf) -> Result<Arc<dyn ActionCacheStore>> {
    Ok(match config.backend {
        ActionCacheBackend::Memory => Arc::new(MemoryActionCache::new(config.max_entries)),
        ActionCacheBackend::Filesystem => {
            Arc::new(FilesystemActionCache::open(config.root_dir.clone().unwrap_or(default_root)).await?)
        }
    })
}

pub struct MemoryActionCache {
    entries: Mutex<LruCache<DigestInfo, Bytes>>,
}

impl MemoryActionCache {
    pub fn new(max_entries: usize) -> Self {
        let cap = NonZeroUsize::new(max_entries.max(1)).expect("non-zero");
        Self { entries: Mutex::new(LruCache::new(cap)) }
    }
}

#[async_trait]
impl ActionCacheStore for MemoryActionCache {
    async fn get(&self, action: DigestInfo) -> Result<Option<Bytes>> {
        Ok(self.entries.lock().get(&action).cloned())
    }
    async fn put(&self, action: DigestInfo, result: Bytes) -> Result<()> {
        self.entries.lock().put(action, result);
        Ok(())
    }
    async fn remove(&self, action: DigestInfo) -> Result<()> {
        self.entries.lock().pop(&action);
        Ok(())
    }
}

/// One file per action, `<root>/<2 hex>/<hash>-<size>`, written via a
/// temporary file and a rename so readers never see half a result.
pub struct FilesystemActionCache {
    root: PathBuf,
}

impl FilesystemActionCache {
    pub async fn open(root: PathBuf) -> Result<Self> {
        let tmp = root.join("tmp");
        tokio::fs::create_dir_all(&tmp).await.map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        tracing::info!(root = %root.display(), "Filesystem action cache ready");
        Ok(Self { root })
    }

    fn path(&self, d: &DigestInfo) -> PathBuf {
        let hex = d.hash_hex();
        self.root.join(&hex[..2]).join(format!("{hex}-{}", d.size))
    }
}

#[async_trait]
impl ActionCacheStore for FilesystemActionCache {
    async fn get(&self, action: DigestInfo) -> Result<Option<Bytes>> {
        match tokio::fs::read(self.path(&action)).await {
            Ok(data) => Ok(Some(data.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading action result {action}"), e)),
        }
    }

    async fn put(&self, action: DigestInfo, result: Bytes) -> Result<()> {
        let dest = self.path(&action);
        let dir = dest.parent().expect("has parent").to_path_buf();
        let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
        let io = |e| Error::io(format!("storing action result {action}"), e);
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        tokio::fs::write(&tmp, &result).await.map_err(io)?;
        if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(e));
        }
        Ok(())
    }

    async fn remove(&self, action: DigestInfo) -> Result<()> {
        match tokio::fs::remove_file(self.path(&action)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing action result {action}"), e)),
        }
    }
}
