//! ByteStream.Read without a copy in user space. tonic's encoder copies each
//! message into a buffer of its own; for a download that copy cost about as
//! much as the socket write. Here every chunk leaves as its own HTTP/2 body
//! frame, after a small frame holding the 5-byte gRPC prefix and the protobuf
//! key and length of `ReadResponse.data`, so h2 writes the store's buffer (or
//! the file mapping) straight to the socket. The bytes on the wire are the
//! ones tonic would send. Write and QueryWriteStatus go to the generated
//! server unchanged.
use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use re_proto::google::bytestream::byte_stream_server::ByteStreamServer;
use re_proto::google::bytestream::ReadRequest;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

use crate::ByteStreamService;

const READ_PATH: &str = "/google.bytestream.ByteStream/Read";
/// A ReadRequest is a resource name and two integers; a larger body is not one.
const MAX_REQUEST: usize = 64 * 1024;
/// `ReadResponse.data` is field 10, length-delimited: key (10 << 3) | 2.
const DATA_KEY: u8 = (10 << 3) | 2;

/// The ByteStream service as the server mounts it.
#[derive(Clone)]
pub struct FastReadByteStream {
    service: ByteStreamService,
    generated: ByteStreamServer<ByteStreamService>,
}

impl FastReadByteStream {
    pub(crate) fn new(service: ByteStreamService, generated: ByteStreamServer<ByteStreamService>) -> Self {
        Self { service, generated }
    }
}

impl NamedService for FastReadByteStream {
    const NAME: &'static str = <ByteStreamServer<ByteStreamService> as NamedService>::NAME;
}

impl tower_service::Service<http::Request<Body>> for FastReadByteStream {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != READ_PATH {
            return self.generated.call(req);
        }
        let service = self.service.clone();
        Box::pin(async move { Ok(read(service, req.into_body()).await.unwrap_or_else(Status::into_http)) })
    }
}

async fn read(service: ByteStreamService, body: Body) -> Result<http::Response<Body>, Status> {
    let request = decode_request(body).await?;
    let chunks = service.read_chunks(request).await?;
    let body = StreamBody::new(response_frames(chunks));
    Ok(http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(body))
        .expect("static response parts are valid"))
}

/// Each chunk as two body frames (message header, then the data itself),
/// then the gRPC status as trailers; an error ends the stream with its status.
fn response_frames(
    chunks: BoxStream<'static, Result<Bytes, Status>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    stream::unfold(Some((chunks, None::<Bytes>)), |state| async move {
        let (mut chunks, pending) = state?;
        if let Some(data) = pending {
            return Some((Ok(Frame::data(data)), Some((chunks, None))));
        }
        loop {
            let frame = match chunks.next().await {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    return Some((Ok(Frame::data(message_header(data.len()))), Some((chunks, Some(data)))))
                }
                Some(Err(status)) => Frame::trailers(trailers(&status)),
                None => Frame::trailers(trailers(&Status::ok(""))),
            };
            return Some((Ok(frame), None));
        }
    })
}

/// The gRPC prefix (uncompressed flag, big-endian length) of a ReadResponse
/// holding `len` bytes, followed by that message's own field header.
fn message_header(len: usize) -> Bytes {
    let varint = prost::encoding::encoded_len_varint(len as u64);
    let mut out = BytesMut::with_capacity(5 + 1 + varint);
    out.put_u8(0);
    out.put_u32((1 + varint + len) as u32);
    out.put_u8(DATA_KEY);
    prost::encoding::encode_varint(len as u64, &mut out);
    out.freeze()
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here.
        map.clear();
        Status::new(status.code(), "").add_header(&mut map).expect("a bare status is a valid header");
    }
    map
}

/// The single, uncompressed ReadRequest of a unary call.
async fn decode_request(mut body: Body) -> Result<ReadRequest, Status> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > 5 + MAX_REQUEST {
                return Err(Status::invalid_argument(format!(
                    "a ByteStream.Read request must be under {MAX_REQUEST} bytes"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    if buf.len() < 5 {
        return Err(Status::internal("ByteStream.Read carried no request message"));
    }
    if buf[0] != 0 {
        return Err(Status::unimplemented(
            "compressed gRPC messages are not accepted by ByteStream.Read; send the request uncompressed",
        ));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() != 5 + len {
        return Err(Status::internal("ByteStream.Read takes exactly one whole request message"));
    }
    ReadRequest::decode(&buf[5..]).map_err(|e| Status::internal(format!("could not decode ReadRequest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use re_proto::google::bytestream::ReadResponse;

    #[test]
    fn the_header_and_data_decode_as_the_message_tonic_would_send() {
        for len in [1usize, 127, 128, 16_384, 1 << 20] {
            let data = vec![7u8; len];
            let mut wire = message_header(len).to_vec();
            wire.extend_from_slice(&data);
            let expected = ReadResponse { data: data.clone().into() }.encode_to_vec();
            assert_eq!(u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize, expected.len());
            assert_eq!(&wire[5..], &expected[..], "length {len}");
        }
    }
}
