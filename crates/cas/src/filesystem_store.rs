//! Blobs as files: `<root>/blobs/<2 hex>/<hash>-<size>`. Uploads go to a
//! `.tmp-<uuid>` file in the same directory and are renamed into place only
//! after their digest is checked, so a crash never leaves a partial blob
//! visible (the start-up scan deletes any leftover temp file). Spreading
//! temp files over the 256 directories avoids contention on one directory's
//! lock when many small blobs arrive at once. Blobs of at most
//! `small_blob_max_bytes` are appended to packs instead ([`crate::packs`]).
//! The LRU index of both lives in memory and is rebuilt at start
//! ([`crate::filesystem_scan`], oldest first).
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use re_proto::digest::DigestHasher;
use re_proto::{DigestInfo, Error, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::chunk_pool::ChunkPool;
use crate::filesystem_writer::FsWriter;
use crate::lru_index::LruIndex;
use crate::packs::{pack_max_bytes, Location, PackStore, PackedIndex};
use crate::pins::PinSet;
use crate::store::{check_range, digest_mismatch, too_large, BlobStore, BlobWriter, ByteStreamChunks};

/// Chunk size for streamed reads; below gRPC's default 4 MiB message limit.
const READ_CHUNK: usize = 1 << 20;
/// Chunks buffered between the network and the disk thread of one transfer.
const PIPELINE_DEPTH: usize = 8;
/// Read chunks are recycled; this many idle ones (1 MiB each) are kept.
static READ_BUFFERS: ChunkPool = ChunkPool::new(READ_CHUNK, 32);

pub struct FilesystemStore {
    shared: Arc<Shared>,
}

/// Where an indexed blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Its own file, with the [`stamp`] it had when stored.
    File { stamp: u64 },
    /// Appended to a pack.
    Packed(Location),
}

pub(crate) struct Shared {
    pub(crate) blobs_dir: PathBuf,
    pub(crate) index: LruIndex<Stored>,
    pins: PinSet,
    pub(crate) fsync: bool,
    /// Blobs up to this size go to the packs (`None`: packing is off).
    pub(crate) packs: Option<(PackStore, u64)>,
    /// Evicted files are deleted on its blocking pool, from whichever
    /// thread evicted them (the pack writer is not a runtime thread).
    runtime: tokio::runtime::Handle,
}

/// What the start-up scan found.
#[derive(Debug, Clone, Copy)]
pub struct ScanReport {
    pub blobs: usize,
    pub bytes: u64,
    pub discarded: usize,
    pub elapsed_ms: u128,
}

impl FilesystemStore {
    /// Opens (creating if needed) a store under `root` and indexes what is
    /// there. Blobs of at most `small_blob_max_bytes` are packed (0: every
    /// blob is a file; packs left by an earlier run are still served).
    pub async fn open(root: PathBuf, max_size_bytes: u64, fsync: bool, small_blob_max_bytes: u64) -> Result<Self> {
        let pack_root = root.clone();
        let packs = tokio::task::spawn_blocking(move || -> Result<_> {
            if small_blob_max_bytes == 0 && !pack_root.join("packs").exists() {
                return Ok(None);
            }
            let (packs, recovered) = PackStore::open(&pack_root, pack_max_bytes(max_size_bytes), fsync)?;
            Ok(Some((packs, recovered)))
        })
        .await??;
        let (packs, recovered) = match packs {
            Some((p, r)) => (Some((p, small_blob_max_bytes)), r),
            None => (None, Vec::new()),
        };
        let shared = Arc::new(Shared {
            blobs_dir: root.join("blobs"),
            index: LruIndex::new(max_size_bytes),
            pins: PinSet::default(),
            fsync,
            packs,
            runtime: tokio::runtime::Handle::current(),
        });
        if let Some((packs, _)) = &shared.packs {
            let weak: std::sync::Weak<dyn PackedIndex> = Arc::downgrade(&shared) as _;
            packs.start(weak)?;
        }
        let s = shared.clone();
        let report = tokio::task::spawn_blocking(move || s.scan(recovered)).await??;
        tracing::info!(
            root = %root.display(),
            blobs = report.blobs,
            bytes = report.bytes,
            discarded = report.discarded,
            elapsed_ms = report.elapsed_ms as u64,
            "Filesystem CAS index rebuilt"
        );
        Ok(Self { shared })
    }

