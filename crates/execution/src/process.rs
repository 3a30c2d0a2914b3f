//! What a running action's processes use, sampled from /proc: the frame
//! reads it every second (the status page, the heartbeat, and the usage of
//! launchers that cannot measure it at the end).
use std::time::Duration;

/// What a running action uses at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub user_cpu: Duration,
    pub system_cpu: Duration,
    pub memory_bytes: u64,
}

impl Sample {
    pub fn cpu_seconds(&self) -> f64 {
        (self.user_cpu + self.system_cpu).as_secs_f64()
    }
}

/// A running action's usage: every process of its process group (`pgid`,
/// its leader's pid), from /proc. CPU counts what each has used and what
/// its waited-for children used; memory sums the members' resident sets.
pub fn sample_group(pgid: i32) -> Option<Sample> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let (mut user, mut system, mut pages, mut found) = (0u64, 0u64, 0u64, false);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Counting from the state (field 3): pgrp 5, utime 14 to cstime 17, rss 24.
        // Zombies hold no memory; their CPU moves to whoever reaps them.
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) != Some(pgid) || fields.first() == Some(&"Z") {
            continue;
        }
        found = true;
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        user += field(11) + field(13);
        system += field(12) + field(14);
        pages += field(21);
    }
    let ticks = |t: u64| Duration::from_secs_f64(t as f64 / hz);
    found.then(|| Sample { user_cpu: ticks(user), system_cpu: ticks(system), memory_bytes: pages * page })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_group_is_sampled_whole() {
        use std::os::unix::process::CommandExt;
        // A leader and a child that fills a 32 MiB buffer over and over.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "dd if=/dev/zero of=/dev/null bs=32M count=1000000 2>/dev/null & sleep 10"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut best = 0;
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if let Some(s) = sample_group(pid) {
                best = best.max(s.memory_bytes);
            }
        }
        // SAFETY: killing the group this test created.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
        child.wait().unwrap();
        assert!(best > 32 << 20, "the group's resident memory was {best}");
        // The killed child may take a moment to die (it is not ours to reap).
        let gone = (0..40).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            sample_group(pid).is_none()
        });
        assert!(gone, "a group that is gone has no sample: {:?}", sample_group(pid));
    }
}
