//! Worker agents (`re-server worker`) serving a server's pool over the
//! Remote Workers API: actions run on agents only, inputs an agent already
//! holds are not fetched again (metrics say so), a killed agent's action runs
//! again on another, and an agent without a valid `worker` token is refused.
//! The network-namespace test with real Bazel is in `agents_netns.rs`.
mod agent_support;
mod common;
mod exec_support;

use std::time::{Duration, Instant};

use agent_support::Agent;
use common::http;
use common::{ServerConfig, TestServer};
use exec_support::{run_spec, ActionSpec, ExecOpts};

const BUILDER: &str = "builder-0123456789abcdef";
const AGENT: &str = "agent-0123456789abcdef01";
const READER: &str = "reader-0123456789abcdef0";

/// A server with no local worker; with `tokens`, a builder's, an agent's
/// and a reader's.
fn server(dir: &std::path::Path, session_timeout: u64, tokens: bool) -> TestServer {
    let pool =
        format!("local_workers = false\nagent_session_timeout_seconds = {session_timeout}\nscheduler_interval_ms = 20");
    let config = ServerConfig::memory().pool(&pool).toml();
    if !tokens {
        return TestServer::start(&config);
    }
    let file = dir.join("tokens");
    let lines = format!("{BUILDER} cache-read,cache-write,execute\n{AGENT} worker\n{READER} cache-read\n");
    std::fs::write(&file, lines).unwrap();
    TestServer::start(&format!("{config}\n[server.auth]\ntokens_file = \"{}\"\n", file.display()))
}

/// The agent workers the status API lists: (id, host, state).
async fn agent_workers(server: &TestServer) -> Vec<(String, String, String)> {
    let r = http::get(&format!("{}/api/workers/status", server.http_url()), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let json = r.json();
    json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["type"] == "agent")
        .map(|w| {
            let s = |k: &str| w[k].as_str().unwrap_or_default().to_string();
            (s("worker_id"), s("host"), s("state"))
        })
        .collect()
}

