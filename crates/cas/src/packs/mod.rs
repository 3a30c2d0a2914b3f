//! Small blobs packed into append-only files. A file per 4 KiB blob costs a
//! create, a write and a rename (236 µs on a VM disk); appending it to a
//! pack costs a share of one `pwrite`. Blobs go to `<root>/packs/NNNNNNNN.pack`
//! and where each one lies (pack, offset) is kept in an embedded LSM store
//! (fjall, `<root>/pack-index`), so no file format of ours has to survive a
//! crash: a pack only ever grows, and an index entry is committed after the
//! bytes it points to were written.
//!
//! One writer thread does every write ([`writer`]): it takes all the blobs
//! waiting, appends them with one `pwrite`, commits their index entries in
//! one batch (flushed to the OS, so a SIGKILL loses nothing acknowledged; to
//! the disk too with `fsync_writes`) and only then answers. Readers `pread`
//! and check the SHA-256 of what they read, so a damaged pack is never
//! served. Packs whose blobs were evicted are deleted when empty, compacted
//! (live blobs re-appended) when below [`writer::COMPACT_BELOW`] live.
mod recovery;
mod usage;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use re_proto::{DigestInfo, Error, Result};

pub(crate) use recovery::Recovered;

/// Where a packed blob lies. Packs are at most a few tens of MiB, so an
/// offset fits 32 bits (keeping the in-memory index entry small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
}

/// What the packs need from the store's index of all blobs (files and
/// packed). The writer thread is the only one to add packed entries, so the
/// index and the embedded store agree on where each blob is.
pub(crate) trait PackedIndex: Send + Sync + 'static {
    /// Whether the blob is stored, in any form.
    fn holds(&self, digest: &DigestInfo) -> bool;
    /// The blob's packed location, if it is stored packed.
    fn location(&self, digest: &DigestInfo) -> Option<Location>;
    /// A blob was just packed at `at`: index it (evicting what must go).
    fn packed(&self, digest: DigestInfo, at: Location);
    /// Compaction moved a blob; false if it is no longer at `from`.
    fn moved(&self, digest: DigestInfo, from: Location, to: Location) -> bool;
    /// The blobs indexed in `pack`.
    fn packed_in(&self, pack: u32) -> Vec<(DigestInfo, Location)>;
}

/// The open packs, shared by readers and the writer.
#[derive(Default)]
pub(crate) struct PackFiles {
    open: RwLock<HashMap<u32, Arc<File>>>,
}

impl PackFiles {
    fn get(&self, pack: u32) -> Option<Arc<File>> {
        self.open.read().get(&pack).cloned()
    }

    fn insert(&self, pack: u32, file: Arc<File>) {
        self.open.write().insert(pack, file);
    }

    fn remove(&self, pack: u32) {
        self.open.write().remove(&pack);
    }
}

pub(crate) enum Job {
    Put {
        digest: DigestInfo,
        data: Bytes,
        done: tokio::sync::oneshot::Sender<Result<()>>,
    },
    /// The blob at `at` left the index (evicted, replaced, found damaged).
    Forget {
        digest: DigestInfo,
        at: Location,
    },
    /// The store is closing: the writer ends after the jobs before this.
    Stop,
}

pub(crate) struct PackStore {
    jobs: mpsc::Sender<Job>,
    files: Arc<PackFiles>,
    /// Bytes in packs no longer indexed, as the writer last counted them.
    dead: Arc<AtomicU64>,
    /// Until [`PackStore::start`] hands it its thread.
    pending: Mutex<Option<writer::Writer>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Size a pack is sealed at: small stores get small packs, so that deleting
/// or compacting one frees a useful share of the store.
pub(crate) fn pack_max_bytes(max_size_bytes: u64) -> u64 {
    (max_size_bytes / 8).clamp(64 << 10, 64 << 20)
}

impl PackStore {
    /// Opens the packs under `root` (blocking): what the index lists, in
    /// packs that still hold it, is returned with each pack's mtime.
    pub(crate) fn open(root: &Path, pack_max: u64, fsync: bool) -> Result<(Self, Vec<Recovered>)> {
        let files = Arc::new(PackFiles::default());
        let (jobs, rx) = mpsc::channel();
        let (writer, recovered) = recovery::recover(root, pack_max, fsync, files.clone(), rx)?;
        let dead = writer.dead_bytes();
        let store = Self { jobs, files, dead, pending: Mutex::new(Some(writer)), thread: Mutex::new(None) };
        Ok((store, recovered))
    }

