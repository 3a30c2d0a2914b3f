//! `[server.auth] tokens_file`: every RPC, the hand-framed ByteStream and
//! FindMissingBlobs paths included, is refused without a known token
//! (UNAUTHENTICATED) and without the role it needs (PERMISSION_DENIED naming
//! the role); health checks stay open; the file is re-read on SIGHUP.
mod common;

use std::time::{Duration, Instant};

use common::{digest, upload_resource, ServerConfig, TestServer};
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use re_proto::google::longrunning::operations_client::OperationsClient;
use re_proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest, WaitOperationRequest,
};
use re_proto::reapi::action_cache_client::ActionCacheClient;
use re_proto::reapi::capabilities_client::CapabilitiesClient;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::execution_client::ExecutionClient;
use re_proto::reapi::*;
use tonic::transport::Channel;
use tonic::Code;

const READER: &str = "reader-0123456789abcdef";
const BUILDER: &str = "builder-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef01";
const LATER: &str = "added-later-0123456789ab";

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

/// Every RPC of the server with `token`: (name, code).
async fn call_everything(ch: &Channel, token: Option<&str>) -> Vec<(&'static str, Code, String)> {
    let d = digest(b"x");
    let t = token;
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut bs = ByteStreamClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch.clone());
    let mut ex = ExecutionClient::new(ch.clone());
    let mut ops = OperationsClient::new(ch.clone());
    let mut caps = CapabilitiesClient::new(ch.clone());
    let dm = || Some(d.clone());
    let write = WriteRequest {
        resource_name: upload_resource("", &d),
        write_offset: 0,
        finish_write: true,
        data: bytes::Bytes::from_static(b"x"),
    };
    let mut out = Vec::new();
    let mut note = |name, r: Result<(), tonic::Status>| {
        let msg = r.as_ref().err().map(|s| s.message().to_string()).unwrap_or_default();
        out.push((name, code(r), msg));
    };
    note(
        "FindMissingBlobs",
        cas.find_missing_blobs(with_token(
            FindMissingBlobsRequest { blob_digests: vec![d.clone()], ..Default::default() },
            t,
        ))
        .await
        .map(drop),
    );
    note("BatchUpdateBlobs", cas.batch_update_blobs(with_token(BatchUpdateBlobsRequest::default(), t)).await.map(drop));
    note("BatchReadBlobs", cas.batch_read_blobs(with_token(BatchReadBlobsRequest::default(), t)).await.map(drop));
    note(
        "GetTree",
        cas.get_tree(with_token(GetTreeRequest { root_digest: dm(), ..Default::default() }, t)).await.map(drop),
    );
    note(
        "Read",
        bs.read(with_token(ReadRequest { resource_name: format!("blobs/{}/1", d.hash), ..Default::default() }, t))
            .await
            .map(drop),
    );
    note("Write", bs.write(with_token(tokio_stream::iter(vec![write]), t)).await.map(drop));
    note(
        "QueryWriteStatus",
        bs.query_write_status(with_token(QueryWriteStatusRequest { resource_name: upload_resource("", &d) }, t))
            .await
            .map(drop),
    );
    note(
        "GetActionResult",
        ac.get_action_result(with_token(GetActionResultRequest { action_digest: dm(), ..Default::default() }, t))
            .await
            .map(drop),
    );
    note(
        "UpdateActionResult",
        ac.update_action_result(with_token(
            UpdateActionResultRequest {
                action_digest: dm(),
                action_result: Some(ActionResult::default()),
                ..Default::default()
            },
            t,
        ))
        .await
        .map(drop),
    );
    note(
        "Execute",
        ex.execute(with_token(ExecuteRequest { action_digest: dm(), ..Default::default() }, t)).await.map(drop),
    );
    note("WaitExecution", ex.wait_execution(with_token(WaitExecutionRequest { name: "x".into() }, t)).await.map(drop));
    note("GetOperation", ops.get_operation(with_token(GetOperationRequest { name: "x".into() }, t)).await.map(drop));
    note("ListOperations", ops.list_operations(with_token(ListOperationsRequest::default(), t)).await.map(drop));
    note(
        "CancelOperation",
        ops.cancel_operation(with_token(CancelOperationRequest { name: "x".into() }, t)).await.map(drop),
    );
    note(
        "DeleteOperation",
        ops.delete_operation(with_token(DeleteOperationRequest { name: "x".into() }, t)).await.map(drop),
    );
    note(
        "WaitOperation",
        ops.wait_operation(with_token(WaitOperationRequest { name: "x".into(), timeout: None }, t)).await.map(drop),
    );
    note("GetCapabilities", caps.get_capabilities(with_token(GetCapabilitiesRequest::default(), t)).await.map(drop));
    out
}

