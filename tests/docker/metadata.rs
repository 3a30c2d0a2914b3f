//! ExecutedActionMetadata of actions run in containers, warm and fresh.
use super::*;

/// A warm group and a fresh one, told apart by a property of their own.
fn warm_and_fresh() -> TestServer {
    let config = ServerConfig::memory()
        .docker_workers(IMAGE, "warm = true\nproperties = { container_kind = \"warm\" }\n")
        .docker_workers(IMAGE, "warm = false\nproperties = { container_kind = \"fresh\" }\n");
    TestServer::start(&config.toml())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executed_action_metadata_timestamps_are_in_order_in_a_container() {
    if !docker_ready() {
        return;
    }
    let mut server = warm_and_fresh();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_actions_report_cpu_and_peak_memory_from_their_cgroup() {
    use prost::Message;
    use re_proto::re_server::v1::ResourceUsage;
    if !docker_ready() {
        return;
    }
    let mut server = warm_and_fresh();
    let ch = server.channel().await;
    for kind in ["warm", "fresh"] {
        // About 0.4 s of CPU and a 40 MiB buffer filled over and over.
        let mut spec =
            in_image("dd if=/dev/zero of=/dev/null bs=40M count=1000000 2>/dev/null & sleep 1.5; kill $!; wait; true");
        spec.platform.push(("container_kind".into(), kind.into()));
        spec.salt = format!("usage-{kind}");
        let (resp, _) = run_ok(&ch, &spec).await;
        let meta = resp.result.unwrap().execution_metadata.unwrap();
        let any = meta
            .auxiliary_metadata
            .iter()
            .find(|a| a.type_url == "type.googleapis.com/re_server.v1.ResourceUsage")
            .unwrap_or_else(|| panic!("{kind}: no ResourceUsage in {meta:?}"));
        let usage = ResourceUsage::decode(any.value.as_slice()).unwrap();
        let secs =
            |d: &Option<prost_types::Duration>| d.as_ref().map_or(0.0, |d| d.seconds as f64 + d.nanos as f64 / 1e9);
        let cpu = secs(&usage.user_cpu) + secs(&usage.system_cpu);
        assert!(["cgroup", "sampled"].contains(&usage.source.as_str()), "{kind}: {usage:?}");
        assert!(cpu > 0.3, "{kind}: dd ran for 1.5 s: {usage:?}");
        assert!(usage.peak_memory_bytes >= 40 << 20, "{kind}: dd held 40 MiB: {usage:?}");
        if kind == "warm" {
            assert_eq!(usage.source, "cgroup", "the warm wrapper reads the cgroup");
        }
    }
    stop_and_expect_no_leak(&mut server, None);
}
