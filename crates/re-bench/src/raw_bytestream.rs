//! ByteStream Write and Read without tonic's codec. tonic copies every
//! message into an encode buffer before sending and every received frame
//! into a decode buffer; with client and server on the same two cores, those
//! copies are CPU the server under test does not get. These calls go through
//! the same tonic `Channel` (same connection and HTTP/2 settings) and only
//! frame the messages themselves: the blob's bytes go to the socket, and
//! come from it, without a copy in user space. `--tonic-client` uses the
//! generated stubs instead, to measure what a tonic client costs.
use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use re_proto::digest::DigestHasher;
use re_proto::google::bytestream::{ReadRequest, WriteRequest, WriteResponse};
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

/// `data` is field 10 of both WriteRequest and ReadResponse, length-delimited.
const DATA_KEY: u8 = (10 << 3) | 2;

/// Uploads `data` in `chunk`-byte messages; returns the committed size.
pub async fn write(channel: &mut Channel, resource: String, data: Bytes, chunk: usize) -> anyhow::Result<i64> {
    let size = data.len();
    let chunk = chunk.max(1);
    let n = size.div_ceil(chunk).max(1);
    let frames = stream::iter((0..n).flat_map(move |i| {
        let (start, end) = (i * chunk, ((i + 1) * chunk).min(size));
        let fields = WriteRequest {
            resource_name: if i == 0 { resource.clone() } else { String::new() },
            write_offset: start as i64,
            finish_write: i == n - 1,
            data: Bytes::new(),
        };
        [
            Ok::<_, std::convert::Infallible>(Frame::data(header(&fields, end - start))),
            Ok(Frame::data(data.slice(start..end))),
        ]
    }));
    let response = call(channel, "Write", Body::new(StreamBody::new(frames))).await?;
    let mut body = response.into_body();
    let mut message = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("ByteStream.Write response")?;
        match frame.into_data() {
            Ok(d) => message.extend_from_slice(&d),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    check_status(trailers.as_ref(), "ByteStream.Write")?;
    if message.len() < 5 {
        bail!("ByteStream.Write answered no WriteResponse");
    }
    Ok(WriteResponse::decode(&message[5..]).context("decoding WriteResponse")?.committed_size)
}

/// Reads a whole blob, hashing it into `hasher` if given; returns the bytes read.
pub async fn read(
    channel: &mut Channel,
    resource: String,
    mut hasher: Option<&mut DigestHasher>,
) -> anyhow::Result<u64> {
    let request = ReadRequest { resource_name: resource, read_offset: 0, read_limit: 0 };
    let mut out = BytesMut::with_capacity(5 + request.encoded_len());
    out.put_u8(0);
    out.put_u32(request.encoded_len() as u32);
    request.encode(&mut out).expect("a BytesMut grows");
    let body = Body::new(http_body_util::Full::new(out.freeze()));
    let mut body = call(channel, "Read", body).await?.into_body();
    let mut parser = ReadResponses::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.context("ByteStream.Read stream")?.into_data() {
            Ok(data) => parser.feed(&data, |piece| {
                if let Some(h) = hasher.as_deref_mut() {
                    h.update(piece);
                }
            })?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    check_status(trailers.as_ref(), "ByteStream.Read")?;
    if !parser.at_boundary() {
        bail!("ByteStream.Read ended inside a message");
    }
    Ok(parser.total)
}

/// The gRPC prefix and fields of one WriteRequest whose data (`len` bytes)
/// follows in the next frame.
fn header(fields: &WriteRequest, len: usize) -> Bytes {
    let varint = prost::encoding::encoded_len_varint(len as u64);
    let message_len = fields.encoded_len() + 1 + varint + len;
    let mut out = BytesMut::with_capacity(5 + fields.encoded_len() + 1 + varint);
    out.put_u8(0);
    out.put_u32(message_len as u32);
    fields.encode(&mut out).expect("a BytesMut grows");
    out.put_u8(DATA_KEY);
    prost::encoding::encode_varint(len as u64, &mut out);
    out.freeze()
}

async fn call(channel: &mut Channel, method: &str, body: Body) -> anyhow::Result<http::Response<Body>> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/google.bytestream.ByteStream/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body)
        .expect("static request parts are valid");
    futures::future::poll_fn(|cx| channel.poll_ready(cx)).await.context("connection")?;
    let response = channel.call(request).await.with_context(|| format!("ByteStream.{method}"))?;
    // A trailers-only answer carries its status in the headers.
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            bail!("ByteStream.{method}: {status}");
        }
    }
    Ok(response)
}

