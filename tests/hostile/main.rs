//! A hostile or careless client, tried against the real binary: malformed
//! digests and names, digest functions this server does not serve, uploads
//! whose data disagrees with what they claim, and gRPC frames that lie. Every
//! one gets the status the REAPI and gRPC specs prescribe, with a message
//! naming the field, and the server keeps serving.
#[path = "../common/mod.rs"]
mod common;

mod digests;
mod frames;
mod uploads;

use bytes::Bytes;
use common::{digest, ServerConfig, TestServer};
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::WriteRequest;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::Digest;
use tonic::transport::Channel;
use tonic::{Code, Status};

fn server() -> TestServer {
    TestServer::start(&ServerConfig::filesystem().toml())
}

/// Asserts `r` failed with `code` and a message containing every `words`.
fn refused<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, words: &[&str], what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            for w in words {
                assert!(s.message().contains(w), "{what}: message should name '{w}': {}", s.message());
            }
        }
    }
}

fn cas(ch: &Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(ch.clone())
}

/// A ByteStream upload of `messages` (data, write_offset, finish_write).
async fn write(ch: &Channel, resource: &str, messages: &[(&[u8], i64, bool)]) -> Result<i64, Status> {
    let reqs: Vec<WriteRequest> = messages
        .iter()
        .enumerate()
        .map(|(i, (data, offset, finish))| WriteRequest {
            resource_name: if i == 0 { resource.to_string() } else { String::new() },
            write_offset: *offset,
            finish_write: *finish,
            data: Bytes::copy_from_slice(data),
        })
        .collect();
    let mut bs = ByteStreamClient::new(ch.clone());
    Ok(bs.write(tokio_stream::iter(reqs)).await?.into_inner().committed_size)
}

/// The digest of `data` as a client would send it, but with `hash` and `size`.
fn digest_with(hash: String, size: i64) -> Digest {
    Digest { hash, size_bytes: size }
}
