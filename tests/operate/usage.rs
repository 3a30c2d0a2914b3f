//! What an action used: in its ExecutedActionMetadata (our documented
//! ResourceUsage message), in the status API while it runs, and in the
//! recent-actions list afterwards.
use std::time::Duration;

use prost::Message;
use re_proto::re_server::v1::ResourceUsage;

use super::*;

const TYPE_URL: &str = "type.googleapis.com/re_server.v1.ResourceUsage";

fn usage_of(resp: &ExecuteResponse) -> ResourceUsage {
    let meta = resp.result.as_ref().unwrap().execution_metadata.as_ref().unwrap();
    let any = meta.auxiliary_metadata.iter().find(|a| a.type_url == TYPE_URL).expect("ResourceUsage attached");
    ResourceUsage::decode(any.value.as_slice()).expect("decodes with proto/re_server/v1/resource_usage.proto")
}

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    d.as_ref().map(|d| d.seconds as f64 + d.nanos as f64 / 1e9).unwrap_or(0.0)
}

#[tokio::test]
async fn host_actions_report_cpu_and_peak_memory_of_their_processes() {
    let (server, _token) = server_with(1, "");
    let ch = server.channel().await;
    // A child burns CPU for about half a second; another fills a 64 MiB buffer.
    let mut spec = ActionSpec::sh(
        "end=$(($(date +%s%N) + 500000000)); while [ $(date +%s%N) -lt $end ]; do :; done & \
         dd if=/dev/zero of=/dev/null bs=64M count=4 2>/dev/null; wait",
    );
    spec.salt = "usage".into();
    let (resp, _) = run_spec(&ch, "", &spec, &ExecOpts::default()).await.unwrap();
    assert_eq!(code_of(&resp).0, 0, "{:?}", resp.status);
    let usage = usage_of(&resp);
    assert_eq!(usage.source, "wait4");
    let cpu = secs(&usage.user_cpu) + secs(&usage.system_cpu);
    assert!(cpu > 0.3, "the busy loop used about 0.5 s of CPU: {usage:?}");
    assert!(usage.peak_memory_bytes >= 64 << 20, "dd held 64 MiB: {usage:?}");
    assert!(usage.peak_memory_bytes < 1 << 30, "{usage:?}");

    // A trivial action's peak is its own, not a copy of the server's size
    // (host actions are forked from the small spawner process).
    let (resp, _) = run_spec(&ch, "", &ActionSpec::sh("true"), &ExecOpts::default()).await.unwrap();
    let small = usage_of(&resp);
    assert!(small.peak_memory_bytes < 8 << 20, "{small:?}");
    assert!(secs(&small.user_cpu) < 0.3, "{small:?}");
}

#[tokio::test]
async fn a_running_action_shows_its_pid_and_usage_and_the_recent_list_its_end() {
    let (server, _token) = server_with(1, "");
    let ch = server.channel().await;
    let url = server.http_url();
    let opts =
        ExecOpts { mnemonic: Some("CppCompile".into()), target: Some("//pkg:hello".into()), ..Default::default() };
    let mut spec = ActionSpec::sh(
        "dd if=/dev/zero of=/dev/null bs=48M count=100000000 2>/dev/null & sleep 3; kill $!; wait; true",
    );
    spec.salt = "live".into();
    let (hash, running) = start(&ch, &spec, opts.clone()).await;
    let id = worker_running(&server, &hash).await;

    // Sampled once a second while it runs.
    let w = wait_for(Duration::from_secs(10), "a usage sample", || async {
        let s = pool_status(&server).await;
        let w = worker(&s, &id).clone();
        (w["memory"].as_u64().unwrap_or(0) >= 48 << 20 && w["cpu"].as_f64().unwrap_or(0.0) > 0.0).then_some(w)
    })
    .await;
    let pid = w["pid"].as_u64().expect("a host action has a pid") as i32;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} is the action's");
    assert_eq!(w["action"]["mnemonic"], "CppCompile", "{w}");
    assert_eq!(w["action"]["target"], "//pkg:hello", "{w}");
    assert!(w["action"]["digest"].as_str().unwrap().starts_with(&hash), "{w}");
    assert!(w["heartbeat_age_seconds"].as_f64().unwrap() < 2.0, "{w}");
    assert_eq!(w["stalled"], false);
    running.await.unwrap().unwrap();

    // A failure keeps the end of its stderr.
    let mut failing = ActionSpec::sh(
        "i=0; while [ $i -lt 300 ]; do echo \"line $i of the compiler's complaint\" >&2; i=$((i+1)); done; exit 3",
    );
    failing.salt = "fails".into();
    let (resp, _) = run_spec(&ch, "", &failing, &opts).await.unwrap();
    assert_eq!(resp.result.as_ref().unwrap().exit_code, 3);

    let recent = http::get(&format!("{url}/api/actions/recent?limit=2"), None).await.json();
    let actions = recent["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "{recent}");
    let (last, first) = (&actions[0], &actions[1]);
    assert_eq!(last["outcome"], "failed", "{last}");
    assert_eq!(last["exit_code"], 3);
    assert_eq!(last["mnemonic"], "CppCompile");
    assert_eq!(last["target"], "//pkg:hello");
    assert_eq!(last["worker"], id.as_str());
    let tail = last["stderr_tail"].as_str().unwrap();
    assert_eq!(tail.chars().count(), 1000, "{tail}");
    assert!(tail.ends_with("line 299 of the compiler's complaint\n"), "{tail}");
    assert_eq!(first["outcome"], "succeeded", "{first}");
    assert_eq!(first["stderr_tail"], "", "successes keep no stderr");
    assert!(first["run_seconds"].as_f64().unwrap() >= 3.0, "{first}");
    assert!(first["peak_memory_bytes"].as_u64().unwrap() >= 48 << 20, "{first}");
    assert!(first["cpu_seconds"].as_f64().unwrap() > 0.1, "{first}");
    assert!(first["queued_seconds"].as_f64().unwrap() >= 0.0);
}