fn server_with_tokens(dir: &std::path::Path) -> TestServer {
    let tokens = dir.join("tokens");
    let lines =
        format!("# test tokens\n{READER} cache-read\n{BUILDER} cache-read,cache-write,execute\n{ADMIN} admin\n");
    std::fs::write(&tokens, lines).unwrap();
    let config = ServerConfig::memory().server(&format!("auth = {{ tokens_file = \"{}\" }}", tokens.display()));
    TestServer::start(&config.host_workers(1).toml())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_token_and_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_tokens(dir.path());
    let ch = server.channel().await;

    for (name, code, message) in call_everything(&ch, None).await {
        assert_eq!(code, Code::Unauthenticated, "{name} without a token: {message}");
        assert!(message.contains("authorization: Bearer"), "{name}: {message}");
    }
    for (name, code, message) in call_everything(&ch, Some("not-a-known-token-at-all")).await {
        assert_eq!(code, Code::Unauthenticated, "{name} with an unknown token: {message}");
    }
    // A reader may read; writes and executions name the role it lacks.
    let writes = ["BatchUpdateBlobs", "Write", "QueryWriteStatus", "UpdateActionResult"];
    let executes = [
        "Execute",
        "WaitExecution",
        "GetOperation",
        "ListOperations",
        "CancelOperation",
        "DeleteOperation",
        "WaitOperation",
    ];
    for (name, code, message) in call_everything(&ch, Some(READER)).await {
        if writes.contains(&name) {
            assert_eq!(code, Code::PermissionDenied, "{name}: {message}");
            assert!(message.contains("'cache-write' role"), "{name}: {message}");
        } else if executes.contains(&name) {
            assert_eq!(code, Code::PermissionDenied, "{name}: {message}");
            assert!(message.contains("'execute' role"), "{name}: {message}");
        } else {
            assert!(![Code::Unauthenticated, Code::PermissionDenied].contains(&code), "{name}: {code:?} {message}");
        }
    }
    // The builder gets past the check everywhere (answers are the RPCs' own).
    for (name, code, message) in call_everything(&ch, Some(BUILDER)).await {
        assert!(![Code::Unauthenticated, Code::PermissionDenied].contains(&code), "{name}: {code:?} {message}");
    }
    // Health checks stay open for load balancers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let resp = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(resp.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    assert!(!server.logs().contains(BUILDER) && !server.logs().contains(READER), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_file_is_reread_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_tokens(dir.path());
    let ch = server.channel().await;
    let mut caps = CapabilitiesClient::new(ch.clone());
    let req = || with_token(GetCapabilitiesRequest::default(), Some(LATER));
    assert_eq!(code(caps.get_capabilities(req()).await), Code::Unauthenticated);
    std::fs::write(dir.path().join("tokens"), format!("{LATER} cache-read\n")).unwrap();
    // SAFETY: a plain signal to the child process this test started.
    unsafe { libc::kill(server.pid().unwrap() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while code(caps.get_capabilities(req()).await) != Code::Ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code(caps.get_capabilities(req()).await), Code::Ok);
    // The old tokens are gone; a broken file keeps what was loaded.
    let old = with_token(GetCapabilitiesRequest::default(), Some(BUILDER));
    assert_eq!(code(caps.get_capabilities(old).await), Code::Unauthenticated);
    std::fs::write(dir.path().join("tokens"), "garbage-without-roles-0123\n").unwrap();
    unsafe { libc::kill(server.pid().unwrap() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.logs().contains("keeping the tokens loaded before") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.logs().contains("line 1: a token needs its roles"), "{}", server.logs());
    assert_eq!(code(caps.get_capabilities(req()).await), Code::Ok);
}

#[test]
fn a_bad_tokens_file_stops_the_server_at_start_with_its_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "0123456789abcdef0123 cache-read,superuser\n").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[server.auth]\ntokens_file = \"{}\"\n", tokens.display())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_re-server"))
        .args(["--config", config.to_str().unwrap(), "--address", "127.0.0.1:0", "--http-address", ""])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("server.auth.tokens_file") && stderr.contains("line 1: unknown role 'superuser'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_api_controls_take_a_token_with_the_admin_role() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_tokens(dir.path());
    let drain = format!("{}/api/workers/host-worker-1/drain", server.http_url());
    let body = serde_json::json!({});
    assert_eq!(common::http::post(&drain, body.clone(), Some(BUILDER)).await.status, 401);
    assert_eq!(common::http::post(&drain, body.clone(), None).await.status, 401);
    let r = common::http::post(&drain, body, Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
