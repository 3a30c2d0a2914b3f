//! More than one Docker engine: a second dockerd beside the first, a pool
//! over both, an engine that is down.
use super::*;

/// A second dockerd beside the first: own socket, data root, exec root,
/// containerd namespace and bridge; loaded with the test image.
struct SecondEngine {
    dir: tempfile::TempDir,
    bridge: String,
    /// Also served over TCP with TLS (client certificates required).
    port: u16,
    child: Option<std::process::Child>,
}

impl SecondEngine {
    fn start() -> Option<Self> {
        if !common::require_tool("dockerd") || !common::require_tool("ip") || !common::require_tool("openssl") {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("reb").tempdir_in("/tmp").unwrap();
        let bridge = format!("reb{}", std::process::id() % 100000);
        let sh = |c: &str| Cmd::new("sh").args(["-c", c]).status().unwrap().success();
        // Drop removes the bridge (and stops dockerd) whatever fails below.
        let mut engine = Self { dir, bridge: bridge.clone(), port: 0, child: None };
        assert!(
            sh(&format!(
                "ip link add {bridge} type bridge && ip addr add 10.213.{}.1/24 dev {bridge} && ip link set {bridge} up",
                std::process::id() % 200 + 20
            )),
            "creating bridge {bridge}"
        );
        let d = engine.dir.path().to_path_buf();
        // A CA, a server certificate for 127.0.0.1 and a client certificate.
        assert!(
            sh(&format!(
                "cd {} && (openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=re-test-ca \
                 && openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1 \
                 && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext \
                 && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -days 2 -extfile srv.ext \
                 && openssl req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj /CN=client \
                 && printf 'extendedKeyUsage=clientAuth\\n' > cl.ext \
                 && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 2 -extfile cl.ext \
                 ) >/dev/null 2>&1",
                d.display()
            )),
            "making TLS certificates"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Cmd::new("dockerd")
            .arg("-H")
            .arg(format!("unix://{}/docker.sock", d.display()))
            .args(["-H", &format!("tcp://127.0.0.1:{port}"), "--tlsverify"])
            .arg(format!("--tlscacert={}", d.join("ca.pem").display()))
            .arg(format!("--tlscert={}", d.join("server-cert.pem").display()))
            .arg(format!("--tlskey={}", d.join("server-key.pem").display()))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--containerd-namespace", &format!("{bridge}-ns"), "--containerd-plugins-namespace"])
            .arg(format!("{bridge}-plugins"))
            .args(["--bridge", &bridge, "--iptables=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start second dockerd");
        engine.port = port;
        engine.child = Some(child);
        let host = engine.host();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Cmd::new("docker").args(["-H", &host, "version"]).output().is_ok_and(|o| o.status.success()) {
            assert!(Instant::now() < deadline, "second dockerd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(sh(&format!("docker save {IMAGE} | docker -H {host} load >/dev/null")), "loading the test image");
        Some(engine)
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    /// Worker keys reaching this engine over TCP with TLS.
    fn tls_keys(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "docker_host = \"tcp://127.0.0.1:{}\"\ntls_ca = \"{d}/ca.pem\"\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n",
            self.port
        )
    }

    /// SIGTERM, like stopping the service; waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Cmd::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        self.stop();
        let _ = Cmd::new("ip").args(["link", "del", &self.bridge]).status();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let root: PathBuf = self.dir.path().to_path_buf();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| Path::new(m).starts_with(&root)) {
            let _ = Cmd::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_two_engines_survives_losing_one() {
    if !docker_ready() {
        return;
    }
    let Some(mut engine) = SecondEngine::start() else { return };
    let host = engine.host();
    // Worker 1: the local engine; 2: the second one by its socket; 3: the
    // second one over TCP with TLS.
    let config = ServerConfig::memory()
        .docker_workers(IMAGE, "warm = false\n")
        .docker_workers(IMAGE, &format!("warm = false\ndocker_host = \"{host}\"\n"))
        .docker_workers(IMAGE, &format!("warm = true\n{}", engine.tls_keys()));
    let mut server = TestServer::start(&config.toml());
    let ch = server.channel().await;
    let batch = |tag: &'static str, n: usize| {
        let ch = ch.clone();
        async move {
            let mut tasks = Vec::new();
            for i in 0..n {
                let ch = ch.clone();
                let mut spec = in_image("sleep 0.5; echo ok");
                spec.salt = format!("{tag}{i}");
                tasks.push(tokio::spawn(async move { run_ok(&ch, &spec).await }));
            }
            let mut workers = BTreeSet::new();
            for t in tasks {
                let (resp, out) = t.await.unwrap();
                assert_eq!(out, "ok\n");
                workers.insert(worker_of(&resp));
            }
            workers
        }
    };
    let used = batch("a", 9).await;
    let all = ["docker-worker-1", "docker-worker-2", "docker-worker-3"].map(String::from);
    assert_eq!(used, BTreeSet::from(all), "every engine takes actions");

    engine.stop();
    // Past the health answer's lifetime: the scheduler now skips docker-worker-2.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let used = batch("b", 4).await;
    assert_eq!(used, BTreeSet::from(["docker-worker-1".to_string()]));
    assert!(server.logs().contains("docker engine is unreachable"), "the lost engine is logged");
    stop_and_expect_no_leak(&mut server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_only_a_down_engine_could_run_fail_after_their_timeout() {
    if !docker_ready() {
        return;
    }
    // The docker worker's engine does not exist; the host worker is fine.
    let dead = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}/no-docker.sock", dead.path().display());
    let config = ServerConfig::memory().host_workers(1).docker_workers(IMAGE, &format!("docker_host = \"{sock}\"\n"));
    let server = TestServer::start(&config.toml());
    let ch = server.channel().await;

    // What the host worker can run still runs.
    let (resp, out) = run_ok(&ch, &ActionSpec::sh("echo on-host")).await;
    assert_eq!(out, "on-host\n");
    assert_eq!(worker_of(&resp), "host-worker-1");

    // Only the docker worker could run this one: it waits, then fails clearly.
    let mut stranded = in_image("echo never");
    stranded.timeout = Some(Duration::from_secs(3));
    let t = Instant::now();
    let (resp, _) = run_spec(&ch, "", &stranded, &ExecOpts::default()).await.expect("execute");
    let (code, message) = status(&resp);
    assert_eq!(code, tonic::Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("no healthy worker") && message.contains("docker-worker-1"), "{message}");
    assert!(t.elapsed() >= Duration::from_secs(3), "failed before its timeout: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20), "took too long to fail: {:?}", t.elapsed());
    assert!(server.logs().contains("docker engine is unreachable"), "the dead engine is logged");
}
