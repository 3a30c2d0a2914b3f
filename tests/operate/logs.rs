//! The server's logs: one file per worker under `<data_dir>/logs`, and the
//! server log as JSON lines for log shippers.
use super::*;

#[tokio::test]
async fn each_worker_logs_what_it_ran_to_its_own_file() {
    let (server, _token) = server_with(2, "");
    let ch = server.channel().await;
    let mut spec = ActionSpec::sh("echo hi");
    spec.salt = "logged".into();
    let digest = spec.upload(&ch, "").await;
    let opts = ExecOpts { mnemonic: Some("Genrule".into()), ..Default::default() };
    let (_, resp) = run(&ch, "", &digest, &opts).await.unwrap();
    let ran_on = resp.result.unwrap().execution_metadata.unwrap().worker;

    let logs = server.data_dir().join("logs");
    let own = std::fs::read_to_string(logs.join(format!("worker_{ran_on}.log"))).expect("the worker's log file");
    let started = own.lines().find(|l| l.contains("action started")).unwrap_or_else(|| panic!("{own}"));
    assert!(started.contains(&digest.hash), "{started}");
    assert!(started.contains("Genrule"), "{started}");
    assert!(own.lines().any(|l| l.contains("action finished") && l.contains("exit_code=0")), "{own}");
    assert!(own.contains("from=\"STARTING\" to=\"RUNNING\"") || own.contains("to=RUNNING"), "state changes: {own}");
    let other = if ran_on == "host-worker-1" { "host-worker-2" } else { "host-worker-1" };
    let theirs = std::fs::read_to_string(logs.join(format!("worker_{other}.log"))).unwrap_or_default();
    assert!(!theirs.contains(&digest.hash), "another worker's action in {other}'s log: {theirs}");
    // The server log has it too.
    assert!(server.logs().contains("action started"), "server log");
}

#[tokio::test]
async fn log_format_json_writes_one_object_a_line() {
    let config = ServerConfig::memory().host_workers(1).toml();
    let server = TestServer::start_wrapped(&config, &[], &["sh", "-c", "exec {server} --log-format json"]);
    let ch = server.channel().await;
    let (resp, _) = run_spec(&ch, "", &ActionSpec::sh("true"), &ExecOpts::default()).await.unwrap();
    assert_eq!(code_of(&resp).0, 0);
    let logs = server.logs();
    let mut messages = Vec::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        messages.push(v["fields"]["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m.starts_with("Starting server on 127.0.0.1:")), "{messages:?}");
    assert!(messages.iter().any(|m| m == "action finished"), "{messages:?}");
}
