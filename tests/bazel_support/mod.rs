//! Runs Bazel 4.2.3 on a private copy of tests/bazel-workspace with a fresh
//! output root; shuts the Bazel server down and deletes everything on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct BazelWorkspace {
    pub dir: tempfile::TempDir,
    output_root: tempfile::TempDir,
}

/// What one Bazel command printed.
pub struct BazelRun {
    pub success: bool,
    pub output: String,
}

impl BazelRun {
    /// Counts from the last `INFO: N processes: a kind, b kind.` line.
    pub fn processes(&self) -> BTreeMap<String, u32> {
        let line = self
            .output
            .lines()
            .rfind(|l| {
                l.starts_with("INFO: ")
                    && l.contains(" process")
                    && (l.contains("processes:") || l.contains("process:"))
            })
            .unwrap_or_else(|| panic!("no process summary in:\n{}", self.output));
        let counts = line.split_once(':').unwrap().1.split_once(':').map(|x| x.1).unwrap_or("");
        counts
            .trim()
            .trim_end_matches('.')
            .split(", ")
            .filter(|s| !s.is_empty())
            .filter_map(|part| {
                let (n, kind) = part.trim().split_once(' ')?;
                Some((kind.to_string(), n.parse().ok()?))
            })
            .collect()
    }

    pub fn summary_line(&self) -> String {
        self.output.lines().rfind(|l| l.starts_with("INFO: ") && l.contains("process")).unwrap_or("").to_string()
    }
}

impl BazelWorkspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bazel-workspace");
        let status = Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dir.path()).status().unwrap();
        assert!(status.success(), "copy workspace");
        Self { dir, output_root: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `bazel <cmd> <args>` with the flags every run here needs.
    pub fn run(&self, cmd: &str, args: &[&str]) -> BazelRun {
        let mut c = Command::new("timeout");
        c.arg("900")
            .arg("bazel")
            .arg(format!("--output_user_root={}", self.output_root.path().display()))
            .arg("--nohome_rc")
            .arg(cmd)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if matches!(cmd, "build" | "test") {
            c.args(["--nosandbox_debug", "--symlink_prefix=/", "--color=no", "--curses=no", "--noshow_progress"]);
        }
        c.args(args);
        let out = c.output().expect("run bazel");
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        BazelRun { success: out.status.success(), output }
    }

    /// The Bazel server's own log (where a crash of the client is told).
    pub fn java_log(&self) -> String {
        let Ok(bases) = std::fs::read_dir(self.output_root.path()) else { return String::new() };
        bases.flatten().filter_map(|b| std::fs::read_to_string(b.path().join("java.log")).ok()).collect()
    }

    pub fn bazel_bin(&self) -> PathBuf {
        let r = self.run("info", &["bazel-bin"]);
        assert!(r.success, "{}", r.output);
        PathBuf::from(r.output.lines().rev().find(|l| l.starts_with('/')).expect("bazel-bin path").trim())
    }
}

impl Drop for BazelWorkspace {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .arg("60")
            .arg("bazel")
            .arg(format!("--output_user_root={}", self.output_root.path().display()))
            .arg("--nohome_rc")
            .arg("shutdown")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Bazel leaves read-only directories behind.
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.output_root.path()).status();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Regular files under `dir` (relative path → contents), skipping runfiles
/// trees, manifests and Bazel's own bookkeeping.
pub fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                if !name.ends_with(".runfiles") && name != "_objs" && name != "testlogs" {
                    stack.push(p);
                }
            } else if ft.is_file()
                && !name.ends_with("MANIFEST")
                && !name.ends_with(".runfiles_manifest")
                && !name.ends_with(".params")
            {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}
