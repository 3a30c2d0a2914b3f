//! End-to-end tests of the storage services (CAS, ByteStream, ActionCache,
//! Capabilities) against the real re-server binary, one server per test.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{digest, pseudo_random, TestServer};
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

/// Memory CAS and action cache, no execution.
fn memory_config(extra_cas: &str, extra_caps: &str) -> String {
    format!(
        r#"
[storage.cas]
backend = "memory"
{extra_cas}
[storage.action_cache]
backend = "memory"
[capabilities]
exec_enabled = false
{extra_caps}
"#
    )
}

/// Filesystem CAS and action cache under the server's data dir, no execution.
fn filesystem_config(instance: &str) -> String {
    format!(
        r#"
[server]
instance_name = "{instance}"
[storage.cas]
backend = "filesystem"
[storage.action_cache]
backend = "filesystem"
[capabilities]
exec_enabled = false
"#
    )
}

struct Clients {
    cas: ContentAddressableStorageClient<Channel>,
    bs: ByteStreamClient<Channel>,
    ac: ActionCacheClient<Channel>,
    caps: CapabilitiesClient<Channel>,
}

async fn clients(server: &TestServer) -> Clients {
    let ch = server.channel().await;
    Clients {
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

fn update_req(instance: &str, blobs: &[(Digest, &[u8])]) -> BatchUpdateBlobsRequest {
    BatchUpdateBlobsRequest {
        instance_name: instance.into(),
        requests: blobs
            .iter()
            .map(|(d, data)| batch_update_blobs_request::Request {
                digest: Some(d.clone()),
                data: Bytes::copy_from_slice(data),
                compressor: 0,
            })
            .collect(),
        digest_function: 0,
    }
}

/// Uploads blobs with BatchUpdateBlobs and asserts each one was accepted.
async fn put(c: &mut Clients, instance: &str, blobs: &[&[u8]]) -> Vec<Digest> {
    let pairs: Vec<(Digest, &[u8])> = blobs.iter().map(|b| (digest(b), *b)).collect();
    let resp = c.cas.batch_update_blobs(update_req(instance, &pairs)).await.expect("BatchUpdateBlobs").into_inner();
    assert_eq!(resp.responses.len(), blobs.len());
    for r in &resp.responses {
        assert_eq!(r.status.as_ref().unwrap().code, 0, "upload of {:?} failed: {:?}", r.digest, r.status);
    }
    pairs.into_iter().map(|(d, _)| d).collect()
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

/// Uploads compressed bytes; offsets count compressed bytes after the first.
async fn bs_write_compressed(c: &mut Clients, resource: &str, compressed: &[u8]) -> Result<i64, Status> {
    bs_write(c, resource, compressed, 0, 64 * 1024).await
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

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn deflate_compress(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate_decompress(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

/// Text-like bytes that compress well but are not trivial.
fn compressible(len: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while s.len() < len {
        s.extend_from_slice(format!("line {i}: the quick brown fox {}\n", i * i % 977).as_bytes());
        i += 1;
    }
    s.truncate(len);
    s
}

// ---------------------------------------------------------------- CAS

#[tokio::test]
async fn find_missing_blobs_reports_only_absent_blobs_and_never_the_empty_blob() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let present = put(&mut c, "", &[b"present blob"]).await.remove(0);
    let absent = digest(b"absent blob");
    let empty = digest(b"");
    let missing = find_missing(&mut c, "", &[present.clone(), absent.clone(), empty.clone()]).await;
    assert_eq!(missing, vec![absent.clone()]);
    // The empty blob is readable without ever being uploaded.
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![empty.clone()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);
    assert!(r.responses[0].data.is_empty());
    assert_eq!(bs_read(&mut c, &common::read_resource("", &empty), 0, 0).await.unwrap(), Vec::<u8>::new());
    // Nothing asked → nothing missing.
    assert!(find_missing(&mut c, "", &[]).await.is_empty());
}

#[tokio::test]
async fn batch_update_rejects_only_the_mismatched_blob() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let good: &[u8] = b"good data";
    let lying = digest(b"what the digest claims");
    let wrong_size = Digest { hash: digest(b"short").hash, size_bytes: 99 };
    let resp = c
        .cas
        .batch_update_blobs(update_req(
            "",
            &[(digest(good), good), (lying.clone(), b"other data of any length"), (wrong_size.clone(), b"short")],
        ))
        .await
        .expect("the batch as a whole succeeds")
        .into_inner();
    assert_eq!(resp.responses.len(), 3);
    let code_of = |d: &Digest| resp.responses.iter().find(|r| r.digest.as_ref() == Some(d)).unwrap().status.clone();
    assert_eq!(code_of(&digest(good)).unwrap().code, 0);
    assert_eq!(code_of(&lying).unwrap().code, Code::InvalidArgument as i32);
    assert_eq!(code_of(&wrong_size).unwrap().code, Code::InvalidArgument as i32);
    // The good blob landed; the rejected ones did not.
    let missing = find_missing(&mut c, "", &[digest(good), lying.clone(), wrong_size.clone()]).await;
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(!missing.contains(&digest(good)));
}

#[tokio::test]
async fn batch_read_returns_data_and_per_blob_not_found() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let data: &[u8] = b"some stored bytes";
    let d = put(&mut c, "", &[data]).await.remove(0);
    let gone = digest(b"never uploaded");
    let resp = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![d.clone(), gone.clone()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses.len(), 2);
    for r in &resp.responses {
        if r.digest.as_ref() == Some(&d) {
            assert_eq!(r.status.as_ref().unwrap().code, 0);
            assert_eq!(&r.data[..], data);
        } else {
            assert_eq!(r.digest.as_ref(), Some(&gone));
            assert_eq!(r.status.as_ref().unwrap().code, Code::NotFound as i32);
            assert!(r.data.is_empty());
        }
    }
}

#[tokio::test]
async fn batches_over_the_size_limit_are_refused() {
    let server = TestServer::start(&memory_config("", "max_batch_total_size_bytes = 2048"));
    let mut c = clients(&server).await;
    let a = pseudo_random(1000, 1);
    let b = pseudo_random(1000, 2);
    let big = pseudo_random(1100, 3);
    // Just under the limit works (the limit is the cause below, not the blobs).
    put(&mut c, "", &[&a, &b]).await;
    put(&mut c, "", &[&big]).await;
    let r = c.cas.batch_update_blobs(update_req("", &[(digest(&a), &a), (digest(&big), &big)])).await;
    assert_code(r, Code::InvalidArgument, "update over the limit");
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![digest(&a), digest(&big)], ..Default::default() })
        .await;
    assert_code(r, Code::InvalidArgument, "read over the limit");
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![digest(&a), digest(&b)], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.responses.iter().all(|r| r.status.as_ref().unwrap().code == 0));
}

