//! The blob-store interface every CAS backend implements.
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use re_proto::{DigestInfo, Result};

/// A stream of blob chunks, in order.
pub type ByteStreamChunks = BoxStream<'static, Result<Bytes>>;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Returns the digests that are not stored, in request order. Present blobs count as used
    /// (their LRU position is refreshed) so a build that asked keeps them.
    async fn find_missing(&self, digests: &[DigestInfo]) -> Result<Vec<DigestInfo>>;

    /// The whole blob, or `None`. Meant for small blobs (Directories, batches).
    async fn get(&self, digest: DigestInfo) -> Result<Option<Bytes>>;

    /// Streams `limit` bytes (0 = to the end) from `offset`; NotFound if absent.
    async fn read(&self, digest: DigestInfo, offset: u64, limit: u64) -> Result<ByteStreamChunks>;

    /// Stores a blob held in memory after checking it hashes to `digest`.
    async fn put(&self, digest: DigestInfo, data: Bytes) -> Result<()>;

    /// Stores a local file (an action's output) and returns its digest,
    /// reading the file once. An already stored blob is only refreshed.
    async fn put_file(&self, path: &Path) -> Result<DigestInfo>;

    /// Starts a streamed upload; nothing is visible until `commit` verifies it.
    async fn begin_write(&self, digest: DigestInfo) -> Result<Box<dyn BlobWriter>>;

    /// Path of the stored file, for stores that keep blobs as files (hard links).
    fn file_path(&self, _digest: DigestInfo) -> Option<PathBuf> {
        None
    }

    /// Protects blobs from eviction until the matching `unpin`.
    fn pin(&self, digests: &[DigestInfo]);
    fn unpin(&self, digests: &[DigestInfo]);

    /// Bytes currently stored.
    fn size_bytes(&self) -> u64;

    /// Bytes the store takes (on disk or in memory): `size_bytes` plus
    /// space not reclaimed yet (evicted blobs' bytes in packs).
    fn disk_bytes(&self) -> u64 {
        self.size_bytes()
    }

    /// Blobs evicted since the store was opened.
    fn evicted_blobs(&self) -> u64 {
        0
    }
}

#[async_trait]
pub trait BlobWriter: Send {
    /// Appends uncompressed bytes.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Appends several pieces (one message's data, as its frames arrived).
    async fn write_pieces(&mut self, pieces: Vec<Bytes>) -> Result<()> {
        for piece in pieces {
            if !piece.is_empty() {
                self.write(piece).await?;
            }
        }
        Ok(())
    }
    /// Bytes accepted so far.
    fn committed(&self) -> u64;
    /// The client went away: finish what was received and hold nothing but
    /// the upload's state, so it can be resumed from `committed`.
    async fn park(&mut self) -> Result<()> {
        Ok(())
    }
    /// Verifies size and hash, then makes the blob visible.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// The error every store returns when content does not hash to its digest.
pub fn digest_mismatch(expected: DigestInfo, actual: DigestInfo) -> re_proto::Error {
    re_proto::Error::InvalidArgument(format!(
        "uploaded data does not match its digest: expected {expected}, got {actual}"
    ))
}

/// The error every store returns for a blob bigger than the whole store.
pub fn too_large(digest: DigestInfo, max: u64) -> re_proto::Error {
    re_proto::Error::ResourceExhausted(format!("blob {digest} is larger than the whole CAS (max_size_bytes = {max})"))
}

/// Checks a read range against a blob size.
pub fn check_range(digest: DigestInfo, offset: u64, limit: u64) -> Result<u64> {
    if offset > digest.size {
        // google.bytestream prescribes OUT_OF_RANGE for an offset past the end.
        return Err(re_proto::Error::OutOfRange(format!("read_offset {offset} is past the end of blob {digest}")));
    }
    let remaining = digest.size - offset;
    Ok(if limit == 0 { remaining } else { limit.min(remaining) })
}
