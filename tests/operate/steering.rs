//! Drain, abort and add through the status API, and what each does to the
//! pool and to the clients whose actions were running.
use std::time::Duration;

use serde_json::json;

use super::*;

#[tokio::test]
async fn a_drained_worker_finishes_its_action_takes_no_other_and_stops() {
    let (server, _token) = server_with(2, "");
    let ch = server.channel().await;
    let url = server.http_url();
    let mut slow = ActionSpec::sh("sleep 2; echo finished");
    slow.salt = "drain".into();
    let (hash, running) = start(&ch, &slow, ExecOpts::default()).await;
    let drained = worker_running(&server, &hash).await;

    let r = http::post(&format!("{url}/api/workers/{drained}/drain"), json!({}), Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = pool_status(&server).await;
    assert_eq!(worker(&status, &drained)["state"], "DRAINING", "{status}");

    // While it drains, every new action goes to the other worker.
    for i in 0..3 {
        let mut quick = ActionSpec::sh("true");
        quick.salt = format!("after-drain-{i}");
        let (resp, _) = run_spec(&ch, "", &quick, &ExecOpts::default()).await.unwrap();
        let ran_on = resp.result.unwrap().execution_metadata.unwrap().worker;
        assert_ne!(ran_on, drained, "a draining worker took a new action");
    }
    let resp = running.await.unwrap().expect("the drained worker's action");
    assert_eq!(code_of(&resp).0, 0, "{:?}", resp.status);
    assert_eq!(resp.result.as_ref().unwrap().exit_code, 0);

    let state = wait_for(Duration::from_secs(10), "the drained worker to stop", || async {
        let s = pool_status(&server).await;
        let w = worker(&s, &drained).clone();
        (w["state"] == "DEAD").then_some(w)
    })
    .await;
    assert_eq!(state["tasks_done"], 1, "{state}");
    let status = pool_status(&server).await;
    assert_eq!(status["limits"]["active"], 1, "{status}");
}

#[tokio::test]
async fn abort_needs_the_token_and_gives_the_client_aborted() {
    let (server, _token) = server_with(1, "");
    let ch = server.channel().await;
    let url = server.http_url();
    let mut slow = ActionSpec::sh("sleep 30");
    slow.salt = "abort".into();
    let (hash, running) = start(&ch, &slow, ExecOpts::default()).await;
    let id = worker_running(&server, &hash).await;
    let abort = format!("{url}/api/workers/{id}/abort");

    let r = http::post(&abort, json!({}), None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("admin token"), "{}", r.body);
    let r = http::post(&abort, json!({}), Some("test-admin-token-012345678X")).await;
    assert_eq!(r.status, 401, "a wrong token of the right length: {}", r.body);
    assert!(!running.is_finished(), "a refused abort stopped the action");

    let started = std::time::Instant::now();
    let r = http::post(&abort, json!({}), Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resp = tokio::time::timeout(Duration::from_secs(10), running).await.expect("abort is prompt").unwrap().unwrap();
    let (code, message) = code_of(&resp);
    assert_eq!(code, tonic::Code::Aborted as i32, "{message}");
    assert!(message.contains("aborted by an operator"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The worker itself carries on.
    let (resp, out) = run_spec(&ch, "", &ActionSpec::sh("echo still here"), &ExecOpts::default()).await.unwrap();
    assert_eq!(code_of(&resp).0, 0);
    assert_eq!(out, "still here\n");
    let r = http::post(&abort, json!({}), Some(TOKEN)).await;
    assert_eq!(r.status, 409, "an idle worker has nothing to abort: {}", r.body);
    let r = http::post(&format!("{url}/api/workers/no-such-worker/abort"), json!({}), Some(TOKEN)).await;
    assert_eq!(r.status, 404, "{}", r.body);

    let recent = http::get(&format!("{url}/api/actions/recent"), None).await.json();
    let aborted = recent["actions"].as_array().unwrap().iter().find(|a| a["outcome"] == "aborted");
    assert!(aborted.is_some(), "{recent}");
}

#[tokio::test]
async fn without_a_configured_token_every_control_is_refused() {
    let server = TestServer::start(&ServerConfig::memory().host_workers(1).toml());
    let url = server.http_url();
    let r = http::post(&format!("{url}/api/workers/host-worker-1/drain"), json!({}), Some(TOKEN)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("admin_token_file"), "{}", r.body);
    // Reads stay open on loopback.
    let status = pool_status(&server).await;
    assert_eq!(worker(&status, "host-worker-1")["state"], "RUNNING", "{status}");
}

#[tokio::test]
async fn adding_a_worker_checks_the_machines_memory_unless_forced() {
    // The second group claims far more memory than any machine here has.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = ServerConfig::memory()
        .server(&format!("admin_token_file = \"{}\"", token.display()))
        .workers("[[execution.pool.workers]]\ntype = \"host\"\nname = \"small\"\ncount = 1\n")
        .workers(
            "[[execution.pool.workers]]\ntype = \"host\"\nname = \"huge\"\ncount = 0\n\
             memory_per_worker_bytes = 1125899906842624\n",
        )
        .toml();
    let server = TestServer::start(&config);
    let ch = server.channel().await;
    let add = format!("{}/api/workers/add", server.http_url());

    let r = http::post(&add, json!({"group": "small"}), None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http::post(&add, json!({"group": "small"}), Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let small = r.json()["worker_id"].as_str().unwrap().to_string();

    let r = http::post(&add, json!({"group": "huge"}), Some(TOKEN)).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("needs 1073741824 MiB"), "{}", r.body);
    let r = http::post(&add, json!({"group": "huge", "force": true}), Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let huge = r.json()["worker_id"].as_str().unwrap().to_string();
    let r = http::post(&add, json!({"group": "nope"}), Some(TOKEN)).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("small") && r.body.contains("huge"), "names the groups: {}", r.body);

    let status = wait_for(Duration::from_secs(10), "the added workers to run", || async {
        let s = pool_status(&server).await;
        let up = [&small, &huge].iter().all(|id| worker(&s, id)["state"] == "RUNNING");
        up.then_some(s)
    })
    .await;
    assert_eq!(status["limits"]["active"], 3, "{status}");
    assert_eq!(worker(&status, &huge)["group"], "huge");

    // Three actions at once: each added worker takes one.
    let mut handles = Vec::new();
    for i in 0..3 {
        let mut spec = ActionSpec::sh("sleep 1");
        spec.salt = format!("added-{i}");
        handles.push(start(&ch, &spec, ExecOpts::default()).await.1);
    }
    let mut ran_on = std::collections::BTreeSet::new();
    for h in handles {
        let resp = h.await.unwrap().unwrap();
        assert_eq!(code_of(&resp).0, 0);
        ran_on.insert(resp.result.unwrap().execution_metadata.unwrap().worker);
    }
    assert_eq!(ran_on.len(), 3, "{ran_on:?}");
}
