//! Worker agents on "other machines": the server in one Linux network
//! namespace, two agents in two others that reach it only through veth
//! pairs, Bazel in the test's own namespace through a third pair. Real
//! Bazel builds run every action on the agents; a second build of new
//! targets sharing inputs shows the agents' cache hits in the metrics; an
//! agent killed with SIGKILL in the middle of an action costs the build
//! nothing; an agent with an unknown token is refused. The namespaces, veth
//! pairs and addresses are made here and removed afterwards.
mod agent_support;
mod bazel_support;
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::Agent;
use bazel_support::BazelWorkspace;
use common::{ServerConfig, TestServer};

const BUILDER: &str = "netns-builder-0123456789";
const AGENT: &str = "netns-agent-0123456789ab";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Three namespaces joined to each other only through the server's one:
/// `server` (10.213.0.2 towards the test, 10.213.1.1 and 10.213.2.1 towards
/// the agents), `agent1` (10.213.1.2), `agent2` (10.213.2.2).
struct Network {
    server: String,
    agents: [String; 2],
    host_veth: String,
}

impl Network {
    fn create() -> Self {
        let id = std::process::id();
        let net = Network {
            server: format!("re{id}s"),
            agents: [format!("re{id}a1"), format!("re{id}a2")],
            host_veth: format!("vr{id}"),
        };
        for ns in [&net.server, &net.agents[0], &net.agents[1]] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let s = net.server.as_str();
        let server_side = format!("vs{id}");
        ip(&["link", "add", &net.host_veth, "type", "veth", "peer", "name", &server_side, "netns", s]);
        ip(&["addr", "add", "10.213.0.1/24", "dev", &net.host_veth]);
        ip(&["link", "set", &net.host_veth, "up"]);
        ip(&["-n", s, "addr", "add", "10.213.0.2/24", "dev", &server_side]);
        ip(&["-n", s, "link", "set", &server_side, "up"]);
        for (i, ns) in net.agents.iter().enumerate() {
            let n = i + 1;
            let (a, b) = (format!("va{n}{id}"), format!("vb{n}{id}"));
            ip(&["link", "add", &a, "netns", s, "type", "veth", "peer", "name", &b, "netns", ns]);
            ip(&["-n", s, "addr", "add", &format!("10.213.{n}.1/24"), "dev", &a]);
            ip(&["-n", s, "link", "set", &a, "up"]);
            ip(&["-n", ns, "addr", "add", &format!("10.213.{n}.2/24"), "dev", &b]);
            ip(&["-n", ns, "link", "set", &b, "up"]);
        }
        net
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and their peers.
        for ns in [&self.server, &self.agents[0], &self.agents[1]] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.host_veth]).output();
    }
}

fn metrics(net: &Network, server: &TestServer) -> BTreeMap<String, f64> {
    let url = format!("http://{}/metrics", server.http_addr.as_deref().unwrap());
    let out = Command::new("ip").args(["netns", "exec", &net.server, "curl", "-sf", &url]).output().unwrap();
    assert!(out.status.success(), "metrics: {}", String::from_utf8_lossy(&out.stderr));
    common::http::parse_metrics(&String::from_utf8_lossy(&out.stdout))
}

fn sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

/// How many leases each agent has taken so far.
fn leases_taken(agents: &[Agent]) -> Vec<usize> {
    agents.iter().map(|a| a.logs().matches("lease taken").count()).collect()
}