#[tokio::test]
async fn malformed_digests_are_invalid_argument() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let good = digest(b"x");
    let bad_hex = Digest { hash: "z".repeat(64), size_bytes: 1 };
    let short = Digest { hash: good.hash[..63].to_string(), size_bytes: 1 };
    let negative = Digest { hash: good.hash.clone(), size_bytes: -1 };
    for bad in [&bad_hex, &short, &negative] {
        let r = c
            .cas
            .find_missing_blobs(FindMissingBlobsRequest { blob_digests: vec![bad.clone()], ..Default::default() })
            .await;
        assert_code(r, Code::InvalidArgument, &format!("FindMissingBlobs {bad:?}"));
        let r = c
            .cas
            .batch_read_blobs(BatchReadBlobsRequest { digests: vec![good.clone(), bad.clone()], ..Default::default() })
            .await;
        assert_code(r, Code::InvalidArgument, &format!("BatchReadBlobs {bad:?}"));
        // Either the whole batch or that one blob is refused.
        match c.cas.batch_update_blobs(update_req("", &[(bad.clone(), b"x")])).await {
            Ok(r) => {
                assert_eq!(r.into_inner().responses[0].status.as_ref().unwrap().code, Code::InvalidArgument as i32)
            }
            Err(s) => assert_eq!(s.code(), Code::InvalidArgument),
        }
        let r =
            c.cas.get_tree(GetTreeRequest { root_digest: Some(bad.clone()), ..Default::default() }).await.map(|_| ());
        assert_code(r, Code::InvalidArgument, &format!("GetTree {bad:?}"));
        assert_code(get_result(&mut c, "", bad).await, Code::InvalidArgument, &format!("GetActionResult {bad:?}"));
        let r = bs_read(&mut c, &format!("blobs/{}/{}", bad.hash, bad.size_bytes), 0, 0).await;
        assert_code(r, Code::InvalidArgument, &format!("ByteStream.Read {bad:?}"));
    }
    let r = c.ac.get_action_result(GetActionResultRequest::default()).await;
    assert_code(r, Code::InvalidArgument, "GetActionResult without a digest");
    let names = [
        "nonsense".to_string(),
        "blobs/abc".to_string(),
        format!("blobs/{}/ten", good.hash),
        format!("uploads/u/blobs/{}/1", good.hash),
        format!("blobs/md5/{}/1", good.hash),
    ];
    for name in &names {
        assert_code(bs_read(&mut c, name, 0, 0).await, Code::InvalidArgument, name);
    }
}

/// root → {left, right}; left → {l1, l2}; right → {r1}: three levels, six directories.
fn tree_fixture() -> (Digest, Vec<(Digest, Vec<u8>)>) {
    let leaf = |name: &str| Directory {
        files: vec![FileNode {
            name: format!("{name}.txt"),
            digest: Some(digest(name.as_bytes())),
            is_executable: false,
            node_properties: None,
        }],
        ..Default::default()
    };
    let node =
        |name: &str, d: &Directory| DirectoryNode { name: name.into(), digest: Some(digest(&d.encode_to_vec())) };
    let (l1, l2, r1) = (leaf("l1"), leaf("l2"), leaf("r1"));
    let left = Directory { directories: vec![node("l1", &l1), node("l2", &l2)], ..Default::default() };
    let right = Directory { directories: vec![node("r1", &r1)], ..leaf("right") };
    let root = Directory { directories: vec![node("left", &left), node("right", &right)], ..Default::default() };
    let all: Vec<Vec<u8>> = [&root, &left, &right, &l1, &l2, &r1].iter().map(|d| d.encode_to_vec()).collect();
    (digest(&all[0]), all.into_iter().map(|b| (digest(&b), b)).collect())
}

async fn get_tree_page(
    c: &mut Clients,
    root: &Digest,
    page_size: i32,
    token: &str,
) -> Result<Vec<(Vec<Directory>, String)>, Status> {
    let mut s = c
        .cas
        .get_tree(GetTreeRequest {
            instance_name: String::new(),
            root_digest: Some(root.clone()),
            page_size,
            page_token: token.into(),
            digest_function: 0,
        })
        .await?
        .into_inner();
    let mut pages = Vec::new();
    while let Some(p) = s.message().await? {
        pages.push((p.directories, p.next_page_token));
    }
    Ok(pages)
}

