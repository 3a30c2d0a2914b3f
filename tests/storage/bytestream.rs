//! ByteStream reads and writes: ranges, resumed and refused uploads,
//! compressed blobs, concurrent writers.
use super::*;

/// Uploads compressed bytes; offsets count compressed bytes after the first.
async fn bs_write_compressed(c: &mut Clients, resource: &str, compressed: &[u8]) -> Result<i64, Status> {
    bs_write(c, resource, compressed, 0, 64 * 1024).await
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

#[tokio::test]
async fn bytestream_streams_a_multi_megabyte_blob_in_and_out() {
    for config in [ServerConfig::memory(), ServerConfig::filesystem()].map(|c| c.cache_only().toml()) {
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
    for config in [ServerConfig::memory(), ServerConfig::filesystem()].map(|c| c.cache_only().toml()) {
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
    for config in [ServerConfig::memory(), ServerConfig::filesystem()].map(|c| c.cache_only().toml()) {
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
    let server = TestServer::start(&ServerConfig::filesystem().cache_only().toml());
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
    let server = TestServer::start(&ServerConfig::filesystem().cache_only().toml());
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
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
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
    let filesystem = TestServer::start(&ServerConfig::filesystem().cache_only().toml());
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
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
    let server = TestServer::start(
        &ServerConfig::memory().cache_only().capabilities("supported_compressors = [\"ZSTD\"]").toml(),
    );
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
    for config in [ServerConfig::memory(), ServerConfig::filesystem()].map(|c| c.cache_only().toml()) {
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
    let server = TestServer::start(&ServerConfig::memory().cache_only().toml());
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
