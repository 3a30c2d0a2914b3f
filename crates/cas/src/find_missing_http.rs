//! FindMissingBlobs decoded and answered without building its protobuf
//! messages. Bazel asks it with hundreds or thousands of digests per call,
//! and prost gave every hash a `String` of its own: allocating, checking and
//! freeing them was a third of the server's time per call. Here the hashes
//! are decoded straight from the request bytes, and each missing digest is
//! answered with the client's own Digest bytes. The wire format is the one
//! tonic would accept and send. Every other CAS method goes to the generated
//! server.
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use re_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use re_proto::{check_digest_function, DigestInfo};
use tonic::body::Body;
use tonic::Status;

use crate::cas_service::CasService;
use crate::grpc_frames::{
    put_prefix, unary_request, unary_response, Answer, Field, HandFramed, HandFramedMethods, ProtoReader,
    MAX_REQUEST_BYTES,
};

const FIND_MISSING_PATH: &str = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs";
/// What a batch request may carry besides its blobs' data (digests, names).
const BATCH_FRAMING_BYTES: usize = 4 << 20;

/// `FindMissingBlobsResponse.missing_blob_digests` is field 2, length-delimited.
const MISSING_KEY: u8 = (2 << 3) | 2;

/// The CAS service as the server mounts it.
pub type FastFindMissingCas = HandFramed<CasService, ContentAddressableStorageServer<CasService>>;

/// The gRPC service to mount: FindMissingBlobs decoded here, every other
/// method by the generated server.
pub fn server(service: CasService) -> FastFindMissingCas {
    // A batch request holds at most max_batch_total_size_bytes of data plus
    // its digests; nothing larger is decoded into memory.
    let decode_limit = (service.max_batch_bytes() as usize).saturating_add(BATCH_FRAMING_BYTES).min(MAX_REQUEST_BYTES);
    let generated = ContentAddressableStorageServer::new(service.clone())
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    FastFindMissingCas::new(service, generated)
}

impl HandFramedMethods for CasService {
    fn handler(path: &str) -> Option<fn(Self, http::Request<Body>) -> Answer> {
        (path == FIND_MISSING_PATH).then_some(|service, body| Box::pin(find_missing(service, body)))
    }
}

async fn find_missing(service: CasService, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
    let message = unary_request(req, "FindMissingBlobs", MAX_REQUEST_BYTES).await?;
    let request = parse_request(&message)?;
    let missing = service.find_missing(request.instance_name, &request.digests).await?;
    Ok(unary_response(encode_response(&message, &request, &missing)))
}

/// What the handler needs of a FindMissingBlobsRequest.
pub(crate) struct Request<'a> {
    instance_name: &'a str,
    pub(crate) digests: Vec<DigestInfo>,
    /// Where each digest's Digest message lies in the request.
    spans: Vec<Range<usize>>,
}

pub(crate) fn parse_request(message: &[u8]) -> Result<Request<'_>, Status> {
    let mut request = Request { instance_name: "", digests: Vec::new(), spans: Vec::new() };
    let mut fields = ProtoReader::new(message);
    while let Some(field) = fields.next_field()? {
        match field {
            Field::Bytes(1, name) => {
                request.instance_name = std::str::from_utf8(name)
                    .map_err(|_| Status::internal("bad protobuf: instance_name is not UTF-8"))?;
            }
            Field::Bytes(2, digest) => {
                let start = digest.as_ptr() as usize - message.as_ptr() as usize;
                let i = request.digests.len();
                request.digests.push(parse_digest(digest, i)?);
                request.spans.push(start..start + digest.len());
            }
            // An int32: negative values arrive as 64-bit varints.
            Field::Varint(3, f) => check_digest_function(f as i32)?,
            _ => {} // unknown fields
        }
    }
    Ok(request)
}

/// Digest `i` of the request.
fn parse_digest(message: &[u8], i: usize) -> Result<DigestInfo, Status> {
    let (mut hash, mut size) = (&[][..], 0i64);
    let mut fields = ProtoReader::new(message);
    while let Some(field) = fields.next_field()? {
        match field {
            Field::Bytes(1, h) => hash = h,
            Field::Varint(2, s) => size = s as i64,
            _ => {}
        }
    }
    DigestInfo::from_hex_bytes(hash, size).map_err(|e| e.in_field(format!("blob_digests[{i}]")).into())
}

