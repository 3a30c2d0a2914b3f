//! The server's CAS as the agent uses it: blobs an action needs are brought
//! into the local cache, and what it produced is sent back. Small blobs go
//! in batches, large ones through ByteStream, streamed to and from files.
use std::sync::Arc;

use futures::StreamExt;
use re_cas::BlobStore;
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::{ReadRequest, WriteRequest};
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::{
    batch_update_blobs_request, BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
};
use re_proto::{DigestInfo, Error, Result};

use crate::connection::ServerChannel;

/// Blobs up to this size travel in batches.
const BATCH_BLOB: u64 = 256 << 10;
/// One batch's payload, below the server's max_batch_total_size_bytes.
const BATCH_BYTES: u64 = 2 << 20;
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Clone)]
pub struct ServerCas {
    cas: ContentAddressableStorageClient<ServerChannel>,
    bytestream: ByteStreamClient<ServerChannel>,
    instance: String,
}

fn status(what: &str, s: tonic::Status) -> Error {
    let m = format!("{what} from the server: {}", s.message());
    match s.code() {
        tonic::Code::NotFound => Error::NotFound(m),
        tonic::Code::InvalidArgument => Error::InvalidArgument(m),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Error::PermissionDenied(m),
        _ => Error::Unavailable(m),
    }
}

impl ServerCas {
    pub fn new(channel: ServerChannel, instance: String) -> Self {
        let cas = ContentAddressableStorageClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let bytestream = ByteStreamClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        Self { cas, bytestream, instance }
    }

    fn resource(&self, rest: String) -> String {
        match self.instance.is_empty() {
            true => rest,
            false => format!("{}/{rest}", self.instance),
        }
    }

    pub async fn find_missing(&self, digests: &[DigestInfo]) -> Result<Vec<DigestInfo>> {
        let req = FindMissingBlobsRequest {
            instance_name: self.instance.clone(),
            blob_digests: digests.iter().map(|d| (*d).into()).collect(),
            ..Default::default()
        };
        let resp = self.cas.clone().find_missing_blobs(req).await.map_err(|s| status("FindMissingBlobs", s))?;
        resp.into_inner().missing_blob_digests.iter().map(DigestInfo::try_from).collect()
    }

    /// Copies `digests` from the server into `local`. A blob the server
    /// lacks is reported as MissingBlobs (the client uploads it again).
    pub async fn fetch_into(&self, local: &Arc<dyn BlobStore>, digests: &[DigestInfo]) -> Result<()> {
        let (small, large): (Vec<DigestInfo>, Vec<DigestInfo>) = digests.iter().partition(|d| d.size <= BATCH_BLOB);
        let mut missing = Vec::new();
        for batch in batches(&small) {
            let req = BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: batch.iter().map(|d| (*d).into()).collect(),
                ..Default::default()
            };
            let resp = self.cas.clone().batch_read_blobs(req).await.map_err(|s| status("BatchReadBlobs", s))?;
            for r in resp.into_inner().responses {
                let d = DigestInfo::try_from(r.digest.as_ref())?;
                match r.status.as_ref().map_or(0, |s| s.code) {
                    0 => local.put(d, r.data).await?,
                    5 => missing.push(d), // NOT_FOUND
                    code => return Err(Error::Unavailable(format!("reading blob {d} from the server: code {code}"))),
                }
            }
        }
        for d in large {
            match self.read_into(local, d).await {
                Err(Error::NotFound(_)) => missing.push(d),
                other => other?,
            }
        }
        if !missing.is_empty() {
            return Err(Error::MissingBlobs {
                message: "input blobs are missing from the server's CAS".into(),
                blobs: missing,
            });
        }
        Ok(())
    }

    async fn read_into(&self, local: &Arc<dyn BlobStore>, d: DigestInfo) -> Result<()> {
        let req = ReadRequest {
            resource_name: self.resource(format!("blobs/{}/{}", d.hash_hex(), d.size)),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream =
            self.bytestream.clone().read(req).await.map_err(|s| status("ByteStream.Read", s))?.into_inner();
        let mut writer = local.begin_write(d).await?;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|s| status("ByteStream.Read", s))?;
            writer.write(msg.data).await?;
        }
        writer.commit().await
    }

    /// Sends `digests` held in `local` to the server, skipping what it has.
    pub async fn upload_from(&self, local: &Arc<dyn BlobStore>, digests: &[DigestInfo]) -> Result<()> {
        let mut wanted = digests.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|d| !d.is_empty_blob());
        if wanted.is_empty() {
            return Ok(());
        }
        let missing = self.find_missing(&wanted).await?;
        let (small, large): (Vec<DigestInfo>, Vec<DigestInfo>) = missing.iter().partition(|d| d.size <= BATCH_BLOB);
        for batch in batches(&small) {
            let mut requests = Vec::with_capacity(batch.len());
            for d in batch {
                let data = local.get(d).await?.ok_or_else(|| lost_output(d))?;
                requests.push(batch_update_blobs_request::Request { digest: Some(d.into()), data, compressor: 0 });
            }
            let req = BatchUpdateBlobsRequest { instance_name: self.instance.clone(), requests, ..Default::default() };
            let resp = self.cas.clone().batch_update_blobs(req).await.map_err(|s| status("BatchUpdateBlobs", s))?;
            if let Some(bad) =
                resp.into_inner().responses.iter().find(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
            {
                let why = bad.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
                return Err(Error::Unavailable(format!("the server refused an output blob: {why}")));
            }
        }
        for d in large {
            self.write_from(local, d).await?;
        }
        Ok(())
    }

    async fn write_from(&self, local: &Arc<dyn BlobStore>, d: DigestInfo) -> Result<()> {
        let name = self.resource(format!("uploads/{}/blobs/{}/{}", uuid::Uuid::new_v4(), d.hash_hex(), d.size));
        let mut chunks = local.read(d, 0, 0).await?;
        // Read from the file as the server takes it: a small channel keeps
        // only a few chunks in memory.
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
        let reader = tokio::spawn(async move {
            let mut offset = 0i64;
            while let Some(chunk) = chunks.next().await {
                let data = chunk?;
                let next = offset + data.len() as i64;
                let req = WriteRequest {
                    resource_name: if offset == 0 { name.clone() } else { String::new() },
                    write_offset: offset,
                    finish_write: next == d.size as i64,
                    data,
                };
                offset = next;
                if tx.send(req).await.is_err() {
                    break;
                }
            }
            Ok::<(), Error>(())
        });
        let sent = self.bytestream.clone().write(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        reader.await??;
        sent.map_err(|s| status("ByteStream.Write", s))?;
        Ok(())
    }
}

fn lost_output(d: DigestInfo) -> Error {
    Error::Unavailable(format!("output blob {d} left the agent's cache before it was uploaded"))
}

/// Groups small blobs into batches of at most BATCH_BYTES.
fn batches(digests: &[DigestInfo]) -> Vec<Vec<DigestInfo>> {
    let mut out: Vec<Vec<DigestInfo>> = Vec::new();
    let mut size = 0;
    for d in digests {
        if out.is_empty() || size + d.size > BATCH_BYTES {
            out.push(Vec::new());
            size = 0;
        }
        size += d.size;
        out.last_mut().expect("pushed above").push(*d);
    }
    out
}
