//! The local cache seen through the server: a blob the agent lacks is
//! fetched on first `get` (the Action, Command and Directory messages an
//! action is prepared from). Input files are fetched ahead, in bulk, by
//! `inputs.rs`; everything else is the local store's.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use re_cas::{BlobStore, BlobWriter, ByteStreamChunks};
use re_proto::{DigestInfo, Result};

use crate::server_cas::ServerCas;

pub struct ReadThroughStore {
    local: Arc<dyn BlobStore>,
    server: ServerCas,
}

impl ReadThroughStore {
    pub fn new(local: Arc<dyn BlobStore>, server: ServerCas) -> Self {
        Self { local, server }
    }
}

#[async_trait]
impl BlobStore for ReadThroughStore {
    async fn find_missing(&self, digests: &[DigestInfo]) -> Result<Vec<DigestInfo>> {
        self.local.find_missing(digests).await
    }

    async fn get(&self, digest: DigestInfo) -> Result<Option<Bytes>> {
        if let Some(data) = self.local.get(digest).await? {
            return Ok(Some(data));
        }
        match self.server.fetch_into(&self.local, &[digest]).await {
            Ok(()) => self.local.get(digest).await,
            Err(re_proto::Error::MissingBlobs { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, digest: DigestInfo, offset: u64, limit: u64) -> Result<ByteStreamChunks> {
        self.local.read(digest, offset, limit).await
    }

    async fn put(&self, digest: DigestInfo, data: Bytes) -> Result<()> {
        self.local.put(digest, data).await
    }

    async fn put_file(&self, path: &Path) -> Result<DigestInfo> {
        self.local.put_file(path).await
    }

    async fn begin_write(&self, digest: DigestInfo) -> Result<Box<dyn BlobWriter>> {
        self.local.begin_write(digest).await
    }

    fn file_path(&self, digest: DigestInfo) -> Option<PathBuf> {
        self.local.file_path(digest)
    }

    fn pin(&self, digests: &[DigestInfo]) {
        self.local.pin(digests)
    }

    fn unpin(&self, digests: &[DigestInfo]) {
        self.local.unpin(digests)
    }

    fn size_bytes(&self) -> u64 {
        self.local.size_bytes()
    }

    fn evicted_blobs(&self) -> u64 {
        self.local.evicted_blobs()
    }
}