    /// Number of indexed blobs.
    pub fn len(&self) -> usize {
        self.shared.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of blobs kept in packs rather than files.
    pub fn packed_len(&self) -> usize {
        self.shared.index.collect_where(|_, v| matches!(v, Stored::Packed(_)).then_some(())).len()
    }
}

impl Drop for FilesystemStore {
    fn drop(&mut self) {
        // The pack writer holds the store only weakly; it is stopped here,
        // where the last handle goes, not wherever `Shared` ends.
        if let Some((packs, _)) = &self.shared.packs {
            packs.stop();
        }
    }
}

impl Shared {
    fn blob_path(&self, d: &DigestInfo) -> PathBuf {
        self.blobs_dir.join(d_prefix(d)).join(blob_file_name(d))
    }

    /// The packs, if `size` is small enough to be packed.
    fn packs_for(&self, size: u64) -> Option<&PackStore> {
        self.packs.as_ref().filter(|(_, max)| size > 0 && size <= *max).map(|(p, _)| p)
    }

    /// Indexes a blob; whatever it replaces or evicts is released.
    pub(crate) fn index_insert(&self, digest: DigestInfo, stored: Stored) {
        let (replaced, mut evicted) = self.index.insert_replacing(digest, stored, &self.pins);
        if let Some(old) = replaced.filter(|old| *old != stored) {
            evicted.push((digest, old));
        }
        if evicted.is_empty() {
            return;
        }
        tracing::debug!(count = evicted.len(), "filesystem CAS evicting blobs");
        let mut files = Vec::new();
        for (d, old) in evicted {
            match old {
                // The file is the new copy's too when it only changed stamp.
                Stored::File { .. } if d == digest && matches!(stored, Stored::File { .. }) => {}
                Stored::File { .. } => files.push(self.blob_path(&d)),
                Stored::Packed(at) => self.forget_packed(d, at),
            }
        }
        if !files.is_empty() {
            self.runtime.spawn_blocking(move || {
                for p in files {
                    let _ = std::fs::remove_file(p);
                }
            });
        }
    }

    /// Whether the file behind `digest` is still the one stored: same size,
    /// same modification time. A file changed on disk (truncated, rewritten)
    /// is never served: it is dropped, so the client uploads it again.
    fn still_stored(&self, digest: DigestInfo, meta: &std::fs::Metadata) -> bool {
        let indexed = self.index.peek(&digest);
        if meta.len() == digest.size && indexed == Some(Stored::File { stamp: stamp(meta) }) {
            return true;
        }
        match indexed {
            // Packed since, or evicted (its file is being deleted): the
            // file may be a new upload's about to be indexed; left alone.
            Some(Stored::Packed(_)) | None => {}
            Some(old @ Stored::File { .. }) => {
                tracing::warn!(%digest, "a blob file changed on disk after it was stored; dropping it");
                self.index.remove_if(&digest, &old);
                let _ = std::fs::remove_file(self.blob_path(&digest));
            }
        }
        false
    }

    /// A fresh temp file name beside where `digest` will live.
    fn tmp_path(&self, digest: &DigestInfo) -> PathBuf {
        let hex = d_prefix(digest);
        self.blobs_dir.join(hex).join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Renames a verified temporary file into place and indexes it
    /// (blocking); the files of blobs this evicts are deleted in the background.
    pub(crate) fn publish(&self, tmp: &std::path::Path, digest: DigestInfo) -> Result<()> {
        let dest = self.blob_path(&digest);
        let renamed = match rename_noreplace(tmp, &dest) {
            // Another upload of the same blob got there first: same bytes.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(tmp);
                std::fs::metadata(&dest)
            }
            other => other.and_then(|()| std::fs::metadata(&dest)),
        };
        let meta = match renamed {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                return Err(Error::io(format!("publishing blob {digest}"), e));
            }
        };
        self.index_insert(digest, Stored::File { stamp: stamp(&meta) });
        Ok(())
    }
}

