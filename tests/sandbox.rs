//! `use_chroot = true`: host actions in a bubblewrap sandbox see their
//! inputs and read-only system paths, nothing else of the host, no network,
//! and die with their worker's kill. The same probes run unsandboxed show
//! what they would reach otherwise.
mod common;
mod exec_support;

use std::time::{Duration, Instant};

use common::{require_tool, ServerConfig, TestServer};
use exec_support::*;
use tonic::Code;

fn sandboxed_host_worker() -> String {
    "[[execution.pool.workers]]\ntype = \"host\"\ncount = 2\nuse_chroot = true".into()
}

/// Prints `reached:` and what of the host the action could reach, then the
/// entries of its directory's parent and of the worker's work directory.
fn probes(server: &TestServer) -> ActionSpec {
    let data = server.data_dir().display().to_string();
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let script = format!(
        "r=; cat /etc/passwd >/dev/null 2>&1 && r=\"$r passwd\"; \
         [ -e {data}/re-server.toml ] && r=\"$r config\"; \
         [ -e {data}/logs ] && r=\"$r logs\"; \
         bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && r=\"$r server-port\"; \
         echo \"reached:$r\"; ls -A .. | tr '\\n' ' '; echo; ls -A ../.. | wc -l"
    );
    ActionSpec::sh(&script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_action_sees_only_its_inputs_and_no_network() {
    if !require_tool("bwrap") {
        return;
    }
    // Unsandboxed, the probes reach everything: they can tell.
    let open = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = open.channel().await;
    let (resp, out) = run_spec(&ch, "", &probes(&open), &ExecOpts::default()).await.unwrap();
    assert_eq!(resp.result.unwrap().exit_code, 0, "{out}");
    assert!(out.starts_with("reached: passwd config logs server-port\n"), "{out}");

    let server = TestServer::start(&ServerConfig::memory().workers(&sandboxed_host_worker()).toml());
    let ch = server.channel().await;
    // Two actions at once: neither sees the other's directory.
    let mut other = ActionSpec::sh("echo mine > secret.txt; sleep 2");
    other.salt = "other".into();
    let other_run = tokio::spawn({
        let ch = ch.clone();
        async move { run_spec(&ch, "", &other, &ExecOpts::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut spec = probes(&server);
    spec.input_files = vec![("input.txt".into(), b"in".to_vec(), false)];
    let (resp, out) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
    let result = resp.result.unwrap();
    assert_eq!(result.exit_code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "reached:", "{out}");
    // The action's directory holds its root only (stdout/stderr stay outside),
    // the worker's directory this action's only.
    assert_eq!(lines[1].trim(), "root", "{out}");
    assert_eq!(lines[2].trim(), "1", "{out}");
    let (other_resp, _) = other_run.await.unwrap().unwrap();
    assert_eq!(other_resp.result.unwrap().exit_code, 0);

    // A program that is not there is the client's mistake, as without a sandbox.
    let missing = ActionSpec { args: vec!["/no/such/program".into()], ..Default::default() };
    let (resp, _) = run_spec(&ch, "", &missing, &ExecOpts::default()).await.unwrap();
    let status = resp.status.unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32, "{}", status.message);
    assert!(
        status.message.contains("cannot start '/no/such/program': No such file or directory"),
        "{}",
        status.message
    );

    // Outputs are collected as usual.
    let mut writes = ActionSpec::sh("cat input.txt > out.txt; echo done");
    writes.input_files = vec![("input.txt".into(), b"in".to_vec(), false)];
    writes.output_files = vec!["out.txt".into()];
    let (resp, out) = run_spec(&ch, "", &writes, &ExecOpts::default()).await.unwrap();
    assert_eq!(out, "done\n");
    assert_eq!(resp.result.unwrap().output_files.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_action_that_times_out_leaves_no_process() {
    if !require_tool("bwrap") {
        return;
    }
    let server = TestServer::start(&ServerConfig::memory().workers(&sandboxed_host_worker()).toml());
    let ch = server.channel().await;
    let mut slow = ActionSpec::sh("sleep 987 & sleep 986 & wait");
    slow.timeout = Some(Duration::from_secs(2));
    let (resp, _) = run_spec(&ch, "", &slow, &ExecOpts::default()).await.unwrap();
    assert_eq!(resp.status.unwrap().code, Code::DeadlineExceeded as i32);
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_with_arg("987") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!running_with_arg("987") && !running_with_arg("986"), "a sandboxed process outlived its action");
}

#[test]
fn without_bubblewrap_the_server_refuses_to_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, ServerConfig::memory().workers(&sandboxed_host_worker()).toml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_re-server"))
        .args(["--config", config.to_str().unwrap(), "--address", "127.0.0.1:0", "--http-address", ""])
        .arg("--data-dir")
        .arg(dir.path())
        .env("PATH", dir.path().join("empty"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("use_chroot") && stderr.contains("bwrap"), "{stderr}");
}

/// Whether a `sleep ARG` process is alive (zombies count as gone).
fn running_with_arg(arg: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
        cmdline == format!("sleep\0{arg}\0").as_bytes() && !zombie
    })
}
