//! In-memory blob store with LRU eviction.
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use re_proto::digest::DigestHasher;
use re_proto::{DigestInfo, Error, Result};

use crate::lru_index::LruIndex;
use crate::pins::PinSet;
use crate::store::{check_range, digest_mismatch, too_large, BlobStore, BlobWriter, ByteStreamChunks};

const READ_CHUNK: usize = 1 << 20;

pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    index: LruIndex<Bytes>,
    pins: PinSet,
}

impl MemoryStore {
    pub fn new(max_size_bytes: u64) -> Self {
        Self { shared: Arc::new(Shared { index: LruIndex::new(max_size_bytes), pins: PinSet::default() }) }
    }

    fn lookup(&self, digest: DigestInfo) -> Option<Bytes> {
        if digest.is_empty_blob() {
            return Some(Bytes::new());
        }
        self.shared.index.get(&digest)
    }
}

impl Shared {
    fn insert_verified(&self, digest: DigestInfo, data: Bytes) -> Result<()> {
        if digest.size > self.index.max_bytes() {
            return Err(too_large(digest, self.index.max_bytes()));
        }
        let evicted = self.index.insert(digest, data, &self.pins);
        if !evicted.is_empty() {
            tracing::debug!(count = evicted.len(), "memory CAS evicted blobs");
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn find_missing(&self, digests: &[DigestInfo]) -> Result<Vec<DigestInfo>> {
        Ok(self.shared.index.missing(digests))
    }

    async fn get(&self, digest: DigestInfo) -> Result<Option<Bytes>> {
        Ok(self.lookup(digest))
    }

    async fn read(&self, digest: DigestInfo, offset: u64, limit: u64) -> Result<ByteStreamChunks> {
        let len = check_range(digest, offset, limit)?;
        let data = self.lookup(digest).ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))?;
        let slice = data.slice(offset as usize..(offset + len) as usize);
        let chunks: Vec<Result<Bytes>> = (0..slice.len())
            .step_by(READ_CHUNK)
            .map(|start| Ok(slice.slice(start..(start + READ_CHUNK).min(slice.len()))))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn put(&self, digest: DigestInfo, data: Bytes) -> Result<()> {
        let actual = DigestInfo::of_bytes(&data);
        if actual != digest {
            return Err(digest_mismatch(digest, actual));
        }
        if digest.is_empty_blob() {
            return Ok(());
        }
        self.shared.insert_verified(digest, data)
    }

    async fn put_file(&self, path: &std::path::Path) -> Result<DigestInfo> {
        let data = tokio::fs::read(path).await.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let data = Bytes::from(data);
        let hashed = data.clone();
        let digest = tokio::task::spawn_blocking(move || DigestInfo::of_bytes(&hashed)).await?;
        if !digest.is_empty_blob() && self.shared.index.get(&digest).is_none() {
            self.shared.insert_verified(digest, data)?;
        }
        Ok(digest)
    }

    async fn begin_write(&self, digest: DigestInfo) -> Result<Box<dyn BlobWriter>> {
        let max = self.shared.index.max_bytes();
        if digest.size > max {
            return Err(too_large(digest, max));
        }
        Ok(Box::new(MemoryWriter {
            shared: self.shared.clone(),
            digest,
            buf: BytesMut::new(),
            hasher: DigestHasher::new(),
        }))
    }

    fn pin(&self, digests: &[DigestInfo]) {
        self.shared.pins.pin(digests)
    }

    fn unpin(&self, digests: &[DigestInfo]) {
        self.shared.pins.unpin(digests)
    }

    fn size_bytes(&self) -> u64 {
        self.shared.index.total_bytes()
    }

    fn evicted_blobs(&self) -> u64 {
        self.shared.index.evicted()
    }
}

struct MemoryWriter {
    shared: Arc<Shared>,
    digest: DigestInfo,
    buf: BytesMut,
    hasher: DigestHasher,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        if self.hasher.len() + data.len() as u64 > self.digest.size {
            return Err(Error::InvalidArgument(format!(
                "more data than the {} bytes of blob {}",
                self.digest.size, self.digest
            )));
        }
        self.hasher.update(&data);
        self.buf.extend_from_slice(&data);
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.hasher.len()
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let actual = self.hasher.clone().finish();
        if actual != self.digest {
            return Err(digest_mismatch(self.digest, actual));
        }
        self.shared.insert_verified(self.digest, self.buf.freeze())
    }
}
