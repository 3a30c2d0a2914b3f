//! Blobs as a client sees them: digests and resource names computed here,
//! not by the server, and the CAS calls every test binary uploads with.

use bytes::Bytes;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::{batch_update_blobs_request, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The REAPI digest of `data` (SHA-256, computed here, not by the server).
pub fn digest(data: &[u8]) -> Digest {
    Digest { hash: sha256_hex(data), size_bytes: data.len() as i64 }
}

fn with_instance(instance: &str, rest: String) -> String {
    if instance.is_empty() {
        rest
    } else {
        format!("{instance}/{rest}")
    }
}

/// `{instance}/blobs/{hash}/{size}` (ByteStream read name).
pub fn read_resource(instance: &str, d: &Digest) -> String {
    with_instance(instance, format!("blobs/{}/{}", d.hash, d.size_bytes))
}

/// `{instance}/compressed-blobs/{compressor}/{hash}/{size}`.
pub fn compressed_read_resource(instance: &str, compressor: &str, d: &Digest) -> String {
    with_instance(instance, format!("compressed-blobs/{compressor}/{}/{}", d.hash, d.size_bytes))
}

/// `{instance}/uploads/{fresh uuid}/blobs/{hash}/{size}` (ByteStream write name).
pub fn upload_resource(instance: &str, d: &Digest) -> String {
    with_instance(instance, format!("uploads/{}/blobs/{}/{}", uuid::Uuid::new_v4(), d.hash, d.size_bytes))
}

/// `{instance}/uploads/{fresh uuid}/compressed-blobs/{compressor}/{hash}/{size}`.
pub fn compressed_upload_resource(instance: &str, compressor: &str, d: &Digest) -> String {
    with_instance(
        instance,
        format!("uploads/{}/compressed-blobs/{compressor}/{}/{}", uuid::Uuid::new_v4(), d.hash, d.size_bytes),
    )
}

/// Deterministic, poorly compressible bytes (an LCG), different per `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// One BatchUpdateBlobs request carrying `blobs` uncompressed.
pub fn batch_update_request(instance: &str, blobs: &[(Digest, Bytes)]) -> BatchUpdateBlobsRequest {
    BatchUpdateBlobsRequest {
        instance_name: instance.into(),
        requests: blobs
            .iter()
            .map(|(digest, data)| batch_update_blobs_request::Request {
                digest: Some(digest.clone()),
                data: data.clone(),
                compressor: 0,
            })
            .collect(),
        digest_function: 0,
    }
}

/// Uploads `blobs` with BatchUpdateBlobs and asserts each one was accepted.
pub async fn put_blobs(channel: &Channel, instance: &str, blobs: Vec<(Digest, Bytes)>) {
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let resp =
        cas.batch_update_blobs(batch_update_request(instance, &blobs)).await.expect("BatchUpdateBlobs").into_inner();
    assert_eq!(resp.responses.len(), blobs.len());
    for r in &resp.responses {
        assert_eq!(r.status.as_ref().unwrap().code, 0, "upload of {:?} failed: {:?}", r.digest, r.status);
    }
}

/// Reads one blob with BatchReadBlobs and asserts it was found.
pub async fn read_blob(channel: &Channel, instance: &str, digest: &Digest) -> Bytes {
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut resp = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: instance.into(),
            digests: vec![digest.clone()],
            acceptable_compressors: vec![],
            digest_function: 0,
        })
        .await
        .expect("BatchReadBlobs")
        .into_inner();
    let r = resp.responses.remove(0);
    assert_eq!(r.status.as_ref().unwrap().code, 0, "read {digest:?}");
    r.data
}
