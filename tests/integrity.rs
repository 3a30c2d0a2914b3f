//! No action, and nothing a client sends, can change what the CAS serves:
//! actions that rewrite, truncate, chmod or delete their inputs; input trees
//! that name a file twice; a blob file changed on disk behind the server.
mod common;
mod exec_support;

use std::time::Duration;

use bytes::Bytes;
use common::{digest, put_blobs, read_blob, read_resource, ServerConfig, TestServer};
use exec_support::*;
use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use re_proto::google::bytestream::ReadRequest;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::{Digest, Directory, DirectoryNode, FileNode, FindMissingBlobsRequest};
use tonic::transport::Channel;
use tonic::Code;

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// What every changing action does to its inputs, one per file.
/// Each step in a subshell: where one is refused, the others still run.
const TAMPER: &str = "(chmod u+w in1 in2 in4) 2>/dev/null; \
    (printf 'EVIL' | dd of=in1 bs=1 seek=100 conv=notrunc) 2>/dev/null; \
    (: > in2) 2>/dev/null; \
    (rm -f in3) 2>/dev/null; \
    (chmod 777 in4; echo more >> in4) 2>/dev/null; \
    echo done";

fn inputs() -> Vec<(String, Vec<u8>, bool)> {
    (1..=4).map(|i| (format!("in{i}"), common::pseudo_random(4096, 40 + i), false)).collect()
}