/// Renames `from` to `to` unless `to` exists (then AlreadyExists): a stored
/// blob file is never replaced, so its stamp and any reader's mapping stay
/// valid. Filesystems without RENAME_NOREPLACE get a plain rename.
fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => std::fs::rename(from, to),
        _ => Err(e),
    }
}

/// What identifies a blob file's content on disk besides its size: its
/// modification time (hard links change the ctime, not this).
pub(crate) fn stamp(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime() as u64).wrapping_mul(1_000_000_000).wrapping_add(meta.mtime_nsec() as u64)
}

fn d_prefix(d: &DigestInfo) -> String {
    hex::encode([d.hash[0]])
}

/// Creates an upload file. Read-only from the start (writing through the
/// new descriptor still works), so an action that gets the blob hard-linked
/// as an input cannot change the CAS copy (unless it runs as root).
fn create_upload_file(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| Error::io("creating upload file", e))
}

pub(crate) fn parse_blob_file_name(name: &str) -> Option<DigestInfo> {
    let (hash, size) = name.split_once('-')?;
    DigestInfo::from_hex(hash, size.parse().ok()?).ok()
}

#[async_trait]
impl BlobStore for FilesystemStore {
    async fn find_missing(&self, digests: &[DigestInfo]) -> Result<Vec<DigestInfo>> {
        Ok(self.shared.index.missing(digests))
    }

    async fn get(&self, digest: DigestInfo) -> Result<Option<Bytes>> {
        if digest.is_empty_blob() {
            return Ok(Some(Bytes::new()));
        }
        let Some(stored) = self.shared.index.get(&digest) else { return Ok(None) };
        let shared = self.shared.clone();
        if let Stored::Packed(at) = stored {
            let read = re_proto::blocking::run_small(digest.size, move || shared.read_packed(digest, at)).await?;
            return read.map(|d| d.map(Bytes::from)).map_err(|e| Error::io(format!("reading blob {digest}"), e));
        }
        let read = re_proto::blocking::run_small(digest.size, move || -> std::io::Result<Option<Vec<u8>>> {
            let mut file = std::fs::File::open(shared.blob_path(&digest))?;
            if !shared.still_stored(digest, &file.metadata()?) {
                return Ok(None);
            }
            let mut data = Vec::with_capacity(digest.size as usize);
            file.read_to_end(&mut data)?;
            Ok(Some(data))
        })
        .await?;
        match read {
            Ok(data) => Ok(data.map(Bytes::from)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.shared.index.remove_if(&digest, &stored);
                Ok(None)
            }
            Err(e) => Err(Error::io(format!("reading blob {digest}"), e)),
        }
    }

    async fn read(&self, digest: DigestInfo, offset: u64, limit: u64) -> Result<ByteStreamChunks> {
        let len = check_range(digest, offset, limit)?;
        if digest.is_empty_blob() || len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let not_found = || Error::NotFound(format!("blob {digest} not found"));
        let Some(stored) = self.shared.index.get(&digest) else { return Err(not_found()) };
        let shared = self.shared.clone();
        if let Stored::Packed(at) = stored {
            // Packed blobs are small: read whole, sent as one chunk.
            let read = re_proto::blocking::run_small(digest.size, move || shared.read_packed(digest, at)).await?;
            let data = read.map_err(|e| Error::io(format!("reading blob {digest}"), e))?.ok_or_else(not_found)?;
            let chunk = Bytes::from(data).slice(offset as usize..(offset + len) as usize);
            return Ok(futures::stream::once(async move { Ok(chunk) }).boxed());
        }
        let opened = tokio::task::spawn_blocking(move || open_for_read(&shared, digest, offset, len)).await?;
        let source = match opened {
            Ok(Some(s)) => s,
            Ok(None) => return Err(not_found()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.shared.index.remove_if(&digest, &stored);
                return Err(not_found());
            }
            Err(e) => return Err(Error::io(format!("opening blob {digest}"), e)),
        };
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        // One blocking thread reads ahead while the network sends.
        tokio::task::spawn_blocking(move || {
            let mut done = 0usize;
            while done < len as usize {
                let n = (len as usize - done).min(READ_CHUNK);
                let res = match &source {
                    ReadSource::Mapped { bytes, map } => {
                        // Fault the pages in here, off the async threads, so the
                        // socket write that copies them never waits on the disk.
                        let _ = map.advise_range(memmap2::Advice::PopulateRead, done, n);
                        Ok(bytes.slice(done..done + n))
                    }
                    ReadSource::File(file) => {
                        let mut buf = READ_BUFFERS.take();
                        match (&*file).read_exact(&mut buf[..n]) {
                            Ok(()) => Ok(READ_BUFFERS.freeze(buf, n)),
                            Err(e) => Err(e),
                        }
                    }
                };
                let failed = res.is_err();
                let item = res.map_err(|e| Error::io(format!("reading blob {digest}"), e));
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
                done += n;
            }
        });
        Ok(ReceiverStream::new(rx).boxed())
    }

