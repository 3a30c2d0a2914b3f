//! Platform properties: container-image routing and allowed images,
//! dockerNetwork and dockerUser within what the config allows.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_image_actions_go_only_to_docker_workers() {
    if !docker_ready() {
        return;
    }
    let config = ServerConfig::memory()
        .workers("[[execution.pool.workers]]\ntype = \"host\"\ncount = 1\nproperties = { pool = \"host-only\" }\n")
        .docker_workers(IMAGE, "count = 1\nwarm = true\nallowed_images = [\"re-server-test/*\"]\n");
    let mut server = TestServer::start(&config.toml());
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
    let workers = "warm = false\nnetwork_mode = \"bridge\"\nuser = \"1000:1000\"\n";
    let mut server = TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, workers).toml());
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
    let mut server = TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, "warm = false\n").toml());
    let ch = server.channel().await;
    let mut bridge = in_image(probe);
    bridge.platform.push(("dockerNetwork".into(), "bridge".into()));
    let (_, out) = run_ok(&ch, &bridge).await;
    assert!(out.starts_with("net=lo uid="), "dockerNetwork=bridge on a none worker: {out}");
    stop_and_expect_no_leak(&mut server, None);
}
