//! The last finished actions, for operators (`GET /api/actions/recent`).
use std::collections::VecDeque;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

/// How many finished actions are remembered.
pub const RECENT_ACTIONS: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct RecentAction {
    pub digest: String,
    pub operation: String,
    /// From the client's RequestMetadata (Bazel: the action's mnemonic and target).
    pub mnemonic: String,
    pub target: String,
    pub worker: String,
    pub queued_seconds: f64,
    pub run_seconds: f64,
    pub exit_code: i32,
    /// `succeeded`, `failed` (non-zero exit), `timed_out`, `cancelled`,
    /// `aborted`, `lost`, `error`.
    pub outcome: &'static str,
    pub status_message: String,
    pub cpu_seconds: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    /// The last 1,000 characters of stderr, for failures.
    pub stderr_tail: String,
    pub attempts: u32,
    #[serde(with = "crate::worker_status::unix_seconds")]
    pub finished_at: SystemTime,
}

#[derive(Default)]
pub struct RecentActions {
    ring: Mutex<VecDeque<RecentAction>>,
}

impl RecentActions {
    pub fn push(&self, action: RecentAction) {
        let mut ring = self.ring.lock();
        if ring.len() == RECENT_ACTIONS {
            ring.pop_front();
        }
        ring.push_back(action);
    }

    /// The last `limit`, newest first.
    pub fn last(&self, limit: usize) -> Vec<RecentAction> {
        self.ring.lock().iter().rev().take(limit).cloned().collect()
    }
}
