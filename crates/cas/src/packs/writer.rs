//! The pack writer thread: group commit of everything waiting, then the
//! housekeeping of packs (sealing, deleting, compacting) between batches.
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};

use bytes::Bytes;
use fjall::{Keyspace, PartitionHandle, PersistMode};
use re_proto::{DigestInfo, Error, Result};

use super::usage::PackUsage;
use super::{key, pack_path, value, Job, Location, PackFiles, PackedIndex};

/// A batch closes at this many jobs or bytes, whichever comes first.
const BATCH_JOBS: usize = 1024;
const BATCH_BYTES: usize = 4 << 20;
/// A sealed pack with less than this share of live bytes is compacted, so
/// packs take at most ~1/0.7 = 1.43x the bytes of the blobs they hold.
pub(super) const COMPACT_BELOW: f64 = 0.7;
/// Blobs moved per compaction step; puts waiting go first between steps.
const COMPACT_STEP: usize = 256;

pub(crate) struct Writer {
    dir: PathBuf,
    keyspace: Keyspace,
    index: PartitionHandle,
    files: Arc<PackFiles>,
    usage: PackUsage,
    active: u32,
    active_file: Arc<File>,
    active_len: u64,
    pack_max: u64,
    fsync: bool,
    jobs: mpsc::Receiver<Job>,
    /// The pack being compacted and the blobs still to move out of it.
    compacting: Option<(u32, Vec<(DigestInfo, Location)>)>,
    /// `usage`'s dead bytes, published for the metrics after each batch.
    dead: Arc<AtomicU64>,
}

