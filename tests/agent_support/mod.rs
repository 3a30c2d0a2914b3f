//! Starts `re-server worker` (a worker agent) for a test, optionally inside
//! a network namespace, and kills it on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Agent {
    pub name: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    logs: Arc<Mutex<String>>,
}

/// A worker.toml with one host worker table (`tables` replaces it if set).
pub fn worker_toml(dir: &Path, name: &str, token: Option<&str>, keys: &str, tables: &str) -> String {
    let token_line = match token {
        Some(t) => {
            let file = dir.join("token");
            std::fs::write(&file, format!("{t}\n")).unwrap();
            format!("token_file = \"{}\"\n", file.display())
        }
        None => String::new(),
    };
    let tables = if tables.is_empty() { "[[execution.pool.workers]]\ntype = \"host\"\ncount = 1\n" } else { tables };
    format!(
        "[worker]\nname = \"{name}\"\ncache_dir = \"{}\"\ncache_max_bytes = 1073741824\n{token_line}{keys}\n{tables}",
        dir.join("cache").display()
    )
}

impl Agent {
    /// Starts an agent serving `server` (grpc://...), run under `prefix`
    /// (e.g. `ip netns exec NS`).
    pub fn start(server: &str, name: &str, token: Option<&str>, prefix: &[&str]) -> Self {
        Self::start_with(server, name, token, prefix, "", "")
    }

    /// With more `[worker]` keys, and worker tables of its own.
    pub fn start_with(
        server: &str,
        name: &str,
        token: Option<&str>,
        prefix: &[&str],
        keys: &str,
        tables: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("worker.toml");
        std::fs::write(&config, worker_toml(dir.path(), name, token, keys, tables)).unwrap();
        let bin = env!("CARGO_BIN_EXE_re-server");
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["worker", "--server", server, "--config"])
            .arg(&config)
            .arg("--verbose")
            .env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start re-server worker");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<String>> = Arc::default();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self { name: name.to_string(), child: Some(child), dir, logs }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn cache_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("cache")
    }

    /// Waits until the log holds `text`; false after `limit`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.logs().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a machine that dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
