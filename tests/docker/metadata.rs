//! ExecutedActionMetadata of actions run in containers, warm and fresh.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executed_action_metadata_timestamps_are_in_order_in_a_container() {
    if !docker_ready() {
        return;
    }
    // A warm group and a fresh one, told apart by a property of their own.
    let config = ServerConfig::memory()
        .docker_workers(IMAGE, "warm = true\nproperties = { container_kind = \"warm\" }\n")
        .docker_workers(IMAGE, "warm = false\nproperties = { container_kind = \"fresh\" }\n");
    let mut server = TestServer::start(&config.toml());
    let ch = server.channel().await;
    let mut workers = BTreeSet::new();
    // Twice each: a warm group's first action also starts its container.
    for (kind, run) in [("warm", 1), ("warm", 2), ("fresh", 1), ("fresh", 2)] {
        let mut spec = in_image("sleep 0.2; echo done > out.txt");
        spec.platform.push(("container_kind".into(), kind.into()));
        spec.output_files = vec!["out.txt".into()];
        spec.salt = format!("{kind}{run}");
        let (resp, _) = run_ok(&ch, &spec).await;
        let result = resp.result.unwrap();
        assert_eq!(result.output_files.len(), 1, "{kind} run {run}: the output was uploaded");
        let meta = result.execution_metadata.expect("execution_metadata");
        assert!(meta.worker.starts_with("docker-worker-"), "{kind} run {run}: {}", meta.worker);
        assert_timestamps_in_order(&meta);
        let ran = meta.virtual_execution_duration.unwrap();
        let ran = Duration::new(ran.seconds as u64, ran.nanos as u32);
        assert!(ran >= Duration::from_millis(200), "{kind} run {run}: the sleep took {ran:?}");
        workers.insert((kind, meta.worker));
    }
    assert_eq!(workers.len(), 2, "each group ran its own actions: {workers:?}");
    stop_and_expect_no_leak(&mut server, None);
}
