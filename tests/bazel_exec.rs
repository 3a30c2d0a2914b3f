//! Real Bazel 4.2.3 builds and tests the project's workspace with every
//! action executed by re-server's host workers; outputs match a local build
//! byte for byte, and after `bazel clean` everything is a remote cache hit.
mod bazel_support;
mod common;

use std::collections::BTreeMap;

use bazel_support::{outputs, BazelWorkspace};
use common::ServerConfig;

/// The outputs of a purely local build of the workspace.
fn local_reference() -> BTreeMap<String, Vec<u8>> {
    let local = BazelWorkspace::new();
    let r = local.run("build", &["//..."]);
    assert!(r.success, "local build failed:\n{}", r.output);
    let expected = outputs(&local.bazel_bin());
    assert!(expected.len() >= 8, "too few outputs to compare: {:?}", expected.keys());
    assert!(expected.keys().any(|k| k == "big.txt" || k.ends_with("big.txt")), "{:?}", expected.keys());
    expected
}

fn remote_flags(server: &common::TestServer) -> Vec<String> {
    [
        format!("--remote_executor={}", server.grpc_url()),
        "--remote_instance_name=main".into(),
        "--spawn_strategy=remote".into(),
        "--remote_local_fallback=false".into(),
        "--remote_default_exec_properties=OSFamily=linux".into(),
    ]
    .into()
}

/// Builds and tests `//...` with every action on `server`; the outputs
/// must equal `expected` byte for byte.
fn build_and_test_remotely(server: &common::TestServer, expected: &BTreeMap<String, Vec<u8>>) -> BazelWorkspace {
    let ws = BazelWorkspace::new();
    let flags = remote_flags(server);
    let remote: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = ws.run("build", &[&["//..."], &remote[..]].concat());
    assert!(r.success, "remote build failed:\n{}\nserver logs:\n{}", r.output, server.logs());
    let p = r.processes();
    assert!(p.get("remote").copied().unwrap_or(0) >= 10, "{}", r.summary_line());
    for local_kind in ["linux-sandbox", "local", "processwrapper-sandbox"] {
        assert!(!p.contains_key(local_kind), "something ran locally: {}", r.summary_line());
    }
    let got = outputs(&ws.bazel_bin());
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (path, data) in expected {
        assert!(got[path] == *data, "{path} differs from the local build");
    }
    let r = ws.run("test", &[&["//..."], &remote[..]].concat());
    assert!(r.success, "remote test failed:\n{}", r.output);
    assert!(r.output.contains("2 tests pass"), "{}", r.output);
    assert!(!r.processes().contains_key("linux-sandbox"), "{}", r.summary_line());
    ws
}

#[test]
fn bazel_builds_and_tests_remotely() {
    if !common::require_tool("bazel") {
        return;
    }
    let expected = local_reference();
    let server = common::TestServer::start(&ServerConfig::filesystem().instance("main").host_workers(2).toml());
    let ws = build_and_test_remotely(&server, &expected);

    // After a clean, every action is a cache hit served by re-server.
    let flags = remote_flags(&server);
    let remote: Vec<&str> = flags.iter().map(String::as_str).collect();
    assert!(ws.run("clean", &[]).success);
    let r = ws.run("test", &[&["//..."], &remote[..]].concat());
    assert!(r.success, "{}", r.output);
    let p = r.processes();
    assert!(p.get("remote cache hit").copied().unwrap_or(0) >= 10, "{}", r.summary_line());
    assert_eq!(
        p.keys().filter(|k| *k != "remote cache hit" && *k != "internal").count(),
        0,
        "not all from the cache: {}",
        r.summary_line()
    );
}

#[test]
fn bazel_builds_and_tests_with_every_action_in_the_sandbox() {
    if !common::require_tool("bazel") || !common::require_tool("bwrap") {
        return;
    }
    let expected = local_reference();
    let workers = "[[execution.pool.workers]]\ntype = \"host\"\ncount = 2\nuse_chroot = true";
    let server = common::TestServer::start(&ServerConfig::filesystem().instance("main").workers(workers).toml());
    build_and_test_remotely(&server, &expected);
    assert!(!server.logs().contains("cannot start"), "{}", server.logs());
}

