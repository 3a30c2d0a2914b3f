//! Digests, digest functions and resource names.
use super::*;
use re_proto::google::bytestream::ReadRequest;
use re_proto::reapi::action_cache_client::ActionCacheClient;
use re_proto::reapi::execution_client::ExecutionClient;
use re_proto::reapi::{
    BatchReadBlobsRequest, ExecuteRequest, FindMissingBlobsRequest, GetActionResultRequest, GetTreeRequest,
    UpdateActionResultRequest,
};

/// MD5, BLAKE3 and a value no spec names.
const OTHER_FUNCTIONS: [(i32, &str); 3] = [(3, "MD5"), (9, "BLAKE3"), (99, "99")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_functions_other_than_sha256_are_refused_by_every_rpc() {
    let server = TestServer::start(&ServerConfig::filesystem().host_workers(1).toml());
    let ch = server.channel().await;
    let d = digest(b"x");
    for (f, name) in OTHER_FUNCTIONS {
        let words = ["digest_function", name];
        let r = cas(&ch)
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![d.clone()],
                digest_function: f,
                ..Default::default()
            })
            .await;
        refused(r, Code::InvalidArgument, &words, "FindMissingBlobs");
        let mut req = common::batch_update_request("", &[(d.clone(), Bytes::from_static(b"x"))]);
        req.digest_function = f;
        refused(cas(&ch).batch_update_blobs(req).await, Code::InvalidArgument, &words, "BatchUpdateBlobs");
        let r = cas(&ch)
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![d.clone()],
                digest_function: f,
                ..Default::default()
            })
            .await;
        refused(r, Code::InvalidArgument, &words, "BatchReadBlobs");
        let r = cas(&ch)
            .get_tree(GetTreeRequest { root_digest: Some(d.clone()), digest_function: f, ..Default::default() })
            .await;
        refused(r, Code::InvalidArgument, &words, "GetTree");
        let mut ac = ActionCacheClient::new(ch.clone());
        let r = ac
            .get_action_result(GetActionResultRequest {
                action_digest: Some(d.clone()),
                digest_function: f,
                ..Default::default()
            })
            .await;
        refused(r, Code::InvalidArgument, &words, "GetActionResult");
        let r = ac
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(d.clone()),
                action_result: Some(Default::default()),
                digest_function: f,
                ..Default::default()
            })
            .await;
        refused(r, Code::InvalidArgument, &words, "UpdateActionResult");
        let r = ExecutionClient::new(ch.clone())
            .execute(ExecuteRequest { action_digest: Some(d.clone()), digest_function: f, ..Default::default() })
            .await;
        refused(r, Code::InvalidArgument, &words, "Execute");
    }
    // SHA256 said aloud, and left unset, both work.
    for f in [0, 1] {
        let r = cas(&ch)
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![d.clone()],
                digest_function: f,
                ..Default::default()
            })
            .await;
        assert!(r.is_ok(), "digest_function {f}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_digests_are_refused_naming_the_field() {
    let server = server();
    let ch = server.channel().await;
    let good = digest(b"hello");
    let bad: Vec<(Digest, &str)> = vec![
        (digest_with(good.hash.to_uppercase(), good.size_bytes), "lower-case"),
        (digest_with(good.hash[..62].to_string(), good.size_bytes), "64"),
        (digest_with(format!("{}zz", &good.hash[..62]), good.size_bytes), "hex"),
        (digest_with(good.hash.clone(), -5), "negative"),
    ];
    for (d, why) in &bad {
        let r = cas(&ch)
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![good.clone(), d.clone()],
                ..Default::default()
            })
            .await;
        refused(r, Code::InvalidArgument, &["blob_digests[1]", why], "FindMissingBlobs");
        let r =
            cas(&ch).batch_read_blobs(BatchReadBlobsRequest { digests: vec![d.clone()], ..Default::default() }).await;
        refused(r, Code::InvalidArgument, &["digests[0]", why], "BatchReadBlobs");
        let r = ActionCacheClient::new(ch.clone())
            .get_action_result(GetActionResultRequest { action_digest: Some(d.clone()), ..Default::default() })
            .await;
        refused(r, Code::InvalidArgument, &["action_digest", why], "GetActionResult");
        // BatchUpdateBlobs answers per blob, naming the field.
        let resp = cas(&ch)
            .batch_update_blobs(common::batch_update_request("", &[(d.clone(), Bytes::from_static(b"hello"))]))
            .await
            .unwrap()
            .into_inner();
        let status = resp.responses[0].status.clone().unwrap();
        assert_eq!(status.code, Code::InvalidArgument as i32, "BatchUpdateBlobs {why}: {status:?}");
        assert!(status.message.contains("digest") && status.message.contains(why), "{}", status.message);
    }
    // A size that disagrees with the data.
    let resp = cas(&ch)
        .batch_update_blobs(common::batch_update_request(
            "",
            &[(digest_with(good.hash.clone(), 6), Bytes::from_static(b"hello"))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].status.clone().unwrap().code, Code::InvalidArgument as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_names_that_do_not_parse_are_invalid_argument() {
    let server = server();
    let ch = server.channel().await;
    let d = digest(b"hello");
    let names = [
        format!("blobs/{}/+5", d.hash),
        format!("blobs/{}/ 5", d.hash),
        format!("blobs/{}/5", d.hash.to_uppercase()),
        format!("blobs/md5/{}/5", &d.hash[..32]),
        format!("blobs/{}", d.hash),
        "nothing/here".to_string(),
        format!("compressed-blobs/lz4/{}/5", d.hash),
    ];
    for name in &names {
        let mut bs = ByteStreamClient::new(ch.clone());
        let r = bs.read(ReadRequest { resource_name: name.clone(), read_offset: 0, read_limit: 0 }).await;
        let r = match r {
            Ok(s) => s.into_inner().message().await.map(|_| ()),
            Err(e) => Err(e),
        };
        refused(r, Code::InvalidArgument, &["resource name"], &format!("Read {name}"));
        let upload = format!("uploads/{}/{name}", uuid::Uuid::new_v4());
        refused(write(&ch, &upload, &[(b"hello", 0, true)]).await, Code::InvalidArgument, &["resource name"], &upload);
    }
}
