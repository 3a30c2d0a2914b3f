//! Whatever clients send, the server's resources stay bounded and it keeps
//! answering: abandoned uploads, a full disk, idle streams at SIGTERM, input
//! trees and actions beyond their limits, more connections than allowed.
mod common;
mod exec_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{digest, put_blobs, read_blob, upload_resource, ServerConfig, TestServer};
use exec_support::*;
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::{QueryWriteStatusRequest, WriteRequest};
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::FindMissingBlobsRequest;
use tonic::transport::Channel;
use tonic::Code;

fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Temp files of unfinished uploads under a filesystem CAS root.
fn temp_files(cas_root: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(cas_root.join("blobs")) else { return 0 };
    dirs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| f.file_name().to_string_lossy().starts_with(".tmp-"))
        .count()
}

fn write_req(resource: &str, data: &[u8], offset: i64, finish: bool) -> WriteRequest {
    WriteRequest {
        resource_name: resource.into(),
        write_offset: offset,
        finish_write: finish,
        data: Bytes::copy_from_slice(data),
    }
}

/// Starts an upload of one 4 KiB message and leaves: the stream ends
/// without finish_write (`reset` = false) or is reset mid-call.
async fn abandon_upload(ch: &Channel, resource: String, reset: bool) {
    let data = common::pseudo_random(4096, 1);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(write_req(&resource, &data, 0, false)).await.unwrap();
    let mut bs = ByteStreamClient::new(ch.clone());
    let call = tokio::spawn(async move { bs.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    if reset {
        tokio::time::sleep(Duration::from_millis(5)).await;
        call.abort();
        drop(tx);
    } else {
        drop(tx);
        let _ = call.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_stall_nothing_and_free_their_files_within_seconds() {
    let server = TestServer::start(&ServerConfig::filesystem().cache_only().cas("upload_resume_seconds = 4").toml());
    let ch = server.channel().await;
    // 300 uploads of a blob each, half ended early, half reset.
    let mut resources = Vec::new();
    for i in 0..300u64 {
        let blob = common::pseudo_random(65_536, 1000 + i);
        let resource = upload_resource("", &digest(&blob));
        resources.push(resource.clone());
        abandon_upload(&ch, resource, i % 2 == 1).await;
    }
    // Everything else still answers at once.
    let started = Instant::now();
    let big = common::pseudo_random(3 << 20, 7);
    let d = digest(&big);
    let mut bs = ByteStreamClient::new(ch.clone()).max_encoding_message_size(8 << 20);
    let msgs = vec![write_req(&upload_resource("", &d), &big, 0, true)];
    let write = tokio::time::timeout(Duration::from_secs(10), bs.write(tokio_stream::iter(msgs))).await;
    assert_eq!(write.expect("Write answered").unwrap().into_inner().committed_size, big.len() as i64);
    let small = Bytes::from_static(b"small blob");
    tokio::time::timeout(Duration::from_secs(10), put_blobs(&ch, "", vec![(digest(&small), small.clone())]))
        .await
        .expect("BatchUpdateBlobs answered");
    let read = tokio::time::timeout(Duration::from_secs(10), read_blob(&ch, "", &digest(&small))).await;
    assert_eq!(read.expect("BatchReadBlobs answered"), small);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // An upload that ended early can be resumed for a while (the last one
    // that ended without a reset: the first may have expired on a slow machine)...
    let status = ByteStreamClient::new(ch.clone())
        .query_write_status(QueryWriteStatusRequest { resource_name: resources[298].clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.committed_size, 4096, "the resume point is kept");
    // ...then every abandoned upload's temp file is gone.
    let cas_root = server.data_dir().join("cas");
    let deadline = Instant::now() + Duration::from_secs(15);
    while temp_files(&cas_root) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(temp_files(&cas_root), 0, "temp files of abandoned uploads are deleted within seconds");
    let status = ByteStreamClient::new(ch.clone())
        .query_write_status(QueryWriteStatusRequest { resource_name: resources[0].clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.committed_size, 0, "past the resume window the upload starts over");
}

/// A server whose CAS lives on a `size` tmpfs of its own (a private mount
/// namespace); the test reaches that filesystem through /proc/PID/root.
fn server_on_a_small_disk(size: &str) -> Option<(TestServer, PathBuf, tempfile::TempDir)> {
    if !running_as_root() || !common::require_tool("unshare") {
        eprintln!("SKIPPED: a private tmpfs needs root and unshare");
        return None;
    }
    let mnt = tempfile::tempdir().unwrap();
    let config = ServerConfig::filesystem().cache_only().cas(&format!("root_dir = \"{}\"", mnt.path().display()));
    let script = format!("mount -t tmpfs -o size={size} re-server-test {} && exec {{server}}", mnt.path().display());
    let server = TestServer::start_wrapped(
        &config.toml(),
        &[],
        &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script],
    );
    let inside = PathBuf::from(format!("/proc/{}/root{}", server.pid().unwrap(), mnt.path().display()));
    Some((server, inside, mnt))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_keeps_every_blob_and_recovers() {
    let Some((server, disk, _mnt)) = server_on_a_small_disk("24m") else { return };
    let ch = server.channel().await;
    // Room is made later by deleting this.
    std::fs::write(disk.join("filler"), vec![1u8; 8 << 20]).unwrap();
    let mut stored = Vec::new();
    let mut full = None;
    for i in 0..40u64 {
        let blob = common::pseudo_random(2 << 20, 500 + i);
        let d = digest(&blob);
        // Many messages: the disk fills in the middle of an upload.
        let resource = upload_resource("", &d);
        let msgs: Vec<WriteRequest> = blob
            .chunks(64 << 10)
            .enumerate()
            .map(|(n, c)| {
                let name = if n == 0 { resource.as_str() } else { "" };
                write_req(name, c, (n * (64 << 10)) as i64, (n + 1) * (64 << 10) >= blob.len())
            })
            .collect();
        let mut bs = ByteStreamClient::new(ch.clone());
        match bs.write(tokio_stream::iter(msgs)).await {
            Ok(_) => stored.push((d, blob)),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let full = full.expect("the disk filled up");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(stored.len() >= 3, "some blobs fit before the disk filled: {}", stored.len());
    // A batch that cannot fit is refused per blob, the same way.
    let batch_blob = Bytes::from(common::pseudo_random(3 << 20, 99));
    let resp = ContentAddressableStorageClient::new(ch.clone())
        .max_encoding_message_size(8 << 20)
        .batch_update_blobs(common::batch_update_request("", &[(digest(&batch_blob), batch_blob.clone())]))
        .await;
    if let Ok(resp) = resp {
        let code = resp.into_inner().responses[0].status.clone().unwrap().code;
        assert!(code == Code::ResourceExhausted as i32 || code == Code::InvalidArgument as i32, "batch: {code}");
    }
    // Every blob stored before is intact, and no partial file is left.
    for (d, blob) in &stored {
        assert_eq!(read_blob(&ch, "", d).await.to_vec(), *blob);
    }
    assert_eq!(temp_files(&disk), 0, "no partial upload is left on the full disk");
    // Space returns: uploads work again.
    std::fs::remove_file(disk.join("filler")).unwrap();
    let blob = common::pseudo_random(2 << 20, 1234);
    let d = digest(&blob);
    let mut bs = ByteStreamClient::new(ch.clone()).max_encoding_message_size(4 << 20);
    let msgs = vec![write_req(&upload_resource("", &d), &blob, 0, true)];
    bs.write(tokio_stream::iter(msgs)).await.expect("uploads work once there is room again");
    assert_eq!(read_blob(&ch, "", &d).await.to_vec(), blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_promptly_with_an_idle_stream_open() {
    let mut server = TestServer::start(&ServerConfig::filesystem().host_workers(1).shutdown_grace(2).toml());
    let ch = server.channel().await;
    // A write stream that sends one message and then nothing.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let blob = common::pseudo_random(1 << 20, 3);
    tx.send(write_req(&upload_resource("", &digest(&blob)), &blob[..4096], 0, false)).await.unwrap();
    let mut bs = ByteStreamClient::new(ch.clone());
    let idle = tokio::spawn(async move { bs.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = tokio::task::spawn_blocking(move || {
        let took = server.terminate(Duration::from_secs(30));
        (took, server)
    })
    .await
    .unwrap();
    let took = took.0.expect("the server exits on SIGTERM");
    assert!(took < Duration::from_secs(12), "SIGTERM took {took:?}");
    drop(tx);
    let _ = idle.await;
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_actions_finish_then_stops_the_rest() {
    let mut server = TestServer::start(&ServerConfig::filesystem().host_workers(2).shutdown_grace(3).toml());
    let ch = server.channel().await;
    let pids = tempfile::tempdir().unwrap();
    let short = ActionSpec::sh(&format!("echo $$ > {}/short; sleep 1; exit 3", pids.path().display()));
    let long = ActionSpec::sh(&format!("echo $$ > {}/long; sleep 300", pids.path().display()));
    let (short, long) = (short.upload(&ch, "").await, long.upload(&ch, "").await);
    let (c1, c2) = (ch.clone(), ch.clone());
    // Only the Execute streams: once stopping, the server takes no new call.
    let short_run = tokio::spawn(async move { run(&c1, "", &short, &ExecOpts::default()).await });
    let long_run = tokio::spawn(async move { run(&c2, "", &long, &ExecOpts::default()).await });
    let long_pid = wait_for(&pids.path().join("long")).await;
    wait_for(&pids.path().join("short")).await;
    let exited = tokio::task::spawn_blocking(move || {
        let took = server.terminate(Duration::from_secs(30));
        (took, server)
    });
    let (_, resp) = short_run.await.unwrap().expect("the short action's client gets its answer");
    assert_eq!(resp.result.unwrap().exit_code, 3, "it ran to its end");
    let (_, resp) = long_run.await.unwrap().expect("the long action's client gets an answer");
    let status = resp.status.unwrap();
    assert_eq!(status.code, Code::Unavailable as i32, "{status:?}");
    assert!(status.message.contains("shut down"), "{}", status.message);
    let (took, _server) = exited.await.unwrap();
    let took = took.expect("the server exits");
    assert!(took < Duration::from_secs(12), "SIGTERM took {took:?}");
    assert!(!pid_alive(long_pid), "the long action's process is gone");
}

async fn wait_for(p: &Path) -> i32 {
    for _ in 0..300 {
        if let Some(pid) = std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()) {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", p.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_trees_and_actions_beyond_their_limits_are_resource_exhausted() {
    let pool = "max_input_entries = 5\nmax_action_disk_bytes = 2097152";
    let server = TestServer::start(&ServerConfig::filesystem().pool(pool).host_workers(1).toml());
    let ch = server.channel().await;
    let mut wide = ActionSpec::sh("true");
    wide.input_files = (0..6).map(|i| (format!("f{i}"), vec![i as u8; 10], false)).collect();
    let err = run_spec(&ch, "", &wide, &ExecOpts::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("more than 5 entries"), "{}", err.message());
    let mut heavy = ActionSpec::sh("true");
    heavy.input_files = vec![("big".into(), common::pseudo_random(3 << 20, 2), false)];
    let err = run_spec(&ch, "", &heavy, &ExecOpts::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_action_disk_bytes"), "{}", err.message());
    // An action that writes past the limit is stopped while it runs.
    let started = Instant::now();
    let filler = ActionSpec::sh("dd if=/dev/zero of=big bs=1048576 count=32 2>/dev/null; sleep 60");
    let (resp, _) = run_spec(&ch, "", &filler, &ExecOpts::default()).await.unwrap();
    let status = resp.status.unwrap();
    assert_eq!(status.code, Code::ResourceExhausted as i32, "{status:?}");
    assert!(status.message.contains("max_action_disk_bytes"), "{}", status.message);
    assert!(started.elapsed() < Duration::from_secs(20), "stopped within seconds, not after the sleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_their_turn() {
    let config = ServerConfig::memory().cache_only().toml().replace("[server]", "[server]\nmax_connections = 2");
    let server = TestServer::start(&config);
    let find = |ch: Channel| async move {
        ContentAddressableStorageClient::new(ch)
            .find_missing_blobs(FindMissingBlobsRequest { blob_digests: vec![digest(b"x")], ..Default::default() })
            .await
    };
    let first = server.channel().await;
    let second = server.channel().await;
    find(first.clone()).await.unwrap();
    find(second.clone()).await.unwrap();
    let third = tonic::transport::Endpoint::from_shared(server.endpoint()).unwrap().connect_lazy();
    let waiting = tokio::spawn(find(third));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "a third connection is not served while two are open");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    answered.expect("served once a connection closed").unwrap().unwrap();
    drop(second);
}