#[test]
fn bazel_builds_through_agents_in_other_network_namespaces() {
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !common::require_tool("ip") || !common::require_tool("bazel") || !common::require_tool("curl") {
        assert!(std::env::var("CI").as_deref() != Ok("true") || root, "CI=true: this test needs root for ip netns");
        eprintln!("SKIPPED: needs root, ip (iproute2), curl and bazel");
        return;
    }
    let net = Network::create();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{BUILDER} cache-read,cache-write,execute\n{AGENT} worker\n")).unwrap();
    let config = ServerConfig::filesystem()
        .pool("local_workers = false\nagent_session_timeout_seconds = 3\nscheduler_interval_ms = 20")
        .toml();
    let config = format!("{config}\n[server.auth]\ntokens_file = \"{}\"\n", tokens.display());
    let ns = ["ip", "netns", "exec", net.server.as_str(), "sh", "-c", "exec {server}"];
    let server = TestServer::start_listening(&config, &[], &ns, "0.0.0.0:0");
    let port = server.port;

    let agents: Vec<Agent> = net
        .agents
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let url = format!("grpc://10.213.{}.1:{port}", i + 1);
            Agent::start(&url, &format!("agent{}", i + 1), Some(AGENT), &["ip", "netns", "exec", ns])
        })
        .collect();
    let mut agents = agents;
    for a in &agents {
        assert!(a.wait_for_log("session open", Duration::from_secs(30)), "{}", a.logs());
    }
    // An agent with a token the server does not know is refused.
    let mut intruder = Agent::start(
        &format!("grpc://10.213.1.1:{port}"),
        "intruder",
        Some("unknown-0123456789abcd"),
        &["ip", "netns", "exec", &net.agents[0]],
    );
    assert_eq!(intruder.wait_exit(Duration::from_secs(30)), Some(1), "{}", intruder.logs());
    assert!(intruder.logs().contains("not in the server's tokens file"), "{}", intruder.logs());

    let ws = BazelWorkspace::new();
    let flags = [
        format!("--remote_executor=grpc://10.213.0.2:{port}"),
        format!("--remote_header=authorization=Bearer {BUILDER}"),
        "--spawn_strategy=remote".into(),
        "--remote_local_fallback=false".into(),
        "--remote_default_exec_properties=OSFamily=linux".into(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let build = |targets: &[&str]| {
        let r = ws.run("build", &[targets, &flags[..]].concat());
        assert!(r.success, "build failed:\n{}\nserver:\n{}", r.output, server.logs());
        for local in ["linux-sandbox", "local", "processwrapper-sandbox"] {
            assert!(!r.processes().contains_key(local), "ran outside the agents: {}", r.summary_line());
        }
        r
    };

    // 1. The whole workspace, every action on an agent.
    let r = build(&["//..."]);
    let remote = r.processes().get("remote").copied().unwrap_or(0);
    eprintln!("first build: {}", r.summary_line());
    assert!(remote >= 10, "{}", r.summary_line());
    let m = metrics(&net, &server);
    assert!(sum(&m, "re_server_actions_finished_total{outcome=\"succeeded\"") >= remote as f64, "{m:?}");
    let fetched = sum(&m, "re_server_agent_input_blobs_total{source=\"fetched\"");
    assert!(fetched >= 1.0, "{m:?}");

    // 2. New targets over inputs the agents already hold: cache hits.
    let extra: String = (1..=6)
        .map(|i| {
            format!(
                "genrule(name = \"share_{i}\", srcs = [\"hello.c\", \":gen_a\"], outs = [\"share_{i}.txt\"], \
                 cmd = \"cat $(SRCS) | wc -c > $@; echo {i} >> $@\")\n"
            )
        })
        .collect();
    let build_file = ws.path().join("BUILD");
    let mut text = std::fs::read_to_string(&build_file).unwrap();
    text.push_str(&extra);
    text.push_str(
        "genrule(name = \"slow\", srcs = [\"hello.c\"], outs = [\"slow.txt\"], cmd = \"sleep 6; wc -c < $< > $@\")\n",
    );
    std::fs::write(&build_file, text).unwrap();
    let before = sum(&metrics(&net, &server), "re_server_agent_input_blobs_total{source=\"cache\"");
    let shares: Vec<String> = (1..=6).map(|i| format!("//:share_{i}")).collect();
    let shares: Vec<&str> = shares.iter().map(String::as_str).collect();
    build(&shares);
    let m = metrics(&net, &server);
    let hits = sum(&m, "re_server_agent_input_blobs_total{source=\"cache\"") - before;
    eprintln!("second build: {hits} input blobs found in the agents' caches");
    // Each of the 6 actions reads 2 inputs; each agent fetches one at most once.
    assert!(hits >= 8.0, "only {hits} cache hits: {m:?}");

    // 3. SIGKILL of the agent running an action: the build still succeeds.
    let taken = leases_taken(&agents);
    let retried = sum(&m, "re_server_actions_retried_total");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = done_tx.send(ws.run("build", &[&["//:slow"], &flags[..]].concat()));
        });
        let end = Instant::now() + Duration::from_secs(120);
        let victim = loop {
            let now = leases_taken(&agents);
            if let Some(i) = (0..agents.len()).find(|i| now[*i] > taken[*i]) {
                break i;
            }
            assert!(Instant::now() < end, "no agent took the slow action");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_secs(1));
        agents[victim].kill();
    });
    let r = done_rx.recv().unwrap();
    assert!(r.success, "the build failed after an agent was killed:\n{}\nserver:\n{}", r.output, server.logs());
    let m = metrics(&net, &server);
    assert!(sum(&m, "re_server_actions_retried_total") > retried, "{m:?}");
    let slow = std::fs::read_to_string(ws.bazel_bin().join("slow.txt")).unwrap();
    let hello = std::fs::metadata(ws.path().join("hello.c")).unwrap().len();
    assert_eq!(slow.trim(), hello.to_string());
    drop(agents);
    drop(intruder);
}