async fn bytestream_read(ch: &Channel, d: &Digest) -> Result<Vec<u8>, tonic::Status> {
    let mut bs = ByteStreamClient::new(ch.clone());
    let req = ReadRequest { resource_name: read_resource("", d), read_offset: 0, read_limit: 0 };
    let mut stream = bs.read(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

/// Runs the tampering action twice and checks the CAS still serves every
/// input as it was uploaded, by ByteStream and by BatchReadBlobs.
async fn tampering_changes_nothing(server: &TestServer) {
    let ch = server.channel().await;
    let files = inputs();
    for round in 0..2 {
        let mut spec = ActionSpec::sh(TAMPER);
        spec.input_files = files.clone();
        spec.salt = format!("tamper-{round}");
        let (resp, out) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
        assert_eq!(resp.status.unwrap_or_default().code, 0);
        assert_eq!(out.trim(), "done");
        for (name, data, _) in &files {
            let d = digest(data);
            assert_eq!(bytestream_read(&ch, &d).await.unwrap(), *data, "{name} by ByteStream, round {round}");
            assert_eq!(read_blob(&ch, "", &d).await, Bytes::from(data.clone()), "{name} by BatchRead, round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_changing_its_inputs_never_changes_what_the_cas_serves() {
    // The embedded default's shape: filesystem CAS, host workers running as
    // the server's own user, link_inputs = true.
    let server = TestServer::start(&ServerConfig::filesystem().host_workers(2).toml());
    tampering_changes_nothing(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_running_as_another_user_gets_links_it_cannot_change() {
    if !running_as_root() {
        eprintln!("SKIPPED: run_as_user needs the tests to run as root");
        return;
    }
    let work = tempfile::Builder::new().prefix("re-server-work").tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let workers = format!(
        "[[execution.pool.workers]]\ntype = \"host\"\ncount = 1\nrun_as_user = \"nobody\"\nwork_dir = \"{}\"\n",
        work.path().display()
    );
    // Small blobs as files (not packed), so inputs can be links.
    let config = ServerConfig::filesystem().cas("small_blob_max_bytes = 0").workers(&workers);
    let server = TestServer::start(&config.toml());
    tampering_changes_nothing(&server).await;
    // The inputs were links (shared inodes), refused to the action.
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh("stat -c %h in1; chmod u+w in1 2>&1 || echo refused");
    spec.input_files = inputs();
    let (_, out) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
    let links: u32 = out.lines().next().unwrap().trim().parse().unwrap();
    assert!(links >= 2, "in1 is a hard link of the CAS file: {out}");
    assert!(out.contains("refused"), "{out}");
}

fn file(name: &str, d: &Digest) -> FileNode {
    FileNode { name: name.into(), digest: Some(d.clone()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_trees_naming_a_file_twice_or_out_of_order_are_refused_and_the_cas_keeps_the_blob() {
    let server = TestServer::start(&ServerConfig::filesystem().host_workers(1).toml());
    let ch = server.channel().await;
    let data = common::pseudo_random(4096, 7);
    let d = digest(&data);
    put_blobs(&ch, "", vec![(d.clone(), Bytes::from(data.clone()))]).await;
    let sub_digest = digest(&prost::Message::encode_to_vec(&Directory::default()));
    let dir_node = |name: &str| DirectoryNode { name: name.into(), digest: Some(sub_digest.clone()) };
    let cases = [
        ("appears twice", Directory { files: vec![file("a", &d), file("a", &d)], ..Default::default() }),
        ("not sorted", Directory { files: vec![file("b", &d), file("a", &d)], ..Default::default() }),
        (
            "named twice",
            Directory { files: vec![file("x", &d)], directories: vec![dir_node("x")], ..Default::default() },
        ),
        ("'..'", Directory { files: vec![file("..", &d)], ..Default::default() }),
    ];
    for (i, (why, root)) in cases.into_iter().enumerate() {
        let mut spec = ActionSpec::sh("cat a > /dev/null; echo ran");
        spec.root_override = Some(root);
        spec.salt = format!("bad-tree-{i}");
        let action_digest = spec.upload(&ch, "").await;
        let err = run(&ch, "", &action_digest, &ExecOpts::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert!(err.message().contains(why), "{why}: {}", err.message());
        assert!(err.message().contains("input directory"), "the message names the directory: {}", err.message());
        // The blob is untouched: full size, same bytes, still present.
        assert_eq!(read_blob(&ch, "", &d).await, Bytes::from(data.clone()), "{why}");
    }
}

/// Each blob changed behind the server's back reads as NOT_FOUND (never the
/// wrong bytes, never INTERNAL) and is reported missing after, so clients
/// upload it again.
async fn assert_dropped_and_missing(ch: &Channel, blobs: &[(Digest, Bytes)]) {
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    for (i, (d, _)) in blobs.iter().enumerate() {
        let err = bytestream_read(ch, d).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "blob {i}: never the wrong bytes, never INTERNAL: {err:?}");
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest { blob_digests: vec![d.clone()], ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        assert_eq!(missing, vec![d.clone()], "blob {i} is reported missing, so clients upload it again");
    }
}

/// The one blob file under a filesystem CAS's root for `d`.
fn blob_file(server: &TestServer, d: &Digest) -> std::path::PathBuf {
    server.data_dir().join("cas/blobs").join(&d.hash[..2]).join(format!("{}-{}", d.hash, d.size_bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_file_changed_on_disk_is_dropped_not_served() {
    // Every blob a file of its own (packed ones: the next test).
    let server = TestServer::start(&ServerConfig::filesystem().cas("small_blob_max_bytes = 0").cache_only().toml());
    let ch = server.channel().await;
    let small = common::pseudo_random(4096, 1);
    let large = common::pseudo_random(600 << 10, 2); // served from a mapping
    let truncated = common::pseudo_random(4096, 3);
    let blobs: Vec<(Digest, Bytes)> =
        [&small, &large, &truncated].iter().map(|b| (digest(b), Bytes::from((*b).clone()))).collect();
    put_blobs(&ch, "", blobs.clone()).await;
    // Behind the server's back: rewrite two in place, cut one short.
    for (d, _) in &blobs[..2] {
        let path = blob_file(&server, d);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"EVIL").unwrap();
        // A later modification time, as any write makes.
        std::thread::sleep(Duration::from_millis(10));
        f.set_modified(std::time::SystemTime::now()).unwrap();
    }
    let path = blob_file(&server, &blobs[2].0);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    assert_dropped_and_missing(&ch, &blobs).await;
    // Uploaded again, each is served as it should be.
    put_blobs(&ch, "", blobs.clone()).await;
    for (d, data) in &blobs {
        assert_eq!(bytestream_read(&ch, d).await.unwrap(), data.to_vec());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pack_is_dropped_not_served() {
    let server = TestServer::start(&ServerConfig::filesystem().cache_only().toml());
    let ch = server.channel().await;
    let blobs: Vec<(Digest, Bytes)> =
        (0..3).map(|i| common::pseudo_random(4096, 10 + i)).map(|b| (digest(&b), Bytes::from(b))).collect();
    put_blobs(&ch, "", blobs.clone()).await;
    // Behind the server's back: one byte of every packed blob flipped.
    let packs = server.data_dir().join("cas/packs");
    let mut flipped = 0;
    for pack in std::fs::read_dir(&packs).unwrap().flatten() {
        let mut bytes = std::fs::read(pack.path()).unwrap();
        for at in (100..bytes.len()).step_by(4096) {
            bytes[at] ^= 0x5a;
            flipped += 1;
        }
        std::fs::set_permissions(pack.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::write(pack.path(), &bytes).unwrap();
    }
    assert_eq!(flipped, 3, "the three blobs are packed");
    assert_dropped_and_missing(&ch, &blobs).await;
    put_blobs(&ch, "", blobs.clone()).await;
    for (d, data) in &blobs {
        assert_eq!(read_blob(&ch, "", d).await, *data);
    }
}
