//! Blobs as files: `<root>/blobs/<2 hex>/<hash>-<size>`. Uploads go to a
//! `.tmp-<uuid>` file in the same directory and are renamed into place only
//! after their digest is checked, so a crash never leaves a partial blob
//! visible (the start-up scan deletes any leftover temp file). Spreading
//! temp files over the 256 directories avoids contention on one directory's
//! lock when many small blobs arrive at once. The LRU index lives in memory
//! and is rebuilt from the directory at start (oldest mtime first).
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
use crate::pins::PinSet;
use crate::store::{check_range, digest_mismatch, too_large, BlobStore, BlobWriter, ByteStreamChunks};

/// Chunk size for streamed reads; below gRPC's default 4 MiB message limit.
const READ_CHUNK: usize = 1 << 20;
/// Chunks buffered between the network and the disk thread of one transfer.
const PIPELINE_DEPTH: usize = 8;
/// Read chunks are recycled; this many idle ones (1 MiB each) are kept.
static READ_BUFFERS: ChunkPool = ChunkPool::new(READ_CHUNK, 32);

/// Threads reading the blob directories at start-up.
const SCAN_THREADS: usize = 16;

/// A blob file the start-up scan found: (mtime, digest, stamp).
type Found = (SystemTime, DigestInfo, u64);

pub struct FilesystemStore {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    blobs_dir: PathBuf,
    /// Each blob's [`stamp`] when it was stored.
    pub(crate) index: LruIndex<u64>,
    pins: PinSet,
    pub(crate) fsync: bool,
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
    /// Opens (creating if needed) a store under `root` and indexes what is there.
    pub async fn open(root: PathBuf, max_size_bytes: u64, fsync: bool) -> Result<Self> {
        let shared = Arc::new(Shared {
            blobs_dir: root.join("blobs"),
            index: LruIndex::new(max_size_bytes),
            pins: PinSet::default(),
            fsync,
        });
        let s = shared.clone();
        let report = tokio::task::spawn_blocking(move || s.scan()).await??;
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
}

impl Shared {
    fn blob_path(&self, d: &DigestInfo) -> PathBuf {
        self.blobs_dir.join(d_prefix(d)).join(blob_file_name(d))
    }

    fn scan(&self) -> Result<ScanReport> {
        let start = Instant::now();
        std::fs::create_dir_all(&self.blobs_dir)
            .map_err(|e| Error::io(format!("creating {}", self.blobs_dir.display()), e))?;
        // The 256 directories are read by several threads at once: on a cold
        // disk each file's metadata is a read the device can overlap with
        // others (1M blobs: 11 s with one thread, see docs/benchmarks.md).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let scanned: Vec<Result<(Vec<Found>, usize)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..SCAN_THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut found = Vec::new();
                        let mut discarded = 0;
                        loop {
                            let prefix = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if prefix > 255 {
                                return Ok((found, discarded));
                            }
                            discarded += self.scan_dir(prefix as u8, &mut found)?;
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("scan threads do not panic")).collect()
        });
        let mut found: Vec<Found> = Vec::new();
        let mut discarded = 0;
        for part in scanned {
            let (f, d) = part?;
            found.extend(f);
            discarded += d;
        }
        found.sort_unstable_by_key(|(t, _, _)| *t);
        let mut bytes = 0;
        let blobs = found.len();
        for (_, d, stamp) in found {
            bytes += d.size;
            for (old, _) in self.index.insert(d, stamp, &self.pins) {
                let _ = std::fs::remove_file(self.blob_path(&old));
            }
        }
        Ok(ScanReport { blobs, bytes, discarded, elapsed_ms: start.elapsed().as_millis() })
    }

    /// Indexes one of the 256 directories into `found`; returns how many
    /// files it discarded.
    fn scan_dir(&self, prefix: u8, found: &mut Vec<Found>) -> Result<usize> {
        let dir = self.blobs_dir.join(hex::encode([prefix]));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut discarded = 0;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_blob_file_name);
            let meta = entry.metadata().ok();
            match (parsed, meta) {
                // A file whose length differs from its name was cut short (power
                // loss); a `.tmp-` file is an upload that can never complete.
                (Some(d), Some(m)) if m.len() == d.size => {
                    found.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), d, stamp(&m)));
                }
                _ => {
                    discarded += 1;
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(discarded)
    }

    /// Whether the file behind `digest` is still the one stored: same size,
    /// same modification time. A file changed on disk (truncated, rewritten)
    /// is never served: it is dropped, so the client uploads it again.
    fn still_stored(&self, digest: DigestInfo, meta: &std::fs::Metadata) -> bool {
        let ok = meta.len() == digest.size && self.index.peek(&digest) == Some(stamp(meta));
        if !ok {
            tracing::warn!(%digest, "a blob file changed on disk after it was stored; dropping it");
            self.index.remove(&digest);
            let _ = std::fs::remove_file(self.blob_path(&digest));
        }
        ok
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
        let evicted = self.index.insert(digest, stamp(&meta), &self.pins);
        if !evicted.is_empty() {
            let paths: Vec<PathBuf> = evicted.iter().map(|(d, _)| self.blob_path(d)).collect();
            tracing::debug!(count = paths.len(), "filesystem CAS evicting blobs");
            tokio::task::spawn_blocking(move || {
                for p in paths {
                    let _ = std::fs::remove_file(p);
                }
            });
        }
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
fn stamp(meta: &std::fs::Metadata) -> u64 {
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

fn parse_blob_file_name(name: &str) -> Option<DigestInfo> {
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
        if self.shared.index.get(&digest).is_none() {
            return Ok(None);
        }
        let shared = self.shared.clone();
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
                self.shared.index.remove(&digest);
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
        if self.shared.index.get(&digest).is_none() {
            return Err(Error::NotFound(format!("blob {digest} not found")));
        }
        let shared = self.shared.clone();
        let opened = tokio::task::spawn_blocking(move || open_for_read(&shared, digest, offset, len)).await?;
        let source = match opened {
            Ok(Some(s)) => s,
            Ok(None) => return Err(Error::NotFound(format!("blob {digest} not found"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.shared.index.remove(&digest);
                return Err(Error::NotFound(format!("blob {digest} not found")));
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
        re_proto::blocking::run(move || -> Result<DigestInfo> {
            let io = |e| Error::io(format!("reading {}", src.display()), e);
            let mut input = std::fs::File::open(&src).map_err(io)?;
            if input.metadata().map_err(io)?.len() == 0 {
                return Ok(DigestInfo::EMPTY);
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
            Ok(digest)
        })
        .await?
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
        self.shared.index.get(&digest)?;
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

    fn evicted_blobs(&self) -> u64 {
        self.shared.index.evicted()
    }
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
