//! What the server and the spawner say to each other: one JSON object a
//! line over a Unix socket pair.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to start: one action's process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Command {
    /// `argv[0]`: a path, or a name looked up in the action's `PATH`.
    pub program: String,
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Created (truncated) by the spawner before it drops privileges.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// `(uid, gid)` to run as; supplementary groups are dropped.
    pub user: Option<(u32, u32)>,
}

/// Start `command`; replies name `id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpawnRequest {
    pub id: u64,
    #[serde(flatten)]
    pub command: Command,
}

/// Which step of starting the process failed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Fork,
    Output,
    Chdir,
    User,
    Exec,
}

impl Step {
    pub fn from_code(c: u8) -> Self {
        match c {
            1 => Step::Output,
            2 => Step::Chdir,
            3 => Step::User,
            4 => Step::Exec,
            _ => Step::Fork,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Step::Fork => 0,
            Step::Output => 1,
            Step::Chdir => 2,
            Step::User => 3,
            Step::Exec => 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// The process runs (its program was exec'd) as `pid`, leading its own
    /// process group.
    Started { id: u64, pid: i32 },
    /// It could not start: `errno` at `step`.
    Failed { id: u64, step: Step, errno: i32 },
    /// A started process ended and was reaped: its exit code (128 + signal
    /// when killed) and what it and the children it waited for used.
    Exited { pid: i32, code: i32, user_us: u64, system_us: u64, max_rss_kib: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_each() {
        let req = SpawnRequest {
            id: 7,
            command: Command {
                program: "sh".into(),
                args: vec!["-c".into(), "echo 'a\nb'".into()],
                env: vec![("PATH".into(), "/bin".into())],
                cwd: "/tmp".into(),
                stdout: "/tmp/o".into(),
                stderr: "/tmp/e".into(),
                user: Some((65534, 65534)),
            },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<SpawnRequest>(&line).unwrap(), req);
        let reply = Reply::Failed { id: 7, step: Step::Exec, errno: 2 };
        let line = serde_json::to_string(&reply).unwrap();
        assert_eq!(line, r#"{"kind":"failed","id":7,"step":"exec","errno":2}"#);
        for s in [Step::Fork, Step::Output, Step::Chdir, Step::User, Step::Exec] {
            assert_eq!(Step::from_code(s.code()), s);
        }
    }
}