#[tokio::test]
async fn get_tree_returns_every_level_and_pages() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let (root, dirs) = tree_fixture();
    let blobs: Vec<&[u8]> = dirs.iter().map(|(_, b)| b.as_slice()).collect();
    put(&mut c, "", &blobs).await;
    let mut expected: Vec<Vec<u8>> = dirs.iter().map(|(_, b)| b.clone()).collect();
    expected.sort();

    // Unpaged: everything, root first.
    let pages = get_tree_page(&mut c, &root, 0, "").await.unwrap();
    let all: Vec<Directory> = pages.iter().flat_map(|p| p.0.clone()).collect();
    assert_eq!(all[0].encode_to_vec(), dirs[0].1, "root comes first");
    let mut got: Vec<Vec<u8>> = all.iter().map(|d| d.encode_to_vec()).collect();
    got.sort();
    assert_eq!(got, expected);
    assert!(pages.last().unwrap().1.is_empty(), "last page has no token");

    // Paged by 4: two calls (4 + 2), following the token.
    let first = get_tree_page(&mut c, &root, 4, "").await.unwrap();
    assert_eq!(first.len(), 1, "one page per call when paging");
    assert_eq!(first[0].0.len(), 4);
    assert!(!first[0].1.is_empty(), "a next_page_token after a full page");
    let second = get_tree_page(&mut c, &root, 4, &first[0].1).await.unwrap();
    assert_eq!(second[0].0.len(), 2);
    assert!(second[0].1.is_empty());
    let mut got: Vec<Vec<u8>> = first[0].0.iter().chain(&second[0].0).map(|d| d.encode_to_vec()).collect();
    got.sort();
    assert_eq!(got, expected, "pages together are the whole tree, without repeats");

    // Paged by 1: six pages.
    let mut token = String::new();
    let mut n = 0;
    loop {
        let p = get_tree_page(&mut c, &root, 1, &token).await.unwrap().remove(0);
        n += p.0.len();
        token = p.1;
        if token.is_empty() {
            break;
        }
        assert!(n < 10, "paging does not end");
    }
    assert_eq!(n, 6);

    let r = get_tree_page(&mut c, &root, 2, "not-a-token").await;
    assert_code(r, Code::InvalidArgument, "bad page token");
    let r = get_tree_page(&mut c, &digest(b"no such directory"), 0, "").await;
    assert_code(r, Code::NotFound, "missing root");
}

// ---------------------------------------------------------------- ByteStream

#[tokio::test]
async fn bytestream_streams_a_multi_megabyte_blob_in_and_out() {
    for config in [memory_config("", ""), filesystem_config("")] {
        let server = TestServer::start(&config);
        let mut c = clients(&server).await;
        let data = pseudo_random(5 * MIB + 123, 7);
        let d = digest(&data);
        let committed = bs_write(&mut c, &common::upload_resource("", &d), &data, 0, 64 * 1024).await.unwrap();
        assert_eq!(committed, data.len() as i64);
        assert!(find_missing(&mut c, "", std::slice::from_ref(&d)).await.is_empty());
        let res = common::read_resource("", &d);
        let back = bs_read(&mut c, &res, 0, 0).await.unwrap();
        assert!(back == data, "whole read differs");
        let part = bs_read(&mut c, &res, 1_000_000, 3 * MIB as i64).await.unwrap();
        assert!(part == data[1_000_000..1_000_000 + 3 * MIB], "ranged read differs");
        let tail = bs_read(&mut c, &res, data.len() as i64 - 10, 0).await.unwrap();
        assert_eq!(tail, &data[data.len() - 10..]);
        let clipped = bs_read(&mut c, &res, data.len() as i64 - 10, 1000).await.unwrap();
        assert_eq!(clipped, &data[data.len() - 10..], "a limit past the end stops at the end");
        assert_code(bs_read(&mut c, &res, -1, 0).await, Code::InvalidArgument, "negative offset");
        assert_code(bs_read(&mut c, &res, 0, -1).await, Code::InvalidArgument, "negative limit");
        assert_code(bs_read(&mut c, &res, data.len() as i64 + 1, 0).await, Code::OutOfRange, "offset past the end");
        let at_end = bs_read(&mut c, &res, data.len() as i64, 0).await.unwrap();
        assert!(at_end.is_empty(), "a read from the very end is empty, not an error");
        let r = bs_read(&mut c, &common::read_resource("", &digest(b"missing")), 0, 0).await;
        assert_code(r, Code::NotFound, "missing blob");
    }
}

#[tokio::test]
async fn bytestream_write_with_wrong_data_is_refused_and_not_stored() {
    for config in [memory_config("", ""), filesystem_config("")] {
        let server = TestServer::start(&config);
        let mut c = clients(&server).await;
        let data = pseudo_random(300_000, 8);
        let d = digest(&data);
        let mut wrong = data.clone();
        wrong[150_000] ^= 1;
        let r = bs_write(&mut c, &common::upload_resource("", &d), &wrong, 0, 32 * 1024).await;
        assert_code(r, Code::InvalidArgument, "content that does not hash to the digest");
        let r = bs_write(&mut c, &common::upload_resource("", &d), &data[..200_000], 0, 32 * 1024).await;
        assert_code(r, Code::InvalidArgument, "finish_write before all bytes");
        let mut longer = data.clone();
        longer.extend_from_slice(b"extra");
        let r = bs_write(&mut c, &common::upload_resource("", &d), &longer, 0, 32 * 1024).await;
        assert_code(r, Code::InvalidArgument, "more bytes than the digest says");
        assert_eq!(find_missing(&mut c, "", std::slice::from_ref(&d)).await, vec![d.clone()], "nothing became visible");
        assert_code(bs_read(&mut c, &common::read_resource("", &d), 0, 0).await, Code::NotFound, "read");
        // The right bytes still go in afterwards.
        bs_write(&mut c, &common::upload_resource("", &d), &data, 0, 32 * 1024).await.unwrap();
        assert!(bs_read(&mut c, &common::read_resource("", &d), 0, 0).await.unwrap() == data);
    }
}

