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
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::chunk_pool::ChunkPool;
use crate::lru_index::LruIndex;
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

struct Shared {
    blobs_dir: PathBuf,
    index: LruIndex<()>,
    pins: PinSet,
    fsync: bool,
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
        let mut found: Vec<(SystemTime, DigestInfo)> = Vec::new();
        let mut discarded = 0;
        for prefix in 0..=255u8 {
            let dir = self.blobs_dir.join(hex::encode([prefix]));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))? {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name();
                let parsed = name.to_str().and_then(parse_blob_file_name);
                let meta = entry.metadata().ok();
                match (parsed, meta) {
                    // A file whose length differs from its name was cut short (power
                    // loss); a `.tmp-` file is an upload that can never complete.
                    (Some(d), Some(m)) if m.len() == d.size => {
                        found.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), d));
                    }
                    _ => {
                        discarded += 1;
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        found.sort_unstable_by_key(|(t, _)| *t);
        let mut bytes = 0;
        let blobs = found.len();
        for (_, d) in found {
            bytes += d.size;
            for (old, ()) in self.index.insert(d, (), &self.pins) {
                let _ = std::fs::remove_file(self.blob_path(&old));
            }
        }
        Ok(ScanReport { blobs, bytes, discarded, elapsed_ms: start.elapsed().as_millis() })
    }

    /// A fresh temp file name beside where `digest` will live.
    fn tmp_path(&self, digest: &DigestInfo) -> PathBuf {
        let hex = d_prefix(digest);
        self.blobs_dir.join(hex).join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Renames a verified temporary file into place and indexes it
    /// (blocking); the files of blobs this evicts are deleted in the background.
    fn publish(&self, tmp: &std::path::Path, digest: DigestInfo) -> Result<()> {
        let dest = self.blob_path(&digest);
        if let Err(e) = std::fs::rename(tmp, &dest) {
            let _ = std::fs::remove_file(tmp);
            return Err(Error::io(format!("publishing blob {digest}"), e));
        }
        let evicted = self.index.insert(digest, (), &self.pins);
        if !evicted.is_empty() {
            let paths: Vec<PathBuf> = evicted.iter().map(|(d, ())| self.blob_path(d)).collect();
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
        let path = self.shared.blob_path(&digest);
        let read = match digest.size <= re_proto::blocking::SMALL_READ_BYTES {
            true => re_proto::blocking::read_small(path).await,
            false => tokio::fs::read(path).await,
        };
        match read {
            Ok(data) => Ok(Some(data.into())),
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
        let path = self.shared.blob_path(&digest);
        let opened = tokio::task::spawn_blocking(move || open_for_read(path, offset, len)).await?;
        let source = match opened {
            Ok(s) => s,
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
        let file = {
            let path = tmp.clone();
            tokio::task::spawn_blocking(move || create_upload_file(&path)).await??
        };
        let fsync = self.shared.fsync;
        // Hashing and writing each get a blocking thread, so a chunk is hashed
        // while the one before it is written and the network receives the next.
        let (write_tx, mut write_rx) = mpsc::channel::<Pieces>(PIPELINE_DEPTH);
        let (hash_tx, mut hash_rx) = mpsc::channel::<Pieces>(PIPELINE_DEPTH);
        let writer = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut file = file;
            while let Some(pieces) = write_rx.blocking_recv() {
                write_all_pieces(&mut file, &pieces).map_err(|e| Error::io(format!("writing blob {digest}"), e))?;
            }
            if fsync {
                file.sync_data().map_err(|e| Error::io(format!("syncing blob {digest}"), e))?;
            }
            Ok(())
        });
        let hasher = tokio::task::spawn_blocking(move || {
            let mut hasher = DigestHasher::new();
            while let Some(pieces) = hash_rx.blocking_recv() {
                for piece in pieces.iter() {
                    hasher.update(piece);
                }
            }
            hasher.finish()
        });
        Ok(Box::new(FsWriter {
            shared: self.shared.clone(),
            digest,
            tmp: Some(tmp),
            tx: Some((write_tx, hash_tx)),
            worker: Some((writer, hasher)),
            sent: 0,
        }))
    }

    fn file_path(&self, digest: DigestInfo) -> Option<PathBuf> {
        self.shared.index.get(&digest).map(|()| self.shared.blob_path(&digest))
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
}

/// One message's data, shared by the writing and the hashing thread.
type Pieces = Arc<Vec<Bytes>>;

struct FsWriter {
    shared: Arc<Shared>,
    digest: DigestInfo,
    tmp: Option<PathBuf>,
    /// To the disk thread and the hashing thread.
    tx: Option<(mpsc::Sender<Pieces>, mpsc::Sender<Pieces>)>,
    worker: Option<(JoinHandle<Result<()>>, JoinHandle<DigestInfo>)>,
    sent: u64,
}

impl FsWriter {
    /// A thread stopped early: surface its error.
    async fn worker_error(&mut self) -> Error {
        self.tx = None;
        match self.worker.take() {
            Some((writer, _)) => match writer.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::Internal("upload hasher stopped early".into()),
                Err(e) => e.into(),
            },
            None => Error::Internal("upload already finished".into()),
        }
    }
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.write_pieces(vec![data]).await
    }

    async fn write_pieces(&mut self, pieces: Vec<Bytes>) -> Result<()> {
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        if self.sent + len > self.digest.size {
            return Err(Error::InvalidArgument(format!(
                "more data than the {} bytes of blob {}",
                self.digest.size, self.digest
            )));
        }
        if len == 0 {
            return Ok(());
        }
        let Some((write_tx, hash_tx)) = &self.tx else {
            return Err(Error::Internal("upload already finished".into()));
        };
        // One message's pieces travel together: one hand-off and one writev each.
        let pieces = Arc::new(pieces);
        if hash_tx.send(pieces.clone()).await.is_err() || write_tx.send(pieces).await.is_err() {
            return Err(self.worker_error().await);
        }
        self.sent += len;
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.sent
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.tx = None;
        let (writer, hasher) = self.worker.take().expect("commit called once");
        let tmp = self.tmp.take().expect("commit called once");
        let written = writer.await.map_err(Error::from).and_then(|r| r);
        let hashed = hasher.await.map_err(Error::from);
        let result = match (written, hashed) {
            (Ok(()), Ok(actual)) if actual == self.digest => {
                let (shared, tmp, digest) = (self.shared.clone(), tmp.clone(), self.digest);
                re_proto::blocking::run(move || shared.publish(&tmp, digest)).await.and_then(|r| r)
            }
            (Ok(()), Ok(actual)) => Err(digest_mismatch(self.digest, actual)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // An abandoned upload: let the disk thread finish, then delete its file.
        if let (Some(tmp), Some((writer, _))) = (self.tmp.take(), self.worker.take()) {
            self.tx = None;
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = writer.await;
                    let _ = tokio::fs::remove_file(tmp).await;
                });
            } else {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Writes every piece, with as few `writev` calls as the kernel allows.
fn write_all_pieces(file: &mut std::fs::File, pieces: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = pieces.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

fn open_for_read(path: PathBuf, offset: u64, len: u64) -> std::io::Result<ReadSource> {
    let mut file = std::fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    if file_len < offset + len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("blob file holds {file_len} bytes, fewer than the {} asked for", offset + len),
        ));
    }
    if len < MAP_THRESHOLD {
        file.seek(SeekFrom::Start(offset))?;
        return Ok(ReadSource::File(file));
    }
    // SAFETY: see `ReadSource::Mapped`: the file is immutable while it exists.
    let map = Arc::new(unsafe { memmap2::MmapOptions::new().offset(offset).len(len as usize).map(&file)? });
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(ReadSource::Mapped { bytes: Bytes::from_owner(MapView(map.clone())), map })
}

/// Lets a shared mapping back a `Bytes`.
struct MapView(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapView {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