    /// Starts the writer thread; jobs sent before wait for it.
    pub(crate) fn start(&self, index: Weak<dyn PackedIndex>) -> Result<()> {
        let Some(writer) = self.pending.lock().take() else { return Ok(()) };
        let thread = std::thread::Builder::new()
            .name("cas-pack-writer".into())
            .spawn(move || writer.run(index))
            .map_err(|e| Error::io("starting the pack writer thread", e))?;
        *self.thread.lock() = Some(thread);
        Ok(())
    }

    /// Packs a blob whose bytes were checked against `digest`; returns once
    /// it is written and indexed.
    pub(crate) async fn put(&self, digest: DigestInfo, data: Bytes) -> Result<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Put { digest, data, done })
            .map_err(|_| Error::Internal("the pack writer has stopped".into()))?;
        answer.await.map_err(|_| Error::Internal("the pack writer has stopped".into()))?
    }

    /// Bytes in packs that hold no indexed blob (evicted, or copies
    /// written twice), until deletion or compaction reclaims them.
    pub(crate) fn dead_bytes(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }

    /// The blob at `at` is no longer indexed there.
    pub(crate) fn forget(&self, digest: DigestInfo, at: Location) {
        let _ = self.jobs.send(Job::Forget { digest, at });
    }

    /// Reads a packed blob (blocking); `None` if its pack is gone or the
    /// bytes no longer hash to `digest`.
    pub(crate) fn read(&self, digest: DigestInfo, at: Location) -> std::io::Result<Option<Vec<u8>>> {
        let Some(file) = self.files.get(at.pack) else { return Ok(None) };
        let mut data = vec![0u8; digest.size as usize];
        match file.read_exact_at(&mut data, at.offset as u64) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        if DigestInfo::of_bytes(&data) != digest {
            tracing::warn!(%digest, pack = at.pack, offset = at.offset, "a packed blob is damaged; dropping it");
            return Ok(None);
        }
        Ok(Some(data))
    }
}

impl PackStore {
    /// Stops the writer and waits for it, which closes the embedded store
    /// (so the same root can be opened again at once). Not waited for on
    /// the writer thread itself, where the store's last reference can go.
    pub(crate) fn stop(&self) {
        let _ = self.jobs.send(Job::Stop);
        if let Some(thread) = self.thread.lock().take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for PackStore {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("{pack:08}.pack"))
}

fn parse_pack_name(name: &str) -> Option<u32> {
    name.strip_suffix(".pack")?.parse().ok()
}

/// Index key: the first 20 bytes of the hash (160 bits: no two blobs
/// share them in practice), short enough for the embedded store to keep
/// inline, which makes its in-memory inserts much cheaper.
const KEY_BYTES: usize = 20;

fn key(d: &DigestInfo) -> [u8; KEY_BYTES] {
    d.hash[..KEY_BYTES].try_into().expect("a hash has 32 bytes")
}

/// Index value: the rest of the hash, the size, the pack and the offset.
fn value(d: &DigestInfo, at: Location) -> [u8; 28] {
    let mut v = [0u8; 28];
    v[..12].copy_from_slice(&d.hash[KEY_BYTES..]);
    v[12..20].copy_from_slice(&d.size.to_be_bytes());
    v[20..24].copy_from_slice(&at.pack.to_be_bytes());
    v[24..].copy_from_slice(&at.offset.to_be_bytes());
    v
}

fn parse_entry(k: &[u8], v: &[u8]) -> Option<(DigestInfo, Location)> {
    if k.len() != KEY_BYTES || v.len() != 28 {
        return None;
    }
    let mut hash = [0u8; 32];
    hash[..KEY_BYTES].copy_from_slice(k);
    hash[KEY_BYTES..].copy_from_slice(&v[..12]);
    let size = u64::from_be_bytes(v[12..20].try_into().ok()?);
    let pack = u32::from_be_bytes(v[20..24].try_into().ok()?);
    let offset = u32::from_be_bytes(v[24..].try_into().ok()?);
    Some((DigestInfo::new(hash, size), Location { pack, offset }))
}

fn modified(file: &File) -> SystemTime {
    file.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn store_error(context: &str, e: fjall::Error) -> Error {
    Error::io(format!("{context} (pack index)"), std::io::Error::other(e.to_string()))
}