fn check_status(trailers: Option<&http::HeaderMap>, what: &str) -> anyhow::Result<()> {
    match trailers.and_then(tonic::Status::from_header_map) {
        Some(s) if s.code() == tonic::Code::Ok => Ok(()),
        Some(s) => bail!("{what}: {s}"),
        None => bail!("{what}: the stream ended without a gRPC status"),
    }
}

/// Splits a stream of ReadResponse messages, arriving in frames of any
/// size, into the data they carry.
#[derive(Default)]
struct ReadResponses {
    /// Bytes of the current message's headers seen so far (prefix, key, length).
    head: Vec<u8>,
    /// Data bytes of the current message still to come.
    data_left: usize,
    total: u64,
}

impl ReadResponses {
    fn at_boundary(&self) -> bool {
        self.head.is_empty() && self.data_left == 0
    }

    fn feed(&mut self, mut bytes: &[u8], mut on_data: impl FnMut(&[u8])) -> anyhow::Result<()> {
        while !bytes.is_empty() {
            if self.data_left > 0 {
                let n = self.data_left.min(bytes.len());
                on_data(&bytes[..n]);
                self.total += n as u64;
                self.data_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            self.parse_head()?;
        }
        Ok(())
    }

    /// Once the headers are complete, starts the data of the message.
    fn parse_head(&mut self) -> anyhow::Result<()> {
        let h = &self.head;
        if h.len() < 5 {
            return Ok(());
        }
        if h[0] != 0 {
            bail!("ByteStream.Read: compressed gRPC messages are not handled");
        }
        let message_len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if message_len == 0 {
            self.head.clear();
            return Ok(());
        }
        if h.len() < 7 {
            return Ok(());
        }
        if h[5] != DATA_KEY {
            bail!("ByteStream.Read: a ReadResponse with fields other than data");
        }
        let mut rest = &h[6..];
        let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
            if h.len() >= 16 {
                bail!("ByteStream.Read: bad data length");
            }
            return Ok(()); // the length's remaining bytes are in the next frame
        };
        let varint = h.len() - 6;
        if 1 + varint + len as usize != message_len {
            bail!("ByteStream.Read: a ReadResponse with fields other than data");
        }
        self.data_left = len as usize;
        self.head.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use re_proto::google::bytestream::ReadResponse;

    fn framed(data: &[u8]) -> Vec<u8> {
        let msg = ReadResponse { data: Bytes::copy_from_slice(data) }.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }

    #[test]
    fn responses_split_anywhere_give_back_the_data() {
        let a: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let b = vec![9u8; 20_000];
        let mut wire = framed(&a);
        wire.extend(framed(&b));
        for step in [1, 2, 3, 7, 1000, wire.len()] {
            let mut p = ReadResponses::default();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                p.feed(piece, |d| got.extend_from_slice(d)).unwrap();
            }
            assert!(p.at_boundary(), "step {step}");
            assert_eq!(got.len(), a.len() + b.len(), "step {step}");
            assert_eq!(&got[..300], &a[..]);
            assert_eq!(p.total, (a.len() + b.len()) as u64);
        }
    }

    #[test]
    fn the_write_header_and_data_decode_as_one_write_request() {
        let fields = WriteRequest {
            resource_name: "uploads/u/blobs/h/5".into(),
            write_offset: 7,
            finish_write: true,
            data: Bytes::new(),
        };
        let mut wire = header(&fields, 5).to_vec();
        wire.extend_from_slice(b"hello");
        let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - 5);
        let back = WriteRequest::decode(&wire[5..]).unwrap();
        assert_eq!(back.resource_name, fields.resource_name);
        assert_eq!((back.write_offset, back.finish_write), (7, true));
        assert_eq!(&back.data[..], b"hello");
    }
}
