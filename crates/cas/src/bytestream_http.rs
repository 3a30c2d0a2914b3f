//! ByteStream Read and Write framed by hand, without a copy in user space.
//! tonic's codec copies each message into a buffer of its own (to encode it,
//! or to collect a message from its HTTP/2 frames); for a 1 MiB chunk that
//! copy cost about as much as the socket's. Read sends every chunk as its own
//! HTTP/2 body frame, after a small frame holding the 5-byte gRPC prefix and
//! the protobuf key and length of `ReadResponse.data`, so h2 writes the
//! store's buffer (or the file mapping) straight to the socket. Write parses
//! each WriteRequest out of the frames as they arrived and hands the store
//! slices of them. The bytes on the wire are the ones tonic would send or
//! accept. QueryWriteStatus goes to the generated server unchanged.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::Semaphore;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use re_proto::google::bytestream::byte_stream_server::ByteStreamServer;
use re_proto::google::bytestream::ReadRequest;
use tonic::body::Body;
use tonic::Status;

use crate::bytestream_service::{ByteStreamService, WriteChunk, MAX_MESSAGE};
use crate::grpc_frames::{
    compressed_message, put_prefix, streaming_response, trailers, unary_request, unary_response, Answer, HandFramed,
    HandFramedMethods,
};

const READ_PATH: &str = "/google.bytestream.ByteStream/Read";
const WRITE_PATH: &str = "/google.bytestream.ByteStream/Write";
/// A ReadRequest is a resource name and two integers; a larger body is not one.
const MAX_REQUEST: usize = 64 * 1024;
/// `ReadResponse.data` is field 10, length-delimited: key (10 << 3) | 2.
const DATA_KEY: u8 = (10 << 3) | 2;

/// The ByteStream service as the server mounts it.
pub type CopyFreeByteStream = HandFramed<ByteStreamService, ByteStreamServer<ByteStreamService>>;

/// The gRPC service to mount: Read and Write framed here, QueryWriteStatus by
/// the generated server.
pub fn server(service: ByteStreamService) -> CopyFreeByteStream {
    let generated = ByteStreamServer::new(service.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    CopyFreeByteStream::new(service, generated)
}

impl HandFramedMethods for ByteStreamService {
    fn handler(path: &str) -> Option<fn(Self, http::Request<Body>) -> Answer> {
        match path {
            READ_PATH => Some(|service, req| Box::pin(read(service, req))),
            WRITE_PATH => Some(|service, req| Box::pin(write(service, req))),
            _ => None,
        }
    }
}

async fn write(service: ByteStreamService, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
    let (parts, body) = req.into_parts();
    let requests = write_requests(body, parts.headers, service.upload_budget());
    let response = service.write_chunks(Box::pin(requests)).await?;
    let mut framed = BytesMut::with_capacity(5 + response.encoded_len());
    put_prefix(&mut framed, response.encoded_len());
    response.encode(&mut framed).expect("a BytesMut grows");
    Ok(unary_response(framed.freeze()))
}

/// The WriteRequests of a request body, each as soon as its last byte
/// arrived. A message's bytes are counted against `budget` (in KiB) from
/// when its length is known until the store has taken it: when uploads hold
/// the whole budget, the next message waits, and HTTP/2 flow control makes
/// its client wait. Taking a message's whole share at once means a stream
/// never holds part of the budget while it waits for the rest.
pub(crate) fn write_requests(
    body: Body,
    headers: http::HeaderMap,
    budget: Arc<Semaphore>,
) -> impl futures::Stream<Item = Result<WriteChunk, Status>> + Send + 'static {
    stream::unfold(Some((body, Rope::default(), None)), move |state| {
        let (budget, headers) = (budget.clone(), headers.clone());
        async move {
            let (mut body, mut rope, mut share) = state?;
            loop {
                if let Some((compressed, len)) = rope.prefix() {
                    if compressed {
                        return Some((Err(compressed_message(&headers, "ByteStream.Write")), None));
                    }
                    if len > MAX_MESSAGE {
                        let status = Status::out_of_range(format!(
                            "a WriteRequest of {len} bytes is over the {MAX_MESSAGE}-byte message limit"
                        ));
                        return Some((Err(status), None));
                    }
                    if share.is_none() {
                        let kib = len.div_ceil(1024).max(1) as u32;
                        share = Some(budget.clone().acquire_many_owned(kib).await.expect("the budget is never closed"));
                    }
                    if rope.len >= 5 + len {
                        rope.advance(5);
                        let message = rope.split_to(len);
                        let chunk = parse_write_request(message).map(|mut c| {
                            c.budget = share.take();
                            c
                        });
                        return Some((chunk, Some((body, rope, None))));
                    }
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            rope.push(data);
                        }
                    }
                    Some(Err(status)) => return Some((Err(status), None)),
                    None if rope.len == 0 => return None,
                    None => return Some((Err(Status::internal("the write stream ended inside a message")), None)),
                }
            }
        }
    })
}