#[tokio::test]
async fn bytestream_write_resumes_after_the_stream_ends_early() {
    for config in [memory_config("", ""), filesystem_config("")] {
        let server = TestServer::start(&config);
        let mut c = clients(&server).await;
        let data = pseudo_random(2 * MIB, 9);
        let half = MIB;
        let d = digest(&data);
        let res = common::upload_resource("", &d);

        // First half, then the client closes the stream without finish_write.
        let msgs = write_msgs(&res, &data[..half], 0, 64 * 1024, false);
        let r = c.bs.write(tokio_stream::iter(msgs)).await;
        assert!(r.is_err(), "a write that never finished must not succeed: {r:?}");
        assert_eq!(query_write(&mut c, &res).await, (half as i64, false));
        assert!(!find_missing(&mut c, "", std::slice::from_ref(&d)).await.is_empty(), "half a blob is not visible");

        // A resume at the wrong offset is refused and loses nothing.
        let r = bs_write(&mut c, &res, &data, half + 1, 64 * 1024).await;
        assert_code(r, Code::InvalidArgument, "resume at the wrong offset");
        assert_eq!(query_write(&mut c, &res).await, (half as i64, false));

        let committed = bs_write(&mut c, &res, &data, half, 64 * 1024).await.unwrap();
        assert_eq!(committed, data.len() as i64);
        assert_eq!(query_write(&mut c, &res).await, (data.len() as i64, true));
        assert!(bs_read(&mut c, &common::read_resource("", &d), 0, 0).await.unwrap() == data);
    }
}

#[tokio::test]
async fn bytestream_write_resumes_after_the_client_is_cancelled() {
    let server = TestServer::start(&filesystem_config(""));
    let mut c = clients(&server).await;
    let data = pseudo_random(3 * MIB, 10);
    let d = digest(&data);
    let res = common::upload_resource("", &d);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let mut bs = c.bs.clone();
    let call = tokio::spawn(async move { bs.write(ReceiverStream::new(rx)).await });
    let sent = 2 * MIB;
    for m in write_msgs(&res, &data[..sent], 0, 128 * 1024, false) {
        tx.send(m).await.unwrap();
    }
    // Wait until the server has taken all of it, then cut the call (RST_STREAM).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while query_write(&mut c, &res).await.0 != sent as i64 {
        assert!(tokio::time::Instant::now() < deadline, "server never reported {sent} bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.abort();
    let _ = call.await;
    drop(tx);
    let (committed, complete) = query_write(&mut c, &res).await;
    assert_eq!((committed, complete), (sent as i64, false));
    let done = bs_write(&mut c, &res, &data, committed as usize, 256 * 1024).await.unwrap();
    assert_eq!(done, data.len() as i64);
    assert!(bs_read(&mut c, &common::read_resource("", &d), 0, 0).await.unwrap() == data);
}

/// The server parses WriteRequests out of HTTP/2 frames itself: messages far
/// smaller than a frame (many per frame) and far larger (one over many frames)
/// must both arrive intact.
#[tokio::test]
async fn bytestream_messages_of_any_size_reassemble() {
    let server = TestServer::start(&filesystem_config(""));
    let mut c = clients(&server).await;
    for (len, chunk) in [(20_000, 7), (70_001, 4096), (3 * MIB + 17, 3 * MIB + 17), (5 * MIB, 2 * MIB)] {
        let data = pseudo_random(len, len as u64);
        let d = digest(&data);
        let committed = bs_write(&mut c, &common::upload_resource("", &d), &data, 0, chunk).await.unwrap();
        assert_eq!(committed, len as i64, "{len} bytes in {chunk}-byte messages");
        let back = bs_read(&mut c, &common::read_resource("", &d), 0, 0).await.unwrap();
        assert!(back == data, "{len} bytes in {chunk}-byte messages came back different");
    }
}

#[tokio::test]
async fn bytestream_write_offsets_must_be_contiguous() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let data = pseudo_random(100_000, 11);
    let d = digest(&data);
    // A fresh upload that does not start at 0.
    let r = bs_write(&mut c, &common::upload_resource("", &d), &data, 10, 10_000).await;
    assert_code(r, Code::InvalidArgument, "first write_offset not 0");
    // A gap in the middle.
    let mut msgs = write_msgs(&common::upload_resource("", &d), &data, 0, 10_000, true);
    msgs[3].write_offset += 1;
    assert_code(c.bs.write(tokio_stream::iter(msgs)).await, Code::InvalidArgument, "gap in offsets");
    // A repeat of a chunk.
    let mut msgs = write_msgs(&common::upload_resource("", &d), &data, 0, 10_000, true);
    msgs[5].write_offset -= 10_000;
    assert_code(c.bs.write(tokio_stream::iter(msgs)).await, Code::InvalidArgument, "repeated offset");
    assert_eq!(find_missing(&mut c, "", std::slice::from_ref(&d)).await.len(), 1);
}

