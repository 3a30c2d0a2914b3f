//! Operating the pool, against the real binary: the status API and its
//! controls (drain, abort, add), per-action resource usage, worker logs,
//! `/metrics` read by promtool and scraped by a real Prometheus, and the
//! live page in headless Chromium.
#[path = "../common/mod.rs"]
mod common;
#[path = "../exec_support/mod.rs"]
mod exec_support;

mod browser;
mod logs;
mod metrics;
mod page;
mod prometheus;
mod steering;
mod usage;

use std::future::Future;
use std::time::{Duration, Instant};

use common::http;
use common::{ServerConfig, TestServer};
use exec_support::*;
use re_proto::reapi::ExecuteResponse;
use serde_json::Value;
use tonic::transport::Channel;

/// The admin token the tests configure (at least 16 characters).
const TOKEN: &str = "test-admin-token-0123456789";

/// A server with `workers` host workers and the admin token configured.
fn server_with(workers: u32, pool: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = ServerConfig::memory()
        .server(&format!("admin_token_file = \"{}\"", token.display()))
        .pool(pool)
        .host_workers(workers)
        .toml();
    (TestServer::start(&config), dir)
}

async fn pool_status(server: &TestServer) -> Value {
    let r = http::get(&format!("{}/api/workers/status", server.http_url()), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The worker entry with `id`.
fn worker<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["workers"].as_array().unwrap().iter().find(|w| w["worker_id"] == id).unwrap_or_else(|| panic!("{status}"))
}

/// Polls `check` every 100 ms until it returns Some, for at most `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of the worker running the action with `digest_hash`.
async fn worker_running(server: &TestServer, digest_hash: &str) -> String {
    wait_for(Duration::from_secs(30), "the action to start", || async {
        let s = pool_status(server).await;
        s["workers"].as_array().unwrap().iter().find_map(|w| {
            let d = w["action"]["digest"].as_str()?;
            d.starts_with(digest_hash).then(|| w["worker_id"].as_str().unwrap().to_string())
        })
    })
    .await
}

/// Starts `spec` in the background; its answer comes through the handle.
async fn start(
    ch: &Channel,
    spec: &ActionSpec,
    opts: ExecOpts,
) -> (String, tokio::task::JoinHandle<Result<ExecuteResponse, tonic::Status>>) {
    let digest = spec.upload(ch, "").await;
    let ch = ch.clone();
    let d = digest.clone();
    let handle = tokio::spawn(async move { run(&ch, "", &d, &opts).await.map(|(_, r)| r) });
    (digest.hash, handle)
}

fn code_of(resp: &ExecuteResponse) -> (i32, String) {
    let s = resp.status.clone().unwrap_or_default();
    (s.code, s.message)
}
