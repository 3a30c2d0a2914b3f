//! A real Prometheus scrapes the server; PromQL sees the queue and the
//! action counters.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

/// Prometheus, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_prometheus(target: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: re-server\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus");
    let p = Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
    let ready = format!("{}/-/ready", p.url);
    wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
        let ready = ready.clone();
        async move {
            let r = tokio::task::spawn_blocking(move || ureq::get(&ready).call().ok()).await.unwrap();
            r.filter(|r| r.status() == 200).map(|_| ())
        }
    })
    .await;
    p
}

/// The value of a PromQL query's single sample, once there is one.
async fn query(p: &Prometheus, promql: &str) -> Option<f64> {
    let url = format!("{}/api/v1/query?query={}", p.url, urlencode(promql));
    let v = http::get(&url, None).await.json();
    assert_eq!(v["status"], "success", "{v}");
    let result = v["data"]["result"].as_array()?.first()?.clone();
    result["value"][1].as_str()?.parse().ok()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_the_queue_and_the_action_counters() {
    if !common::require_tool("prometheus") {
        return;
    }
    let (server, _token) = server_with(1, "");
    let ch = server.channel().await;
    let prom = start_prometheus(server.http_addr.as_deref().unwrap()).await;
    let up = wait_for(Duration::from_secs(30), "the first scrape", || async {
        query(&prom, "up{job=\"re-server\"}").await.filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(up, 1.0);

    // One worker, three 4-second actions: two wait in the queue.
    let mut running = Vec::new();
    for i in 0..3 {
        let mut spec = ActionSpec::sh("sleep 4");
        spec.salt = format!("prometheus-{i}");
        running.push(start(&ch, &spec, ExecOpts::default()).await.1);
    }
    let queued = wait_for(Duration::from_secs(15), "Prometheus to see two queued actions", || async {
        query(&prom, "sum(re_server_queued_actions)").await.filter(|v| *v == 2.0)
    })
    .await;
    assert_eq!(queued, 2.0);
    let busy = query(&prom, "re_server_workers{state=\"RUNNING\",type=\"host\"}").await;
    assert_eq!(busy, Some(1.0));

    for r in running {
        assert_eq!(code_of(&r.await.unwrap().unwrap()).0, 0);
    }
    let done = wait_for(Duration::from_secs(15), "Prometheus to count three finished actions", || async {
        query(&prom, "re_server_actions_finished_total{outcome=\"succeeded\"}").await.filter(|v| *v == 3.0)
    })
    .await;
    assert_eq!(done, 3.0);
    let started = query(&prom, "re_server_actions_started_total").await;
    assert_eq!(started, Some(3.0));
    let queue_now = wait_for(Duration::from_secs(15), "the queue to empty", || async {
        query(&prom, "sum(re_server_queued_actions)").await.filter(|v| *v == 0.0)
    })
    .await;
    assert_eq!(queue_now, 0.0);
}