/// The response, gRPC prefix included. `missing` is a subsequence of the
/// request's digests (the store keeps request order), so each is answered
/// with the bytes the client sent for it.
pub(crate) fn encode_response(message: &[u8], request: &Request<'_>, missing: &[DigestInfo]) -> Bytes {
    let mut spans = Vec::with_capacity(missing.len());
    let mut next = missing.iter().peekable();
    for (d, span) in request.digests.iter().zip(&request.spans) {
        if next.peek() == Some(&d) {
            next.next();
            spans.push(span.clone());
        }
    }
    if next.peek().is_some() {
        // Not a subsequence after all: encode the digests afresh.
        let response = re_proto::reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(|d| d.to_proto()).collect(),
        };
        let mut out = BytesMut::with_capacity(5 + response.encoded_len());
        put_prefix(&mut out, response.encoded_len());
        response.encode(&mut out).expect("a BytesMut grows");
        return out.freeze();
    }
    let len: usize = spans.iter().map(|s| 1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len()).sum();
    let mut out = BytesMut::with_capacity(5 + len);
    put_prefix(&mut out, len);
    for span in spans {
        out.put_u8(MISSING_KEY);
        prost::encoding::encode_varint(span.len() as u64, &mut out);
        out.put_slice(&message[span]);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use re_proto::reapi::{Digest, FindMissingBlobsRequest, FindMissingBlobsResponse};

    fn digest(i: u8) -> Digest {
        Digest { hash: format!("{i:02x}").repeat(32), size_bytes: i as i64 * 1000 }
    }

    #[test]
    fn requests_parse_and_answers_decode_like_prost() {
        let wanted: Vec<Digest> = (0..10).map(digest).collect();
        let request =
            FindMissingBlobsRequest { instance_name: "main".into(), blob_digests: wanted.clone(), digest_function: 1 }
                .encode_to_vec();
        let parsed = parse_request(&request).unwrap();
        assert_eq!(parsed.instance_name, "main");
        let expected: Vec<DigestInfo> = wanted.iter().map(|d| DigestInfo::try_from(d).unwrap()).collect();
        assert_eq!(parsed.digests, expected);
        for missing in [vec![], vec![0, 3, 9], (0..10).collect::<Vec<usize>>()] {
            let infos: Vec<DigestInfo> = missing.iter().map(|&i| expected[i]).collect();
            let framed = encode_response(&request, &parsed, &infos);
            assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, framed.len() - 5);
            let back = FindMissingBlobsResponse::decode(&framed[5..]).unwrap();
            let want: Vec<Digest> = missing.iter().map(|&i| wanted[i].clone()).collect();
            assert_eq!(back.missing_blob_digests, want);
        }
        // Digests in another order than asked are still answered correctly.
        let odd = [expected[5], expected[1]];
        let back = FindMissingBlobsResponse::decode(&encode_response(&request, &parsed, &odd)[5..]).unwrap();
        assert_eq!(back.missing_blob_digests, vec![wanted[5].clone(), wanted[1].clone()]);
    }

    #[test]
    fn malformed_digests_and_messages_are_refused() {
        let bad = FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: vec![Digest { hash: "xyz".into(), size_bytes: 1 }],
            digest_function: 0,
        }
        .encode_to_vec();
        assert_eq!(parse_request(&bad).err().unwrap().code(), tonic::Code::InvalidArgument);
        let negative = FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: vec![Digest { size_bytes: -1, ..digest(1) }],
            digest_function: 0,
        }
        .encode_to_vec();
        assert_eq!(parse_request(&negative).err().unwrap().code(), tonic::Code::InvalidArgument);
        let good = FindMissingBlobsRequest { blob_digests: vec![digest(1)], ..Default::default() }.encode_to_vec();
        assert_eq!(parse_request(&good[..good.len() - 3]).err().unwrap().code(), tonic::Code::Internal);
    }
}