/// One batch being gathered: the bytes to append and what they are.
#[derive(Default)]
struct Batch {
    /// The blobs' bytes, written as they came (one `pwritev`, no copy).
    pieces: Vec<Bytes>,
    len: u64,
    placed: Vec<(DigestInfo, Location)>,
    /// Blobs placed in this batch, to write each only once.
    in_batch: HashSet<DigestInfo>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        dir: PathBuf,
        keyspace: Keyspace,
        index: PartitionHandle,
        files: Arc<PackFiles>,
        usage: PackUsage,
        active: u32,
        pack_max: u64,
        fsync: bool,
        jobs: mpsc::Receiver<Job>,
    ) -> Result<Self> {
        let active_file = create_pack(&dir, active)?;
        files.insert(active, active_file.clone());
        let mut w = Self {
            dir,
            keyspace,
            index,
            files,
            usage,
            active,
            active_file,
            active_len: 0,
            pack_max,
            fsync,
            jobs,
            compacting: None,
            dead: Arc::default(),
        };
        w.usage.appended(active, 0);
        Ok(w)
    }

    pub(super) fn dead_bytes(&self) -> Arc<AtomicU64> {
        self.dead.clone()
    }

    pub(super) fn run(mut self, index: Weak<dyn PackedIndex>) {
        loop {
            self.dead.store(self.usage.dead_bytes(), Ordering::Relaxed);
            let first = if self.compacting.is_some() {
                match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::TryRecvError::Empty) => {
                        let Some(index) = index.upgrade() else { return };
                        self.compact_step(&*index);
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            } else {
                match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            let mut stopping = matches!(first, Job::Stop);
            let mut jobs = vec![first];
            let mut bytes = 0;
            while !stopping && jobs.len() < BATCH_JOBS && bytes < BATCH_BYTES {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        stopping = matches!(job, Job::Stop);
                        if let Job::Put { data, .. } = &job {
                            bytes += data.len();
                        }
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            // The store is gone: nothing to index into.
            let Some(index) = index.upgrade() else { return };
            self.apply(&*index, jobs);
            if stopping {
                return;
            }
            self.housekeeping(&*index);
        }
    }

    fn apply(&mut self, index: &dyn PackedIndex, jobs: Vec<Job>) {
        let mut batch = Batch::default();
        let mut waiting = Vec::new();
        let mut forgotten = Vec::new();
        for job in jobs {
            match job {
                Job::Put { digest, data, done } => {
                    if !batch.in_batch.contains(&digest) && !index.holds(&digest) {
                        self.place(&mut batch, digest, data);
                    }
                    waiting.push(done);
                }
                Job::Forget { digest, at } => forgotten.push((digest, at)),
                Job::Stop => {}
            }
        }
        let mut removals = Vec::new();
        for (digest, at) in forgotten {
            self.usage.live_removed(at.pack, digest.size);
            // The entry is dropped unless the blob was packed again since
            // (the embedded store then already points at the new copy).
            if !batch.in_batch.contains(&digest) && index.location(&digest).is_none() {
                removals.push(digest);
            }
        }
        let written = self.commit(&batch, &removals);
        if written.is_ok() {
            for &(digest, at) in &batch.placed {
                self.usage.live_added(at.pack, digest.size);
                index.packed(digest, at);
            }
        }
        for done in waiting {
            let answer = match &written {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::io("packing blobs", std::io::Error::new(e.kind(), e.to_string()))),
            };
            let _ = done.send(answer);
        }
    }

    /// Appends a blob's bytes to the batch (a new pack first if the active
    /// one is full).
    fn place(&mut self, batch: &mut Batch, digest: DigestInfo, data: Bytes) {
        let at = Location { pack: self.active, offset: (self.active_len + batch.len) as u32 };
        batch.len += data.len() as u64;
        batch.pieces.push(data);
        batch.placed.push((digest, at));
        batch.in_batch.insert(digest);
    }

    /// Writes the batch's bytes, then commits its index entries and
    /// removals in one atomic batch of the embedded store.
    fn commit(&mut self, batch: &Batch, removals: &[DigestInfo]) -> std::io::Result<()> {
        if batch.len > 0 {
            let at = self.active_len;
            self.active_len += batch.len;
            self.usage.appended(self.active, batch.len);
            write_all_at(&self.active_file, &batch.pieces, at)?;
            if self.fsync {
                self.active_file.sync_data()?;
            }
        }
        if batch.placed.is_empty() && removals.is_empty() {
            return Ok(());
        }
        // Buffer: the journal reaches the OS before the blobs are
        // acknowledged (a batch left at its default would sit in the
        // journal's user-space buffer, lost to a SIGKILL).
        let durability = if self.fsync { PersistMode::SyncAll } else { PersistMode::Buffer };
        let mut entries = self.keyspace.batch().durability(Some(durability));
        for (digest, at) in &batch.placed {
            entries.insert(&self.index, key(digest), value(digest, *at));
        }
        for digest in removals {
            entries.remove(&self.index, key(digest));
        }
        entries.commit().map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Between batches: a full pack is sealed, empty packs are deleted and
    /// the sparsest one is picked for compaction.
    fn housekeeping(&mut self, index: &dyn PackedIndex) {
        self.rotate_if_full();
        for pack in self.usage.empty(self.active) {
            if self.compacting.as_ref().is_some_and(|(p, _)| *p == pack) {
                self.compacting = None;
            }
            self.delete(pack);
        }
        if self.compacting.is_none() {
            if let Some(pack) = self.usage.sparsest(self.active, COMPACT_BELOW) {
                tracing::debug!(pack, usage = ?self.usage.get(pack), "compacting a pack");
                self.compacting = Some((pack, index.packed_in(pack)));
            }
        }
    }

    /// Seals the active pack once it reached its size and begins the next.
    fn rotate_if_full(&mut self) {
        if self.active_len >= self.pack_max {
            match create_pack(&self.dir, self.active + 1) {
                Ok(file) => {
                    self.active += 1;
                    self.files.insert(self.active, file.clone());
                    self.active_file = file;
                    self.active_len = 0;
                    self.usage.appended(self.active, 0);
                }
                Err(e) => tracing::warn!(error = %e, "cannot begin a new pack; appending to the full one"),
            }
        }
    }

    /// Moves the next few live blobs of the pack being compacted to the
    /// active pack; deletes the pack once none is left in it.
    fn compact_step(&mut self, index: &dyn PackedIndex) {
        let Some((pack, todo)) = self.compacting.as_mut() else { return };
        let pack = *pack;
        let step: Vec<_> = todo.drain(todo.len().saturating_sub(COMPACT_STEP)..).collect();
        let done = todo.is_empty();
        let source = self.files.get(pack);
        let mut batch = Batch::default();
        let mut moving = Vec::new();
        for (digest, from) in step {
            if index.location(&digest) != Some(from) {
                continue;
            }
            let mut data = vec![0u8; digest.size as usize];
            let read = source.as_ref().map(|f| f.read_exact_at(&mut data, from.offset as u64));
            // A blob that cannot be read or is damaged is left behind; the
            // read path drops it when asked for it.
            if matches!(read, Some(Ok(()))) && DigestInfo::of_bytes(&data) == digest {
                self.place(&mut batch, digest, Bytes::from(data));
                moving.push(from);
            }
        }
        match self.commit(&batch, &[]) {
            Ok(()) => {
                let mut lost = Vec::new();
                for (&(digest, to), from) in batch.placed.iter().zip(moving) {
                    if index.moved(digest, from, to) {
                        self.usage.live_removed(from.pack, digest.size);
                        self.usage.live_added(to.pack, digest.size);
                    } else if index.location(&digest).is_none() {
                        // Evicted meanwhile: its entry must not outlive it.
                        lost.push(digest);
                    }
                }
                if !lost.is_empty() {
                    let _ = self.commit(&Batch::default(), &lost);
                }
            }
            Err(e) => {
                tracing::warn!(pack, error = %e, "compacting a pack failed; leaving it");
                self.usage.give_up(pack);
                self.compacting = None;
                return;
            }
        }
        self.rotate_if_full();
        if done {
            self.compacting = None;
            if index.packed_in(pack).is_empty() {
                self.delete(pack);
            } else {
                self.usage.give_up(pack);
            }
        }
    }

    fn delete(&mut self, pack: u32) {
        self.files.remove(pack);
        self.usage.remove(pack);
        let path = pack_path(&self.dir, pack);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an empty pack");
            }
        }
    }
}

/// Writes `pieces` back to back at `offset`, as few `pwritev` calls as
/// the iovec limit allows.
fn write_all_at(file: &File, pieces: &[Bytes], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const MAX_IOVECS: usize = 1024;
    let mut pieces: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).filter(|p| !p.is_empty()).collect();
    let mut start = 0;
    while start < pieces.len() {
        let end = (start + MAX_IOVECS).min(pieces.len());
        let iovecs: Vec<libc::iovec> = pieces[start..end]
            .iter()
            .map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() })
            .collect();
        // SAFETY: every iovec points into a live slice of `pieces`, which
        // pwritev only reads.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iovecs.as_ptr(), iovecs.len() as i32, offset as i64) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Skip what was written, resuming inside a piece on a short write.
        offset += n as u64;
        let mut left = n as usize;
        while left > 0 {
            let first = pieces[start].len();
            if left >= first {
                left -= first;
                start += 1;
            } else {
                pieces[start] = &pieces[start][left..];
                left = 0;
            }
        }
    }
    Ok(())
}

fn create_pack(dir: &std::path::Path, pack: u32) -> Result<Arc<File>> {
    let path = pack_path(dir, pack);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map(Arc::new)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}
