//! SIGKILL in the middle of concurrent uploads and executions, three times
//! with different timing, on one data directory: after each restart every
//! blob the server acknowledged is there with its exact bytes, no partial
//! blob or temp file is visible, no action process of the killed server is
//! left, and its operations are reported lost (NOT_FOUND), never answered
//! with a wrong result.
mod common;
mod exec_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{digest, upload_resource, ServerConfig, TestServer};
use exec_support::*;
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::WriteRequest;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::execution_client::ExecutionClient;
use re_proto::reapi::{BatchReadBlobsRequest, Digest, FindMissingBlobsRequest, WaitExecutionRequest};
use sha2::Digest as _;
use tonic::transport::Channel;
use tonic::Code;

/// Blobs the server acknowledged, with their bytes.
type Acked = Arc<Mutex<Vec<(Digest, Bytes)>>>;

async fn upload_loop(ch: Channel, seed: u64, acked: Acked) {
    for i in 0.. {
        let size = [16 << 10, 300 << 10, 1 << 20, 2 << 20][(i % 4) as usize];
        let blob = Bytes::from(common::pseudo_random(size, seed * 1_000_000 + i));
        let d = digest(&blob);
        let msgs: Vec<WriteRequest> = blob
            .chunks(256 << 10)
            .enumerate()
            .map(|(n, chunk)| WriteRequest {
                resource_name: if n == 0 { upload_resource("", &d) } else { String::new() },
                write_offset: (n * (256 << 10)) as i64,
                finish_write: (n + 1) * (256 << 10) >= blob.len(),
                data: Bytes::copy_from_slice(chunk),
            })
            .collect();
        match ByteStreamClient::new(ch.clone()).write(tokio_stream::iter(msgs)).await {
            Ok(r) if r.get_ref().committed_size == d.size_bytes => acked.lock().unwrap().push((d, blob)),
            Ok(r) => panic!("committed {} of {}", r.get_ref().committed_size, d.size_bytes),
            Err(_) => return, // the server is gone
        }
    }
}

async fn batch_loop(ch: Channel, seed: u64, acked: Acked) {
    for i in 0.. {
        let blobs: Vec<(Digest, Bytes)> = (0..20)
            .map(|j| Bytes::from(common::pseudo_random(4096, seed * 1_000_000 + i * 100 + j)))
            .map(|b| (digest(&b), b))
            .collect();
        let req = common::batch_update_request("", &blobs);
        let Ok(resp) = ContentAddressableStorageClient::new(ch.clone()).batch_update_blobs(req).await else { return };
        for (r, blob) in resp.into_inner().responses.iter().zip(&blobs) {
            if r.status.as_ref().is_some_and(|s| s.code == 0) {
                acked.lock().unwrap().push(blob.clone());
            }
        }
    }
}

/// Starts long actions (one process each, marked by an odd sleep length);
/// records the operation names the server gave them.
async fn exec_loop(ch: Channel, marker: String, ops: Arc<Mutex<Vec<String>>>) {
    for i in 0.. {
        let mut spec = ActionSpec::sh(&format!("sleep {marker}"));
        spec.salt = format!("crash-{marker}-{i}");
        let d = spec.upload(&ch, "").await;
        let Ok(stream) = ExecutionClient::new(ch.clone()).execute(execute_request("", &d, &ExecOpts::default())).await
        else {
            return;
        };
        let mut stream = stream.into_inner();
        if let Ok(Some(op)) = stream.message().await {
            ops.lock().unwrap().push(op.name);
        }
        // Keep the stream open; the server dies with it.
        tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return vec![] };
    procs
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok().map(|c| (p.file_name(), c)))
        .filter(|(_, c)| String::from_utf8_lossy(c).contains(marker))
        .map(|(pid, c)| format!("{}: {}", pid.to_string_lossy(), String::from_utf8_lossy(&c).replace('\0', " ")))
        .collect()
}

fn temp_files(cas_root: &std::path::Path) -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir(cas_root.join("blobs")) else { return vec![] };
    dirs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_blob_and_leaves_no_action_behind() {
    let mut server = TestServer::start(&ServerConfig::filesystem().host_workers(2).toml());
    let acked: Acked = Arc::default();
    let mut all_ops = Vec::new();
    for (round, kill_after_ms) in [(0u64, 400u64), (1, 1100), (2, 2300)] {
        let ch = server.channel().await;
        let marker = format!("1777.{}{round}", std::process::id());
        let ops: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut load = Vec::new();
        for k in 0..3 {
            load.push(tokio::spawn(upload_loop(ch.clone(), round * 10 + k, acked.clone())));
        }
        load.push(tokio::spawn(batch_loop(ch.clone(), round * 10 + 5, acked.clone())));
        load.push(tokio::spawn(exec_loop(ch.clone(), marker.clone(), ops.clone())));
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.kill();
        for task in load {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        server.restart();
        let ch = server.channel().await;

        // Every acknowledged blob is present, whole and correct.
        let acked_now = acked.lock().unwrap().clone();
        assert!(!acked_now.is_empty(), "round {round}: the load acknowledged blobs before the kill");
        let mut cas = ContentAddressableStorageClient::new(ch.clone()).max_decoding_message_size(64 << 20);
        for group in acked_now.chunks(100) {
            let digests: Vec<Digest> = group.iter().map(|(d, _)| d.clone()).collect();
            let missing = cas
                .find_missing_blobs(FindMissingBlobsRequest { blob_digests: digests.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .missing_blob_digests;
            assert!(missing.is_empty(), "round {round}: acknowledged blobs lost: {missing:?}");
        }
        for (d, blob) in &acked_now {
            let resp = cas
                .batch_read_blobs(BatchReadBlobsRequest { digests: vec![d.clone()], ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            let data = &resp.responses[0].data;
            assert_eq!(hex::encode(sha2::Sha256::digest(data)), d.hash, "round {round}: blob {} corrupt", d.hash);
            assert_eq!(data, blob);
        }
        assert!(temp_files(&server.data_dir().join("cas")).is_empty(), "round {round}: partial uploads visible");

        // The killed server's actions are gone, and its operations are lost, not answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !processes_with(&marker).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(processes_with(&marker), Vec::<String>::new(), "round {round}: action processes left");
        let ops = ops.lock().unwrap().clone();
        for name in &ops {
            let r = ExecutionClient::new(ch.clone()).wait_execution(WaitExecutionRequest { name: name.clone() }).await;
            let code = match r {
                Ok(s) => s.into_inner().message().await.err().map(|e| e.code()),
                Err(e) => Some(e.code()),
            };
            assert_eq!(code, Some(Code::NotFound), "round {round}: operation {name}");
        }
        all_ops.extend(ops);
    }
    assert!(!all_ops.is_empty(), "actions were running when the server was killed");
}
