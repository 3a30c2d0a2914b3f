//! The pool scheduler: holds the queue, the operations and the workers;
//! records results (action cache, completed operation), cancels, watches
//! for abandoned and stranded actions, and stops the pool on SIGTERM.
//! Admission is in `admission.rs`, the workers' loops in `workers.rs`.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use re_action_cache::ActionCacheStore;
use re_cas::BlobStore;
use re_metrics::Metrics;
use re_proto::error::ok_status;
use re_proto::reapi::ExecuteResponse;
use re_proto::{DigestInfo, Error, Result};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::action::{ActionLimits, PreparedAction};
use crate::agents::AgentRegistry;
use crate::config::PoolConfig;
use crate::operation::Operation;
use crate::platform::{PlatformMatcher, Properties};
use crate::queue::Queue;
use crate::recent::RecentActions;
use crate::worker_status::WorkerState;
use crate::workers::{StartingGroup, WorkerGroup, WorkerSlot};

pub struct Scheduler {
    pub(crate) cas: Arc<dyn BlobStore>,
    /// Completeness-checked: a hit's outputs are all in the CAS.
    pub(crate) ac: Arc<dyn ActionCacheStore>,
    pub(crate) matcher: PlatformMatcher,
    /// The configured groups (what their workers advertise, how to make more).
    pub(crate) groups: Vec<Arc<WorkerGroup>>,
    pub(crate) workers: RwLock<Vec<Arc<WorkerSlot>>>,
    /// Set by `shutdown`: no new action is admitted or started.
    pub(crate) stopping: AtomicBool,
    /// Actions being run by a worker; `idle` is notified when one ends.
    pub(crate) running: AtomicUsize,
    pub(crate) idle: Notify,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) wakeup: Notify,
    pub(crate) operations: DashMap<String, Arc<Operation>>,
    /// Cacheable actions queued or running, by action digest.
    pub(crate) in_flight: DashMap<DigestInfo, Arc<Operation>>,
    pub(crate) max_queue_size: usize,
    pub(crate) interval: Duration,
    pub(crate) limits: ActionLimits,
    result_ttl: Duration,
    abandon_grace: Duration,
    /// A worker without a heartbeat this long shows as stalled.
    pub(crate) stall_after: Duration,
    /// Runs of one action lost with their worker before it fails.
    pub(crate) crashes_max: u32,
    pub(crate) recent: RecentActions,
    /// Worker agents' sessions (Remote Workers API).
    pub agents: AgentRegistry,
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// The server's runtime: replacements and timers live there, not on a
    /// worker's own thread.
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Scheduler {
    /// Creates the scheduler, starts `count` workers of each group (each on
    /// its own thread) and the janitor. Call from within the server's runtime.
    pub fn start(
        config: &PoolConfig,
        cas: Arc<dyn BlobStore>,
        ac: Arc<dyn ActionCacheStore>,
        groups: Vec<StartingGroup>,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Self> {
        let sched = Arc::new(Self {
            cas,
            ac,
            matcher: PlatformMatcher::new(config.platform_match.clone()),
            groups: groups.iter().map(|(g, _)| g.clone()).collect(),
            workers: RwLock::new(Vec::new()),
            stopping: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            queue: Mutex::new(Queue::default()),
            wakeup: Notify::new(),
            operations: DashMap::new(),
            in_flight: DashMap::new(),
            max_queue_size: config.max_queue_size,
            interval: Duration::from_millis(config.scheduler_interval_ms.max(1)),
            limits: config.action_limits(),
            result_ttl: Duration::from_secs(config.result_ttl_seconds),
            abandon_grace: Duration::from_secs(config.abandon_grace_seconds),
            stall_after: Duration::from_secs(config.stall_seconds),
            crashes_max: config.crashes_max,
            recent: RecentActions::default(),
            agents: AgentRegistry::new(Duration::from_secs(config.agent_session_timeout_seconds)),
            metrics,
            runtime: tokio::runtime::Handle::current(),
        });
        for (group, workers) in groups {
            for w in workers {
                sched.spawn_worker(w, group.clone());
            }
        }
        tokio::spawn(Self::janitor(Arc::downgrade(&sched)));
        sched
    }

    pub fn get(&self, name: &str) -> Option<Arc<Operation>> {
        self.operations.get(name).map(|o| o.clone())
    }

    pub fn list(&self) -> Vec<Arc<Operation>> {
        let mut ops: Vec<_> = self.operations.iter().map(|o| o.clone()).collect();
        ops.sort_by(|a, b| a.name.cmp(&b.name));
        ops
    }

    pub fn queued(&self) -> usize {
        self.queue.lock().len()
    }

    /// Cancels a queued or running operation.
    pub async fn cancel(&self, name: &str) -> Result<()> {
        let op = self.get(name).ok_or_else(|| Error::NotFound(format!("operation {name} not found")))?;
        let queued = self.queue.lock().remove(name);
        match queued {
            Some(item) => {
                let error = Error::Cancelled("action was cancelled before it ran".into());
                self.finish(&item.op, &item.job, None, Some(error)).await;
            }
            None => op.cancel.cancel(),
        }
        Ok(())
    }

    /// Registers a client watching `op`; when the last one leaves and none
    /// returns within the grace period, the action is cancelled.
    pub fn watch(self: &Arc<Self>, op: Arc<Operation>) -> WaiterGuard {
        op.add_waiter();
        WaiterGuard { op, sched: Arc::downgrade(self) }
    }

    /// Stops the pool (SIGTERM): no new action is admitted or started, queued
    /// ones are answered UNAVAILABLE at once, running ones may finish within
    /// `grace` and are then stopped; last, workers release what they keep
    /// between actions (warm containers).
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        self.wakeup.notify_waiters();
        let queued = self.queue.lock().drain();
        for item in queued {
            let error = Error::Unavailable("the server is shutting down; the action did not start; retry it".into());
            self.finish(&item.op, &item.job, None, Some(error)).await;
        }
        if !self.wait_idle(grace).await {
            let running: Vec<Arc<Operation>> =
                self.operations.iter().filter(|o| !o.is_done()).map(|o| o.clone()).collect();
            warn!(count = running.len(), "shutdown grace period over; stopping the actions still running");
            for op in running {
                op.cancel.cancel();
            }
            self.wait_idle(Duration::from_secs(10)).await;
        }
        let workers: Vec<Arc<WorkerSlot>> = self.workers.read().clone();
        for slot in workers {
            slot.worker.shutdown().await;
        }
    }

    /// Waits until no action runs, at most `limit`; true if none does.
    async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.running.load(Ordering::Acquire) == 0;
            }
        }
    }

    pub(crate) async fn finish(
        &self,
        op: &Arc<Operation>,
        job: &PreparedAction,
        result: Option<re_proto::reapi::ActionResult>,
        error: Option<Error>,
    ) {
        let cacheable =
            error.is_none() && !job.action.do_not_cache && result.as_ref().is_some_and(|r| r.exit_code == 0);
        if cacheable {
            if let Some(r) = &result {
                let digest = job.action_digest;
                // Written before the operation completes so a following lookup hits.
                if let Err(e) = self.ac.put(digest, r).await {
                    warn!(action = %digest, error = %e, "could not cache action result");
                }
            }
        }
        let message = match (&error, &result) {
            (Some(e), _) => e.to_string(),
            (None, Some(r)) if r.exit_code != 0 => format!("action exited with code {}", r.exit_code),
            _ => String::new(),
        };
        let response = ExecuteResponse {
            result,
            cached_result: false,
            status: Some(error.as_ref().map(|e| e.to_rpc_status()).unwrap_or_else(ok_status)),
            server_logs: Default::default(),
            message,
        };
        self.cas.unpin(&job.blobs);
        self.in_flight.remove_if(&job.action_digest, |_, o| Arc::ptr_eq(o, op));
        op.complete(response);
    }

    async fn janitor(sched: Weak<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(s) = sched.upgrade() else { return };
            let ttl = s.result_ttl;
            s.operations.retain(|_, op| op.completed_at().is_none_or(|t| t.elapsed() < ttl));
            s.fail_stranded().await;
        }
    }

    /// Fails queued actions that waited longer than their timeout while no
    /// healthy worker could run them (e.g. every docker engine they need is
    /// down), so a build gets an answer instead of hanging. Actions that merely
    /// wait for a busy but healthy pool keep waiting.
    async fn fail_stranded(&self) {
        let workers: Vec<Arc<WorkerSlot>> = self.workers.read().clone();
        let healthy = |props: &Properties| {
            workers.iter().any(|w| {
                w.healthy.load(Ordering::Relaxed)
                    && w.worker.status().state() != WorkerState::Dead
                    && self.matcher.matches(w.worker.properties(), props)
            })
        };
        let stranded = self
            .queue
            .lock()
            .names_where(|platform| !healthy(platform), |j| j.queued_at.elapsed().unwrap_or_default() >= j.job.timeout);
        for name in stranded {
            let Some(item) = self.queue.lock().remove(&name) else { continue };
            let down: Vec<&str> = workers
                .iter()
                .filter(|w| self.matcher.matches(w.worker.properties(), &item.job.platform))
                .map(|w| w.worker.id())
                .collect();
            let error = Error::DeadlineExceeded(format!(
                "action waited {}s (its timeout) in the queue and no healthy worker could run it; the workers that match it are unavailable: {}",
                item.job.timeout.as_secs(),
                down.join(", ")
            ));
            warn!(operation = %item.op.name, action = %item.job.action_digest, "{error}");
            self.finish(&item.op, &item.job, None, Some(error)).await;
        }
    }
}

/// Held by each Execute / WaitExecution stream.
pub struct WaiterGuard {
    pub op: Arc<Operation>,
    sched: Weak<Scheduler>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if self.op.remove_waiter() > 0 || self.op.is_done() {
            return;
        }
        let Some(sched) = self.sched.upgrade() else { return };
        let op = self.op.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            tokio::time::sleep(sched.abandon_grace).await;
            if op.waiters() == 0 && !op.is_done() {
                info!(operation = %op.name, action = %op.action_digest, "no client is waiting any more; cancelling the action");
                let _ = sched.cancel(&op.name).await;
            }
        });
    }
}
