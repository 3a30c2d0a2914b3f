//! A container's usage read from the host's side of its cgroup, where the
//! engine put it: `docker/<id>` (cgroupfs driver, v1 or v2) or
//! `system.slice/docker-<id>.scope` (systemd driver, v2).
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";

/// What a container's cgroup counted since the container started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub user_cpu: Duration,
    pub system_cpu: Duration,
    pub memory_bytes: u64,
    /// Highest memory use since the start (0 where the kernel keeps none).
    pub peak_memory_bytes: u64,
}

impl CgroupUsage {
    pub fn cpu_seconds(&self) -> f64 {
        (self.user_cpu + self.system_cpu).as_secs_f64()
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines of a cgroup stat file.
fn stat_field(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn v1(controller: &str, id: &str) -> PathBuf {
    Path::new(ROOT).join(controller).join("docker").join(id)
}

/// The container's usage, or None when its cgroup is not found (another
/// engine layout, or the container is gone).
pub fn container_usage(id: &str) -> Option<CgroupUsage> {
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let cpuacct = v1("cpuacct", id);
    if cpuacct.is_dir() {
        let memory = v1("memory", id);
        return Some(CgroupUsage {
            user_cpu: Duration::from_nanos(read_u64(&cpuacct.join("cpuacct.usage_user")).unwrap_or(0)),
            system_cpu: Duration::from_nanos(read_u64(&cpuacct.join("cpuacct.usage_sys")).unwrap_or(0)),
            memory_bytes: read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0),
            peak_memory_bytes: read_u64(&memory.join("memory.max_usage_in_bytes")).unwrap_or(0),
        });
    }
    let unified =
        [Path::new(ROOT).join("docker").join(id), Path::new(ROOT).join(format!("system.slice/docker-{id}.scope"))]
            .into_iter()
            .find(|p| p.join("cpu.stat").is_file())?;
    let cpu = unified.join("cpu.stat");
    Some(CgroupUsage {
        user_cpu: Duration::from_micros(stat_field(&cpu, "user_usec").unwrap_or(0)),
        system_cpu: Duration::from_micros(stat_field(&cpu, "system_usec").unwrap_or(0)),
        memory_bytes: read_u64(&unified.join("memory.current")).unwrap_or(0),
        peak_memory_bytes: read_u64(&unified.join("memory.peak")).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_or_unsafe_ids_have_no_usage() {
        assert_eq!(container_usage("no-such-container"), None);
        assert_eq!(container_usage("../../memory"), None);
        assert_eq!(container_usage(""), None);
    }

    #[test]
    fn stat_fields_are_read_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cpu.stat");
        std::fs::write(&f, "usage_usec 30\nuser_usec 20\nsystem_usec 10\n").unwrap();
        assert_eq!(stat_field(&f, "user_usec"), Some(20));
        assert_eq!(stat_field(&f, "usage_usec"), Some(30));
        assert_eq!(stat_field(&f, "nr_periods"), None);
    }
}