#[tokio::test]
async fn bytestream_zstd_and_deflate_compressed_blobs() {
    // The filesystem backend first; the memory one then also runs the batch checks below.
    let filesystem = TestServer::start(&filesystem_config(""));
    let server = TestServer::start(&memory_config("", ""));
    type Codec = fn(&[u8]) -> Vec<u8>;
    let codecs: [(&str, Codec, Codec); 2] =
        [("zstd", zstd_compress, |b| zstd::decode_all(b).unwrap()), ("deflate", deflate_compress, deflate_decompress)];
    let mut c = clients(&filesystem).await;
    for (i, (name, compress, decompress)) in codecs.into_iter().chain(codecs).enumerate() {
        if i == 2 {
            c = clients(&server).await;
        }
        let data = compressible(3 * MIB + i);
        let d = digest(&data);
        let packed = compress(&data);
        assert!(packed.len() < data.len() / 2, "test data should compress");

        // Corrupt compressed data (valid stream, wrong content) is refused.
        let mut other = data.clone();
        other[12345] = b'#';
        let r = bs_write_compressed(&mut c, &common::compressed_upload_resource("", name, &d), &compress(&other)).await;
        assert_code(r, Code::InvalidArgument, &format!("{name}: content that does not match"));
        let r = bs_write_compressed(&mut c, &common::compressed_upload_resource("", name, &d), b"garbage bytes").await;
        assert_code(r, Code::InvalidArgument, &format!("{name}: not {name} at all"));
        assert_eq!(find_missing(&mut c, "", std::slice::from_ref(&d)).await.len(), 1);

        bs_write_compressed(&mut c, &common::compressed_upload_resource("", name, &d), &packed).await.unwrap();
        let plain = bs_read(&mut c, &common::read_resource("", &d), 0, 0).await.unwrap();
        assert!(plain == data, "{name}: identity read after compressed write differs");

        let res = common::compressed_read_resource("", name, &d);
        let got = bs_read(&mut c, &res, 0, 0).await.unwrap();
        assert!(got.len() < data.len(), "{name}: the compressed read is compressed");
        assert!(decompress(&got) == data, "{name}: compressed read does not decompress to the blob");
        assert_code(bs_read(&mut c, &res, 0, 100).await, Code::InvalidArgument, "compressed read with read_limit");

        // An upload of a blob that is already stored: committed_size -1.
        let again = bs_write_compressed(&mut c, &common::compressed_upload_resource("", name, &d), &packed).await;
        assert_eq!(again.unwrap(), -1, "{name}: compressed upload of a stored blob");
    }
    // A compressed read of a missing blob.
    let r = bs_read(&mut c, &common::compressed_read_resource("", "zstd", &digest(b"nope")), 0, 0).await;
    assert_code(r, Code::NotFound, "compressed read of a missing blob");

    // Batch APIs with zstd.
    let data = compressible(100_000);
    let d = digest(&data);
    let resp = c
        .cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(d.clone()),
                data: zstd_compress(&data).into(),
                compressor: CompressorValue::Zstd as i32,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.clone()],
            acceptable_compressors: vec![CompressorValue::Zstd as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &r.responses[0];
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let back = if r.compressor == CompressorValue::Zstd as i32 {
        zstd::decode_all(&r.data[..]).unwrap()
    } else {
        r.data.to_vec()
    };
    assert!(back == data);
}

#[tokio::test]
async fn disabled_compressor_is_refused() {
    let server = TestServer::start(&memory_config("", "supported_compressors = [\"ZSTD\"]"));
    let mut c = clients(&server).await;
    let data = compressible(10_000);
    let d = digest(&data);
    put(&mut c, "", &[&data]).await;
    let r = bs_read(&mut c, &common::compressed_read_resource("", "deflate", &d), 0, 0).await;
    assert_code(r, Code::InvalidArgument, "deflate read when only zstd is enabled");
    let res = common::compressed_upload_resource("", "deflate", &d);
    let r = bs_write_compressed(&mut c, &res, &deflate_compress(&data)).await;
    assert_code(r, Code::InvalidArgument, "deflate write when only zstd is enabled");
    assert!(
        zstd::decode_all(&bs_read(&mut c, &common::compressed_read_resource("", "zstd", &d), 0, 0).await.unwrap()[..])
            .unwrap()
            == data
    );
}

#[tokio::test]
async fn concurrent_writers_of_one_blob_all_succeed() {
    for config in [memory_config("", ""), filesystem_config("")] {
        let server = TestServer::start(&config);
        let c = clients(&server).await;
        let data = std::sync::Arc::new(pseudo_random(3 * MIB, 12));
        let d = digest(&data);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let mut bs = c.bs.clone();
                let data = data.clone();
                let res = common::upload_resource("", &d);
                tokio::spawn(async move {
                    let msgs = write_msgs(&res, &data, 0, 256 * 1024, true);
                    bs.write(tokio_stream::iter(msgs)).await.map(|r| r.into_inner().committed_size)
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().expect("concurrent write"), data.len() as i64);
        }
        let mut c = c;
        assert!(bs_read(&mut c, &common::read_resource("", &d), 0, 0).await.unwrap() == *data);
        if config.contains("filesystem") {
            let prefix = server.data_dir().join("cas/blobs").join(&d.hash[..2]);
            let left: Vec<_> = std::fs::read_dir(&prefix)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .collect();
            assert!(left.is_empty(), "temporary upload files left in {}: {left:?}", prefix.display());
        }
    }
}

#[tokio::test]
async fn uploading_a_stored_blob_returns_at_once_with_its_size() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let data = pseudo_random(500_000, 13);
    let d = digest(&data);
    put(&mut c, "", &[&data]).await;
    // Only the first chunk is sent and the stream stays open: the server
    // must answer without waiting for the rest.
    let res = common::upload_resource("", &d);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    tx.send(write_msgs(&res, &data, 0, 64 * 1024, true).remove(0)).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), c.bs.write(ReceiverStream::new(rx)))
        .await
        .expect("the server waited for the rest of a blob it already has")
        .unwrap();
    assert_eq!(r.into_inner().committed_size, data.len() as i64);
    drop(tx);
    assert_eq!(query_write(&mut c, &common::upload_resource("", &d)).await, (data.len() as i64, true));
    assert_eq!(query_write(&mut c, &common::upload_resource("", &digest(b"unknown"))).await, (0, false));
}

