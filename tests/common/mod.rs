//! Starts the real re-server binary on a free loopback port for a test and
//! stops it afterwards. Shared by every end-to-end test.
//!
//! Also: `require_tool` (skip loudly, or fail under CI=true, when an external
//! tool is missing), `run_to_exit` (for configurations that must be refused),
//! [`blobs`] (digests, resource names and CAS calls computed independently of
//! the server) and [`config`] (the server TOML a test starts with).
#![allow(dead_code)]

pub mod blobs;
pub mod config;
pub mod http;

// Each test binary uses a different part of these.
#[allow(unused_imports)]
pub use blobs::*;
#[allow(unused_imports)]
pub use config::ServerConfig;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

/// How long the server may take to print `Starting server on`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestServer {
    pub addr: String,
    pub port: u16,
    /// The status page / JSON API / metrics listener (`host:port`), if on.
    pub http_addr: Option<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    envs: Vec<(String, String)>,
    /// A command line the server runs under (e.g. `unshare ... sh -c ...`);
    /// `{server}` in its last argument stands for the server's own command.
    wrapper: Vec<String>,
    /// `--address` (default `127.0.0.1:0`).
    listen: String,
    logs: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts the server with `config` (a TOML document without an address).
    pub fn start(config: &str) -> Self {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, envs: &[(&str, &str)]) -> Self {
        Self::start_wrapped(config, envs, &[])
    }

    /// Starts the server under `wrapper` (see the field); its last argument
    /// is a shell command in which `{server}` is replaced by the server's.
    pub fn start_wrapped(config: &str, envs: &[(&str, &str)], wrapper: &[&str]) -> Self {
        Self::start_listening(config, envs, wrapper, "127.0.0.1:0")
    }

    /// As `start_wrapped`, with the gRPC port on `listen` (e.g. `0.0.0.0:0`
    /// inside a network namespace).
    pub fn start_listening(config: &str, envs: &[(&str, &str)], wrapper: &[&str], listen: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("re-server.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut s = Self {
            addr: String::new(),
            port: 0,
            http_addr: None,
            child: None,
            dir,
            config_path,
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            listen: listen.to_string(),
            logs: Arc::default(),
        };
        s.spawn();
        s
    }

    /// The `--data-dir` (also holds the config file and `server.log`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Every line the server wrote to stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// False once the process has exited (or was stopped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn spawn(&mut self) {
        let server = [
            env!("CARGO_BIN_EXE_re-server").to_string(),
            "--config".into(),
            self.config_path.display().to_string(),
            "--address".into(),
            self.listen.clone(),
            "--http-address".into(),
            "127.0.0.1:0".into(),
            "--verbose".into(),
            "--data-dir".into(),
            self.dir.path().display().to_string(),
        ];
        let mut cmd = match self.wrapper.split_last() {
            None => {
                let mut cmd = Command::new(&server[0]);
                cmd.args(&server[1..]);
                cmd
            }
            Some((script, program)) => {
                let mut cmd = Command::new(&program[0]);
                cmd.args(&program[1..]).arg(script.replace("{server}", &server.join(" ")));
                cmd
            }
        };
        cmd.env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start re-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let (http_tx, http_rx) = std::sync::mpsc::channel();
        let logs = self.logs.clone();
        let mut log_file = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).ok();
        // Drains stderr for the server's whole life so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged before "Starting server on" (text or JSON lines).
                if let Some(addr) = address_after(&line, "Status page and API on http://") {
                    let _ = http_tx.send(addr);
                }
                if let Some(addr) = address_after(&line, "Starting server on ") {
                    let _ = tx.send(addr);
                }
                if let Some(f) = log_file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("re-server did not start; logs:\n{}", self.logs());
            }
        };
        self.port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in address");
        self.addr = addr;
        self.http_addr = http_rx.try_recv().ok();
        self.child = Some(child);
    }

    /// `http://host:port` of the status page and its API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr.as_deref().expect("the server has no HTTP listener"))
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

    /// SIGKILL, as a crash would; `restart` starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; how long the server took to exit, or `None` if it had not
    /// within `limit` (it is then SIGKILLed).
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        // SAFETY: signalling our own child process.
        unsafe { libc_kill(child.id() as i32, 15) };
        while start.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
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
/// The `host:port` that follows `marker` in a log line.
fn address_after(line: &str, marker: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let addr: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c)).collect();
    (!addr.is_empty()).then_some(addr)
}

pub fn require_tool(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p).any(|d| {
                std::fs::metadata(d.join(tool))
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{tool} is not installed, and CI=true: run .ci/setup-env.sh");
    }
    // Straight to fd 2, not eprintln!: the test harness captures that and would hide the notice.
    let _ = writeln!(
        std::io::stderr(),
        "\n========================================\nSKIPPED: {tool} not installed (run .ci/setup-env.sh)\n========================================\n"
    );
    false
}

/// How a server run that was expected to exit by itself ended.
pub struct Exited {
    /// None if it was killed by a signal or had to be killed after the timeout.
    pub code: Option<i32>,
    pub stderr: String,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs the server with `config` the way `TestServer` would and waits (at
/// most `timeout`) for it to exit on its own, e.g. on a configuration error.
pub fn run_to_exit(config: &str, timeout: Duration) -> Exited {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("re-server.toml");
    std::fs::write(&config_path, config).expect("write config");
    let err_path = dir.path().join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_re-server"))
        .arg("--config")
        .arg(&config_path)
        .args(["--address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("start re-server");
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "re-server did not exit within {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    Exited { code, stderr, config_path, _dir: dir }
}
