//! Real Bazel 4.2.3 uses re-server as its remote cache: a cold build and test
//! fill the cache; after `bazel clean` every action is a remote cache hit with
//! byte-identical outputs, and that still holds after the server restarts on
//! the same data directory (filesystem backend).
mod bazel_support;
mod common;

use std::collections::BTreeMap;

use bazel_support::{outputs, BazelRun, BazelWorkspace};
use common::ServerConfig;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::FindMissingBlobsRequest;

/// Kinds of spawn that mean "ran on this machine".
const LOCAL_KINDS: [&str; 4] = ["linux-sandbox", "local", "processwrapper-sandbox", "worker"];

fn cache_flags(server: &common::TestServer) -> Vec<String> {
    vec![
        format!("--remote_cache={}", server.grpc_url()),
        "--remote_instance_name=main".into(),
        "--remote_timeout=120".into(),
    ]
}

fn run(ws: &BazelWorkspace, cmd: &str, flags: &[String], server: &common::TestServer) -> BazelRun {
    let mut args: Vec<&str> = vec!["//..."];
    args.extend(flags.iter().map(String::as_str));
    let r = ws.run(cmd, &args);
    eprintln!("bazel {cmd}: {}", r.summary_line());
    assert!(r.success, "bazel {cmd} failed:\n{}\nserver logs (tail):\n{}", r.output, tail(&server.logs(), 60));
    r
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every non-internal process was served from the remote cache.
fn assert_all_cache_hits(r: &BazelRun, min_hits: u32, what: &str) -> u32 {
    let p = r.processes();
    let hits = p.get("remote cache hit").copied().unwrap_or(0);
    assert!(hits >= min_hits, "{what}: too few remote cache hits: {}", r.summary_line());
    let others: BTreeMap<&String, &u32> =
        p.iter().filter(|(k, n)| k.as_str() != "remote cache hit" && k.as_str() != "internal" && **n > 0).collect();
    assert!(others.is_empty(), "{what}: not everything came from the cache: {}", r.summary_line());
    hits
}

#[test]
fn bazel_uses_re_server_as_a_remote_cache() {
    if !common::require_tool("bazel") {
        return;
    }
    let mut server = common::TestServer::start(&ServerConfig::filesystem().instance("main").cache_only().toml());
    let ws = BazelWorkspace::new();

    // Cold: everything runs locally and is uploaded.
    let r = run(&ws, "build", &cache_flags(&server), &server);
    let p = r.processes();
    let ran_locally: u32 = LOCAL_KINDS.iter().filter_map(|k| p.get(*k)).sum();
    assert!(ran_locally >= 10, "cold build should run actions locally: {}", r.summary_line());
    assert_eq!(p.get("remote cache hit"), None, "cold cache cannot hit: {}", r.summary_line());
    let bin = ws.bazel_bin();
    let expected = outputs(&bin);
    let file = |name: &str| expected.iter().find(|(k, _)| k.ends_with(name)).map(|(_, v)| v.clone());
    let big = file("big.txt").expect("big.txt built");
    let small = file("a.txt").expect("a.txt built");
    assert_eq!(big.len(), 41_943_040, "the ~40 MB output");
    let r = run(&ws, "test", &cache_flags(&server), &server);
    assert!(r.output.contains("2 tests pass"), "{}", r.output);

    // The uploads really are in re-server's CAS (the 40 MB one went through ByteStream).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let missing = |server: &common::TestServer| {
        let digests = vec![common::digest(&big), common::digest(&small)];
        rt.block_on(async {
            let mut cas = ContentAddressableStorageClient::new(server.channel().await);
            cas.find_missing_blobs(FindMissingBlobsRequest {
                instance_name: "main".into(),
                blob_digests: digests,
                digest_function: 0,
            })
            .await
            .expect("FindMissingBlobs")
            .into_inner()
            .missing_blob_digests
        })
    };
    assert!(missing(&server).is_empty(), "Bazel's outputs are not in the CAS");

    // After a clean, everything comes from the cache, byte for byte.
    assert!(ws.run("clean", &[]).success);
    let r = run(&ws, "build", &cache_flags(&server), &server);
    let hits = assert_all_cache_hits(&r, 10, "build after clean");
    assert!(outputs(&bin) == expected, "outputs downloaded from the cache differ from the built ones");
    let r = run(&ws, "test", &cache_flags(&server), &server);
    assert_all_cache_hits(&r, 2, "test after clean");
    assert!(r.output.contains("2 tests pass"), "{}", r.output);

    // Same data directory, new process (and port): still all hits.
    server.restart();
    assert!(missing(&server).is_empty(), "blobs lost across the restart");
    assert!(ws.run("clean", &[]).success);
    let r = run(&ws, "build", &cache_flags(&server), &server);
    assert_eq!(assert_all_cache_hits(&r, 10, "build after restart"), hits, "{}", r.summary_line());
    assert!(outputs(&bin) == expected, "outputs after the restart differ");
    let r = run(&ws, "test", &cache_flags(&server), &server);
    assert_all_cache_hits(&r, 2, "test after restart");
    // `ws` drops here: `bazel shutdown` and the output root is deleted, also on panic.
}
