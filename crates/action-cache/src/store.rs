//! Where `ActionResult`s live, keyed by action digest. Both stores keep the
//! encoded message and decode it on the way out; a result that no longer
//! decodes (a file damaged on disk) is dropped and reported as a miss.
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use prost::Message;
use re_proto::reapi::ActionResult;
use re_proto::{DigestInfo, Error, Result};

use crate::config::{ActionCacheBackend, ActionCacheConfig};

#[async_trait]
pub trait ActionCacheStore: Send + Sync + 'static {
    async fn get(&self, action: DigestInfo) -> Result<Option<ActionResult>>;
    async fn put(&self, action: DigestInfo, result: &ActionResult) -> Result<()>;
}

/// The store `config` (already resolved) describes.
pub async fn open_store(config: &ActionCacheConfig) -> Result<Arc<dyn ActionCacheStore>> {
    Ok(match config.backend {
        ActionCacheBackend::Memory => Arc::new(MemoryActionCache::new(config.max_entries)),
        ActionCacheBackend::Filesystem => Arc::new(FilesystemActionCache::open(config.root_dir.clone()).await?),
    })
}

fn decode(action: DigestInfo, raw: Bytes) -> Option<ActionResult> {
    match ActionResult::decode(raw) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(%action, error = %e, "dropping an action result that does not decode");
            None
        }
    }
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
    async fn get(&self, action: DigestInfo) -> Result<Option<ActionResult>> {
        let raw = self.entries.lock().get(&action).cloned();
        Ok(raw.and_then(|raw| decode(action, raw)))
    }

    async fn put(&self, action: DigestInfo, result: &ActionResult) -> Result<()> {
        self.entries.lock().put(action, result.encode_to_vec().into());
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
    async fn get(&self, action: DigestInfo) -> Result<Option<ActionResult>> {
        let path = self.path(&action);
        // Results are small protos: read in place (see re_proto::blocking).
        let p = path.clone();
        let raw = match re_proto::blocking::run_small(0, move || std::fs::read(p)).await? {
            Ok(data) => Bytes::from(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading action result {action}"), e)),
        };
        let result = decode(action, raw);
        if result.is_none() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        Ok(result)
    }

    async fn put(&self, action: DigestInfo, result: &ActionResult) -> Result<()> {
        let dest = self.path(&action);
        let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
        let data = result.encode_to_vec();
        // One blocking call for the directory, the write and the rename.
        re_proto::blocking::run(move || {
            let io = |e| Error::io(format!("storing action result {action}"), e);
            std::fs::create_dir_all(dest.parent().expect("has parent")).map_err(io)?;
            std::fs::write(&tmp, &data).map_err(io)?;
            std::fs::rename(&tmp, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io(e)
            })
        })
        .await?
    }
}