// ---------------------------------------------------------------- instance names

#[tokio::test]
async fn wrong_instance_name_is_refused_naming_both() {
    let server = TestServer::start(
        "[server]\ninstance_name = \"main\"\n[storage.cas]\nbackend = \"memory\"\n[storage.action_cache]\nbackend = \"memory\"\n[capabilities]\nexec_enabled = false\n",
    );
    let mut c = clients(&server).await;
    let d = put(&mut c, "main", &[b"in main"]).await.remove(0);
    let check = |what: &str, s: Status| {
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(s.message().contains("other") && s.message().contains("main"), "{what}: {}", s.message());
    };
    let r = c
        .cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: "other".into(),
            blob_digests: vec![d.clone()],
            digest_function: 0,
        })
        .await;
    check("FindMissingBlobs", r.unwrap_err());
    check(
        "BatchUpdateBlobs",
        c.cas.batch_update_blobs(update_req("other", &[(d.clone(), b"in main")])).await.unwrap_err(),
    );
    let r = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: "other".into(),
            digests: vec![d.clone()],
            ..Default::default()
        })
        .await;
    check("BatchReadBlobs", r.unwrap_err());
    let r = c
        .cas
        .get_tree(GetTreeRequest { instance_name: "other".into(), root_digest: Some(d.clone()), ..Default::default() })
        .await;
    check("GetTree", r.map(|_| ()).unwrap_err());
    check("ByteStream.Read", bs_read(&mut c, &common::read_resource("other", &d), 0, 0).await.unwrap_err());
    check(
        "ByteStream.Write",
        bs_write(&mut c, &common::upload_resource("other", &d), b"in main", 0, 100).await.unwrap_err(),
    );
    let r =
        c.bs.query_write_status(QueryWriteStatusRequest { resource_name: common::upload_resource("other", &d) }).await;
    check("QueryWriteStatus", r.unwrap_err());
    check("GetActionResult", get_result(&mut c, "other", &d).await.unwrap_err());
    check("UpdateActionResult", update_result(&mut c, "other", &d, ActionResult::default()).await.unwrap_err());
    let r = c.caps.get_capabilities(GetCapabilitiesRequest { instance_name: "other".into() }).await;
    check("GetCapabilities", r.unwrap_err());
    // The empty (default) instance is another name too.
    let s = c.cas.find_missing_blobs(FindMissingBlobsRequest::default()).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("''") && s.message().contains("main"), "{}", s.message());

    // The right name works everywhere.
    assert!(find_missing(&mut c, "main", std::slice::from_ref(&d)).await.is_empty());
    assert_eq!(bs_read(&mut c, &common::read_resource("main", &d), 0, 0).await.unwrap(), b"in main");
    c.caps.get_capabilities(GetCapabilitiesRequest { instance_name: "main".into() }).await.unwrap();
}

// ---------------------------------------------------------------- action cache

