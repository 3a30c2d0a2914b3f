//! gRPC channels and the REAPI clients over them.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use re_proto::digest::DigestHasher;
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::{ReadRequest, WriteRequest};
use re_proto::reapi::action_cache_client::ActionCacheClient;
use re_proto::reapi::capabilities_client::CapabilitiesClient;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::execution_client::ExecutionClient;
use re_proto::reapi::{batch_update_blobs_request, BatchUpdateBlobsRequest, GetCapabilitiesRequest};
use re_proto::DigestInfo;
use tonic::transport::{Channel, Endpoint};

use crate::data::Blob;

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How to connect: the HTTP/2 knobs worth measuring.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnOpts {
    /// Server address, e.g. grpc://127.0.0.1:8980 (grpc:// and http:// are the same; no TLS).
    #[arg(long, default_value = "grpc://127.0.0.1:8980")]
    pub endpoint: String,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// HTTP/2 connections to open; concurrent clients are spread over them.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// HTTP/2 initial stream and connection window in MiB (0 = library default, 64 KiB).
    #[arg(long, default_value_t = 16)]
    pub window_mib: u32,
    /// Let HTTP/2 size its windows from measured bandwidth-delay (overrides --window-mib).
    #[arg(long)]
    pub adaptive_window: bool,
    /// Largest HTTP/2 frame the server may send us, in KiB (0 = library default, 16 KiB).
    #[arg(long, default_value_t = 0)]
    pub max_frame_kib: u32,
    /// Disable TCP_NODELAY (on by default).
    #[arg(long)]
    pub no_nodelay: bool,
    /// ByteStream through tonic's generated stubs, which copy every message
    /// (default: framed by re-bench, without copies).
    #[arg(long)]
    pub tonic_client: bool,
}

impl ConnOpts {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let uri = if let Some(rest) = self.endpoint.strip_prefix("grpc://") {
            format!("http://{rest}")
        } else if self.endpoint.starts_with("grpcs://") || self.endpoint.starts_with("https://") {
            bail!("TLS endpoints are not supported by re-bench yet: {}", self.endpoint);
        } else if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("http://{}", self.endpoint)
        };
        let mut ep = Endpoint::from_shared(uri)
            .with_context(|| format!("bad --endpoint {}", self.endpoint))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(!self.no_nodelay);
        if self.adaptive_window {
            ep = ep.http2_adaptive_window(true);
        } else if self.window_mib > 0 {
            let w = self.window_mib.saturating_mul(1024 * 1024).min(i32::MAX as u32);
            ep = ep.initial_stream_window_size(w).initial_connection_window_size(w);
        }
        if self.max_frame_kib > 0 {
            // HTTP/2 allows 16 KiB ..= 16 MiB - 1.
            ep = ep.max_frame_size((self.max_frame_kib * 1024).clamp(16 * 1024, (1 << 24) - 1));
        }
        Ok(ep)
    }

    pub async fn connect(&self) -> anyhow::Result<Clients> {
        let ep = self.endpoint()?;
        let mut channels = Vec::new();
        for _ in 0..self.connections.max(1) {
            channels.push(ep.connect().await.with_context(|| format!("cannot connect to {}", self.endpoint))?);
        }
        let mut caps = CapabilitiesClient::new(channels[0].clone());
        let caps = caps
            .get_capabilities(GetCapabilitiesRequest { instance_name: self.instance.clone() })
            .await
            .context("GetCapabilities failed (wrong --instance?)")?
            .into_inner();
        let max_batch = caps
            .cache_capabilities
            .as_ref()
            .map(|c| c.max_batch_total_size_bytes as u64)
            .filter(|&n| n > 0)
            .unwrap_or(4 * 1024 * 1024);
        let exec_enabled = caps.execution_capabilities.as_ref().is_some_and(|e| e.exec_enabled);
        Ok(Clients {
            channels,
            next: AtomicUsize::new(0),
            instance: self.instance.clone(),
            max_batch,
            exec_enabled,
            tonic_bytestream: self.tonic_client,
        })
    }
}

/// Channels to one server plus what its capabilities said.
pub struct Clients {
    channels: Vec<Channel>,
    next: AtomicUsize,
    pub instance: String,
    pub max_batch: u64,
    pub exec_enabled: bool,
    pub tonic_bytestream: bool,
}

/// One client's set of stubs, all on the same connection.
#[derive(Clone)]
pub struct Stubs {
    pub cas: ContentAddressableStorageClient<Channel>,
    pub bs: ByteStreamClient<Channel>,
    pub ac: ActionCacheClient<Channel>,
    pub exec: ExecutionClient<Channel>,
    /// For the codec-free ByteStream calls (`raw_bytestream`).
    pub channel: Channel,
    /// Use the generated tonic stubs for ByteStream instead.
    pub tonic_bytestream: bool,
    pub instance: String,
    pub max_batch: u64,
}