async fn wait_for_agents(server: &TestServer, n: usize) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let live = agent_workers(server).await.into_iter().filter(|w| w.2 != "DEAD").count();
        if live >= n {
            return;
        }
        assert!(
            Instant::now() < end,
            "{n} agents never connected: {:?}\n{}",
            agent_workers(server).await,
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(server: &TestServer) -> std::collections::BTreeMap<String, f64> {
    let r = http::get(&format!("{}/metrics", server.http_url()), None).await;
    assert_eq!(r.status, 200);
    http::parse_metrics(&r.body)
}

fn metric(m: &std::collections::BTreeMap<String, f64>, name: &str, source: &str, worker: &str) -> f64 {
    m.get(&format!("{name}{{source=\"{source}\",worker=\"{worker}\"}}")).copied().unwrap_or(0.0)
}

/// Reads a file of the input, so the action needs it.
fn reads_input(script: &str, input: &[u8]) -> ActionSpec {
    let mut spec = ActionSpec::sh(script);
    spec.input_files = vec![("big.bin".into(), input.to_vec(), false)];
    spec.output_files = vec!["out.txt".into()];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_every_action_and_fetch_each_input_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), 10, false);
    let agent = Agent::start(&server.grpc_url(), "a1", None, &[]);
    wait_for_agents(&server, 1).await;
    let workers = agent_workers(&server).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(workers, vec![("a1/host-worker-1".to_string(), host, "RUNNING".to_string())]);

    let ch = server.channel().await;
    let input = common::pseudo_random(300 << 10, 7);
    let first = reads_input("wc -c < big.bin > out.txt; echo first", &input);
    let (resp, stdout) = run_spec(&ch, "", &first, &ExecOpts::default()).await.unwrap();
    let result = resp.result.expect("result");
    assert_eq!((result.exit_code, stdout.as_str()), (0, "first\n"), "{}", agent.logs());
    assert_eq!(result.execution_metadata.as_ref().unwrap().worker, "a1/host-worker-1");
    let out = common::read_blob(&ch, "", result.output_files[0].digest.as_ref().unwrap()).await;
    assert_eq!(String::from_utf8_lossy(&out).trim(), (300 << 10).to_string());
    let m = metrics(&server).await;
    let w = "a1/host-worker-1";
    assert_eq!(metric(&m, "re_server_agent_input_blobs_total", "fetched", w), 1.0, "{m:?}");
    assert_eq!(metric(&m, "re_server_agent_input_bytes_total", "fetched", w), (300 << 10) as f64);
    assert_eq!(metric(&m, "re_server_agent_input_blobs_total", "cache", w), 0.0);

    // A new action on the same input: nothing to download.
    let second = reads_input("md5sum big.bin > out.txt; echo second", &input);
    let (resp, stdout) = run_spec(&ch, "", &second, &ExecOpts::default()).await.unwrap();
    assert_eq!((resp.result.unwrap().exit_code, stdout.as_str()), (0, "second\n"));
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "re_server_agent_input_blobs_total", "fetched", w), 1.0, "{m:?}");
    assert_eq!(metric(&m, "re_server_agent_input_blobs_total", "cache", w), 1.0, "{m:?}");
    assert_eq!(m.get("re_server_workers{state=\"RUNNING\",type=\"agent\"}"), Some(&1.0), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_lost_with_a_killed_agent_runs_again_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), 3, false);
    let mut agents =
        [Agent::start(&server.grpc_url(), "k1", None, &[]), Agent::start(&server.grpc_url(), "k2", None, &[])];
    wait_for_agents(&server, 2).await;
    let ch = server.channel().await;
    let marker = format!("agent-kill-{}", std::process::id());
    let spec = ActionSpec::sh(&format!("sleep 4; echo {marker}"));
    let run = tokio::spawn(async move { run_spec(&ch, "", &spec, &ExecOpts::default()).await });
    // Kill -9 the agent the action went to, in the middle of it.
    let end = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        if let Some(i) = agents.iter().position(|a| a.logs().contains("lease taken")) {
            break i;
        }
        assert!(Instant::now() < end, "no agent took the action");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    agents[victim].kill();
    let (resp, stdout) = tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap().unwrap();
    let result = resp.result.expect("result");
    assert_eq!((result.exit_code, stdout.trim()), (0, marker.as_str()), "{}", server.logs());
    let survivor = &agents[1 - victim];
    assert_eq!(result.execution_metadata.unwrap().worker, format!("{}/host-worker-1", survivor.name));
    let m = metrics(&server).await;
    assert_eq!(m.get("re_server_actions_retried_total"), Some(&1.0), "{m:?}");
    // The killed agent's process went with it.
    let left = std::process::Command::new("pgrep").args(["-f", &format!("sleep 4; echo {marker}")]).output().unwrap();
    let pids = String::from_utf8_lossy(&left.stdout).trim().to_string();
    assert!(pids.is_empty() || left.status.code() == Some(1), "the killed agent left its action running: {pids}");
    let states = agent_workers(&server).await;
    assert!(states.iter().any(|(id, _, s)| id.starts_with(&agents[victim].name) && s == "DEAD"), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_worker_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), 10, true);
    for (token, why) in [(None, "no token"), (Some("not-a-known-token-0123"), "not in the server's tokens file")] {
        let mut agent = Agent::start(&server.grpc_url(), "bad", token, &[]);
        let code = agent.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(1), "{}", agent.logs());
        assert!(agent.logs().contains(why), "{}", agent.logs());
    }
    let mut reader = Agent::start(&server.grpc_url(), "reader", Some(READER), &[]);
    assert_eq!(reader.wait_exit(Duration::from_secs(30)), Some(1), "{}", reader.logs());
    assert!(reader.logs().contains("needs the 'worker' role"), "{}", reader.logs());
    assert!(agent_workers(&server).await.is_empty());
    // With the worker token it serves.
    let _good = Agent::start(&server.grpc_url(), "good", Some(AGENT), &[]);
    wait_for_agents(&server, 1).await;
}
