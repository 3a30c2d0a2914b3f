//! Processes a killed server left behind. Each host action's directory holds
//! a `pgid` file: its process group, the boot it ran in and a time before it
//! started. When a host worker starts, every action directory still in its
//! work_dir belongs to a server that died: each process of a recorded group
//! that started after the recorded time (in the same boot) is killed, and
//! the directory removed. The time keeps an unrelated group that later
//! reused the id safe unless it also started after the action did, in a
//! window of a restart; the group id must match as well.
use std::path::Path;

const RECORD: &str = "pgid";

/// When an action was about to start: boot and clock ticks since boot.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    ticks: u64,
}

impl Since {
    pub fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let hz = clock_ticks();
        Self { ticks: ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000 }
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

/// Notes the process group of the action running in `scratch`.
pub fn record(scratch: &Path, pgid: i32, since: Since) -> std::io::Result<()> {
    std::fs::write(scratch.join(RECORD), format!("{pgid} {} {}\n", since.ticks, boot_id()))
}

/// Stops what the action directories under `work_dir` recorded, then
/// removes them. Blocking; runs once when a host worker starts.
pub fn reap(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else { return };
    let boot = boot_id();
    for entry in entries.flatten() {
        let dir = entry.path();
        if let Ok(text) = std::fs::read_to_string(dir.join(RECORD)) {
            let mut parts = text.split_whitespace();
            let pgid = parts.next().and_then(|p| p.parse::<i32>().ok());
            let ticks = parts.next().and_then(|t| t.parse::<u64>().ok());
            if let (Some(pgid), Some(ticks), Some(true)) = (pgid, ticks, parts.next().map(|b| b == boot)) {
                let killed = kill_group_since(pgid, ticks);
                if killed > 0 {
                    tracing::warn!(pgid, killed, dir = %dir.display(), "killed processes of an action a previous run left");
                }
            }
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(&dir).status();
                if std::fs::remove_dir_all(&dir).is_err() {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a leftover action directory");
                }
            }
        }
    }
}

/// SIGKILLs every process of group `pgid` that started at or after `ticks`;
/// returns how many.
fn kill_group_since(pgid: i32, ticks: u64) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    let mut killed = 0;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): pgrp is field 5, starttime field 22.
        let pgrp = fields.get(2).and_then(|f| f.parse::<i32>().ok());
        let start = fields.get(19).and_then(|f| f.parse::<u64>().ok());
        if pgrp == Some(pgid) && start.is_some_and(|s| s >= ticks) {
            // SAFETY: plain syscall on a process found above.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_group_is_killed_and_its_directory_removed() {
        let work = tempfile::tempdir().unwrap();
        let scratch = work.path().join("action");
        std::fs::create_dir_all(scratch.join("root")).unwrap();
        let since = Since::now();
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
        record(&scratch, child.id() as i32, since).unwrap();
        // An older record (before this process started) kills nothing.
        let other = work.path().join("old");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join(RECORD), format!("{} {} {}\n", child.id(), u64::MAX, boot_id())).unwrap();
        assert_eq!(kill_group_since(child.id() as i32, u64::MAX), 0);
        reap(work.path());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!scratch.exists() && !other.exists());
    }
}
