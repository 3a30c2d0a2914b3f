//! End-to-end tests of remote execution against the real re-server binary
//! with host workers: results, caching, scheduling order, limits,
//! cancellation, timeouts, isolation of the environment and paths.
mod common;
mod exec_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{digest, put_blobs, read_blob, ServerConfig, TestServer};
use exec_support::*;
use prost::Message;
use re_proto::google::longrunning::operations_client::OperationsClient;
use re_proto::google::longrunning::{CancelOperationRequest, GetOperationRequest};
use re_proto::google::rpc::{PreconditionFailure, Status as RpcStatus};
use re_proto::reapi::execution_client::ExecutionClient;
use re_proto::reapi::{Directory, SymlinkNode, Tree, WaitExecutionRequest};
use tonic::Code;

fn ts(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp set");
    (t.seconds, t.nanos)
}

fn start_of(resp: &re_proto::reapi::ExecuteResponse) -> (i64, i32) {
    ts(&resp.result.as_ref().unwrap().execution_metadata.as_ref().unwrap().execution_start_timestamp)
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

async fn wait_for_file(p: &Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(p) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", p.display());
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_an_action_collects_outputs_and_caches_the_result() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh(
        "mkdir out/d && echo hello > out/f.txt && echo inner > out/d/g && ln -s g out/d/link && echo to-stdout && cat in.txt && ./tool.sh",
    );
    spec.input_files = vec![
        ("in.txt".into(), b"input!\n".to_vec(), false),
        ("tool.sh".into(), b"#!/bin/sh\necho tool-ran\n".to_vec(), true),
    ];
    spec.output_files = vec!["out/f.txt".into(), "out/never-made".into()];
    spec.output_directories = vec!["out/d".into()];
    let (resp, stdout) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.expect("execute");
    assert_eq!(resp.status.as_ref().unwrap().code, 0, "{:?}", resp.status);
    assert!(!resp.cached_result);
    let result = resp.result.clone().unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(stdout, "to-stdout\ninput!\ntool-ran\n");
    assert_eq!(result.output_files.len(), 1, "missing outputs are simply absent");
    assert_eq!(result.output_files[0].path, "out/f.txt");
    assert_eq!(&read_blob(&ch, "", result.output_files[0].digest.as_ref().unwrap()).await[..], b"hello\n");
    let tree =
        Tree::decode(read_blob(&ch, "", result.output_directories[0].tree_digest.as_ref().unwrap()).await).unwrap();
    let root = tree.root.unwrap();
    assert_eq!(root.files[0].name, "g");
    assert_eq!(root.symlinks[0].target, "g");
    let meta = result.execution_metadata.unwrap();
    assert_eq!(meta.worker, "host-worker-1");
    assert!(ts(&meta.queued_timestamp) <= ts(&meta.execution_start_timestamp));
    assert!(ts(&meta.execution_start_timestamp) <= ts(&meta.execution_completed_timestamp));
    assert!(ts(&meta.execution_completed_timestamp) <= ts(&meta.worker_completed_timestamp));

    // The same action again is served from the cache, without running.
    let (again, _) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
    assert!(again.cached_result);
    assert_eq!(again.result.unwrap().output_files, result.output_files);
    // skip_cache_lookup runs it anyway.
    let (forced, _) =
        run_spec(&ch, "", &spec, &ExecOpts { skip_cache_lookup: true, ..Default::default() }).await.unwrap();
    assert!(!forced.cached_result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executed_action_metadata_timestamps_are_in_order() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh("sleep 0.2; echo done > out.txt");
    spec.output_files = vec!["out.txt".into()];
    let (resp, _) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.expect("execute");
    assert_eq!(resp.status.as_ref().unwrap().code, 0, "{:?}", resp.status);
    let result = resp.result.unwrap();
    assert_eq!(result.output_files.len(), 1, "the output was uploaded");
    let meta = result.execution_metadata.expect("execution_metadata");
    assert!(meta.worker.starts_with("host-worker-"), "{}", meta.worker);
    assert_timestamps_in_order(&meta);
    let ran = meta.virtual_execution_duration.unwrap();
    assert!(Duration::new(ran.seconds as u64, ran.nanos as u32) >= Duration::from_millis(200), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_do_not_cache_are_not_cached() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let failing = ActionSpec::sh("echo oops >&2; exit 3");
    let (resp, _) = run_spec(&ch, "", &failing, &ExecOpts::default()).await.unwrap();
    assert_eq!(resp.result.as_ref().unwrap().exit_code, 3);
    assert_eq!(resp.status.as_ref().unwrap().code, 0, "a non-zero exit is a result, not an error");
    let (again, _) = run_spec(&ch, "", &failing, &ExecOpts::default()).await.unwrap();
    assert!(!again.cached_result, "failed results must not be cached");

    let mut uncached = ActionSpec::sh("echo fine");
    uncached.do_not_cache = true;
    run_spec(&ch, "", &uncached, &ExecOpts::default()).await.unwrap();
    let (again, _) = run_spec(&ch, "", &uncached, &ExecOpts::default()).await.unwrap();
    assert!(!again.cached_result, "do_not_cache must not be cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_take_turns_on_a_busy_pool() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (ch, mut spec) = (ch.clone(), ActionSpec::sh("sleep 0.2"));
        spec.salt = format!("big-{i}");
        let opts = ExecOpts { invocation: Some("big-build".into()), ..Default::default() };
        tasks.push(tokio::spawn(async move { ("big", run_spec(&ch, "", &spec, &opts).await.unwrap().0) }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..2 {
        let (ch, mut spec) = (ch.clone(), ActionSpec::sh("sleep 0.2"));
        spec.salt = format!("small-{i}");
        let opts = ExecOpts { invocation: Some("small-build".into()), ..Default::default() };
        tasks.push(tokio::spawn(async move { ("small", run_spec(&ch, "", &spec, &opts).await.unwrap().0) }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        let (who, resp) = t.await.unwrap();
        runs.push((start_of(&resp), who));
    }
    runs.sort();
    let order: Vec<&str> = runs.iter().map(|r| r.1).collect();
    let last_small = order.iter().rposition(|w| *w == "small").unwrap();
    // FIFO would run the small build last (positions 6 and 7).
    assert!(last_small <= 5, "small build starved: {order:?}");
    assert_ne!(order[order.len() - 1], "small", "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_value_runs_first() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let blocker = {
        let ch = ch.clone();
        tokio::spawn(async move { run_spec(&ch, "", &ActionSpec::sh("sleep 1"), &ExecOpts::default()).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for prio in [5, -5, 0] {
        let ch = ch.clone();
        let mut spec = ActionSpec::sh("true");
        spec.salt = format!("prio{prio}");
        tasks.push(tokio::spawn(async move {
            (prio, run_spec(&ch, "", &spec, &ExecOpts { priority: prio, ..Default::default() }).await.unwrap().0)
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut runs = Vec::new();
    for t in tasks {
        let (prio, resp) = t.await.unwrap();
        runs.push((start_of(&resp), prio));
    }
    blocker.await.unwrap();
    runs.sort();
    assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), vec![-5, 0, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_actions_in_flight_run_once() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(2).toml());
    let ch = server.channel().await;
    let dir = scratch();
    let counter = dir.path().join("counter");
    let mut spec = ActionSpec::sh(&format!("echo run >> {}; sleep 1; echo done > out", counter.display()));
    spec.output_files = vec!["out".into()];
    let digest = spec.upload(&ch, "").await;
    let opts = ExecOpts::default();
    let (a, b) = tokio::join!(run(&ch, "", &digest, &opts), run(&ch, "", &digest, &opts));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.0, b.0, "both callers share one operation");
    assert_eq!(a.1.result, b.1.result);
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n", "the action ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted() {
    let server = TestServer::start(&ServerConfig::memory().pool("max_queue_size = 2").host_workers(1).toml());
    let ch = server.channel().await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut spec = ActionSpec::sh("sleep 2");
        spec.salt = format!("q{i}");
        let d = spec.upload(&ch, "").await;
        let mut exec = ExecutionClient::new(ch.clone());
        held.push(exec.execute(execute_request("", &d, &ExecOpts::default())).await.expect("admitted").into_inner());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // One running, two queued: the next is refused.
    let mut spec = ActionSpec::sh("true");
    spec.salt = "overflow".into();
    let d = spec.upload(&ch, "").await;
    let err =
        ExecutionClient::new(ch.clone()).execute(execute_request("", &d, &ExecOpts::default())).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("max_queue_size"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_matching_and_fail_fast() {
    let config = ServerConfig::memory()
        .pool("[execution.pool.platform_match]\ncores = \"minimum\"\nlabel = \"ignore\"")
        .workers(
            "[[execution.pool.workers]]\ntype = \"host\"\ncount = 1\nproperties = { pool = \"fast\", cores = \"4\" }",
        );
    let server = TestServer::start(&config.toml());
    let ch = server.channel().await;
    let mut ok = ActionSpec::sh("echo matched");
    ok.platform = vec![
        ("pool".into(), "fast".into()),
        ("cores".into(), "2".into()),
        ("label".into(), "x".into()),
        ("OSFamily".into(), "Linux".into()),
    ];
    let (resp, out) = run_spec(&ch, "", &ok, &ExecOpts::default()).await.expect("matching action runs");
    assert_eq!(resp.result.unwrap().exit_code, 0);
    assert_eq!(out, "matched\n");

    for (props, blamed) in [
        (vec![("pool", "gpu")], "pool=gpu"),
        (vec![("cores", "8")], "cores=8"),
        (vec![("container-image", "docker://busybox")], "container-image=docker://busybox"),
    ] {
        let mut spec = ActionSpec::sh("true");
        spec.platform = props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let started = Instant::now();
        let err = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains(blamed), "{}", err.message());
        assert!(started.elapsed() < Duration::from_secs(5), "must fail fast, not wait");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inputs_are_reported_as_missing_violations() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh("cat a b");
    spec.input_files = vec![("a".into(), b"aaa".to_vec(), false), ("b".into(), b"bbbb".to_vec(), false)];
    spec.skip_input_upload = true;
    let err = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let status = RpcStatus::decode(err.details()).expect("google.rpc.Status details");
    let failure = PreconditionFailure::decode(status.details[0].value.as_slice()).expect("PreconditionFailure");
    let mut subjects: Vec<String> = failure
        .violations
        .iter()
        .map(|v| {
            assert_eq!(v.r#type, "MISSING");
            v.subject.clone()
        })
        .collect();
    subjects.sort();
    let mut expected: Vec<String> = [b"aaa".as_slice(), b"bbbb"]
        .iter()
        .map(|d| {
            let d = digest(d);
            format!("blobs/{}/{}", d.hash, d.size_bytes)
        })
        .collect();
    expected.sort();
    assert_eq!(subjects, expected);
}

async fn first_operation(
    ch: &tonic::transport::Channel,
    digest: &re_proto::reapi::Digest,
) -> (String, tonic::Streaming<re_proto::google::longrunning::Operation>) {
    let mut stream = ExecutionClient::new(ch.clone())
        .execute(execute_request("", digest, &ExecOpts::default()))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("first operation");
    assert!(!first.done);
    (first.name, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_operation_kills_the_process() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let dir = scratch();
    let pidfile = dir.path().join("pid");
    let spec = ActionSpec::sh(&format!("echo $$ > {}; exec sleep 60", pidfile.display()));
    let d = spec.upload(&ch, "").await;
    let (name, stream) = first_operation(&ch, &d).await;
    let pid: i32 = wait_for_file(&pidfile).await.parse().unwrap();
    assert!(pid_alive(pid));
    OperationsClient::new(ch.clone()).cancel_operation(CancelOperationRequest { name: name.clone() }).await.unwrap();
    let ops = drain(stream).await.unwrap();
    let resp = response_of(ops.last().unwrap());
    assert_eq!(resp.status.unwrap().code, Code::Cancelled as i32);
    assert!(!pid_alive(pid), "cancelled action's process must be gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_actions_are_cancelled_after_the_grace_period() {
    let server = TestServer::start(&ServerConfig::memory().pool("abandon_grace_seconds = 1").host_workers(1).toml());
    let ch = server.channel().await;
    let dir = scratch();
    let pidfile = dir.path().join("pid");
    let spec = ActionSpec::sh(&format!("echo $$ > {}; exec sleep 60", pidfile.display()));
    let d = spec.upload(&ch, "").await;
    let (name, stream) = first_operation(&ch, &d).await;
    let pid: i32 = wait_for_file(&pidfile).await.parse().unwrap();
    drop(stream); // The client goes away.
    let deadline = Instant::now() + Duration::from_secs(15);
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pid_alive(pid), "abandoned action still running");
    let op = OperationsClient::new(ch.clone()).get_operation(GetOperationRequest { name }).await.unwrap().into_inner();
    assert!(op.done);
    assert_eq!(response_of(&op).status.unwrap().code, Code::Cancelled as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattaching_within_the_grace_period_keeps_the_action() {
    let server = TestServer::start(&ServerConfig::memory().pool("abandon_grace_seconds = 2").host_workers(1).toml());
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh("sleep 3; echo survived");
    spec.salt = "reattach".into();
    let d = spec.upload(&ch, "").await;
    let (name, stream) = first_operation(&ch, &d).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wait =
        ExecutionClient::new(ch.clone()).wait_execution(WaitExecutionRequest { name }).await.unwrap().into_inner();
    let ops = drain(wait).await.unwrap();
    let resp = response_of(ops.last().unwrap());
    assert_eq!(resp.status.unwrap().code, 0);
    assert_eq!(resp.result.unwrap().exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_deadline_exceeded_and_kills_the_process_tree() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let dir = scratch();
    let pidfile = dir.path().join("pid");
    let mut spec = ActionSpec::sh(&format!("sleep 100 & echo $! > {}; wait", pidfile.display()));
    spec.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let (resp, _) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(resp.status.unwrap().code, Code::DeadlineExceeded as i32);
    let pid: i32 = wait_for_file(&pidfile).await.parse().unwrap();
    assert!(!pid_alive(pid), "background child of a timed-out action survived");

    let mut too_long = ActionSpec::sh("true");
    too_long.timeout = Some(Duration::from_secs(10 * 24 * 3600));
    let err = run_spec(&ch, "", &too_long, &ExecOpts::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_after_completion_and_after_ttl() {
    let server = TestServer::start(&ServerConfig::memory().pool("result_ttl_seconds = 2").host_workers(1).toml());
    let ch = server.channel().await;
    let d = ActionSpec::sh("echo ttl").upload(&ch, "").await;
    let (name, resp) = run(&ch, "", &d, &ExecOpts::default()).await.unwrap();
    let mut exec = ExecutionClient::new(ch.clone());
    let ops = drain(exec.wait_execution(WaitExecutionRequest { name: name.clone() }).await.unwrap().into_inner())
        .await
        .unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(response_of(&ops[0]).result, resp.result);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let err = match exec.wait_execution(WaitExecutionRequest { name: name.clone() }).await {
        Ok(s) => drain(s.into_inner()).await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.code(), Code::NotFound);
    let err = OperationsClient::new(ch.clone()).get_operation(GetOperationRequest { name }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_is_whitelisted() {
    let server =
        TestServer::start_with_env(&ServerConfig::memory().host_workers(1).toml(), &[("RE_TEST_SECRET", "hunter2")]);
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh("echo \"[$RE_TEST_SECRET][$MINE][${PATH:+has-path}]\"");
    spec.env = vec![("MINE".into(), "yes".into())];
    let (_, out) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
    assert_eq!(out, "[][yes][has-path]\n");
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_drops_privileges() {
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
    let server = TestServer::start(&ServerConfig::memory().workers(&workers).toml());
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh("id -u; echo made > out/o.txt");
    spec.output_files = vec!["out/o.txt".into()];
    let (resp, out) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
    let nobody = std::process::Command::new("id").args(["-u", "nobody"]).output().unwrap();
    assert_eq!(out.trim(), String::from_utf8_lossy(&nobody.stdout).trim());
    assert_eq!(resp.result.unwrap().output_files.len(), 1, "the action user can write its outputs");

    // A user that does not exist stops the server at start.
    let cfg_dir = scratch();
    let cfg = cfg_dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        ServerConfig::memory()
            .workers("[[execution.pool.workers]]\ntype = \"host\"\nrun_as_user = \"no-such-user-re\"\n")
            .toml(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_re-server"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--address",
            "127.0.0.1:0",
            "--data-dir",
            cfg_dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-user-re"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_escape_the_action_directory_are_rejected() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let ch = server.channel().await;
    let mut bad_output = ActionSpec::sh("true");
    bad_output.output_files = vec!["../escape".into()];
    let mut absolute_output = ActionSpec::sh("true");
    absolute_output.output_files = vec!["/etc/passwd".into()];
    let mut bad_wd = ActionSpec::sh("true");
    bad_wd.working_directory = "../..".into();
    let mut dotdot_input = ActionSpec::sh("true");
    dotdot_input.root_override = Some(Directory {
        files: vec![re_proto::reapi::FileNode { name: "..".into(), digest: Some(digest(b"")), ..Default::default() }],
        ..Default::default()
    });
    let mut escaping_symlink = ActionSpec::sh("true");
    escaping_symlink.root_override = Some(Directory {
        symlinks: vec![SymlinkNode { name: "pw".into(), target: "/etc/passwd".into(), node_properties: None }],
        ..Default::default()
    });
    let mut relative_escape = ActionSpec::sh("true");
    relative_escape.root_override = Some(Directory {
        symlinks: vec![SymlinkNode { name: "up".into(), target: "../../etc".into(), node_properties: None }],
        ..Default::default()
    });
    for (what, spec) in [
        ("output ..", bad_output),
        ("absolute output", absolute_output),
        ("working directory", bad_wd),
        ("input name ..", dotdot_input),
        ("absolute symlink", escaping_symlink),
        ("relative symlink escape", relative_escape),
    ] {
        let err = run_spec(&ch, "", &spec, &ExecOpts::default()).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {}", err.message());
    }

    // An action that leaves a symlink pointing out as its output fails
    // instead of uploading a host file.
    let mut leak = ActionSpec::sh("ln -s /etc/passwd out");
    leak.output_files = vec!["out".into()];
    let (resp, _) = run_spec(&ch, "", &leak, &ExecOpts::default()).await.unwrap();
    assert_eq!(resp.status.unwrap().code, Code::InvalidArgument as i32);
    assert!(resp.result.map(|r| r.output_files.is_empty()).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_of_queued_actions_are_not_evicted() {
    // A 256 KiB CAS: the queued action's 64 KiB input would be the oldest blob.
    let server = TestServer::start(&ServerConfig::memory().cas("max_size_bytes = 262144").host_workers(1).toml());
    let ch = server.channel().await;
    let blocker = {
        let ch = ch.clone();
        tokio::spawn(async move { run_spec(&ch, "", &ActionSpec::sh("sleep 1.5"), &ExecOpts::default()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut spec = ActionSpec::sh("wc -c < input.bin");
    spec.input_files = vec![("input.bin".into(), vec![7u8; 65536], false)];
    let queued = {
        let (ch, spec) = (ch.clone(), spec.clone());
        tokio::spawn(async move { run_spec(&ch, "", &spec, &ExecOpts::default()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Push 640 KiB of other blobs through the store while it waits.
    for i in 0..10u8 {
        let data = bytes::Bytes::from(vec![100 + i; 65536]);
        put_blobs(&ch, "", vec![(digest(&data), data)]).await;
    }
    blocker.await.unwrap().unwrap();
    let (resp, out) = queued.await.unwrap().expect("queued action ran");
    assert_eq!(resp.status.unwrap().code, 0);
    assert_eq!(out.trim(), "65536");
}
