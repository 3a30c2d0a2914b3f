//! Containers over time: warm reuse and recycling, bursts, missing images,
//! stale containers after a restart.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_containers_are_reused_cleaned_and_recycled() {
    if !docker_ready() {
        return;
    }
    let mut server =
        TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, "warm = true\ntasks_max = 3\n").toml());
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
    let mut server = TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, "warm = false\n").toml());
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
    let mut server =
        TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, "warm = true\ntasks_max = 1000\n").toml());
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
    let config = ServerConfig::memory()
        .docker_workers(IMAGE, "warm = false\nallowed_images = [\"*\"]\nproperties = { pull = \"no\" }\n")
        // A registry on a closed loopback port: the pull fails at once and
        // nothing leaves the machine.
        .docker_workers(
            "127.0.0.1:9/re-server-test/not-there:1",
            "always_pull = true\nproperties = { pull = \"yes\" }\n",
        );
    let mut server = TestServer::start(&config.toml());
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
    let mut server = TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, "warm = true\n").toml());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_warm_containers_at_once_and_sigkill_leaves_none_after_a_restart() {
    if !docker_ready() {
        return;
    }
    let config = ServerConfig::memory().docker_workers(IMAGE, "count = 2\nwarm = true\n").toml();
    let mut server = TestServer::start(&config);
    let ch = server.channel().await;
    let (a, b) = (in_image("echo a"), in_image("echo b"));
    let (c1, c2) = (ch.clone(), ch.clone());
    let (ra, rb) = tokio::join!(run_ok(&c1, &a), run_ok(&c2, &b));
    assert_ne!(worker_of(&ra.0), worker_of(&rb.0), "both workers made a warm container");
    assert_eq!(containers_of(None, server.data_dir()).len(), 2);
    // SIGTERM: gone when the server has exited, not a lease (15 s) later.
    let data = server.data_dir().to_path_buf();
    let took = server.terminate(Duration::from_secs(30)).expect("the server exits");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert_eq!(containers_of(None, &data), Vec::<String>::new(), "warm containers left after SIGTERM");

    // SIGKILL in the middle of an action: after a restart none is left.
    let mut server = TestServer::start(&config);
    let ch = server.channel().await;
    let spec = in_image("sleep 300");
    let digest = spec.upload(&ch, "").await;
    let c = ch.clone();
    let running = tokio::spawn(async move { run(&c, "", &digest, &ExecOpts::default()).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers_of(None, server.data_dir()).is_empty() {
        assert!(Instant::now() < deadline, "no container started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
    let _ = running.await;
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !containers_of(None, server.data_dir()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers of the killed server remain: {:?}",
            containers_of(None, server.data_dir())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_and_expect_no_leak(&mut server, None);
}
