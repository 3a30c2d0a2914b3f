//! End-to-end tests of `type = "docker"` workers against the real re-server
//! binary and a real Docker engine, with the offline test image built by
//! `.ci/setup-env.sh` (`re-server-test/busybox:latest`). Skipped loudly when
//! docker is missing (a failure under CI=true). This file holds what the
//! themed modules share: the readiness check, docker calls and action helpers.
#[path = "../common/mod.rs"]
mod common;
#[path = "../exec_support/mod.rs"]
mod exec_support;

mod engines;
mod lifecycle;
mod limits;
mod metadata;
mod properties;
mod recovery;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command as Cmd;
use std::time::{Duration, Instant};

use common::{read_blob, ServerConfig, TestServer};
use exec_support::*;
use re_proto::reapi::ExecuteResponse;

const IMAGE: &str = "re-server-test/busybox:latest";

/// True when docker and the test image are there (skips loudly otherwise).
fn docker_ready() -> bool {
    if !common::require_tool("docker") {
        return false;
    }
    let ok = Cmd::new("docker").args(["image", "inspect", IMAGE]).output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("docker image {IMAGE} missing and CI=true: run .ci/setup-env.sh");
        }
        eprintln!("\nSKIPPED: docker image {IMAGE} missing (run .ci/setup-env.sh)\n");
    }
    ok
}

fn docker(args: &[&str]) -> String {
    let out = Cmd::new("docker").args(args).output().expect("run docker");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Containers (any engine given by `host`) created by the server whose data dir is `data`.
fn containers_of(host: Option<&str>, data: &Path) -> Vec<String> {
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let mut args = vec![];
    if let Some(h) = host {
        args.extend(["-H", h]);
    }
    args.extend(["ps", "-a", "--filter", "label=re-server=1", "--format", "{{.ID}} {{.Label \"re-server.dir\"}}"]);
    docker(&args)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, dir)| Path::new(dir).starts_with(&data))
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Stops the server and waits until none of its containers remain (warm
/// containers exit by themselves once the server stops renewing their lease).
fn stop_and_expect_no_leak(server: &mut TestServer, host: Option<&str>) {
    let data = server.data_dir().to_path_buf();
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = containers_of(host, &data);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "containers leaked after the server stopped: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(resp: &ExecuteResponse) -> (i32, String) {
    let s = resp.status.clone().unwrap_or_default();
    (s.code, s.message)
}

fn worker_of(resp: &ExecuteResponse) -> String {
    resp.result.as_ref().and_then(|r| r.execution_metadata.as_ref()).map(|m| m.worker.clone()).unwrap_or_default()
}

fn in_image(script: &str) -> ActionSpec {
    let mut spec = ActionSpec::sh(script);
    spec.platform = vec![("container-image".into(), format!("docker://{IMAGE}"))];
    spec
}

async fn run_ok(ch: &tonic::transport::Channel, spec: &ActionSpec) -> (ExecuteResponse, String) {
    let (resp, stdout) = run_spec(ch, "", spec, &ExecOpts::default()).await.expect("execute");
    assert_eq!(status(&resp).0, 0, "{:?}", resp.status);
    assert_eq!(resp.result.as_ref().unwrap().exit_code, 0, "stdout: {stdout}");
    (resp, stdout)
}
