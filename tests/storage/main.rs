//! End-to-end tests of the storage services (CAS, ByteStream, ActionCache,
//! Capabilities) against the real re-server binary, one server per test.
//! This file holds the clients and calls the themed modules share.
#[path = "../common/mod.rs"]
mod common;

mod action_cache;
mod bytestream;
mod cas;
mod eviction;
mod server;

use std::time::Duration;

use bytes::Bytes;
use common::{batch_update_request, digest, pseudo_random, put_blobs, ServerConfig, TestServer};
use prost::Message;
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use re_proto::reapi::action_cache_client::ActionCacheClient;
use re_proto::reapi::capabilities_client::CapabilitiesClient;
use re_proto::reapi::compressor::Value as CompressorValue;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::digest_function::Value as DigestFunction;
use re_proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest, Directory,
    DirectoryNode, FileNode, FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest,
    OutputDirectory, OutputFile, Tree, UpdateActionResultRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

const MIB: usize = 1024 * 1024;

/// Big enough for a 1 MiB ByteStream chunk plus framing, and whole batches.
const CLIENT_MSG_LIMIT: usize = 64 * MIB;

struct Clients {
    channel: Channel,
    cas: ContentAddressableStorageClient<Channel>,
    bs: ByteStreamClient<Channel>,
    ac: ActionCacheClient<Channel>,
    caps: CapabilitiesClient<Channel>,
}

async fn clients(server: &TestServer) -> Clients {
    let ch = server.channel().await;
    Clients {
        channel: ch.clone(),
        cas: ContentAddressableStorageClient::new(ch.clone())
            .max_decoding_message_size(CLIENT_MSG_LIMIT)
            .max_encoding_message_size(CLIENT_MSG_LIMIT),
        bs: ByteStreamClient::new(ch.clone())
            .max_decoding_message_size(CLIENT_MSG_LIMIT)
            .max_encoding_message_size(CLIENT_MSG_LIMIT),
        ac: ActionCacheClient::new(ch.clone()),
        caps: CapabilitiesClient::new(ch),
    }
}

/// Uploads blobs with BatchUpdateBlobs (each must be accepted); returns their digests.
async fn put(c: &mut Clients, instance: &str, blobs: &[&[u8]]) -> Vec<Digest> {
    let pairs: Vec<(Digest, Bytes)> = blobs.iter().map(|b| (digest(b), Bytes::copy_from_slice(b))).collect();
    let digests = pairs.iter().map(|(d, _)| d.clone()).collect();
    put_blobs(&c.channel, instance, pairs).await;
    digests
}

async fn find_missing(c: &mut Clients, instance: &str, digests: &[Digest]) -> Vec<Digest> {
    c.cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: instance.into(),
            blob_digests: digests.to_vec(),
            digest_function: 0,
        })
        .await
        .expect("FindMissingBlobs")
        .into_inner()
        .missing_blob_digests
}

fn write_msgs(resource: &str, data: &[u8], start: usize, chunk: usize, finish: bool) -> Vec<WriteRequest> {
    let mut out = Vec::new();
    let mut off = start;
    loop {
        let end = (off + chunk).min(data.len());
        out.push(WriteRequest {
            resource_name: if out.is_empty() { resource.to_string() } else { String::new() },
            write_offset: off as i64,
            finish_write: finish && end == data.len(),
            data: Bytes::copy_from_slice(&data[off..end]),
        });
        off = end;
        if off >= data.len() {
            return out;
        }
    }
}

/// A whole ByteStream upload of `data` from `start`, in `chunk`-sized messages.
async fn bs_write(c: &mut Clients, resource: &str, data: &[u8], start: usize, chunk: usize) -> Result<i64, Status> {
    let msgs = write_msgs(resource, data, start, chunk, true);
    Ok(c.bs.write(tokio_stream::iter(msgs)).await?.into_inner().committed_size)
}

async fn bs_read(c: &mut Clients, resource: &str, offset: i64, limit: i64) -> Result<Vec<u8>, Status> {
    let mut stream =
        c.bs.read(ReadRequest { resource_name: resource.into(), read_offset: offset, read_limit: limit })
            .await?
            .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

async fn query_write(c: &mut Clients, resource: &str) -> (i64, bool) {
    let r =
        c.bs.query_write_status(QueryWriteStatusRequest { resource_name: resource.into() })
            .await
            .expect("QueryWriteStatus")
            .into_inner();
    (r.committed_size, r.complete)
}

async fn get_result(c: &mut Clients, instance: &str, action: &Digest) -> Result<ActionResult, Status> {
    c.ac.get_action_result(GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.clone()),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn update_result(
    c: &mut Clients,
    instance: &str,
    action: &Digest,
    result: ActionResult,
) -> Result<ActionResult, Status> {
    c.ac.update_action_result(UpdateActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.clone()),
        action_result: Some(result),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn assert_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            s
        }
    }
}
