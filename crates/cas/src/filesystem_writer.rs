//! A streamed upload into the filesystem store. Data is gathered into
//! batches of [`BATCH_BYTES`]; each batch is written (one `writev`) and
//! hashed on two blocking threads at once while the next one arrives. Between
//! batches no thread is held: an upload whose client is slow, paused or gone
//! costs a file descriptor and its temp file, nothing else, and a parked
//! upload can be resumed from where it stopped (`committed`). The temp file
//! is removed when the writer is dropped without a commit.
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use re_proto::digest::DigestHasher;
use re_proto::{DigestInfo, Error, Result};
use tokio::task::JoinHandle;

use crate::filesystem_store::Shared;
use crate::store::{digest_mismatch, BlobWriter};

/// Data handed to the blocking threads at a time.
const BATCH_BYTES: usize = 256 * 1024;

/// The open temp file and the hash of what it holds.
struct State {
    file: std::fs::File,
    hasher: DigestHasher,
}

/// A batch on its way to disk; the file and the hasher come back with it.
/// One handle for both, so a caller dropped while it waits (a client reset
/// its stream) leaves it here to be awaited again, never half taken.
type InFlight = JoinHandle<(std::io::Result<std::fs::File>, Result<DigestHasher>)>;

pub(crate) struct FsWriter {
    shared: Arc<Shared>,
    digest: DigestInfo,
    tmp: PathBuf,
    /// `None` while a batch is in flight, or after a failure.
    state: Option<State>,
    in_flight: Option<InFlight>,
    /// Received, not yet handed over (at most one batch).
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Bytes accepted (written, in flight or pending).
    sent: u64,
    committed: bool,
}

impl FsWriter {
    pub(crate) fn new(shared: Arc<Shared>, digest: DigestInfo, tmp: PathBuf, file: std::fs::File) -> Self {
        Self {
            shared,
            digest,
            tmp,
            state: Some(State { file, hasher: DigestHasher::new() }),
            in_flight: None,
            pending: Vec::new(),
            pending_len: 0,
            sent: 0,
            committed: false,
        }
    }

    /// Waits for the batch in flight; its file and hasher come back.
    async fn land(&mut self) -> Result<()> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return match self.state {
                Some(_) => Ok(()),
                None => Err(Error::Internal(format!("the upload of {} failed earlier", self.digest))),
            };
        };
        let landed = in_flight.await;
        self.in_flight = None;
        let (written, hasher) = landed?;
        let file = written.map_err(|e| Error::io(format!("writing blob {}", self.digest), e))?;
        self.state = Some(State { file, hasher: hasher? });
        Ok(())
    }

    /// Hands the pending data to the blocking threads (after the previous
    /// batch landed, so one upload never holds more than two threads).
    async fn dispatch(&mut self) -> Result<()> {
        self.land().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let State { mut file, mut hasher } = self.state.take().expect("landed");
        let batch = Arc::new(std::mem::take(&mut self.pending));
        self.pending_len = 0;
        let to_hash = batch.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let write = tokio::task::spawn_blocking(move || write_all_pieces(&mut file, &batch).map(|()| file));
            let hash = tokio::task::spawn_blocking(move || {
                for piece in to_hash.iter() {
                    hasher.update(piece);
                }
                hasher
            });
            let (written, hashed) = tokio::join!(write, hash);
            (written.unwrap_or_else(|e| Err(std::io::Error::other(e))), hashed.map_err(Error::from))
        }));
        Ok(())
    }

    /// Everything received is on disk and hashed; no thread is held.
    async fn flush(&mut self) -> Result<()> {
        self.dispatch().await?;
        self.land().await
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
        self.pending.extend(pieces.into_iter().filter(|p| !p.is_empty()));
        self.pending_len += len as usize;
        self.sent += len;
        if self.pending_len >= BATCH_BYTES {
            self.dispatch().await?;
        }
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.sent
    }

    async fn park(&mut self) -> Result<()> {
        self.flush().await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush().await?;
        let State { file, hasher } = self.state.take().expect("flushed");
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(digest_mismatch(self.digest, actual));
        }
        let (shared, tmp, digest) = (self.shared.clone(), self.tmp.clone(), self.digest);
        let published = re_proto::blocking::run(move || {
            if shared.fsync {
                file.sync_data().map_err(|e| Error::io(format!("syncing blob {digest}"), e))?;
            }
            drop(file);
            shared.publish(&tmp, digest)
        })
        .await
        .and_then(|r| r);
        // `publish` removes the temp file itself when it fails.
        self.committed = true;
        published
    }
}

impl Drop for FsWriter {
    /// An upload that will not be committed: its temp file goes now, or once
    /// the batch in flight has landed.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let tmp = std::mem::take(&mut self.tmp);
        match self.in_flight.take() {
            Some(in_flight) => {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = in_flight.await;
                        let _ = tokio::fs::remove_file(tmp).await;
                    });
                }
            }
            None => {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Writes every piece, with as few `writev` calls as the kernel allows.
pub(crate) fn write_all_pieces(file: &mut std::fs::File, pieces: &[Bytes]) -> std::io::Result<()> {
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
