//! Starts the real re-server binary on a free loopback port for a test and
//! stops it afterwards. Shared by every end-to-end test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

pub struct TestServer {
    pub addr: String,
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    envs: Vec<(String, String)>,
    logs: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts the server with `config` (a TOML document without an address).
    pub fn start(config: &str) -> Self {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("re-server.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut s = Self {
            addr: String::new(),
            port: 0,
            child: None,
            dir,
            config_path,
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            logs: Arc::default(),
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_re-server"));
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(["--address", "127.0.0.1:0", "--verbose", "--data-dir"])
            .arg(self.dir.path())
            .env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start re-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = self.logs.clone();
        // Drains stderr for the server's whole life so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("Starting server on ") {
                    let addr =
                        line[i + "Starting server on ".len()..].split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("re-server did not start; logs:\n{}", self.logs());
            }
        };
        self.port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in address");
        self.addr = addr;
        self.child = Some(child);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.endpoint())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to re-server")
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: signalling our own child process.
        unsafe { libc_kill(child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts again with the same config and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True if `tool` is on PATH. Otherwise the test is skipped loudly, except
/// under CI=true, where a missing tool is a failure.
pub fn require_tool(tool: &str) -> bool {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{tool} is not installed, and CI=true: run .ci/setup-env.sh");
    }
    eprintln!("\n========================================\nSKIPPED: {tool} not installed (run .ci/setup-env.sh)\n========================================\n");
    false
}
