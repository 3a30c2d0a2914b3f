//! google.bytestream.ByteStream over the CAS: streamed, resumable, optionally
//! compressed reads and writes. Uploads go straight to a store writer; nothing
//! is buffered whole.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures::stream::BoxStream;
use futures::StreamExt;
use re_proto::google::bytestream::byte_stream_server::ByteStream;
use re_proto::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest, WriteResponse,
};
use re_proto::{check_instance, Error, Result};
use tonic::{Request, Response, Status, Streaming};

use crate::compression::{Compressor, StreamDecoder, StreamEncoder};
use crate::resource_name::ResourceName;
use crate::store::{BlobStore, BlobWriter};

pub(crate) const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// A write stream that sends nothing for this long is treated as gone.
const STREAM_IDLE: Duration = Duration::from_secs(60);

/// One WriteRequest, its data as the slices it arrived in.
#[derive(Default)]
pub(crate) struct WriteChunk {
    pub resource_name: String,
    pub write_offset: i64,
    pub finish_write: bool,
    pub data: Vec<Bytes>,
    /// This message's share of the upload budget, given back once the
    /// store has taken the data.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl WriteChunk {
    fn len(&self) -> usize {
        self.data.iter().map(Bytes::len).sum()
    }
}

impl From<WriteRequest> for WriteChunk {
    fn from(r: WriteRequest) -> Self {
        Self {
            resource_name: r.resource_name,
            write_offset: r.write_offset,
            finish_write: r.finish_write,
            data: vec![r.data],
            budget: None,
        }
    }
}

/// An upload that may be resumed: its writer and how far it got. Between
/// streams the writer is parked (no thread, only its temp file); it is
/// dropped, and the temp file with it, `resume_window` after its last data.
struct UploadSlot {
    writer: tokio::sync::Mutex<Option<Box<dyn BlobWriter>>>,
    committed: AtomicU64,
    last_active: parking_lot::Mutex<Instant>,
}

impl UploadSlot {
    fn new() -> Self {
        Self {
            writer: tokio::sync::Mutex::new(None),
            committed: AtomicU64::new(0),
            last_active: parking_lot::Mutex::new(Instant::now()),
        }
    }
}

#[derive(Clone)]
pub struct ByteStreamService {
    store: Arc<dyn BlobStore>,
    instance_name: String,
    compressors: Vec<Compressor>,
    uploads: Arc<DashMap<String, Arc<UploadSlot>>>,
    /// KiB of upload messages the server holds at once (hand-framed path).
    budget: Arc<tokio::sync::Semaphore>,
}

/// Upload data held in memory at once, across all uploads: messages being
/// received and handed to the store (each upload's store writer holds up
/// to 512 KiB more while it writes).
pub const UPLOAD_BUDGET_BYTES: usize = 256 << 20;