    async fn put(&self, digest: DigestInfo, data: Bytes) -> Result<()> {
        if digest.size > self.shared.index.max_bytes() {
            return Err(too_large(digest, self.shared.index.max_bytes()));
        }
        if let Some(packs) = self.shared.packs_for(digest.size) {
            let bytes = data.clone();
            let actual = re_proto::blocking::run_small(digest.size, move || DigestInfo::of_bytes(&bytes)).await?;
            if actual != digest {
                return Err(digest_mismatch(digest, actual));
            }
            // Already stored (and now refreshed): nothing to write.
            if self.shared.index.get(&digest).is_some() {
                return Ok(());
            }
            return packs.put(digest, data).await;
        }
        let shared = self.shared.clone();
        re_proto::blocking::run(move || -> Result<()> {
            let actual = DigestInfo::of_bytes(&data);
            if actual != digest {
                return Err(digest_mismatch(digest, actual));
            }
            // Already stored (and now refreshed): nothing to write.
            if digest.is_empty_blob() || shared.index.get(&digest).is_some() {
                return Ok(());
            }
            let tmp = shared.tmp_path(&digest);
            let mut f = create_upload_file(&tmp)?;
            let written =
                f.write_all(&data).map_err(|e| Error::io(format!("writing blob {digest}"), e)).and_then(|()| {
                    match shared.fsync {
                        true => f.sync_data().map_err(|e| Error::io(format!("syncing blob {digest}"), e)),
                        false => Ok(()),
                    }
                });
            match written {
                Ok(()) => shared.publish(&tmp, digest),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        })
        .await?
    }

    async fn put_file(&self, path: &std::path::Path) -> Result<DigestInfo> {
        let shared = self.shared.clone();
        let src = path.to_path_buf();
        // One pass: the file is hashed while it is copied into a temp file
        // (a copy, not a link: a process the action left behind could still
        // change the original).
        let staged = re_proto::blocking::run(move || -> Result<Staged> {
            let io = |e| Error::io(format!("reading {}", src.display()), e);
            let mut input = std::fs::File::open(&src).map_err(io)?;
            let len = input.metadata().map_err(io)?.len();
            if len == 0 {
                return Ok(Staged::Stored(DigestInfo::EMPTY));
            }
            if shared.packs_for(len).is_some() {
                let mut data = Vec::with_capacity(len as usize);
                input.read_to_end(&mut data).map_err(io)?;
                let digest = DigestInfo::of_bytes(&data);
                if shared.packs_for(digest.size).is_some() {
                    return Ok(Staged::Small(digest, Bytes::from(data)));
                }
                input.seek(SeekFrom::Start(0)).map_err(io)?;
            }
            // Staged in one prefix directory, renamed into its own once hashed.
            let tmp = shared.blobs_dir.join("00").join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
            let mut out = create_upload_file(&tmp)?;
            let mut hasher = DigestHasher::new();
            let mut buf = vec![0u8; READ_CHUNK];
            let copied = (|| -> Result<()> {
                loop {
                    let n = input.read(&mut buf).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(|e| Error::io("writing blob", e))?;
                }
                if shared.fsync {
                    out.sync_data().map_err(|e| Error::io("syncing blob", e))?;
                }
                Ok(())
            })();
            let digest = hasher.finish();
            let keep = copied.is_ok() && digest.size <= shared.index.max_bytes() && shared.index.get(&digest).is_none();
            if !keep {
                let _ = std::fs::remove_file(&tmp);
            }
            copied?;
            if digest.size > shared.index.max_bytes() {
                return Err(too_large(digest, shared.index.max_bytes()));
            }
            if keep {
                shared.publish(&tmp, digest)?;
            }
            Ok(Staged::Stored(digest))
        })
        .await??;
        match staged {
            Staged::Stored(digest) => Ok(digest),
            Staged::Small(digest, data) => {
                if self.shared.index.get(&digest).is_none() {
                    if let Some(packs) = self.shared.packs_for(digest.size) {
                        packs.put(digest, data).await?;
                    }
                }
                Ok(digest)
            }
        }
    }

    async fn begin_write(&self, digest: DigestInfo) -> Result<Box<dyn BlobWriter>> {
        if digest.size > self.shared.index.max_bytes() {
            return Err(too_large(digest, self.shared.index.max_bytes()));
        }
        let tmp = self.shared.tmp_path(&digest);
        let shared = self.shared.clone();
        // The writer (which deletes its temp file when dropped) is made where
        // the file is: a caller that goes away meanwhile (a client's reset)
        // leaves no file behind.
        let writer = tokio::task::spawn_blocking(move || {
            create_upload_file(&tmp).map(|file| FsWriter::new(shared, digest, tmp, file))
        })
        .await??;
        Ok(Box::new(writer))
    }

    fn file_path(&self, digest: DigestInfo) -> Option<PathBuf> {
        // Checked as for reads: a file changed on disk is not handed out.
        // Packed blobs have no file of their own (callers copy them).
        if !matches!(self.shared.index.get(&digest)?, Stored::File { .. }) {
            return None;
        }
        let path = self.shared.blob_path(&digest);
        let meta = std::fs::metadata(&path).ok()?;
        self.shared.still_stored(digest, &meta).then_some(path)
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

    fn disk_bytes(&self) -> u64 {
        let dead = self.shared.packs.as_ref().map_or(0, |(p, _)| p.dead_bytes());
        self.shared.index.total_bytes() + dead
    }

    fn evicted_blobs(&self) -> u64 {
        self.shared.index.evicted()
    }
}

/// What `put_file` did on its blocking thread.
enum Staged {
    Stored(DigestInfo),
    /// Read and hashed, to be packed.
    Small(DigestInfo, Bytes),
}

/// Used by tests and the index-rebuild benchmark.
pub fn blob_file_name(d: &DigestInfo) -> String {
    format!("{}-{}", d.hash_hex(), d.size)
}

/// Where a streamed read takes its bytes from.
enum ReadSource {
    /// Large reads: the file mapped read-only, handed to the network without
    /// a copy (the `Bytes` keeps the mapping alive). Blob files are never
    /// modified or truncated once renamed into place (eviction only unlinks),
    /// so the mapping cannot lose its pages underneath a reader.
    Mapped { bytes: Bytes, map: Arc<memmap2::Mmap> },
    /// Small reads: copied into recycled buffers, cheaper than a mapping.
    File(std::fs::File),
}

/// Reads of at least this many bytes are served from a memory map.
const MAP_THRESHOLD: u64 = 256 * 1024;

/// Opens a blob for a read of `len` bytes from `offset`; `None` if its file
/// is no longer the one stored (it is dropped).
fn open_for_read(shared: &Shared, digest: DigestInfo, offset: u64, len: u64) -> std::io::Result<Option<ReadSource>> {
    let mut file = std::fs::File::open(shared.blob_path(&digest))?;
    if !shared.still_stored(digest, &file.metadata()?) {
        return Ok(None);
    }
    if len < MAP_THRESHOLD {
        file.seek(SeekFrom::Start(offset))?;
        return Ok(Some(ReadSource::File(file)));
    }
    // SAFETY: see `ReadSource::Mapped`: the file is immutable while it exists.
    let map = Arc::new(unsafe { memmap2::MmapOptions::new().offset(offset).len(len as usize).map(&file)? });
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Some(ReadSource::Mapped { bytes: Bytes::from_owner(MapView(map.clone())), map }))
}

/// Lets a shared mapping back a `Bytes`.
struct MapView(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapView {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
