//! `MeteredStore`: a BlobStore layer that counts reads (hit or miss) and
//! stored blobs and bytes into re-server's metrics; the bytes held and the
//! evictions are read from the store when scraped (`refresh`).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use re_metrics::Metrics;
use re_proto::{DigestInfo, Error, Result};

use crate::store::{BlobStore, BlobWriter, ByteStreamChunks};

pub struct MeteredStore {
    inner: Arc<dyn BlobStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn BlobStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Sets the gauges that describe `store` (called when scraped).
pub fn refresh(store: &dyn BlobStore, metrics: &Metrics) {
    metrics.cas_stored_bytes.set(store.size_bytes() as i64);
    metrics.cas_disk_bytes.set(store.disk_bytes() as i64);
    metrics.cas_evictions.set(store.evicted_blobs() as i64);
}

#[async_trait]
impl BlobStore for MeteredStore {
    async fn find_missing(&self, digests: &[DigestInfo]) -> Result<Vec<DigestInfo>> {
        self.inner.find_missing(digests).await
    }

    async fn get(&self, digest: DigestInfo) -> Result<Option<Bytes>> {
        let r = self.inner.get(digest).await;
        if let Ok(found) = &r {
            self.metrics.cas_read(found.is_some());
        }
        r
    }

    async fn read(&self, digest: DigestInfo, offset: u64, limit: u64) -> Result<ByteStreamChunks> {
        let r = self.inner.read(digest, offset, limit).await;
        match &r {
            Ok(_) => self.metrics.cas_read(true),
            Err(Error::NotFound(_)) => self.metrics.cas_read(false),
            Err(_) => {}
        }
        r
    }

    async fn put(&self, digest: DigestInfo, data: Bytes) -> Result<()> {
        self.inner.put(digest, data).await?;
        self.metrics.cas_blobs_written.inc();
        self.metrics.cas_bytes_written.inc_by(digest.size);
        Ok(())
    }

    async fn put_file(&self, path: &Path) -> Result<DigestInfo> {
        let d = self.inner.put_file(path).await?;
        self.metrics.cas_blobs_written.inc();
        self.metrics.cas_bytes_written.inc_by(d.size);
        Ok(d)
    }

    async fn begin_write(&self, digest: DigestInfo) -> Result<Box<dyn BlobWriter>> {
        let inner = self.inner.begin_write(digest).await?;
        Ok(Box::new(MeteredWriter { inner, digest, metrics: self.metrics.clone() }))
    }

    fn file_path(&self, digest: DigestInfo) -> Option<PathBuf> {
        self.inner.file_path(digest)
    }

    fn pin(&self, digests: &[DigestInfo]) {
        self.inner.pin(digests)
    }

    fn unpin(&self, digests: &[DigestInfo]) {
        self.inner.unpin(digests)
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }

    fn evicted_blobs(&self) -> u64 {
        self.inner.evicted_blobs()
    }
}

struct MeteredWriter {
    inner: Box<dyn BlobWriter>,
    digest: DigestInfo,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl BlobWriter for MeteredWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.inner.write(data).await
    }

    async fn write_pieces(&mut self, pieces: Vec<Bytes>) -> Result<()> {
        self.inner.write_pieces(pieces).await
    }

    fn committed(&self) -> u64 {
        self.inner.committed()
    }

    async fn park(&mut self) -> Result<()> {
        self.inner.park().await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let Self { inner, digest, metrics } = *self;
        inner.commit().await?;
        metrics.cas_blobs_written.inc();
        metrics.cas_bytes_written.inc_by(digest.size);
        Ok(())
    }
}