/// Decodes a WriteRequest whose bytes may span several frames; the data
/// stays in the frames it came in.
fn parse_write_request(mut msg: Rope) -> Result<WriteChunk, Status> {
    let bad = |what: &str| Status::internal(format!("could not decode WriteRequest: {what}"));
    let mut out = WriteChunk::default();
    while msg.len > 0 {
        let key = msg.varint().ok_or_else(|| bad("truncated field key"))?;
        let (field, wire_type) = (key >> 3, key & 7);
        match (field, wire_type) {
            (_, 2) => {
                let len = msg.varint().ok_or_else(|| bad("truncated length"))? as usize;
                if len > msg.len {
                    return Err(bad("a field longer than the message"));
                }
                let value = msg.split_to(len);
                match field {
                    1 => {
                        out.resource_name =
                            String::from_utf8(value.to_vec()).map_err(|_| bad("resource_name is not UTF-8"))?
                    }
                    10 => out.data = value.parts.into(),
                    _ => {}
                }
            }
            (_, 0) => {
                let v = msg.varint().ok_or_else(|| bad("truncated varint"))?;
                match field {
                    2 => out.write_offset = v as i64,
                    3 => out.finish_write = v != 0,
                    _ => {}
                }
            }
            (_, 1) | (_, 5) => {
                let n = if wire_type == 1 { 8 } else { 4 };
                if n > msg.len {
                    return Err(bad("truncated fixed-width field"));
                }
                msg.advance(n);
            }
            _ => return Err(bad("unsupported wire type")),
        }
    }
    Ok(out)
}

/// Bytes held as the frames they arrived in.
#[derive(Default)]
struct Rope {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Rope {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }

    /// The gRPC message prefix at the front: (compressed, length).
    fn prefix(&self) -> Option<(bool, usize)> {
        if self.len < 5 {
            return None;
        }
        let mut head = [0u8; 5];
        let mut n = 0;
        'outer: for part in &self.parts {
            for &b in part.iter() {
                head[n] = b;
                n += 1;
                if n == 5 {
                    break 'outer;
                }
            }
        }
        Some((head[0] != 0, u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize))
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.parts.front_mut().expect("advance within the rope");
            if front.len() > n {
                bytes::Buf::advance(front, n);
                return;
            }
            n -= front.len();
            self.parts.pop_front();
        }
    }

    /// The first `n` bytes, as slices of the same frames.
    fn split_to(&mut self, mut n: usize) -> Rope {
        let mut out = Rope::default();
        while n > 0 {
            let front = self.parts.front_mut().expect("split within the rope");
            if front.len() > n {
                out.push(front.split_to(n));
                self.len -= n;
                return out;
            }
            n -= front.len();
            self.len -= front.len();
            out.push(self.parts.pop_front().expect("front exists"));
        }
        out
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let front = self.parts.front_mut()?;
            let b = front[0];
            self.advance(1);
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    fn to_vec(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.iter().copied()).collect()
    }
}

async fn read(service: ByteStreamService, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
    let message = unary_request(req, "ByteStream.Read", MAX_REQUEST).await?;
    let request =
        ReadRequest::decode(message).map_err(|e| Status::internal(format!("could not decode ReadRequest: {e}")))?;
    let chunks = service.read_chunks(request).await?;
    Ok(streaming_response(StreamBody::new(response_frames(chunks))))
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
    put_prefix(&mut out, 1 + varint + len);
    out.put_u8(DATA_KEY);
    prost::encoding::encode_varint(len as u64, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use re_proto::google::bytestream::{ReadResponse, WriteRequest};

    fn rope_of(bytes: &[u8], step: usize) -> Rope {
        let mut r = Rope::default();
        for piece in bytes.chunks(step) {
            r.push(Bytes::copy_from_slice(piece));
        }
        r
    }

    #[test]
    fn write_requests_split_across_frames_decode_like_prost() {
        let req = WriteRequest {
            resource_name: "main/uploads/u-1/blobs/abc/300".into(),
            write_offset: 1 << 40,
            finish_write: true,
            data: (0..300u32).map(|i| i as u8).collect::<Vec<_>>().into(),
        };
        let mut wire = req.encode_to_vec();
        // An unknown field of each wire type is skipped.
        wire.extend_from_slice(&[(20 << 3), 1, (21 << 3) | 1, 0, 0, 0, 0, 0, 0, 0, 0, (22 << 3) | 5, 0, 0, 0, 0]);
        wire.extend_from_slice(&[(23 << 3) | 2, 2, b'x', b'y']);
        for step in [1, 2, 5, 64, wire.len()] {
            let got = parse_write_request(rope_of(&wire, step)).unwrap();
            assert_eq!(got.resource_name, req.resource_name, "step {step}");
            assert_eq!((got.write_offset, got.finish_write), (req.write_offset, true));
            assert_eq!(got.data.concat(), req.data.to_vec(), "step {step}");
            if step == 64 {
                assert!(got.data.len() > 1, "the data stays in the frames it arrived in");
            }
        }
        let truncated = &wire[..wire.len() - 3];
        assert!(parse_write_request(rope_of(truncated, 7)).is_err());
    }

    #[test]
    fn the_rope_finds_prefixes_across_frames() {
        let mut wire = vec![0, 0, 0, 1, 2];
        wire.extend_from_slice(&[9; 258]);
        let mut r = rope_of(&wire, 2);
        assert_eq!(r.prefix(), Some((false, 258)));
        r.advance(5);
        let body = r.split_to(258);
        assert_eq!((body.len, r.len), (258, 0));
        assert_eq!(rope_of(&[1, 0, 0], 1).prefix(), None);
    }

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