impl Clients {
    /// Stubs on the next connection (round robin).
    pub fn stubs(&self) -> Stubs {
        let ch = self.channels[self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len()].clone();
        Stubs {
            cas: ContentAddressableStorageClient::new(ch.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            bs: ByteStreamClient::new(ch.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            ac: ActionCacheClient::new(ch.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            exec: ExecutionClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE),
            channel: ch,
            tonic_bytestream: self.tonic_bytestream,
            instance: self.instance.clone(),
            max_batch: self.max_batch,
        }
    }
}

/// Framing allowance per blob inside a BatchUpdateBlobs request.
const PER_BLOB_OVERHEAD: u64 = 128;

impl Stubs {
    /// Uploads blobs with as few BatchUpdateBlobs calls as the batch limit
    /// allows; fails on any per-blob error. Returns the number of calls.
    pub async fn batch_upload(&mut self, blobs: &[Blob]) -> anyhow::Result<usize> {
        let mut calls = 0;
        for group in batches(blobs, self.max_batch) {
            self.batch_upload_one(group).await?;
            calls += 1;
        }
        Ok(calls)
    }

    /// One BatchUpdateBlobs call (the caller keeps it under the limit).
    pub async fn batch_upload_one(&mut self, blobs: &[Blob]) -> anyhow::Result<()> {
        let requests = blobs
            .iter()
            .map(|b| batch_update_blobs_request::Request {
                digest: Some(b.digest.into()),
                data: b.data.clone(),
                compressor: 0,
            })
            .collect();
        let resp = self
            .cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: 0,
            })
            .await
            .context("BatchUpdateBlobs")?
            .into_inner();
        if resp.responses.len() != blobs.len() {
            bail!("BatchUpdateBlobs answered {} of {} blobs", resp.responses.len(), blobs.len());
        }
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                bail!("BatchUpdateBlobs: blob {:?} failed: code {} {}", r.digest, s.code, s.message);
            }
        }
        Ok(())
    }

    /// ByteStream.Write of `data` under a fresh upload name, in `chunk`-byte messages.
    pub async fn bytestream_write(&mut self, digest: DigestInfo, data: Bytes, chunk: usize) -> anyhow::Result<()> {
        let resource =
            write_resource_name(&self.instance, &uuid::Uuid::new_v4().to_string(), digest.hash_hex(), digest.size);
        if !self.tonic_bytestream {
            let committed = crate::raw_bytestream::write(&mut self.channel, resource, data, chunk).await?;
            if committed != digest.size as i64 {
                bail!("ByteStream.Write committed {committed} of {} bytes", digest.size);
            }
            return Ok(());
        }
        let size = data.len();
        let chunk = chunk.max(1);
        let n = size.div_ceil(chunk).max(1);
        let reqs = futures::stream::iter((0..n).map(move |i| {
            let start = i * chunk;
            let end = (start + chunk).min(size);
            WriteRequest {
                resource_name: if i == 0 { resource.clone() } else { String::new() },
                write_offset: start as i64,
                finish_write: i == n - 1,
                data: data.slice(start..end),
            }
        }));
        let resp = self.bs.write(reqs).await.context("ByteStream.Write")?.into_inner();
        if resp.committed_size != digest.size as i64 {
            bail!("ByteStream.Write committed {} of {} bytes", resp.committed_size, digest.size);
        }
        Ok(())
    }

    /// ByteStream.Read of a whole blob; checks its length, and its hash when
    /// `verify`. Returns the bytes received.
    pub async fn bytestream_read(&mut self, digest: DigestInfo, verify: bool) -> anyhow::Result<u64> {
        let resource = read_resource_name(&self.instance, digest.hash_hex(), digest.size);
        if !self.tonic_bytestream {
            let mut hasher = verify.then(DigestHasher::new);
            let total = crate::raw_bytestream::read(&mut self.channel, resource, hasher.as_mut()).await?;
            return check_read(digest, total, hasher);
        }
        let mut stream = self
            .bs
            .read(ReadRequest { resource_name: resource, read_offset: 0, read_limit: 0 })
            .await
            .context("ByteStream.Read")?
            .into_inner();
        let mut total = 0u64;
        let mut hasher = verify.then(DigestHasher::new);
        while let Some(msg) = stream.next().await {
            let msg = msg.context("ByteStream.Read stream")?;
            total += msg.data.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&msg.data);
            }
        }
        check_read(digest, total, hasher)
    }
}

fn check_read(digest: DigestInfo, total: u64, hasher: Option<DigestHasher>) -> anyhow::Result<u64> {
    if total != digest.size {
        bail!("ByteStream.Read returned {total} of {} bytes", digest.size);
    }
    if let Some(h) = hasher {
        let got = h.finish();
        if got != digest {
            bail!("ByteStream.Read returned data hashing to {got}, expected {digest}");
        }
    }
    Ok(total)
}

/// Splits blobs into groups whose total stays under `max_batch`.
pub fn batches(blobs: &[Blob], max_batch: u64) -> Vec<&[Blob]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut total = 0u64;
    for (i, b) in blobs.iter().enumerate() {
        let cost = b.digest.size + PER_BLOB_OVERHEAD;
        if i > start && total + cost > max_batch {
            out.push(&blobs[start..i]);
            start = i;
            total = 0;
        }
        total += cost;
    }
    if start < blobs.len() {
        out.push(&blobs[start..]);
    }
    out
}

pub fn write_resource_name(instance: &str, uuid: &str, hash: String, size: u64) -> String {
    if instance.is_empty() {
        format!("uploads/{uuid}/blobs/{hash}/{size}")
    } else {
        format!("{instance}/uploads/{uuid}/blobs/{hash}/{size}")
    }
}

pub fn read_resource_name(instance: &str, hash: String, size: u64) -> String {
    if instance.is_empty() {
        format!("blobs/{hash}/{size}")
    } else {
        format!("{instance}/blobs/{hash}/{size}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::blob;

    #[test]
    fn batches_respect_the_limit() {
        let blobs: Vec<Blob> = (0..10).map(|i| Blob::new(blob(1, i, 1000))).collect();
        let groups = batches(&blobs, 3000);
        assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), 10);
        assert!(groups.iter().all(|g| g.len() == 2));
        // A blob larger than the limit still gets a group of its own.
        let big = vec![Blob::new(blob(1, 1, 5000))];
        assert_eq!(batches(&big, 3000).len(), 1);
    }

    #[test]
    fn resource_names() {
        assert_eq!(write_resource_name("", "u", "h".into(), 3), "uploads/u/blobs/h/3");
        assert_eq!(read_resource_name("main", "h".into(), 3), "main/blobs/h/3");
    }
}
