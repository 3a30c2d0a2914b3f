//! Infrastructure failures during an action: the warm container removed
//! from outside. The worker is FAILED and replaced, the action is retried on
//! the replacement, and after `crashes_max` losses it fails with the last
//! error. An action's own failure is never retried.
use common::http;
use serde_json::Value;

use super::*;

async fn pool_status(server: &TestServer) -> Value {
    http::get(&format!("{}/api/workers/status", server.http_url()), None).await.json()
}

/// Waits for a worker to run the action `hash` in a container not among
/// `not`; returns the worker and the container.
async fn running_in(server: &TestServer, hash: &str, not: &[String]) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = pool_status(server).await;
        let found = s["workers"].as_array().unwrap().iter().find_map(|w| {
            let ours = w["action"]["digest"].as_str()?.starts_with(hash);
            let container = w["container_id"].as_str()?;
            let new = !not.iter().any(|c| c == container);
            (ours && new).then(|| (w["worker_id"].as_str().unwrap().to_string(), container.to_string()))
        });
        if let Some(f) = found {
            return f;
        }
        assert!(Instant::now() < deadline, "the action never ran in a container: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_during_an_action_fails_its_worker_and_the_action_is_retried() {
    if !docker_ready() {
        return;
    }
    let mut server = TestServer::start(&ServerConfig::memory().docker_workers(IMAGE, "warm = true\n").toml());
    let ch = server.channel().await;
    let mut spec = in_image("sleep 3; echo done");
    spec.salt = "rm-f".into();
    let digest = spec.upload(&ch, "").await;
    let running = {
        let (ch, d) = (ch.clone(), digest.clone());
        tokio::spawn(async move { run(&ch, "", &d, &ExecOpts::default()).await })
    };
    let (lost_worker, container) = running_in(&server, &digest.hash, &[]).await;
    docker(&["rm", "-f", &container]);

    // The worker shows FAILED with the reason until its replacement starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let s = pool_status(&server).await;
        let w = s["workers"].as_array().unwrap().iter().find(|w| w["worker_id"] == lost_worker.as_str()).cloned();
        if let Some(w) = w.filter(|w| w["state"] == "FAILED") {
            break w["reason"].as_str().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < deadline, "{lost_worker} never showed FAILED: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("container"), "the reason names what was lost: {reason}");

    let (_, resp) = running.await.unwrap().expect("execute");
    assert_eq!(status(&resp).0, 0, "the retried action succeeded: {:?}", resp.status);
    let result = resp.result.as_ref().unwrap();
    assert_eq!(result.exit_code, 0);
    let out = read_blob(&ch, "", result.stdout_digest.as_ref().unwrap()).await;
    assert_eq!(&out[..], b"done\n");
    let replacement = worker_of(&resp);
    assert_ne!(replacement, lost_worker, "the retry ran on the replacement");

    let s = pool_status(&server).await;
    let ids: Vec<&str> = s["workers"].as_array().unwrap().iter().map(|w| w["worker_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [replacement.as_str()], "the failed worker was replaced: {s}");
    let recent = http::get(&format!("{}/api/actions/recent", server.http_url()), None).await.json();
    let last = &recent["actions"][0];
    assert_eq!(last["attempts"], 2, "{last}");
    assert_eq!(last["outcome"], "succeeded", "{last}");
    let metrics = common::http::parse_metrics(&http::get(&format!("{}/metrics", server.http_url()), None).await.body);
    assert_eq!(metrics["re_server_actions_retried_total"], 1.0);

    // An action's own failure is its result, not a worker's: never retried.
    let mut failing = in_image("exit 7");
    failing.salt = "own-failure".into();
    let (resp, _) = run_spec(&ch, "", &failing, &ExecOpts::default()).await.unwrap();
    assert_eq!(resp.result.as_ref().unwrap().exit_code, 7);
    let recent = http::get(&format!("{}/api/actions/recent", server.http_url()), None).await.json();
    assert_eq!(recent["actions"][0]["attempts"], 1);
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_lost_crashes_max_times_fails_with_the_last_error() {
    if !docker_ready() {
        return;
    }
    let config = ServerConfig::memory().pool("crashes_max = 2").docker_workers(IMAGE, "warm = true\n").toml();
    let mut server = TestServer::start(&config);
    let ch = server.channel().await;
    let mut spec = in_image("sleep 30");
    spec.salt = "crashes".into();
    let digest = spec.upload(&ch, "").await;
    let running = {
        let (ch, d) = (ch.clone(), digest.clone());
        tokio::spawn(async move { run(&ch, "", &d, &ExecOpts::default()).await })
    };
    let mut removed = Vec::new();
    for _ in 0..2 {
        let (_, container) = running_in(&server, &digest.hash, &removed).await;
        docker(&["rm", "-f", &container]);
        removed.push(container);
    }
    let (_, resp) = tokio::time::timeout(Duration::from_secs(60), running).await.expect("gives up").unwrap().unwrap();
    let (code, message) = status(&resp);
    assert_eq!(code, tonic::Code::Unavailable as i32, "{message}");
    assert!(message.contains("lost with its worker 2 times"), "{message}");
    assert!(message.contains("container"), "the last error is in the message: {message}");
    assert_ne!(removed[0], removed[1]);
    let recent = http::get(&format!("{}/api/actions/recent", server.http_url()), None).await.json();
    assert_eq!(recent["actions"][0]["outcome"], "lost", "{recent}");
    assert_eq!(recent["actions"][0]["attempts"], 2, "{recent}");
    stop_and_expect_no_leak(&mut server, None);
}
