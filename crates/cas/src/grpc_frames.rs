//! The few pieces of gRPC-over-HTTP/2 framing that the hand-framed RPCs
//! (`bytestream_http.rs`, `find_missing_http.rs`) share: the wrapper that
//! routes their methods past the generated server, the 5-byte message
//! prefix, unary request bodies, unary responses and status trailers.
use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

/// The largest request message any CAS method accepts (a batch is bounded by
/// `max_batch_total_size_bytes`; this bounds the framing around it).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The answer to one hand-framed call; an error becomes a trailers-only response.
pub type Answer = BoxFuture<'static, Result<http::Response<Body>, Status>>;

/// A service some of whose methods are framed by hand.
pub trait HandFramedMethods: Clone + Send + Sync + 'static {
    /// The handler for the method at `path`, or `None` for the generated server.
    fn handler(path: &str) -> Option<fn(Self, http::Request<Body>) -> Answer>;
}

/// A generated tonic server with the methods `S` frames itself taken out of it.
#[derive(Clone)]
pub struct HandFramed<S, G> {
    service: S,
    generated: G,
}

impl<S, G> HandFramed<S, G> {
    pub fn new(service: S, generated: G) -> Self {
        Self { service, generated }
    }
}

impl<S, G: NamedService> NamedService for HandFramed<S, G> {
    const NAME: &'static str = G::NAME;
}

impl<S, G> tower_service::Service<http::Request<Body>> for HandFramed<S, G>
where
    S: HandFramedMethods,
    G: tower_service::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>,
    >,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match S::handler(req.uri().path()) {
            Some(handler) => {
                let answer = handler(self.service.clone(), req);
                Box::pin(async move { Ok(answer.await.unwrap_or_else(Status::into_http)) })
            }
            None => self.generated.call(req),
        }
    }
}

/// The prefix of an uncompressed message of `len` bytes.
pub fn put_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    out.put_u32(len as u32);
}

/// How long a hand-framed unary request may take to arrive whole.
const REQUEST_ARRIVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The status for a message whose compressed flag is set: the gRPC protocol
/// makes it INTERNAL without a `grpc-encoding`, and an encoding this server
/// does not decode is UNIMPLEMENTED.
pub fn compressed_message(headers: &HeaderMap, method: &str) -> Status {
    match headers.get("grpc-encoding").and_then(|v| v.to_str().ok()).filter(|e| *e != "identity") {
        Some(e) => Status::unimplemented(format!("{method} does not accept grpc-encoding {e}; send it uncompressed")),
        None => Status::internal(format!("{method}: a message is flagged compressed but no grpc-encoding was sent")),
    }
}

/// The single, uncompressed message of a unary request, at most `limit`
/// bytes, arriving within [`REQUEST_ARRIVAL`].
pub async fn unary_request(req: http::Request<Body>, method: &str, limit: usize) -> Result<Bytes, Status> {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(REQUEST_ARRIVAL, collect_unary(body, &parts.headers, method, limit)).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the {method} request did not arrive within {}s",
            REQUEST_ARRIVAL.as_secs()
        ))),
    }
}

async fn collect_unary(mut body: Body, headers: &HeaderMap, method: &str, limit: usize) -> Result<Bytes, Status> {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        len += data.len();
        if len > 5 + limit {
            return Err(Status::out_of_range(format!("a {method} request must be at most {limit} bytes")));
        }
        frames.push(data);
    }
    // A request in one frame (the usual case) is used where it lies.
    let all = if frames.len() == 1 { frames.pop().expect("one frame") } else { Bytes::from(frames.concat()) };
    if all.len() < 5 {
        return Err(Status::internal(format!("{method} carried no request message")));
    }
    if all[0] != 0 {
        return Err(compressed_message(headers, method));
    }
    let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
    if all.len() != 5 + len {
        return Err(Status::internal(format!("{method} takes exactly one whole request message")));
    }
    Ok(all.slice(5..))
}

/// A unary response: `framed` (prefix included), then an OK status.
pub fn unary_response(framed: Bytes) -> http::Response<Body> {
    let frames = [Ok::<_, Infallible>(Frame::data(framed)), Ok(Frame::trailers(trailers(&Status::ok(""))))];
    streaming_response(StreamBody::new(stream::iter(frames)))
}

/// A response whose body (messages, then trailers) is `body`.
pub fn streaming_response<B>(body: B) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(body))
        .expect("static response parts are valid")
}

/// `status` as gRPC trailers.
pub fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here.
        map.clear();
        Status::new(status.code(), "").add_header(&mut map).expect("a bare status is a valid header");
    }
    map
}

/// Reads protobuf fields out of one contiguous message.
pub struct ProtoReader<'a> {
    buf: &'a [u8],
}

/// One field: its number and its value.
pub enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
    /// Fixed-width fields (wire types 1 and 5): skipped by every caller.
    Fixed(u32),
}

impl<'a> ProtoReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn varint(&mut self) -> Result<u64, Status> {
        prost::encoding::decode_varint(&mut self.buf).map_err(|e| Status::internal(format!("bad protobuf: {e}")))
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<Field<'a>>, Status> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = (key >> 3) as u32;
        let truncated = || Status::internal("bad protobuf: a field runs past the end of its message");
        Ok(Some(match key & 7 {
            0 => Field::Varint(number, self.varint()?),
            2 => {
                let len = self.varint()? as usize;
                if len > self.buf.len() {
                    return Err(truncated());
                }
                let (value, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(number, value)
            }
            t @ (1 | 5) => {
                let n = if t == 1 { 8 } else { 4 };
                if n > self.buf.len() {
                    return Err(truncated());
                }
                self.buf = &self.buf[n..];
                Field::Fixed(number)
            }
            t => return Err(Status::internal(format!("bad protobuf: wire type {t} is not supported"))),
        }))
    }
}
