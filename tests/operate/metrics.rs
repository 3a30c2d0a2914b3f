//! `/metrics` read before and after real traffic: each counter moves by
//! exactly what the traffic did, and promtool accepts the exposition.
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::http::parse_metrics;
use common::{digest, pseudo_random, upload_resource};
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::{ReadRequest, WriteRequest};
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::FindMissingBlobsRequest;

use super::*;

async fn scrape(server: &TestServer) -> (String, BTreeMap<String, f64>) {
    let r = http::get(&format!("{}/metrics", server.http_url()), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type.starts_with("text/plain; version=0.0.4"), "{}", r.content_type);
    let parsed = parse_metrics(&r.body);
    (r.body, parsed)
}

/// How much `series` grew from `before` to `after` (absent counts as 0).
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

fn assert_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str, expected: f64) {
    let d = delta(before, after, series);
    assert_eq!(d, expected, "{series} moved by {d}, expected {expected}");
}

#[tokio::test]
async fn storage_counters_move_by_exactly_the_traffic() {
    let (server, _token) = server_with(1, "");
    let ch = server.channel().await;
    let data = Bytes::from(pseudo_random(300_000, 7));
    let d = digest(&data);
    let (_, m0) = scrape(&server).await;

    // One upload of 300,000 bytes, in two messages.
    let resource = upload_resource("", &d);
    let requests = vec![
        WriteRequest {
            resource_name: resource.clone(),
            write_offset: 0,
            finish_write: false,
            data: data.slice(..200_000),
        },
        WriteRequest {
            resource_name: String::new(),
            write_offset: 200_000,
            finish_write: true,
            data: data.slice(200_000..),
        },
    ];
    ByteStreamClient::new(ch.clone()).write(tokio_stream::iter(requests)).await.unwrap();
    // One read that finds it, one that does not.
    let read = ReadRequest { resource_name: common::read_resource("", &d), read_offset: 0, read_limit: 0 };
    let mut stream = ByteStreamClient::new(ch.clone()).read(read).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(got, data);
    let missing = digest(b"not stored anywhere");
    let read = ReadRequest { resource_name: common::read_resource("", &missing), read_offset: 0, read_limit: 0 };
    let status = match ByteStreamClient::new(ch.clone()).read(read).await {
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
        Err(s) => s,
    };
    assert_eq!(status.code(), tonic::Code::NotFound);
    // Two FindMissingBlobs, one of them malformed.
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let req = FindMissingBlobsRequest { blob_digests: vec![d.clone(), missing.clone()], ..Default::default() };
    assert_eq!(cas.find_missing_blobs(req).await.unwrap().into_inner().missing_blob_digests, vec![missing]);
    let bad = re_proto::reapi::Digest { hash: "xyz".into(), size_bytes: 1 };
    let req = FindMissingBlobsRequest { blob_digests: vec![bad], ..Default::default() };
    assert_eq!(cas.find_missing_blobs(req).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let (_, m1) = scrape(&server).await;
    assert_delta(&m0, &m1, "re_server_cas_blobs_written_total", 1.0);
    assert_delta(&m0, &m1, "re_server_cas_written_bytes_total", 300_000.0);
    assert_delta(&m0, &m1, "re_server_cas_stored_bytes", 300_000.0);
    assert_delta(&m0, &m1, "re_server_cas_disk_bytes", 300_000.0);
    assert_delta(&m0, &m1, "re_server_cas_reads_total{result=\"hit\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_cas_reads_total{result=\"miss\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_grpc_requests_total{code=\"OK\",method=\"ByteStream/Write\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_grpc_requests_total{code=\"OK\",method=\"ByteStream/Read\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_grpc_requests_total{code=\"NOT_FOUND\",method=\"ByteStream/Read\"}", 1.0);
    let fm = "method=\"ContentAddressableStorage/FindMissingBlobs\"}";
    assert_delta(&m0, &m1, &format!("re_server_grpc_requests_total{{code=\"OK\",{fm}"), 1.0);
    assert_delta(&m0, &m1, &format!("re_server_grpc_requests_total{{code=\"INVALID_ARGUMENT\",{fm}"), 1.0);
    // Bytes on the wire: the data plus gRPC framing and the request fields.
    let received = delta(&m0, &m1, "re_server_grpc_received_bytes_total{method=\"ByteStream/Write\"}");
    assert!((300_000.0..301_000.0).contains(&received), "ByteStream/Write received {received}");
    let sent = delta(&m0, &m1, "re_server_grpc_sent_bytes_total{method=\"ByteStream/Read\"}");
    assert!((300_000.0..301_000.0).contains(&sent), "ByteStream/Read sent {sent}");
}

#[tokio::test]
async fn execution_counters_move_by_exactly_the_actions() {
    let (server, _token) = server_with(1, "");
    let ch = server.channel().await;
    let (_, m0) = scrape(&server).await;

    let mut ok = ActionSpec::sh("echo ok");
    ok.salt = "metrics-ok".into();
    let ok_digest = ok.upload(&ch, "").await;
    let (_, resp) = run(&ch, "", &ok_digest, &ExecOpts::default()).await.unwrap();
    assert_eq!(resp.result.as_ref().unwrap().exit_code, 0);
    let mut failing = ActionSpec::sh("exit 3");
    failing.salt = "metrics-fail".into();
    let (resp, _) = run_spec(&ch, "", &failing, &ExecOpts::default()).await.unwrap();
    assert_eq!(resp.result.as_ref().unwrap().exit_code, 3);
    let mut slow = ActionSpec::sh("sleep 5");
    slow.salt = "metrics-timeout".into();
    slow.timeout = Some(Duration::from_secs(1));
    let (resp, _) = run_spec(&ch, "", &slow, &ExecOpts::default()).await.unwrap();
    assert_eq!(code_of(&resp).0, tonic::Code::DeadlineExceeded as i32, "{:?}", resp.status);
    // The first action again: answered from the cache, no worker involved.
    let (_, resp) = run(&ch, "", &ok_digest, &ExecOpts::default()).await.unwrap();
    assert!(resp.cached_result);

    let (text, m1) = scrape(&server).await;
    assert_delta(&m0, &m1, "re_server_actions_started_total", 3.0);
    assert_delta(&m0, &m1, "re_server_actions_finished_total{outcome=\"succeeded\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_actions_finished_total{outcome=\"failed\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_actions_finished_total{outcome=\"timed_out\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_actions_retried_total", 0.0);
    assert_delta(&m0, &m1, "re_server_execute_cache_hits_total", 1.0);
    assert_delta(&m0, &m1, "re_server_action_cache_lookups_total{result=\"hit\"}", 1.0);
    assert_delta(&m0, &m1, "re_server_action_cache_lookups_total{result=\"miss\"}", 3.0);
    assert_delta(&m0, &m1, "re_server_action_queue_seconds_count", 3.0);
    assert_delta(&m0, &m1, "re_server_action_run_seconds_count", 3.0);
    assert_delta(&m0, &m1, "re_server_action_cpu_seconds_count", 3.0);
    assert_delta(&m0, &m1, "re_server_action_peak_memory_bytes_count", 3.0);
    assert_delta(&m0, &m1, "re_server_grpc_requests_total{code=\"OK\",method=\"Execution/Execute\"}", 4.0);
    let run_time = delta(&m0, &m1, "re_server_action_run_seconds_sum");
    assert!((1.0..4.0).contains(&run_time), "the timed-out action ran about 1 s: {run_time}");
    assert_eq!(m1["re_server_running_actions"], 0.0);
    assert_eq!(m1["re_server_queued_actions{priority=\"0\"}"], 0.0);
    assert_eq!(m1["re_server_workers{state=\"RUNNING\",type=\"host\"}"], 1.0);

    if common::require_tool("promtool") {
        promtool_accepts(&text);
    }
}

/// `promtool check metrics` reads the exposition from stdin; any lint
/// problem it prints fails the test.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n---\n{text}");
}
