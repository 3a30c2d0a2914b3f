//! Real Bazel 4.2.3 builds the genrules and runs an sh_test of the project's
//! workspace with `container-image=docker://re-server-test/busybox:latest`:
//! the pool has only docker workers, so every remote action ran in a
//! container of the real engine. Afterwards none of the server's containers
//! is left.
mod bazel_support;
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bazel_support::{outputs, BazelWorkspace};
use common::ServerConfig;

const IMAGE: &str = "re-server-test/busybox:latest";

/// Everything but the cc_binary (the autodetected C++ toolchain needs the host's gcc).
const TARGETS: [&str; 11] = [
    "//:gen_a",
    "//:gen_b",
    "//:gen_c",
    "//:gen_d",
    "//:gen_e",
    "//:gen_parts",
    "//:gen_f",
    "//:gen_exec",
    "//:gen_big",
    "//:gen_big_sum",
    "//:big_test",
];

fn docker_ready() -> bool {
    if !common::require_tool("bazel") || !common::require_tool("docker") {
        return false;
    }
    let ok = Command::new("docker").args(["image", "inspect", IMAGE]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "docker image {IMAGE} missing and CI=true");
        eprintln!("\nSKIPPED: docker image {IMAGE} missing (run .ci/setup-env.sh)\n");
    }
    ok
}

/// Containers labelled by a re-server whose worker directories are under `data`.
fn our_containers(data: &Path) -> Vec<String> {
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", "label=re-server=1", "--format", "{{.ID}} {{.Label \"re-server.dir\"}}"])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, dir)| Path::new(dir).starts_with(&data))
        .map(|(id, _)| id.to_string())
        .collect()
}

#[test]
fn bazel_runs_genrules_and_tests_in_docker_containers() {
    if !docker_ready() {
        return;
    }
    let config = ServerConfig::filesystem().instance("docker").docker_workers(
        IMAGE,
        "count = 2\nwarm = true\nnetwork_mode = \"none\"\nuser = \"1000:1000\"\ncpu_limit = 1.0\nmemory_limit = 536870912\n",
    );
    let mut server = common::TestServer::start(&config.toml());
    let ws = BazelWorkspace::new();
    let exec = format!("--remote_executor={}", server.grpc_url());
    let image = format!("--remote_default_exec_properties=container-image=docker://{IMAGE}");
    let remote = [
        exec.as_str(),
        "--remote_instance_name=docker",
        "--spawn_strategy=remote",
        "--remote_local_fallback=false",
        "--remote_timeout=300",
        image.as_str(),
    ];
    let mut targets: Vec<&str> = TARGETS.to_vec();
    targets.push("//:genrules_test");

    let r = ws.run("test", &[&targets[..], &remote[..]].concat());
    assert!(r.success, "bazel test in containers failed:\n{}\nserver logs:\n{}", r.output, server.logs());
    assert!(r.output.contains("2 tests pass"), "{}", r.output);
    let p = r.processes();
    // 10 genrules + 2 test runs (+ Bazel's own test-result actions, also remote).
    assert!(p.get("remote").copied().unwrap_or(0) >= 12, "{}", r.summary_line());
    let local: Vec<_> = p.keys().filter(|k| *k != "remote" && *k != "internal").collect();
    assert!(local.is_empty(), "something did not run remotely: {}", r.summary_line());

    // The outputs the containers made are the expected bytes.
    let got = outputs(&ws.bazel_bin());
    let file = |suffix: &str| got.iter().find(|(k, _)| k.ends_with(suffix)).map(|(_, v)| v.clone());
    let big = file("big.txt").expect("big.txt");
    assert_eq!(big.len(), 41_943_040);
    assert_eq!(common::sha256_hex(&big), "417ea340341f113af076d959328e972caa33c2fb5aa81ee6e50811ef8b64242d");
    let greet = got.keys().find(|k| k.ends_with("greet.sh")).expect("greet.sh");
    let mode = std::fs::metadata(ws.bazel_bin().join(greet)).unwrap();
    assert!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111 != 0, "greet.sh lost its x bit");

    // The warm containers of this pool are up; they go with the server.
    let data = server.data_dir().to_path_buf();
    assert!(!our_containers(&data).is_empty(), "warm containers should be up while the server runs");
    drop(ws);
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !our_containers(&data).is_empty() {
        assert!(Instant::now() < deadline, "containers left after the server stopped: {:?}", our_containers(&data));
        std::thread::sleep(Duration::from_millis(500));
    }
}
