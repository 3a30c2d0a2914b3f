//! What an operator sees of a worker: its state, heartbeat and current
//! action. The worker's loop and its action frame write it; the status API,
//! the page and the metrics read snapshots of it.
//!
//! STARTING (being made, its engine being reached) → RUNNING (idle or busy)
//! → DRAINING (finishes its action, takes no other) → DEAD (stopped), or
//! FAILED with a reason (engine unreachable, container vanished, panicked);
//! a failed worker is replaced by a new one of its group after a back-off.
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerState {
    Starting,
    Running,
    Draining,
    Dead,
    Failed,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "STARTING",
            WorkerState::Running => "RUNNING",
            WorkerState::Draining => "DRAINING",
            WorkerState::Dead => "DEAD",
            WorkerState::Failed => "FAILED",
        }
    }
}

/// The action a worker is running.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentAction {
    pub digest: String,
    pub mnemonic: String,
    pub target: String,
    pub operation: String,
    #[serde(with = "unix_seconds")]
    pub started_at: SystemTime,
    /// Its process group leader, once started on this machine.
    pub pid: Option<u32>,
    /// Its container, once started in one.
    pub container_id: Option<String>,
    /// CPU seconds and resident bytes, sampled while it runs.
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    state: WorkerState,
    reason: Option<String>,
    heartbeat: SystemTime,
    current: Option<CurrentAction>,
    tasks_done: u64,
}

/// One worker's status, shared by its loop, its frame and the readers.
#[derive(Debug)]
pub struct WorkerStatus {
    pub id: String,
    pub group: String,
    /// `host` or `docker`.
    pub kind: &'static str,
    /// The machine it runs on.
    pub host: String,
    pub started_at: SystemTime,
    inner: Mutex<Inner>,
}

/// A worker's status at one moment, as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSnapshot {
    pub worker_id: String,
    pub group: String,
    pub r#type: &'static str,
    pub host: String,
    pub state: WorkerState,
    pub reason: Option<String>,
    /// No heartbeat for `stall_seconds`.
    pub stalled: bool,
    #[serde(with = "unix_seconds")]
    pub started_at: SystemTime,
    #[serde(with = "unix_seconds")]
    pub heartbeat: SystemTime,
    pub heartbeat_age_seconds: f64,
    pub tasks_done: u64,
    /// The current action's process group leader or container.
    pub pid: Option<u32>,
    pub container_id: Option<String>,
    /// The current action's CPU seconds and resident bytes (last sample).
    pub cpu: Option<f64>,
    pub memory: Option<u64>,
    pub action: Option<CurrentAction>,
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

impl WorkerStatus {
    pub fn new(id: &str, group: &str, kind: &'static str) -> Self {
        let now = SystemTime::now();
        Self {
            id: id.to_string(),
            group: group.to_string(),
            kind,
            host: hostname(),
            started_at: now,
            inner: Mutex::new(Inner {
                state: WorkerState::Starting,
                reason: None,
                heartbeat: now,
                current: None,
                tasks_done: 0,
            }),
        }
    }

    /// A worker on another machine (an agent's).
    pub fn on_host(mut self, host: String) -> Self {
        self.host = host;
        self
    }

    pub fn state(&self) -> WorkerState {
        self.inner.lock().state
    }

    /// Moves to `state`; a DEAD worker stays so, a DRAINING one only stops.
    pub fn set_state(&self, state: WorkerState, reason: Option<String>) {
        let mut i = self.inner.lock();
        if i.state == WorkerState::Dead {
            return;
        }
        if i.state == WorkerState::Draining && matches!(state, WorkerState::Running | WorkerState::Starting) {
            return;
        }
        if i.state != state {
            tracing::info!(worker = %self.id, from = i.state.as_str(), to = state.as_str(), reason = ?reason, "worker state");
        }
        i.state = state;
        i.reason = reason;
        i.heartbeat = SystemTime::now();
    }

    pub fn beat(&self) {
        self.inner.lock().heartbeat = SystemTime::now();
    }

    pub fn start_action(&self, action: CurrentAction) {
        let mut i = self.inner.lock();
        i.current = Some(action);
        i.heartbeat = SystemTime::now();
    }

    /// Notes the process the current action runs as.
    pub fn set_pid(&self, pid: u32) {
        if let Some(c) = self.inner.lock().current.as_mut() {
            c.pid = Some(pid);
        }
    }

    /// Notes the container the current action runs in.
    pub fn set_container(&self, id: &str) {
        if let Some(c) = self.inner.lock().current.as_mut() {
            c.container_id = Some(id.to_string());
        }
    }

    /// A sample of the current action's usage; also a heartbeat.
    pub fn sample(&self, cpu_seconds: f64, memory_bytes: u64) {
        let mut i = self.inner.lock();
        i.heartbeat = SystemTime::now();
        if let Some(c) = i.current.as_mut() {
            c.cpu_seconds = cpu_seconds;
            c.memory_bytes = memory_bytes;
        }
    }

    pub fn end_action(&self) {
        let mut i = self.inner.lock();
        i.current = None;
        i.tasks_done += 1;
        i.heartbeat = SystemTime::now();
    }

    pub fn snapshot(&self, stall_after: Duration) -> WorkerSnapshot {
        let i = self.inner.lock();
        let age = i.heartbeat.elapsed().unwrap_or_default();
        WorkerSnapshot {
            worker_id: self.id.clone(),
            group: self.group.clone(),
            r#type: self.kind,
            host: self.host.clone(),
            state: i.state,
            reason: i.reason.clone(),
            stalled: age >= stall_after && matches!(i.state, WorkerState::Running | WorkerState::Draining),
            started_at: self.started_at,
            heartbeat: i.heartbeat,
            heartbeat_age_seconds: age.as_secs_f64(),
            tasks_done: i.tasks_done,
            pid: i.current.as_ref().and_then(|c| c.pid),
            container_id: i.current.as_ref().and_then(|c| c.container_id.clone()),
            cpu: i.current.as_ref().map(|c| c.cpu_seconds),
            memory: i.current.as_ref().map(|c| c.memory_bytes),
            action: i.current.clone(),
        }
    }
}

/// Times as seconds since the Unix epoch (with fractions), as JSON numbers.
pub(crate) mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_worker_without_a_heartbeat_is_stalled() {
        let status = WorkerStatus::new("host-worker-1", "host-0", "host");
        let stall_after = Duration::from_millis(50);
        assert!(!status.snapshot(stall_after).stalled, "STARTING is never stalled");
        status.set_state(WorkerState::Running, None);
        assert!(!status.snapshot(stall_after).stalled);
        std::thread::sleep(Duration::from_millis(80));
        assert!(status.snapshot(stall_after).stalled, "no beat for longer than stall_seconds");
        status.beat();
        assert!(!status.snapshot(stall_after).stalled, "a beat clears it");
        status.set_state(WorkerState::Draining, None);
        status.set_state(WorkerState::Running, None);
        assert_eq!(status.state(), WorkerState::Draining, "a draining worker is not put back to work");
        status.set_state(WorkerState::Dead, None);
        status.set_state(WorkerState::Failed, Some("late".into()));
        assert_eq!(status.state(), WorkerState::Dead, "DEAD is final");
    }
}
