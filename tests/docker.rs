//! End-to-end tests of `type = "docker"` workers against the real re-server
//! binary and a real Docker engine, with the offline test image built by
//! `.ci/setup-env.sh` (`re-server-test/busybox:latest`). Skipped loudly when
//! docker is missing (a failure under CI=true).
mod common;
mod exec_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command as Cmd;
use std::time::{Duration, Instant};

use exec_support::*;
use re_proto::reapi::ExecuteResponse;

const IMAGE: &str = "re-server-test/busybox:latest";

fn config(workers: &str) -> String {
    pool_config("", workers)
}

/// One docker worker group; `extra` holds more keys (and may end with volumes).
fn docker_group(extra: &str) -> String {
    format!("[[execution.pool.workers]]\ntype = \"docker\"\nimage = \"{IMAGE}\"\n{extra}\n")
}

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
fn stop_and_expect_no_leak(server: &mut common::TestServer, host: Option<&str>) {
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

/// `archive`: `file_transfer = "archive"` (no bind mount; files go through
/// the engine's archive API, as for an engine on another machine).
async fn limits_case(warm: bool, archive: bool) {
    if !docker_ready() {
        return;
    }
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("hello"), "from-the-host\n").unwrap();
    let extra = format!(
        "warm = {warm}\nfile_transfer = \"{}\"\ncpu_limit = 1.5\nmemory_limit = 67108864\nnetwork_mode = \"none\"\nuser = \"1000:1000\"\n\
         [[execution.pool.workers.volumes]]\nhost_path = \"{}\"\ncontainer_path = \"/cache\"\nread_only = true\n",
        if archive { "archive" } else { "mount" },
        vol.path().display()
    );
    let mut server = common::TestServer::start(&config(&docker_group(&extra)));
    let ch = server.channel().await;
    let mut spec = in_image(
        "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); \
         echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max); \
         echo period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null); \
         echo net=$(ls /sys/class/net | tr '\\n' ' '); echo uid=$(id -u); echo pwd=$(pwd); \
         echo env=$MY_VAR; cat /cache/hello; \
         if touch /cache/x 2>/dev/null; then echo cache=writable; else echo cache=read-only; fi; \
         echo mounts=$(grep -c ' /re-server ' /proc/mounts); \
         cat in.txt > out/copy.txt && ./tool.sh > out/made.txt && \
         mkdir -p tree/sub && echo leaf > tree/sub/leaf.txt && ln -s sub/leaf.txt tree/link",
    );
    spec.env = vec![("MY_VAR".into(), "my-value".into())];
    spec.input_files = vec![
        ("in.txt".into(), b"input!\n".to_vec(), false),
        ("tool.sh".into(), b"#!/bin/sh\necho made\n".to_vec(), true),
    ];
    spec.output_files = vec!["out/copy.txt".into(), "out/made.txt".into()];
    spec.output_directories = vec!["tree".into()];
    let (resp, stdout) = run_ok(&ch, &spec).await;
    assert!(stdout.contains("mem=67108864\n"), "memory limit not applied: {stdout}");
    assert!(
        stdout.contains("quota=150000\n") && stdout.contains("period=100000\n")
            || stdout.contains("quota=150000 100000"),
        "cpu quota not applied: {stdout}"
    );
    assert!(stdout.contains("net=lo\n"), "network_mode none must leave only lo: {stdout}");
    assert!(stdout.contains("uid=1000\n"), "{stdout}");
    assert!(stdout.contains("pwd=/re-server/exec\n"), "{stdout}");
    assert!(stdout.contains("env=my-value\n"), "{stdout}");
    assert!(stdout.contains("from-the-host\n"), "{stdout}");
    assert!(stdout.contains("cache=read-only\n"), "a read-only volume was writable: {stdout}");
    assert!(!vol.path().join("x").exists());
    let mounts = if archive { "mounts=0\n" } else { "mounts=1\n" };
    assert!(stdout.contains(mounts), "archive = {archive}: {stdout}");
    let result = resp.result.unwrap();
    assert_eq!(result.output_directories.len(), 1, "{result:?}");
    assert_eq!(result.output_directories[0].path, "tree");
    let mut outs: Vec<_> = result.output_files.iter().map(|f| f.path.clone()).collect();
    outs.sort();
    assert_eq!(outs, vec!["out/copy.txt", "out/made.txt"]);
    let copy = result.output_files.iter().find(|f| f.path == "out/copy.txt").unwrap();
    assert_eq!(&read_blob(&ch, "", copy.digest.as_ref().unwrap()).await[..], b"input!\n");
    let made = result.output_files.iter().find(|f| f.path == "out/made.txt").unwrap();
    assert_eq!(&read_blob(&ch, "", made.digest.as_ref().unwrap()).await[..], b"made\n", "executable input ran");
    assert_eq!(result.execution_metadata.unwrap().worker, "docker-worker-1");
    // The next action sees only its own inputs (a warm container keeps nothing).
    let mut next = in_image("find . | sort | tr '\\n' ' '");
    next.input_files = vec![("other.txt".into(), b"x".to_vec(), false)];
    let (_, listing) = run_ok(&ch, &next).await;
    assert_eq!(listing, ". ./other.txt ", "leftovers of the previous action");
    assert!(server.logs().contains("Registered docker worker: docker-worker-1"));
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_user_network_and_volumes_warm() {
    limits_case(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_user_network_and_volumes_fresh() {
    limits_case(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_transfer_without_a_bind_mount_warm() {
    limits_case(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_transfer_without_a_bind_mount_fresh() {
    limits_case(false, true).await;
}

async fn oom_case(warm: bool) {
    if !docker_ready() {
        return;
    }
    let extra = format!("warm = {warm}\nmemory_limit = 33554432\n");
    let mut server = common::TestServer::start(&config(&docker_group(&extra)));
    let ch = server.channel().await;
    // `tail` keeps the whole newline-free "line" in memory; its exit status is the action's.
    let hog = in_image("echo start; head -c 200m /dev/zero | tail > /dev/null");
    let (resp, stdout) = run_spec(&ch, "", &hog, &ExecOpts::default()).await.unwrap();
    let (code, message) = status(&resp);
    assert_eq!(code, tonic::Code::ResourceExhausted as i32, "{message} / stdout {stdout}");
    assert!(message.contains("killed: memory limit of 33554432 bytes exceeded"), "{message}");
    // The worker keeps working afterwards.
    let (_, out) = run_ok(&ch, &in_image("echo still-fine")).await;
    assert_eq!(out, "still-fine\n");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_and_says_so_warm() {
    oom_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_and_says_so_fresh() {
    oom_case(false).await;
}

async fn timeout_case(warm: bool) {
    if !docker_ready() {
        return;
    }
    let mut server = common::TestServer::start(&config(&docker_group(&format!("warm = {warm}\n"))));
    let ch = server.channel().await;
    let mut slow = in_image("echo started; sleep 60");
    slow.timeout = Some(Duration::from_secs(2));
    let t = Instant::now();
    let (resp, _) = run_spec(&ch, "", &slow, &ExecOpts::default()).await.unwrap();
    assert_eq!(status(&resp).0, tonic::Code::DeadlineExceeded as i32, "{:?}", resp.status);
    assert!(t.elapsed() < Duration::from_secs(30), "the timeout was not enforced: {:?}", t.elapsed());
    // The container running it is gone (warm: removed and replaced lazily).
    let left = containers_of(None, server.data_dir());
    assert!(left.is_empty(), "a timed-out action left containers: {left:?}");
    let (_, out) = run_ok(&ch, &in_image("echo next")).await;
    assert_eq!(out, "next\n");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_and_leaves_no_container_warm() {
    timeout_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_and_leaves_no_container_fresh() {
    timeout_case(false).await;
}

async fn cancel_case(warm: bool) {
    if !docker_ready() {
        return;
    }
    let mut server = common::TestServer::start(&config(&docker_group(&format!("warm = {warm}\n"))));
    let ch = server.channel().await;
    // The action announces itself through the mounted directory once it runs.
    let spec = in_image("touch /re-server/exec/../running-$$; sleep 60");
    let digest = spec.upload(&ch, "").await;
    let mut exec = re_proto::reapi::execution_client::ExecutionClient::new(ch.clone());
    let mut stream = exec.execute(execute_request("", &digest, &ExecOpts::default())).await.unwrap().into_inner();
    let name = stream.message().await.unwrap().unwrap().name;
    let mnt = server.data_dir().join("work/docker-worker-1/mnt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&mnt).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("running-")) {
        assert!(Instant::now() < deadline, "the action never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!containers_of(None, server.data_dir()).is_empty());
    let t = Instant::now();
    re_proto::google::longrunning::operations_client::OperationsClient::new(ch.clone())
        .cancel_operation(re_proto::google::longrunning::CancelOperationRequest { name })
        .await
        .unwrap();
    let ops = drain(stream).await.unwrap();
    let resp = response_of(ops.last().unwrap());
    assert_eq!(status(&resp).0, tonic::Code::Cancelled as i32, "{:?}", resp.status);
    assert!(t.elapsed() < Duration::from_secs(15), "cancel took {:?}", t.elapsed());
    let left = containers_of(None, server.data_dir());
    assert!(left.is_empty(), "a cancelled action left containers: {left:?}");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_removes_the_container_warm() {
    cancel_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_removes_the_container_fresh() {
    cancel_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_image_actions_go_only_to_docker_workers() {
    if !docker_ready() {
        return;
    }
    let workers = format!(
        "[[execution.pool.workers]]\ntype = \"host\"\ncount = 1\nproperties = {{ pool = \"host-only\" }}\n{}",
        docker_group("count = 1\nwarm = true\nallowed_images = [\"re-server-test/*\"]\n")
    );
    let mut server = common::TestServer::start(&config(&workers));
    let ch = server.channel().await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let ch = ch.clone();
        let mut spec = in_image("if [ -d /re-server/exec ]; then echo in-docker; else echo on-host; fi; sleep 0.3");
        spec.salt = format!("c{i}");
        tasks.push(tokio::spawn(async move { run_ok(&ch, &spec).await }));
    }
    let mut host = ActionSpec::sh("if [ -d /re-server/exec ]; then echo in-docker; else echo on-host; fi");
    host.platform = vec![("pool".into(), "host-only".into())];
    let (resp, out) = run_ok(&ch, &host).await;
    assert_eq!(worker_of(&resp), "host-worker-1");
    assert_eq!(out, "on-host\n");
    for t in tasks {
        let (resp, out) = t.await.unwrap();
        assert_eq!(worker_of(&resp), "docker-worker-1", "a container-image action ran on a host worker");
        assert_eq!(out, "in-docker\n");
    }

    // Not in allowed_images: refused, naming what is allowed.
    let mut evil = ActionSpec::sh("true");
    evil.platform = vec![("container-image".into(), "docker://evil/image:1".into())];
    let (resp, _) = run_spec(&ch, "", &evil, &ExecOpts::default()).await.unwrap();
    let (code, message) = status(&resp);
    assert_eq!(code, tonic::Code::FailedPrecondition as i32, "{message}");
    assert!(message.contains("allowed images are 're-server-test/*'"), "{message}");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_network_and_user_properties_stay_within_the_config() {
    if !docker_ready() {
        return;
    }
    let workers = docker_group("warm = false\nnetwork_mode = \"bridge\"\nuser = \"1000:1000\"\n");
    let mut server = common::TestServer::start(&config(&workers));
    let ch = server.channel().await;
    let probe = "echo net=$(ls /sys/class/net | tr '\\n' ' ') uid=$(id -u)";

    let (_, out) = run_ok(&ch, &in_image(probe)).await;
    assert!(out.contains("eth0") && out.contains("uid=1000"), "bridge worker default: {out}");

    let mut off = in_image(probe);
    off.platform.push(("dockerNetwork".into(), "off".into()));
    off.platform.push(("dockerUser".into(), "65534".into()));
    let (_, out) = run_ok(&ch, &off).await;
    assert_eq!(out, "net=lo uid=65534\n", "dockerNetwork=off / dockerUser");

    let mut root = in_image(probe);
    root.platform.push(("dockerUser".into(), "root".into()));
    let (resp, _) = run_spec(&ch, "", &root, &ExecOpts::default()).await.unwrap();
    assert_eq!(status(&resp).0, tonic::Code::PermissionDenied as i32, "{:?}", resp.status);
    stop_and_expect_no_leak(&mut server, None);

    // A worker with network_mode none never hands out network.
    let mut server = common::TestServer::start(&config(&docker_group("warm = false\n")));
    let ch = server.channel().await;
    let mut bridge = in_image(probe);
    bridge.platform.push(("dockerNetwork".into(), "bridge".into()));
    let (_, out) = run_ok(&ch, &bridge).await;
    assert!(out.starts_with("net=lo uid="), "dockerNetwork=bridge on a none worker: {out}");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_containers_are_reused_cleaned_and_recycled() {
    if !docker_ready() {
        return;
    }
    let mut server = common::TestServer::start(&config(&docker_group("warm = true\ntasks_max = 3\n")));
    let ch = server.channel().await;
    let count_sleepers = "hostname; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 1000' || true";
    let mut hosts = Vec::new();
    for i in 0..4 {
        let mut spec = in_image(&format!("{count_sleepers}; sleep 1000 > /dev/null 2>&1 &"));
        spec.salt = format!("w{i}");
        let (_, out) = run_ok(&ch, &spec).await;
        let mut lines = out.lines();
        hosts.push(lines.next().unwrap().to_string());
        assert_eq!(lines.next(), Some("0"), "a process left by the previous action survived: {out}");
    }
    assert_eq!(hosts[0], hosts[1], "warm: the same container runs consecutive actions");
    assert_eq!(hosts[1], hosts[2]);
    assert_ne!(hosts[2], hosts[3], "tasks_max = 3: the fourth action gets a new container");
    let left = containers_of(None, server.data_dir());
    assert_eq!(left.len(), 1, "one warm container per worker: {left:?}");
    stop_and_expect_no_leak(&mut server, None);

    // Fresh containers: a new one every time, none left afterwards.
    let mut server = common::TestServer::start(&config(&docker_group("warm = false\n")));
    let ch = server.channel().await;
    let mut hosts = BTreeSet::new();
    for i in 0..3 {
        let mut spec = in_image("hostname");
        spec.salt = format!("f{i}");
        hosts.insert(run_ok(&ch, &spec).await.1);
    }
    assert_eq!(hosts.len(), 3, "warm = false: a fresh container per action");
    assert!(containers_of(None, server.data_dir()).is_empty());
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_quick_actions_keeps_one_warm_container() {
    if !docker_ready() {
        return;
    }
    // Each cleanup kills the keepalive loop's `sleep`; the lease must still
    // be timed in seconds, or a burst of short actions ends the container.
    let mut server = common::TestServer::start(&config(&docker_group("warm = true\ntasks_max = 1000\n")));
    let ch = server.channel().await;
    let mut hosts = BTreeSet::new();
    let t = Instant::now();
    for i in 0..40 {
        let mut spec = in_image("hostname");
        spec.salt = format!("burst{i}");
        hosts.insert(run_ok(&ch, &spec).await.1);
    }
    assert_eq!(hosts.len(), 1, "the warm container was replaced during a burst of {:?}: {hosts:?}", t.elapsed());
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_fail_with_the_engines_message() {
    if !docker_ready() {
        return;
    }
    let workers = format!(
        "{}{}",
        docker_group("warm = false\nallowed_images = [\"*\"]\nproperties = { pull = \"no\" }\n"),
        // A registry on a closed loopback port: the pull fails at once and
        // nothing leaves the machine.
        "[[execution.pool.workers]]\ntype = \"docker\"\nimage = \"127.0.0.1:9/re-server-test/not-there:1\"\nalways_pull = true\nproperties = { pull = \"yes\" }\n"
    );
    let mut server = common::TestServer::start(&config(&workers));
    let ch = server.channel().await;
    let mut missing = ActionSpec::sh("true");
    missing.platform =
        vec![("container-image".into(), "re-server-test/not-there:1".into()), ("pull".into(), "no".into())];
    missing.salt = "a".into();
    let (resp, _) = run_spec(&ch, "", &missing, &ExecOpts::default()).await.unwrap();
    let (code, message) = status(&resp);
    assert_eq!(code, tonic::Code::FailedPrecondition as i32, "{message}");
    assert!(message.contains("No such image") && message.contains("always_pull = false"), "{message}");

    // always_pull with no reachable registry: the engine's error, quickly.
    let mut pull = ActionSpec::sh("true");
    pull.platform = vec![("pull".into(), "yes".into())];
    let t = Instant::now();
    let (resp, _) = run_spec(&ch, "", &pull, &ExecOpts::default()).await.unwrap();
    let (code, message) = status(&resp);
    assert_ne!(code, 0);
    assert!(message.contains("could not pull 127.0.0.1:9/re-server-test/not-there:1"), "{message}");
    assert!(t.elapsed() < Duration::from_secs(320), "the pull was not bounded");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_containers_are_removed_when_the_worker_starts() {
    if !docker_ready() {
        return;
    }
    let mut server = common::TestServer::start(&config(&docker_group("warm = true\n")));
    let ch = server.channel().await;
    run_ok(&ch, &in_image("true")).await;
    let before = containers_of(None, server.data_dir());
    assert_eq!(before.len(), 1, "{before:?}");
    server.restart();
    // The restarted worker removes its predecessor's container at once,
    // long before that container's lease would run out.
    let deadline = Instant::now() + Duration::from_secs(8);
    while containers_of(None, server.data_dir()).contains(&before[0]) {
        assert!(Instant::now() < deadline, "stale container {} not removed on start", before[0]);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_and_expect_no_leak(&mut server, None);
}

/// A second dockerd beside the first: own socket, data root, exec root,
/// containerd namespace and bridge; loaded with the test image.
struct SecondEngine {
    dir: tempfile::TempDir,
    bridge: String,
    /// Also served over TCP with TLS (client certificates required).
    port: u16,
    child: Option<std::process::Child>,
}

impl SecondEngine {
    fn start() -> Option<Self> {
        if !common::require_tool("dockerd") || !common::require_tool("ip") || !common::require_tool("openssl") {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("reb").tempdir_in("/tmp").unwrap();
        let bridge = format!("reb{}", std::process::id() % 100000);
        let sh = |c: &str| Cmd::new("sh").args(["-c", c]).status().unwrap().success();
        // Drop removes the bridge (and stops dockerd) whatever fails below.
        let mut engine = Self { dir, bridge: bridge.clone(), port: 0, child: None };
        assert!(
            sh(&format!(
                "ip link add {bridge} type bridge && ip addr add 10.213.{}.1/24 dev {bridge} && ip link set {bridge} up",
                std::process::id() % 200 + 20
            )),
            "creating bridge {bridge}"
        );
        let d = engine.dir.path().to_path_buf();
        // A CA, a server certificate for 127.0.0.1 and a client certificate.
        assert!(
            sh(&format!(
                "cd {} && (openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=re-test-ca \
                 && openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1 \
                 && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext \
                 && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -days 2 -extfile srv.ext \
                 && openssl req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj /CN=client \
                 && printf 'extendedKeyUsage=clientAuth\\n' > cl.ext \
                 && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 2 -extfile cl.ext \
                 ) >/dev/null 2>&1",
                d.display()
            )),
            "making TLS certificates"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Cmd::new("dockerd")
            .arg("-H")
            .arg(format!("unix://{}/docker.sock", d.display()))
            .args(["-H", &format!("tcp://127.0.0.1:{port}"), "--tlsverify"])
            .arg(format!("--tlscacert={}", d.join("ca.pem").display()))
            .arg(format!("--tlscert={}", d.join("server-cert.pem").display()))
            .arg(format!("--tlskey={}", d.join("server-key.pem").display()))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--containerd-namespace", &format!("{bridge}-ns"), "--containerd-plugins-namespace"])
            .arg(format!("{bridge}-plugins"))
            .args(["--bridge", &bridge, "--iptables=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start second dockerd");
        engine.port = port;
        engine.child = Some(child);
        let host = engine.host();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Cmd::new("docker").args(["-H", &host, "version"]).output().is_ok_and(|o| o.status.success()) {
            assert!(Instant::now() < deadline, "second dockerd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(sh(&format!("docker save {IMAGE} | docker -H {host} load >/dev/null")), "loading the test image");
        Some(engine)
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    /// Worker keys reaching this engine over TCP with TLS.
    fn tls_keys(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "docker_host = \"tcp://127.0.0.1:{}\"\ntls_ca = \"{d}/ca.pem\"\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n",
            self.port
        )
    }

    /// SIGTERM, like stopping the service; waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Cmd::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        self.stop();
        let _ = Cmd::new("ip").args(["link", "del", &self.bridge]).status();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let root: PathBuf = self.dir.path().to_path_buf();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| Path::new(m).starts_with(&root)) {
            let _ = Cmd::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_two_engines_survives_losing_one() {
    if !docker_ready() {
        return;
    }
    let Some(mut engine) = SecondEngine::start() else { return };
    let host = engine.host();
    // Worker 1: the local engine; 2: the second one by its socket; 3: the
    // second one over TCP with TLS.
    let workers = format!(
        "{}{}{}",
        docker_group("warm = false\n"),
        docker_group(&format!("warm = false\ndocker_host = \"{host}\"\n")),
        docker_group(&format!("warm = true\n{}", engine.tls_keys()))
    );
    let mut server = common::TestServer::start(&config(&workers));
    let ch = server.channel().await;
    let batch = |tag: &'static str, n: usize| {
        let ch = ch.clone();
        async move {
            let mut tasks = Vec::new();
            for i in 0..n {
                let ch = ch.clone();
                let mut spec = in_image("sleep 0.5; echo ok");
                spec.salt = format!("{tag}{i}");
                tasks.push(tokio::spawn(async move { run_ok(&ch, &spec).await }));
            }
            let mut workers = BTreeSet::new();
            for t in tasks {
                let (resp, out) = t.await.unwrap();
                assert_eq!(out, "ok\n");
                workers.insert(worker_of(&resp));
            }
            workers
        }
    };
    let used = batch("a", 9).await;
    let all = ["docker-worker-1", "docker-worker-2", "docker-worker-3"].map(String::from);
    assert_eq!(used, BTreeSet::from(all), "every engine takes actions");

    engine.stop();
    // Past the health answer's lifetime: the scheduler now skips docker-worker-2.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let used = batch("b", 4).await;
    assert_eq!(used, BTreeSet::from(["docker-worker-1".to_string()]));
    assert!(server.logs().contains("docker engine is unreachable"), "the lost engine is logged");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_only_a_down_engine_could_run_fail_after_their_timeout() {
    if !docker_ready() {
        return;
    }
    // The docker worker's engine does not exist; the host worker is fine.
    let dead = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}/no-docker.sock", dead.path().display());
    let workers = format!(
        "[[execution.pool.workers]]\ntype = \"host\"\ncount = 1\n{}",
        docker_group(&format!("docker_host = \"{sock}\"\n"))
    );
    let server = common::TestServer::start(&config(&workers));
    let ch = server.channel().await;

    // What the host worker can run still runs.
    let (resp, out) = run_ok(&ch, &ActionSpec::sh("echo on-host")).await;
    assert_eq!(out, "on-host\n");
    assert_eq!(worker_of(&resp), "host-worker-1");

    // Only the docker worker could run this one: it waits, then fails clearly.
    let mut stranded = in_image("echo never");
    stranded.timeout = Some(Duration::from_secs(3));
    let t = Instant::now();
    let (resp, _) = run_spec(&ch, "", &stranded, &ExecOpts::default()).await.expect("execute");
    let (code, message) = status(&resp);
    assert_eq!(code, tonic::Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("no healthy worker") && message.contains("docker-worker-1"), "{message}");
    assert!(t.elapsed() >= Duration::from_secs(3), "failed before its timeout: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20), "took too long to fail: {:?}", t.elapsed());
    assert!(server.logs().contains("docker engine is unreachable"), "the dead engine is logged");
}