impl ByteStreamService {
    /// `resume_window`: how long an interrupted upload can be resumed.
    pub fn new(
        store: Arc<dyn BlobStore>,
        instance_name: String,
        compressors: Vec<Compressor>,
        resume_window: Duration,
    ) -> Self {
        let uploads: Arc<DashMap<String, Arc<UploadSlot>>> = Arc::default();
        let weak = Arc::downgrade(&uploads);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(uploads) = weak.upgrade() else { return };
                // A writer in use (its lock held) belongs to a live stream.
                uploads.retain(|_, slot| {
                    slot.last_active.lock().elapsed() < resume_window || slot.writer.try_lock().is_err()
                });
            }
        });
        let budget = Arc::new(tokio::sync::Semaphore::new(UPLOAD_BUDGET_BYTES / 1024));
        Self { store, instance_name, compressors, uploads, budget }
    }

    pub(crate) fn upload_budget(&self) -> Arc<tokio::sync::Semaphore> {
        self.budget.clone()
    }

    fn check_compressor(&self, c: Compressor) -> Result<()> {
        if c == Compressor::Identity || self.compressors.contains(&c) {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!("compressor {c:?} is not enabled on this server")))
        }
    }

    /// The data of a Read, already compressed if the resource name asks for it.
    pub(crate) async fn read_chunks(
        &self,
        req: ReadRequest,
    ) -> Result<BoxStream<'static, Result<Bytes, Status>>, Status> {
        let name = ResourceName::parse_read(&req.resource_name)?;
        check_instance(&self.instance_name, &name.instance)?;
        self.check_compressor(name.compressor)?;
        if req.read_offset < 0 || req.read_limit < 0 {
            return Err(Error::InvalidArgument("read_offset and read_limit must not be negative".into()).into());
        }
        let compressed = name.compressor != Compressor::Identity;
        if compressed && (req.read_limit != 0 || req.read_offset != 0) {
            return Err(Error::InvalidArgument(
                "compressed reads take no read_limit or read_offset; read the whole blob".into(),
            )
            .into());
        }
        let chunks = self.store.read(name.digest, req.read_offset as u64, req.read_limit as u64).await?;
        if !compressed {
            return Ok(chunks.map(|c| c.map_err(Status::from)).boxed());
        }
        let encoder = StreamEncoder::new(name.compressor)?;
        let out = futures::stream::unfold((chunks, Some(encoder)), |(mut chunks, encoder)| async move {
            let mut encoder = encoder?;
            let item = match chunks.next().await {
                Some(Ok(data)) => match tokio::task::block_in_place(|| encoder.encode(&data)) {
                    Ok(out) => return Some((Ok(out), (chunks, Some(encoder)))),
                    Err(e) => Err(e),
                },
                Some(Err(e)) => Err(e),
                None => encoder.finish(),
            };
            Some((item.map_err(Status::from), (chunks, None)))
        })
        .filter(|r| futures::future::ready(!matches!(r, Ok(data) if data.is_empty())));
        Ok(out.boxed())
    }

    /// A whole ByteStream.Write, from its messages.
    pub(crate) async fn write_chunks(
        &self,
        mut stream: BoxStream<'static, Result<WriteChunk, Status>>,
    ) -> Result<WriteResponse, Status> {
        let first = stream
            .next()
            .await
            .transpose()?
            .ok_or_else(|| Error::InvalidArgument("write stream carried no message".into()))?;
        let name = ResourceName::parse_write(&first.resource_name)?;
        check_instance(&self.instance_name, &name.instance)?;
        self.check_compressor(name.compressor)?;
        let digest = name.digest;
        let compressed = name.compressor != Compressor::Identity;
        let done =
            |compressed: bool| WriteResponse { committed_size: if compressed { -1 } else { digest.size as i64 } };

        // A blob that is already stored needs no upload.
        if self.store.find_missing(&[digest]).await?.is_empty() {
            self.uploads.remove(&first.resource_name);
            return Ok(done(compressed));
        }

        let key = first.resource_name.clone();
        let slot = self.uploads.entry(key.clone()).or_insert_with(|| Arc::new(UploadSlot::new())).clone();
        let mut guard = slot.writer.lock().await;
        *slot.last_active.lock() = Instant::now();
        let resuming = guard.as_ref().map(|w| w.committed());
        match (first.write_offset, resuming) {
            (0, _) => *guard = None,
            (off, Some(c)) if off as u64 == c && !compressed => {}
            (off, c) => {
                return Err(Error::InvalidArgument(format!(
                "write_offset {off} does not match the {} bytes committed so far; ask QueryWriteStatus where to resume",
                c.unwrap_or(0)
            ))
                .into())
            }
        }
        if guard.is_none() {
            *guard = Some(self.store.begin_write(digest).await?);
        }
        let mut decoder = if compressed { Some(StreamDecoder::new(name.compressor, digest.size)?) } else { None };
        let mut received: i64 = first.write_offset;

        let mut msg = first;
        loop {
            if msg.write_offset != received && !compressed {
                drop(guard);
                return Err(Error::InvalidArgument(format!(
                    "write_offset {} does not follow the {received} bytes already sent",
                    msg.write_offset
                ))
                .into());
            }
            received += msg.len() as i64;
            let writer = guard.as_mut().expect("writer present");
            let written = match decoder.as_mut() {
                Some(d) => write_decoded(d, writer.as_mut(), msg.data).await,
                None => writer.write_pieces(msg.data).await,
            };
            if let Err(e) = written {
                // Out of disk, more data than the digest says...: this upload
                // cannot go on; its temp file goes now, not at a janitor.
                *guard = None;
                drop(guard);
                self.uploads.remove(&key);
                return Err(e.into());
            }
            slot.committed.store(writer.committed(), Ordering::Relaxed);
            *slot.last_active.lock() = Instant::now();
            if msg.finish_write {
                if let Some(d) = decoder.as_mut() {
                    let tail = d.finish()?;
                    if !tail.is_empty() {
                        writer.write(tail).await?;
                    }
                }
                let writer = guard.take().expect("writer present");
                drop(guard);
                self.uploads.remove(&key);
                let committed = writer.committed();
                if committed != digest.size {
                    return Err(Error::InvalidArgument(format!(
                        "finish_write after {committed} bytes, but blob {digest} has {} bytes",
                        digest.size
                    ))
                    .into());
                }
                writer.commit().await?;
                return Ok(WriteResponse { committed_size: if compressed { received } else { digest.size as i64 } });
            }
            let next = match tokio::time::timeout(STREAM_IDLE, stream.next()).await {
                Ok(next) => next.transpose(),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "the write stream for {digest} sent nothing for {}s",
                    STREAM_IDLE.as_secs()
                ))),
            };
            match next {
                Ok(Some(next)) => msg = next,
                // The client went away or stopped: keep what arrived for a
                // resume (uncompressed only), without holding a thread.
                other => {
                    let parked = match guard.as_mut() {
                        Some(w) if !compressed => w.park().await.is_ok(),
                        _ => false,
                    };
                    if !parked {
                        *guard = None;
                        drop(guard);
                        self.uploads.remove(&key);
                    }
                    return Err(match other {
                        Err(e) => e,
                        _ => Error::InvalidArgument(format!(
                            "write stream for {digest} ended after {received} bytes without finish_write"
                        ))
                        .into(),
                    });
                }
            }
        }
    }
}

