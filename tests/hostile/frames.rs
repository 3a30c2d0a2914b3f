//! The server's own gRPC framing (ByteStream Read and Write, FindMissingBlobs)
//! fed frames that lie, over a raw HTTP/2 connection: length prefixes longer
//! or shorter than the data, compressed flags with and without an encoding,
//! streams reset mid-write, and seeded random bodies.
use super::*;
use prost::Message;
use re_proto::reapi::FindMissingBlobsRequest;

const FIND_MISSING: &str = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs";
const WRITE: &str = "/google.bytestream.ByteStream/Write";
const READ: &str = "/google.bytestream.ByteStream/Read";

/// What a raw call ended with.
#[derive(Debug)]
struct Outcome {
    grpc_status: Option<i32>,
    message: String,
}

/// One call over a fresh HTTP/2 connection: `frames` sent as DATA frames
/// (the stream ends after the last unless `reset`, which resets it instead).
async fn raw_call(addr: &str, path: &str, encoding: Option<&str>, frames: Vec<Vec<u8>>, reset: bool) -> Outcome {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        req = req.header("grpc-encoding", e);
    }
    let (response, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    let n = frames.len();
    for (i, f) in frames.into_iter().enumerate() {
        let last = i + 1 == n && !reset;
        if send.send_data(Bytes::from(f), last).is_err() {
            break;
        }
    }
    if n == 0 {
        let _ = send.send_data(Bytes::new(), true);
    }
    if reset {
        send.send_reset(h2::Reason::CANCEL);
        return Outcome { grpc_status: None, message: String::new() };
    }
    let call = async {
        let response = response.await.unwrap();
        let status_of = |h: &http::HeaderMap| -> (Option<i32>, String) {
            let code = h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let msg = h.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (code, percent_decode(&msg))
        };
        let (code, message) = status_of(response.headers());
        if code.is_some() {
            return Outcome { grpc_status: code, message };
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { break };
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
        let (grpc_status, message) = status_of(&trailers);
        Outcome { grpc_status, message }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), call).await.expect("the server answers")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The 5-byte gRPC prefix, then `payload`.
fn framed(compressed: bool, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![compressed as u8];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn find_missing_message() -> Vec<u8> {
    FindMissingBlobsRequest { blob_digests: vec![digest(b"x")], ..Default::default() }.encode_to_vec()
}

fn write_message(d: &Digest, data: &[u8], offset: i64, finish: bool) -> Vec<u8> {
    WriteRequest {
        resource_name: common::upload_resource("", d),
        write_offset: offset,
        finish_write: finish,
        data: Bytes::copy_from_slice(data),
    }
    .encode_to_vec()
}

/// What a case sends (name, grpc-encoding, frames) and the status it must get.
type Case<'a> = (&'a str, Option<&'a str>, Vec<Vec<u8>>, i32);

const INTERNAL: i32 = Code::Internal as i32;
const UNIMPLEMENTED: i32 = Code::Unimplemented as i32;
const OK: i32 = Code::Ok as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_frames_that_lie_get_the_grpc_statuses() {
    let server = server();
    let addr = server.addr.clone();
    let msg = find_missing_message();
    // Sanity: the honest frame is answered.
    let honest = raw_call(&addr, FIND_MISSING, None, vec![framed(false, msg.len() as u32, &msg)], false).await;
    assert_eq!(honest.grpc_status, Some(OK), "{honest:?}");

    let cases: Vec<Case> = vec![
        ("a prefix longer than the data", None, vec![framed(false, msg.len() as u32 + 100, &msg)], INTERNAL),
        ("a prefix shorter than the data", None, vec![framed(false, 3, &msg)], INTERNAL),
        ("a truncated prefix", None, vec![vec![0, 0, 0]], INTERNAL),
        ("no message at all", None, vec![], INTERNAL),
        ("compressed, no encoding", None, vec![framed(true, msg.len() as u32, &msg)], INTERNAL),
        ("compressed with gzip", Some("gzip"), vec![framed(true, msg.len() as u32, &msg)], UNIMPLEMENTED),
        ("garbage protobuf", None, vec![framed(false, 4, &[0xff, 0xff, 0xff, 0xff])], INTERNAL),
    ];
    for (what, encoding, frames, want) in cases {
        let out = raw_call(&addr, FIND_MISSING, encoding, frames.clone(), false).await;
        assert_eq!(out.grpc_status, Some(want), "FindMissingBlobs, {what}: {out:?}");
        assert!(!out.message.is_empty(), "FindMissingBlobs, {what}: a message says why");
        let out = raw_call(&addr, READ, encoding, frames, false).await;
        assert_eq!(out.grpc_status, Some(want), "ByteStream.Read, {what}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_streams_that_lie_or_reset_are_refused_and_the_server_keeps_serving() {
    let server = server();
    let addr = server.addr.clone();
    let data = common::pseudo_random(100_000, 9);
    let d = digest(&data);
    let first = write_message(&d, &data[..50_000], 0, false);
    let cases: Vec<Case> = vec![
        ("the stream ends inside a message", None, vec![framed(false, first.len() as u32 + 10, &first)], INTERNAL),
        ("compressed, no encoding", None, vec![framed(true, first.len() as u32, &first)], INTERNAL),
        ("compressed with gzip", Some("gzip"), vec![framed(true, first.len() as u32, &first)], UNIMPLEMENTED),
        ("garbage protobuf", None, vec![framed(false, 3, &[0x0a, 0xff, 0x01])], INTERNAL),
    ];
    for (what, encoding, frames, want) in cases {
        let out = raw_call(&addr, WRITE, encoding, frames, false).await;
        assert_eq!(out.grpc_status, Some(want), "Write, {what}: {out:?}");
    }
    // A message split over frames at every awkward place, then a reset.
    let mut bytes = framed(false, first.len() as u32, &first);
    let tail = bytes.split_off(3);
    raw_call(&addr, WRITE, None, vec![bytes, tail[..7].to_vec(), tail[7..100].to_vec()], true).await;
    // The server still takes an honest upload, in one message or many.
    let whole = write_message(&d, &data, 0, true);
    let out = raw_call(&addr, WRITE, None, vec![framed(false, whole.len() as u32, &whole)], false).await;
    assert_eq!(out.grpc_status, Some(OK), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_random_bodies_never_crash_the_server() {
    let server = server();
    let addr = server.addr.clone();
    let mut seed = 0x5eed_u64;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    let msg = find_missing_message();
    for i in 0..200 {
        let path = [FIND_MISSING, WRITE, READ][i % 3];
        // Half are honest frames with a byte flipped, half random bytes.
        let body = if i % 2 == 0 {
            let mut f = framed(false, msg.len() as u32, &msg);
            let at = (next() as usize) % f.len();
            f[at] ^= 1 << (next() % 8);
            f
        } else {
            (0..(next() % 64) as usize).map(|_| next() as u8).collect()
        };
        let out = raw_call(&addr, path, None, vec![body], false).await;
        assert!(out.grpc_status.is_some(), "call {i} to {path} got no grpc-status: {out:?}");
    }
    // Still serving.
    let ch = server.channel().await;
    let r = cas(&ch)
        .find_missing_blobs(FindMissingBlobsRequest { blob_digests: vec![digest(b"y")], ..Default::default() })
        .await;
    assert!(r.is_ok(), "{r:?}");
}
