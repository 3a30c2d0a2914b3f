//! Entry points for the fuzz targets in `fuzz/`: the server's own decoders,
//! driven the way a connection drives them, on bytes the fuzzer chooses.
//! Not an API; every function here panics only if the code under it does.
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use tonic::body::Body;

fn body_of(frames: Vec<Vec<u8>>) -> Body {
    let frames = frames.into_iter().map(|f| Ok::<_, Infallible>(Frame::data(Bytes::from(f))));
    Body::new(StreamBody::new(futures::stream::iter(frames)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime")
}

/// A ByteStream.Write body made of `frames`, decoded into WriteRequests
/// with a small upload budget; returns how many messages decoded.
pub fn write_stream(frames: Vec<Vec<u8>>, compressed_header: bool) -> usize {
    let mut headers = http::HeaderMap::new();
    if compressed_header {
        headers.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    }
    let budget = Arc::new(tokio::sync::Semaphore::new(64 << 10));
    runtime().block_on(async {
        let stream = crate::bytestream_http::write_requests(body_of(frames), headers, budget);
        futures::pin_mut!(stream);
        let mut decoded = 0;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    let len: usize = chunk.data.iter().map(Bytes::len).sum();
                    assert!(len <= crate::bytestream_service::MAX_MESSAGE);
                    decoded += 1;
                }
                Err(_) => break,
            }
        }
        decoded
    })
}

/// A unary request body made of `frames`, collected as the hand-framed
/// FindMissingBlobs and Read collect theirs.
pub fn unary(frames: Vec<Vec<u8>>, limit: usize) -> Option<usize> {
    let req = http::Request::new(body_of(frames));
    runtime().block_on(crate::grpc_frames::unary_request(req, "Fuzz", limit)).ok().map(|m| m.len())
}

/// A FindMissingBlobsRequest decoded by hand, then answered as if the
/// digests at even positions were missing: the answer must decode as a
/// FindMissingBlobsResponse naming exactly those.
pub fn find_missing(message: &[u8]) {
    use prost::Message;
    let Ok(request) = crate::find_missing_http::parse_request(message) else { return };
    let missing: Vec<_> = request.digests.iter().step_by(2).copied().collect();
    let framed = crate::find_missing_http::encode_response(message, &request, &missing);
    let response = re_proto::reapi::FindMissingBlobsResponse::decode(&framed[5..]).expect("our answer decodes");
    assert_eq!(response.missing_blob_digests.len(), missing.len());
    for (got, want) in response.missing_blob_digests.iter().zip(&missing) {
        assert_eq!(re_proto::DigestInfo::try_from(got).expect("a digest we parsed"), *want);
    }
}
