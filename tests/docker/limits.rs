//! Resource limits, user, network and volumes, archive file transfer, the
//! memory limit, timeouts and cancellation; each with warm and fresh containers.
use super::*;

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
    let mut server = TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, &extra).toml());
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
    assert!(server.logs().contains("Registered docker worker docker-worker-1 (group docker-0)"));
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
    let mut server = TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, &extra).toml());
    let ch = server.channel().await;
    // Every time, not by luck: a warm container's count of OOM kills grows
    // with each round, and the kernel may count a kill after its victim died.
    for round in 0..3 {
        // `tail` keeps the whole newline-free "line" in memory; its exit status is the action's.
        let mut hog = in_image("echo start; head -c 200m /dev/zero | tail > /dev/null");
        hog.salt = format!("oom-{round}");
        let (resp, stdout) = run_spec(&ch, "", &hog, &ExecOpts::default()).await.unwrap();
        let (code, message) = status(&resp);
        assert_eq!(code, tonic::Code::ResourceExhausted as i32, "round {round}: {message} / stdout {stdout}");
        assert!(message.contains("killed: memory limit of 33554432 bytes exceeded"), "{message}");
    }
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
    let mut server =
        TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, &format!("warm = {warm}\n")).toml());
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
    let mut server =
        TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, &format!("warm = {warm}\n")).toml());
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