/// Decompresses `data` and writes what it yields.
async fn write_decoded(d: &mut StreamDecoder, writer: &mut dyn BlobWriter, data: Vec<Bytes>) -> Result<()> {
    for piece in data {
        let out = decode_blocking(d, piece).await?;
        if !out.is_empty() {
            writer.write(out).await?;
        }
    }
    Ok(())
}

/// Decompression is CPU work: keep it off the async worker threads.
async fn decode_blocking(decoder: &mut StreamDecoder, data: Bytes) -> Result<Bytes> {
    if data.len() < 64 * 1024 {
        return decoder.decode(&data);
    }
    tokio::task::block_in_place(|| decoder.decode(&data))
}

/// The generated server's entry points. `crate::bytestream_http` answers Read
/// and Write itself in the running server; these delegate to the same
/// implementation, for anything that drives the generated trait directly.
#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = BoxStream<'static, Result<ReadResponse, Status>>;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let chunks = self.read_chunks(request.into_inner()).await?;
        Ok(Response::new(chunks.map(|c| c.map(|data| ReadResponse { data })).boxed()))
    }

    async fn write(&self, request: Request<Streaming<WriteRequest>>) -> Result<Response<WriteResponse>, Status> {
        let stream = request.into_inner().map(|m| m.map(WriteChunk::from)).boxed();
        self.write_chunks(stream).await.map(Response::new)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let req = request.into_inner();
        let name = ResourceName::parse_write(&req.resource_name)?;
        check_instance(&self.instance_name, &name.instance)?;
        if self.store.find_missing(&[name.digest]).await?.is_empty() {
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: name.digest.size as i64,
                complete: true,
            }));
        }
        let committed = self.uploads.get(&req.resource_name).map(|s| s.committed.load(Ordering::Relaxed)).unwrap_or(0);
        Ok(Response::new(QueryWriteStatusResponse { committed_size: committed as i64, complete: false }))
    }
}