/// Uploads `total` bytes of new blobs, pushing older ones out of the CAS.
fn flood_the_cas(server: &common::TestServer, total: usize) {
    use re_proto::google::bytestream::byte_stream_client::ByteStreamClient;
    use re_proto::google::bytestream::WriteRequest;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = server.channel().await;
        for i in 0..(total / (8 << 20)) as u64 {
            let blob = common::pseudo_random(8 << 20, 0xf100d + i);
            let d = common::digest(&blob);
            let msgs: Vec<WriteRequest> = blob
                .chunks(1 << 20)
                .enumerate()
                .map(|(n, c)| WriteRequest {
                    resource_name: if n == 0 { common::upload_resource("main", &d) } else { String::new() },
                    write_offset: (n << 20) as i64,
                    finish_write: (n + 1) << 20 >= blob.len(),
                    data: bytes::Bytes::copy_from_slice(c),
                })
                .collect();
            ByteStreamClient::new(ch.clone()).write(tokio_stream::iter(msgs)).await.expect("filler upload");
        }
    });
}

#[test]
fn bazel_recovers_when_the_cas_evicted_everything_it_had_built() {
    if !common::require_tool("bazel") {
        return;
    }
    // A CAS of 128 MiB: the workspace's outputs (one of 40 MiB) fit, but not
    // beside 256 MiB of other blobs.
    let config = ServerConfig::filesystem().instance("main").cas("max_size_bytes = 134217728").host_workers(2);
    let server = common::TestServer::start(&config.toml());
    let ws = BazelWorkspace::new();
    let flags = remote_flags(&server);
    let remote: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = ws.run("build", &[&["//..."], &remote[..]].concat());
    assert!(r.success, "first build failed:\n{}", r.output);
    let built = outputs(&ws.bazel_bin());

    flood_the_cas(&server, 256 << 20);
    // Results whose outputs are gone are misses now; Bazel uploads its
    // inputs again, the actions run again, and the build is the same.
    assert!(ws.run("clean", &[]).success);
    let r = ws.run("build", &[&["//..."], &remote[..]].concat());
    assert!(r.success, "build after eviction failed:\n{}\nserver logs:\n{}", r.output, server.logs());
    let p = r.processes();
    assert!(p.get("remote").copied().unwrap_or(0) >= 10, "actions ran again: {}", r.summary_line());
    assert_eq!(outputs(&ws.bazel_bin()), built, "the rebuilt outputs are the same");
}

#[test]
fn bazel_builds_with_its_token_and_is_refused_without_it() {
    if !common::require_tool("bazel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let token = "bazel-ci-0123456789abcdef";
    std::fs::write(&tokens, format!("{token} cache-read,cache-write,execute\n")).unwrap();
    let config = ServerConfig::filesystem()
        .instance("main")
        .server(&format!("auth = {{ tokens_file = \"{}\" }}", tokens.display()))
        .host_workers(2);
    let server = common::TestServer::start(&config.toml());
    let flags = remote_flags(&server);
    let remote: Vec<&str> = flags.iter().map(String::as_str).collect();

    let ws = BazelWorkspace::new();
    let r = ws.run("build", &[&["//..."], &remote[..]].concat());
    assert!(!r.success, "built without a token:\n{}", r.output);
    assert!(r.output.contains("UNAUTHENTICATED"), "{}", r.output);

    let header = format!("--remote_header=authorization=Bearer {token}");
    let r = ws.run("build", &[&["//..."], &remote[..], &[header.as_str()]].concat());
    assert!(r.success, "remote build with the token failed:\n{}\nserver logs:\n{}", r.output, server.logs());
    assert!(r.processes().get("remote").copied().unwrap_or(0) >= 10, "{}", r.summary_line());
    assert!(!server.logs().contains(token), "the token was logged");
}
