//! The pool as operators see it: `GET /api/workers/status`, the live page
//! and the gauges of `/metrics` all read this one snapshot.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::recent::RecentAction;
use crate::scheduler::Scheduler;
use crate::worker_status::{WorkerSnapshot, WorkerState};
use crate::workers::memory;

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub workers: Vec<WorkerSnapshot>,
    pub limits: Limits,
    pub memory: Memory,
    pub queue: QueueStatus,
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Workers the machine's memory admits: those active now plus as many
    /// more of the least demanding group as the available memory holds.
    pub admissible: usize,
    /// Workers STARTING, RUNNING or DRAINING.
    pub active: usize,
    pub can_add: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    /// Share in use, 0-100.
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// Queued actions by priority (lower runs first).
    pub queued_by_priority: BTreeMap<i32, usize>,
    pub queued: usize,
    pub running: usize,
    pub oldest_queued_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub name: String,
    pub r#type: &'static str,
    pub memory_per_worker: u64,
}

impl Scheduler {
    pub fn pool_status(&self) -> PoolStatus {
        let workers: Vec<WorkerSnapshot> =
            self.workers.read().iter().map(|w| w.worker.status().snapshot(self.stall_after)).collect();
        let active = workers
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Starting | WorkerState::Running | WorkerState::Draining))
            .count();
        let (total, available) = memory();
        let cheapest = self.groups.iter().map(|g| g.memory_per_worker).min().unwrap_or(0).max(1);
        let room = (available / cheapest) as usize;
        let (queued_by_priority, oldest) = self.queue.lock().stats();
        PoolStatus {
            limits: Limits { admissible: active + room, active, can_add: room > 0 },
            memory: Memory {
                total,
                available,
                percent: if total == 0 { 0.0 } else { 100.0 * (total - available) as f64 / total as f64 },
            },
            queue: QueueStatus {
                queued: queued_by_priority.values().sum(),
                queued_by_priority,
                running: self.running.load(Ordering::Acquire),
                oldest_queued_seconds: oldest.map(|t| t.elapsed().unwrap_or_default().as_secs_f64()),
            },
            groups: self
                .groups
                .iter()
                .map(|g| GroupStatus { name: g.name.clone(), r#type: g.kind, memory_per_worker: g.memory_per_worker })
                .collect(),
            workers,
        }
    }

    /// The last `limit` finished actions, newest first.
    pub fn recent_actions(&self, limit: usize) -> Vec<RecentAction> {
        self.recent.last(limit)
    }

    /// Sets the gauges that describe the pool (called when scraped).
    pub fn refresh_metrics(&self) {
        let Some(m) = &self.metrics else { return };
        let status = self.pool_status();
        m.set_queued(&status.queue.queued_by_priority);
        m.clear_workers();
        for kind in ["host", "docker", "agent"] {
            for state in ["STARTING", "RUNNING", "DRAINING", "DEAD", "FAILED"] {
                let n = status.workers.iter().filter(|w| w.r#type == kind && w.state.as_str() == state).count();
                if n > 0 || status.groups.iter().any(|g| g.r#type == kind) {
                    m.set_workers(state, kind, n);
                }
            }
        }
    }
}
