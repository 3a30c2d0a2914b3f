//! `use_chroot = true`: host actions run under bubblewrap (`bwrap`, the
//! sandbox Flatpak uses) in their own mount, PID, IPC, UTS and network
//! namespaces. The action sees its input root at its usual path, the
//! read-only host paths of `sandbox_paths`, a private /proc, /dev and /tmp,
//! and nothing else of the host. Its processes stay in the group the spawner
//! made (no `--new-session`), so killing the group kills the sandbox too.
use std::path::{Path, PathBuf};

use re_proto::ConfigError;

use crate::spawner::Command;

/// The read-only host paths an action sees when the config names none.
pub const DEFAULT_SANDBOX_PATHS: [&str; 5] = ["/usr", "/bin", "/lib", "/lib64", "/etc/alternatives"];

#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    paths: Vec<PathBuf>,
    network: bool,
}

impl Sandbox {
    /// Finds `bwrap` in the server's PATH: without it the worker cannot
    /// keep its promise, so the server does not start.
    pub fn new(paths: &[PathBuf], network: bool) -> Result<Self, ConfigError> {
        if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
            return Err(ConfigError::new("sandbox_paths", format!("'{}' is not an absolute path", p.display())));
        }
        let bwrap = find_in_path("bwrap").ok_or_else(|| {
            ConfigError::new(
                "use_chroot",
                "needs bubblewrap ('bwrap' is not in PATH; Debian: apt-get install bubblewrap)",
            )
        })?;
        Ok(Self { bwrap, paths: paths.to_vec(), network })
    }

    /// `cmd` run inside the sandbox, with `root` (the action's input root)
    /// bound read-write at its own path.
    pub fn wrap(&self, cmd: Command, root: &Path) -> Command {
        let mut args: Vec<String> = vec!["--unshare-all".into()];
        if self.network {
            args.push("--share-net".into());
        }
        args.push("--die-with-parent".into());
        for p in &self.paths {
            // Missing ones (no /lib64 on some machines) are skipped.
            args.extend(["--ro-bind-try".into(), path(p), path(p)]);
        }
        args.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(String::from));
        args.extend(["--bind".into(), path(root), path(root), "--chdir".into(), path(&cmd.cwd), "--".into()]);
        args.push(cmd.program);
        args.extend(cmd.args);
        Command { program: path(&self.bwrap), args, ..cmd }
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&dirs).map(|d| d.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_runs_under_bwrap_with_only_its_root_writable() {
        let sandbox = Sandbox { bwrap: "/usr/bin/bwrap".into(), paths: vec!["/usr".into()], network: false };
        let cmd = Command {
            program: "sh".into(),
            args: vec!["-c".into(), "true".into()],
            env: vec![],
            cwd: "/w/a/root/pkg".into(),
            stdout: "/w/a/stdout".into(),
            stderr: "/w/a/stderr".into(),
            user: None,
        };
        let wrapped = sandbox.wrap(cmd, Path::new("/w/a/root"));
        assert_eq!(wrapped.program, "/usr/bin/bwrap");
        let args = wrapped.args.join(" ");
        assert!(args.starts_with("--unshare-all --die-with-parent --ro-bind-try /usr /usr "), "{args}");
        assert!(args.ends_with("--bind /w/a/root /w/a/root --chdir /w/a/root/pkg -- sh -c true"), "{args}");
        assert!(!args.contains("--share-net"));
        assert_eq!(wrapped.stdout, PathBuf::from("/w/a/stdout"), "output files stay outside");
    }

    #[test]
    fn relative_sandbox_paths_are_refused_with_their_key() {
        let e = Sandbox::new(&["usr".into()], false).unwrap_err();
        assert_eq!(e.key, "sandbox_paths");
    }
}
