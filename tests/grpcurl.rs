//! The server as an operator sees it through the real `grpcurl`: health
//! checks, reflection (`list`, `describe`) and JSON calls.
mod common;

use std::process::{Command, Stdio};

use common::{ServerConfig, TestServer};

const STORAGE_SERVICES: [&str; 4] = [
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.ActionCache",
    "build.bazel.remote.execution.v2.Capabilities",
    "google.bytestream.ByteStream",
];

/// Storage only, under the instance name "main".
fn config() -> String {
    ServerConfig::memory().instance("main").cache_only().toml()
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `grpcurl -plaintext [args…] 127.0.0.1:PORT [call…]`, bounded to 60 s.
fn grpcurl(server: &TestServer, opts: &[&str], call: &[&str]) -> Out {
    let out = Command::new("timeout")
        .args(["60", "grpcurl", "-plaintext"])
        .args(opts)
        .arg(&server.addr)
        .args(call)
        .stdin(Stdio::null())
        .output()
        .expect("run grpcurl");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn serving(out: &Out) -> bool {
    out.ok && out.stdout.contains("\"status\": \"SERVING\"")
}

#[test]
fn health_checks_report_serving() {
    if !common::require_tool("grpcurl") {
        return;
    }
    let server = TestServer::start(&config());
    assert!(server.addr.starts_with("127.0.0.1:"), "{}", server.addr);
    let all = grpcurl(&server, &[], &["grpc.health.v1.Health/Check"]);
    assert!(serving(&all), "overall health: {} {}", all.stdout, all.stderr);
    for service in STORAGE_SERVICES {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let out = grpcurl(&server, &["-d", &body], &["grpc.health.v1.Health/Check"]);
        assert!(serving(&out), "{service}: {} {}", out.stdout, out.stderr);
    }
    // Execution is off in this config, so it has no health entry.
    let out = grpcurl(
        &server,
        &["-d", r#"{"service":"build.bazel.remote.execution.v2.Execution"}"#],
        &["grpc.health.v1.Health/Check"],
    );
    assert!(!out.ok && out.stderr.contains("NotFound"), "{} {}", out.stdout, out.stderr);
}

#[test]
fn reflection_lists_and_describes_the_services() {
    if !common::require_tool("grpcurl") {
        return;
    }
    let server = TestServer::start(&config());
    let out = grpcurl(&server, &[], &["list"]);
    assert!(out.ok, "list: {}", out.stderr);
    let listed: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    for service in STORAGE_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(listed.contains(service), "{service} not in {listed:?}");
    }
    let out = grpcurl(&server, &[], &["describe", "build.bazel.remote.execution.v2.ContentAddressableStorage"]);
    assert!(out.ok, "describe: {}", out.stderr);
    for rpc in ["rpc FindMissingBlobs", "rpc BatchUpdateBlobs", "rpc BatchReadBlobs", "rpc GetTree"] {
        assert!(out.stdout.contains(rpc), "{rpc} missing from:\n{}", out.stdout);
    }
    let out = grpcurl(&server, &[], &["describe", "build.bazel.remote.execution.v2.Digest"]);
    assert!(out.ok && out.stdout.contains("size_bytes"), "describe Digest: {} {}", out.stdout, out.stderr);
    let out = grpcurl(&server, &[], &["list", "google.bytestream.ByteStream"]);
    assert!(out.ok, "{}", out.stderr);
    for m in ["Read", "Write", "QueryWriteStatus"] {
        assert!(out.stdout.contains(&format!("google.bytestream.ByteStream.{m}")), "{}", out.stdout);
    }
}

#[test]
fn json_calls_through_grpcurl() {
    if !common::require_tool("grpcurl") {
        return;
    }
    let server = TestServer::start(&config());
    let caps = grpcurl(
        &server,
        &["-d", r#"{"instance_name":"main"}"#],
        &["build.bazel.remote.execution.v2.Capabilities/GetCapabilities"],
    );
    assert!(caps.ok, "GetCapabilities: {}", caps.stderr);
    assert!(caps.stdout.contains("\"SHA256\""), "{}", caps.stdout);
    assert!(caps.stdout.contains("\"ZSTD\""), "{}", caps.stdout);
    assert!(caps.stdout.contains("\"updateEnabled\": true"), "{}", caps.stdout);
    assert!(caps.stdout.contains("\"highApiVersion\""), "{}", caps.stdout);

    // Upload a blob (bytes are base64 in JSON) and ask for it and another.
    let data = b"hello from grpcurl";
    let d = common::digest(data);
    let absent = common::digest(b"not uploaded");
    let upload = format!(
        r#"{{"instance_name":"main","requests":[{{"digest":{{"hash":"{}","size_bytes":"{}"}},"data":"{}"}}]}}"#,
        d.hash,
        d.size_bytes,
        base64(data)
    );
    let out = grpcurl(
        &server,
        &["-d", &upload],
        &["build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs"],
    );
    assert!(out.ok, "BatchUpdateBlobs: {} {}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("\"code\""), "a non-OK per-blob status: {}", out.stdout);
    let find = format!(
        r#"{{"instance_name":"main","blob_digests":[{{"hash":"{}","size_bytes":"{}"}},{{"hash":"{}","size_bytes":"{}"}}]}}"#,
        d.hash, d.size_bytes, absent.hash, absent.size_bytes
    );
    let out = grpcurl(
        &server,
        &["-d", &find],
        &["build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"],
    );
    assert!(out.ok, "FindMissingBlobs: {}", out.stderr);
    assert!(out.stdout.contains(&absent.hash), "{}", out.stdout);
    assert!(!out.stdout.contains(&d.hash), "uploaded blob reported missing: {}", out.stdout);

    let read =
        format!(r#"{{"instance_name":"main","digests":[{{"hash":"{}","size_bytes":"{}"}}]}}"#, d.hash, d.size_bytes);
    let out =
        grpcurl(&server, &["-d", &read], &["build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs"]);
    assert!(out.ok, "BatchReadBlobs: {}", out.stderr);
    assert!(out.stdout.contains(&format!("\"{}\"", base64(data))), "{}", out.stdout);

    // A wrong instance name comes back as InvalidArgument naming both.
    let out = grpcurl(
        &server,
        &["-d", r#"{"instance_name":"other"}"#],
        &["build.bazel.remote.execution.v2.Capabilities/GetCapabilities"],
    );
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("InvalidArgument") && out.stderr.contains("'other'") && out.stderr.contains("'main'"),
        "{}",
        out.stderr
    );
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
