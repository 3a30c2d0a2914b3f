//! Real Bazel 4.2.3 builds and tests the project's workspace with every
//! action executed by re-server's host workers; outputs match a local build
//! byte for byte, and after `bazel clean` everything is a remote cache hit.
mod bazel_support;
mod common;

use bazel_support::{outputs, BazelWorkspace};
use common::ServerConfig;

#[test]
fn bazel_builds_and_tests_remotely() {
    if !common::require_tool("bazel") {
        return;
    }
    // Reference: a purely local build.
    let local = BazelWorkspace::new();
    let r = local.run("build", &["//..."]);
    assert!(r.success, "local build failed:\n{}", r.output);
    let expected = outputs(&local.bazel_bin());
    drop(local);
    assert!(expected.len() >= 8, "too few outputs to compare: {:?}", expected.keys());
    assert!(expected.keys().any(|k| k == "big.txt" || k.ends_with("big.txt")), "{:?}", expected.keys());

    let server = common::TestServer::start(&ServerConfig::filesystem().instance("main").host_workers(2).toml());
    let ws = BazelWorkspace::new();
    let exec = format!("--remote_executor={}", server.grpc_url());
    let remote = [
        exec.as_str(),
        "--remote_instance_name=main",
        "--spawn_strategy=remote",
        "--remote_local_fallback=false",
        "--remote_default_exec_properties=OSFamily=linux",
    ];

    let r = ws.run("build", &[&["//..."], &remote[..]].concat());
    assert!(r.success, "remote build failed:\n{}\nserver logs:\n{}", r.output, server.logs());
    let p = r.processes();
    assert!(p.get("remote").copied().unwrap_or(0) >= 10, "{}", r.summary_line());
    for local_kind in ["linux-sandbox", "local", "processwrapper-sandbox"] {
        assert!(!p.contains_key(local_kind), "something ran locally: {}", r.summary_line());
    }
    let got = outputs(&ws.bazel_bin());
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (path, data) in &expected {
        assert!(got[path] == *data, "{path} differs from the local build");
    }

    let r = ws.run("test", &[&["//..."], &remote[..]].concat());
    assert!(r.success, "remote test failed:\n{}", r.output);
    assert!(r.output.contains("2 tests pass"), "{}", r.output);
    assert!(!r.processes().contains_key("linux-sandbox"), "{}", r.summary_line());

    // After a clean, every action is a cache hit served by re-server.
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