#[tokio::test]
async fn action_cache_round_trip_and_inlining() {
    let server = TestServer::start(&memory_config("", ""));
    let mut c = clients(&server).await;
    let action = digest(b"action 1");
    assert_code(get_result(&mut c, "", &action).await, Code::NotFound, "miss");

    let (out_a, out_b, stdout, stderr) =
        (b"output a".to_vec(), b"output b".to_vec(), b"hello stdout\n".to_vec(), b"err\n".to_vec());
    put(&mut c, "", &[&out_a, &out_b, &stdout, &stderr]).await;
    let result = ActionResult {
        output_files: vec![
            OutputFile {
                path: "out/a".into(),
                digest: Some(digest(&out_a)),
                is_executable: true,
                ..Default::default()
            },
            OutputFile { path: "out/b".into(), digest: Some(digest(&out_b)), ..Default::default() },
        ],
        exit_code: 3,
        stdout_digest: Some(digest(&stdout)),
        stderr_digest: Some(digest(&stderr)),
        ..Default::default()
    };
    update_result(&mut c, "", &action, result.clone()).await.expect("UpdateActionResult");
    let got = get_result(&mut c, "", &action).await.expect("hit");
    assert_eq!(got, result, "plain get returns what was stored, nothing inlined");
    assert_code(get_result(&mut c, "", &digest(b"action 2")).await, Code::NotFound, "other action");

    let got =
        c.ac.get_action_result(GetActionResultRequest {
            action_digest: Some(action.clone()),
            inline_stdout: true,
            inline_output_files: vec!["out/b".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.stdout_raw[..], &stdout[..]);
    assert!(got.stderr_raw.is_empty(), "stderr was not asked for");
    assert!(got.output_files[0].contents.is_empty(), "out/a was not asked for");
    assert_eq!(&got.output_files[1].contents[..], &out_b[..]);
    assert_eq!(got.exit_code, 3);

    // Overwrite.
    let newer = ActionResult { exit_code: 0, ..result };
    update_result(&mut c, "", &action, newer.clone()).await.unwrap();
    assert_eq!(get_result(&mut c, "", &action).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn action_cache_updates_can_be_disabled() {
    let server = TestServer::start(&memory_config("", "action_cache_update_enabled = false"));
    let mut c = clients(&server).await;
    let r = update_result(&mut c, "", &digest(b"a"), ActionResult::default()).await;
    assert_code(r, Code::PermissionDenied, "update while disabled");
    assert_code(get_result(&mut c, "", &digest(b"a")).await, Code::NotFound, "nothing stored");
    let caps = c.caps.get_capabilities(GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    assert!(!caps.cache_capabilities.unwrap().action_cache_update_capabilities.unwrap().update_enabled);
}

/// Uploads `n` distinct fillers of `size` bytes one at a time, calling `touch` after each.
async fn fill<F, Fut>(c: &mut Clients, n: usize, size: usize, seed: u64, mut touch: F)
where
    F: FnMut(Clients) -> Fut,
    Fut: std::future::Future<Output = Clients>,
{
    let mut owned = Clients { cas: c.cas.clone(), bs: c.bs.clone(), ac: c.ac.clone(), caps: c.caps.clone() };
    for i in 0..n {
        let filler = pseudo_random(size, seed * 1000 + i as u64);
        put(&mut owned, "", &[&filler]).await;
        owned = touch(owned).await;
    }
}

#[tokio::test]
async fn cached_results_whose_blobs_were_evicted_are_misses() {
    // 64 KiB of memory CAS: 80 KiB of other blobs push out everything untouched.
    let server = TestServer::start(&memory_config("max_size_bytes = 65536", ""));
    let mut c = clients(&server).await;
    let stdout = pseudo_random(1024, 1);
    let output = pseudo_random(1024, 2);
    let inner_file = pseudo_random(1024, 3);
    let tree = Tree {
        root: Some(Directory {
            files: vec![FileNode { name: "f".into(), digest: Some(digest(&inner_file)), ..Default::default() }],
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec();
    put(&mut c, "", &[&stdout, &output, &inner_file, &tree]).await;
    let by_stdout = digest(b"action with stdout");
    let by_output = digest(b"action with an output file");
    let by_tree = digest(b"action with an output directory");
    let missing_from_start = digest(b"action whose output was never uploaded");
    update_result(&mut c, "", &by_stdout, ActionResult { stdout_digest: Some(digest(&stdout)), ..Default::default() })
        .await
        .unwrap();
    let with_file = |d: &[u8]| ActionResult {
        output_files: vec![OutputFile { path: "o".into(), digest: Some(digest(d)), ..Default::default() }],
        ..Default::default()
    };
    update_result(&mut c, "", &by_output, with_file(&output)).await.unwrap();
    update_result(
        &mut c,
        "",
        &by_tree,
        ActionResult {
            output_directories: vec![OutputDirectory {
                path: "d".into(),
                tree_digest: Some(digest(&tree)),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    update_result(&mut c, "", &missing_from_start, with_file(b"not in the CAS")).await.unwrap();
    for a in [&by_stdout, &by_output, &by_tree] {
        get_result(&mut c, "", a).await.expect("complete result is a hit");
    }
    assert_code(get_result(&mut c, "", &missing_from_start).await, Code::NotFound, "output never uploaded");

    // Keep the Tree blob fresh so only the file inside it goes.
    let tree_digest = digest(&tree);
    fill(&mut c, 10, 8192, 4, |mut c| {
        let t = tree_digest.clone();
        async move {
            assert!(find_missing(&mut c, "", &[t]).await.is_empty());
            c
        }
    })
    .await;
    let gone = find_missing(&mut c, "", &[digest(&stdout), digest(&output), digest(&inner_file), tree_digest]).await;
    assert_eq!(gone, vec![digest(&stdout), digest(&output), digest(&inner_file)], "eviction happened as planned");
    assert_code(get_result(&mut c, "", &by_stdout).await, Code::NotFound, "stdout evicted");
    assert_code(get_result(&mut c, "", &by_output).await, Code::NotFound, "output file evicted");
    assert_code(get_result(&mut c, "", &by_tree).await, Code::NotFound, "file inside an output tree evicted");
    // Re-uploading the blob makes the entry usable again.
    put(&mut c, "", &[&output]).await;
    get_result(&mut c, "", &by_output).await.expect("hit once the blob is back");
}

#[tokio::test]
async fn find_missing_and_get_action_result_keep_blobs_from_eviction() {
    let server = TestServer::start(&memory_config("max_size_bytes = 65536", ""));
    let mut c = clients(&server).await;
    let touched = pseudo_random(8192, 21);
    let untouched = pseudo_random(8192, 22);
    let output = pseudo_random(8192, 23);
    let [touched_d, untouched_d, output_d]: [Digest; 3] =
        put(&mut c, "", &[&touched, &untouched, &output]).await.try_into().unwrap();
    let action = digest(b"cached action");
    update_result(
        &mut c,
        "",
        &action,
        ActionResult {
            output_files: vec![OutputFile { path: "o".into(), digest: Some(output_d.clone()), ..Default::default() }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // 10 × 8 KiB more than fills 64 KiB; after each, one blob is asked for
    // with FindMissingBlobs and the other through GetActionResult.
    fill(&mut c, 10, 8192, 5, |mut c| {
        let (t, a) = (touched_d.clone(), action.clone());
        async move {
            assert!(find_missing(&mut c, "", &[t]).await.is_empty(), "touched blob evicted");
            get_result(&mut c, "", &a).await.expect("cached result stays complete");
            c
        }
    })
    .await;
    let missing = find_missing(&mut c, "", &[touched_d.clone(), untouched_d.clone(), output_d.clone()]).await;
    assert_eq!(missing, vec![untouched_d], "only the blob nobody asked for is evicted");
    let back = c
        .cas
        .batch_read_blobs(BatchReadBlobsRequest { digests: vec![touched_d], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&back.responses[0].data[..], &touched[..]);
}

// ---------------------------------------------------------------- persistence

#[tokio::test]
async fn filesystem_backend_survives_a_restart_and_discards_truncated_blobs() {
    let mut server = TestServer::start(&filesystem_config("main"));
    let mut c = clients(&server).await;
    let small = put(&mut c, "main", &[b"small blob"]).await.remove(0);
    let large = pseudo_random(3 * MIB, 31);
    let large_d = digest(&large);
    bs_write(&mut c, &common::upload_resource("main", &large_d), &large, 0, MIB).await.unwrap();
    let action = digest(b"persisted action");
    let result = ActionResult {
        output_files: vec![OutputFile { path: "big".into(), digest: Some(large_d.clone()), ..Default::default() }],
        stdout_digest: Some(small.clone()),
        exit_code: 7,
        ..Default::default()
    };
    update_result(&mut c, "main", &action, result.clone()).await.unwrap();
    drop(c);

    server.stop();
    // Plant a blob cut short (as after a power loss) and a well-formed one.
    let cut = pseudo_random(1000, 32);
    let cut_d = digest(&cut);
    let planted = pseudo_random(1000, 33);
    let planted_d = digest(&planted);
    let data_dir = server.data_dir().to_path_buf();
    let blob_path =
        |d: &Digest| data_dir.join("cas/blobs").join(&d.hash[..2]).join(format!("{}-{}", d.hash, d.size_bytes));
    assert!(blob_path(&large_d).is_file(), "blobs are stored where expected: {}", blob_path(&large_d).display());
    std::fs::create_dir_all(blob_path(&cut_d).parent().unwrap()).unwrap();
    std::fs::write(blob_path(&cut_d), &cut[..500]).unwrap();
    std::fs::create_dir_all(blob_path(&planted_d).parent().unwrap()).unwrap();
    std::fs::write(blob_path(&planted_d), &planted).unwrap();

    server.restart();
    let mut c = clients(&server).await;
    let missing =
        find_missing(&mut c, "main", &[small.clone(), large_d.clone(), planted_d.clone(), cut_d.clone()]).await;
    assert_eq!(missing, vec![cut_d.clone()], "only the truncated blob is gone");
    assert!(!blob_path(&cut_d).exists(), "the truncated file was deleted at start");
    assert!(bs_read(&mut c, &common::read_resource("main", &large_d), 0, 0).await.unwrap() == large);
    assert_eq!(bs_read(&mut c, &common::read_resource("main", &planted_d), 0, 0).await.unwrap(), planted);
    assert_code(bs_read(&mut c, &common::read_resource("main", &cut_d), 0, 0).await, Code::NotFound, "truncated");
    assert_eq!(get_result(&mut c, "main", &action).await.expect("AC entry persisted"), result);
    // The slot is usable again.
    put(&mut c, "main", &[&cut]).await;
    assert_eq!(bs_read(&mut c, &common::read_resource("main", &cut_d), 0, 0).await.unwrap(), cut);
}

// ---------------------------------------------------------------- config and capabilities

#[test]
fn configuration_errors_exit_2_naming_file_and_key() {
    let cases = [
        ("[storage.cas]\nbackend = \"memory\"\nbogus_key = 1\n", "storage.cas", "bogus_key"),
        ("[storage.cas]\nbackend = \"tape\"\n", "storage.cas.backend", "tape"),
        ("[capabilities]\nmax_batch_total_size_bytes = 10\n", "capabilities.max_batch_total_size_bytes", "1024"),
        ("[storage.cas]\nmax_size_bytes = \"big\"\n", "storage.cas.max_size_bytes", ""),
        ("[capabilities]\nsupported_compressors = [\"LZ4\"]\n", "capabilities.supported_compressors", "LZ4"),
        ("[nonsense]\nx = 1\n", "", "nonsense"),
    ];
    for (config, key, mention) in cases {
        let out = common::run_to_exit(config, Duration::from_secs(30));
        assert_eq!(out.code, Some(2), "config {config:?}: stderr {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line for {config:?}: {}", out.stderr);
        let prefix = format!("re-server: configuration error: {}: ", out.config_path.display());
        assert!(lines[0].starts_with(&prefix), "{config:?}: {}", lines[0]);
        if !key.is_empty() {
            assert!(lines[0][prefix.len()..].starts_with(&format!("key `{key}")), "{config:?}: {}", lines[0]);
        }
        assert!(lines[0].contains(mention), "{config:?} should mention {mention:?}: {}", lines[0]);
    }
    // A file that cannot be read is a configuration error too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_re-server"))
        .args(["--config", "/nonexistent/re-server.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/re-server.toml"));
}

#[tokio::test]
async fn capabilities_reflect_the_configuration() {
    let server = TestServer::start(&memory_config("", "max_batch_total_size_bytes = 1048576"));
    let mut c = clients(&server).await;
    let caps = c.caps.get_capabilities(GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    let low = caps.low_api_version.unwrap();
    let high = caps.high_api_version.unwrap();
    assert_eq!((low.major, low.minor), (2, 0));
    assert_eq!((high.major, high.minor), (2, 3));
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(cache.digest_functions, vec![DigestFunction::Sha256 as i32]);
    assert_eq!(cache.max_batch_total_size_bytes, 1_048_576);
    assert!(cache.action_cache_update_capabilities.unwrap().update_enabled);
    for want in [CompressorValue::Zstd, CompressorValue::Deflate] {
        assert!(cache.supported_compressors.contains(&(want as i32)), "{want:?} in {:?}", cache.supported_compressors);
        assert!(cache.supported_batch_update_compressors.contains(&(want as i32)));
    }
    let exec = caps.execution_capabilities.unwrap();
    assert!(!exec.exec_enabled, "exec_enabled = false in the config");
    assert_eq!(exec.digest_function, DigestFunction::Sha256 as i32);

    let server = TestServer::start(&memory_config("", "supported_compressors = [\"ZSTD\"]"));
    let mut c = clients(&server).await;
    let cache =
        c.caps.get_capabilities(GetCapabilitiesRequest::default()).await.unwrap().into_inner().cache_capabilities;
    assert_eq!(cache.unwrap().supported_compressors, vec![CompressorValue::Zstd as i32]);
}
