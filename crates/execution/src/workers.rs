//! The pool's workers as the scheduler runs them: each on a thread of its
//! own (a current-thread runtime: the process it waits for and the files it
//! makes are handled where it runs, see `re_proto::blocking`); its loop
//! (health, take, run); its lifecycle (drain, abort, failure, replacement
//! after a back-off); retries of actions its failure lost; and more workers
//! of a configured group on request.
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use parking_lot::Mutex;
use re_proto::{Error, Result};
use tracing::{info, warn, Instrument};

use crate::operation::Operation;
use crate::platform::Properties;
use crate::queue::QueuedJob;
use crate::recent::RecentAction;
use crate::scheduler::Scheduler;
use crate::usage::ResourceUsage;
use crate::worker::{RunOutcome, Worker};
use crate::worker_status::{CurrentAction, WorkerState};

/// The longest wait before a failed worker is replaced or an unreachable
/// engine checked again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

type MakeWorker = dyn Fn(String) -> Result<Arc<dyn Worker>> + Send + Sync;

/// A group and the workers it starts with.
pub type StartingGroup = (Arc<WorkerGroup>, Vec<Arc<dyn Worker>>);

/// A configured `[[execution.pool.workers]]` table: how to make one more of
/// its workers.
pub struct WorkerGroup {
    pub name: String,
    /// `host` or `docker`.
    pub kind: &'static str,
    /// What one of its workers needs of the machine's memory (for `add`).
    pub memory_per_worker: u64,
    /// What its workers advertise.
    pub properties: Properties,
    make: Box<MakeWorker>,
    /// Numbers worker ids; shared by every group of one kind.
    ids: Arc<AtomicUsize>,
    /// Failures since its last finished action, for the back-off.
    failures: AtomicU32,
}

impl WorkerGroup {
    pub fn new(
        name: String,
        kind: &'static str,
        memory_per_worker: u64,
        properties: Properties,
        ids: Arc<AtomicUsize>,
        make: Box<MakeWorker>,
    ) -> Self {
        Self { name, kind, memory_per_worker, properties, make, ids, failures: AtomicU32::new(0) }
    }

    /// A new worker with the next free id of its kind (`host-worker-3`).
    pub fn make(&self) -> Result<Arc<dyn Worker>> {
        let n = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        (self.make)(format!("{}-worker-{n}", self.kind))
    }

    fn backoff(&self) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
        Duration::from_secs(1 << n).min(MAX_BACKOFF)
    }
}

/// One worker as the scheduler runs it.
pub struct WorkerSlot {
    pub worker: Arc<dyn Worker>,
    pub group: Arc<WorkerGroup>,
    /// Whether its last health check passed.
    pub healthy: AtomicBool,
    /// The operation it is running (for abort).
    current: Mutex<Option<Arc<Operation>>>,
}

/// Machine memory from /proc/meminfo: (total, available) bytes.
pub fn memory() -> (u64, u64) {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

impl Scheduler {
    /// Registers `worker` and starts its thread.
    pub(crate) fn spawn_worker(self: &Arc<Self>, worker: Arc<dyn Worker>, group: Arc<WorkerGroup>) {
        let slot = Arc::new(WorkerSlot { worker, group, healthy: AtomicBool::new(true), current: Mutex::new(None) });
        self.workers.write().push(slot.clone());
        let sched = Arc::downgrade(self);
        let id = slot.worker.id().to_string();
        let span = tracing::info_span!("worker", worker = %id);
        std::thread::Builder::new()
            .name(format!("worker {id}"))
            .spawn(move || {
                re_proto::blocking::mark_dedicated();
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(Self::worker_loop(sched, slot).instrument(span)),
                    Err(e) => warn!(worker = %id, error = %e, "worker thread could not start"),
                }
            })
            .expect("starting a worker thread");
    }

    /// A worker's life: health checks, actions, until it is drained, fails
    /// or the server stops.
    async fn worker_loop(sched: Weak<Self>, slot: Arc<WorkerSlot>) {
        let (worker, status) = (&slot.worker, slot.worker.status().clone());
        let mut unhealthy_for = 0u32;
        loop {
            let Some(s) = sched.upgrade() else { return };
            if s.stopping.load(Ordering::Acquire) || status.state() == WorkerState::Draining {
                status.set_state(WorkerState::Dead, Some("stopped".into()));
                return;
            }
            if worker.is_gone() {
                status.set_state(WorkerState::Dead, Some("its agent's session ended".into()));
                return;
            }
            let ok = worker.is_healthy().await;
            slot.healthy.store(ok, Ordering::Relaxed);
            if !ok {
                // Not replaced: a new worker would find its engine just as
                // unreachable. Checked again after a growing pause.
                unhealthy_for += 1;
                let pause = Duration::from_secs(1 << unhealthy_for.min(5)).min(MAX_BACKOFF).max(s.interval * 10);
                let reason = format!("its engine is unreachable; next check in {}s", pause.as_secs());
                status.set_state(WorkerState::Failed, Some(reason));
                drop(s);
                tokio::time::sleep(pause).await;
                continue;
            }
            unhealthy_for = 0;
            status.set_state(WorkerState::Running, None);
            status.beat();
            let notified = s.wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let item = s.queue.lock().take_for(&s.matcher, worker.properties());
            match item {
                Some(item) => {
                    if !s.run_one(&slot, item).await {
                        s.replace_later(&slot);
                        return;
                    }
                }
                None => {
                    let interval = s.interval;
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            }
        }
    }

    /// Runs one action; false if the worker failed under it (the action is
    /// queued again, up to `crashes_max` runs, or failed).
    async fn run_one(&self, slot: &WorkerSlot, item: QueuedJob) -> bool {
        let (worker, status) = (slot.worker.as_ref(), slot.worker.status());
        if item.op.cancel.is_cancelled() {
            let error = Error::Cancelled("action was cancelled before it ran".into());
            self.finish(&item.op, &item.job, None, Some(error)).await;
            return true;
        }
        let (op, job) = (item.op.clone(), item.job.clone());
        op.set_executing();
        *slot.current.lock() = Some(op.clone());
        self.running.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = &self.metrics {
            m.actions_started.inc();
            m.running_actions.inc();
            m.queue_seconds.observe(item.queued_at.elapsed().unwrap_or_default().as_secs_f64());
        }
        status.start_action(CurrentAction {
            digest: job.action_digest.to_string(),
            mnemonic: item.request.mnemonic.clone(),
            target: item.request.target.clone(),
            operation: op.name.clone(),
            started_at: SystemTime::now(),
            pid: None,
            container_id: None,
            cpu_seconds: 0.0,
            memory_bytes: 0,
        });
        info!(action = %job.action_digest, operation = %op.name, mnemonic = %item.request.mnemonic, "action started");
        let started = std::time::Instant::now();
        let run = AssertUnwindSafe(worker.run(&job, item.queued_at, op.cancel.clone())).catch_unwind().await;
        let mut outcome = run.unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            RunOutcome {
                result: Default::default(),
                error: Some(Error::WorkerLost(format!("worker {} panicked: {why}", worker.id()))),
                usage: None,
                stderr_tail: String::new(),
                cleanup: None,
            }
        });
        if op.is_aborted() && matches!(outcome.error, Some(Error::Cancelled(_))) {
            outcome.error = Some(Error::Aborted(format!("aborted by an operator on worker {}", worker.id())));
        } else if self.stopping.load(Ordering::Acquire) && matches!(outcome.error, Some(Error::Cancelled(_))) {
            outcome.error = Some(Error::Unavailable(
                "the server shut down while the action ran and stopped it; run it again".into(),
            ));
        }
        *slot.current.lock() = None;
        status.end_action();
        let run_time = started.elapsed();
        let worker_ok = !matches!(outcome.error, Some(Error::WorkerLost(_)));
        let cleanup = outcome.cleanup.take();
        if let Some(Error::WorkerLost(reason)) = &outcome.error {
            status.set_state(WorkerState::Failed, Some(reason.clone()));
            warn!(action = %job.action_digest, worker = worker.id(), %reason, "worker lost the action");
            if item.attempts + 1 < self.crashes_max && !self.stopping.load(Ordering::Acquire) {
                if let Some(m) = &self.metrics {
                    m.actions_retried.inc();
                    m.running_actions.dec();
                }
                op.requeue();
                let mut again = item;
                again.attempts += 1;
                self.queue.lock().push(again);
                self.wakeup.notify_waiters();
                self.end_running(cleanup).await;
                return false;
            }
            let tries = item.attempts + 1;
            outcome.error =
                Some(Error::WorkerLost(format!("the action was lost with its worker {tries} times; last: {reason}")));
        } else {
            slot.group.failures.store(0, Ordering::Relaxed);
        }
        info!(
            action = %job.action_digest,
            exit_code = outcome.result.exit_code,
            error = ?outcome.error.as_ref().map(|e| e.to_string()),
            "action finished"
        );
        self.record(&item, worker.id(), &outcome, run_time);
        self.finish(&op, &job, Some(outcome.result), outcome.error).await;
        self.end_running(cleanup).await;
        worker_ok
    }

    /// After the client has its answer: the worker's leftovers go.
    async fn end_running(&self, cleanup: Option<futures::future::BoxFuture<'static, ()>>) {
        if let Some(cleanup) = cleanup {
            cleanup.await;
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.idle.notify_waiters();
    }

    /// Remembers a finished action (recent list, metrics).
    fn record(&self, item: &QueuedJob, worker: &str, outcome: &RunOutcome, run_time: Duration) {
        let name = outcome_name(outcome);
        let usage: Option<ResourceUsage> = outcome.usage;
        if let Some(m) = &self.metrics {
            m.running_actions.dec();
            m.finished(name);
            m.run_seconds.observe(run_time.as_secs_f64());
            if let Some(u) = usage {
                m.action_cpu_seconds.observe(u.cpu_seconds());
                m.action_peak_memory_bytes.observe(u.peak_memory_bytes as f64);
            }
            let aux = outcome.result.execution_metadata.iter().flat_map(|m| &m.auxiliary_metadata);
            if let Some(f) = aux.filter_map(crate::agents::input_fetch::from_any).next() {
                let n = |v: i64| v.max(0) as u64;
                m.agent_input_blobs.with_label_values(&["cache", worker]).inc_by(n(f.cached_blobs));
                m.agent_input_blobs.with_label_values(&["fetched", worker]).inc_by(n(f.fetched_blobs));
                m.agent_input_bytes.with_label_values(&["cache", worker]).inc_by(n(f.cached_bytes));
                m.agent_input_bytes.with_label_values(&["fetched", worker]).inc_by(n(f.fetched_bytes));
            }
        }
        let run_started = SystemTime::now() - run_time;
        self.recent.push(RecentAction {
            digest: item.job.action_digest.to_string(),
            operation: item.op.name.clone(),
            mnemonic: item.request.mnemonic.clone(),
            target: item.request.target.clone(),
            worker: worker.to_string(),
            queued_seconds: run_started.duration_since(item.queued_at).unwrap_or_default().as_secs_f64(),
            run_seconds: run_time.as_secs_f64(),
            exit_code: outcome.result.exit_code,
            outcome: name,
            status_message: outcome.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
            cpu_seconds: usage.map(|u| u.cpu_seconds()),
            peak_memory_bytes: usage.map(|u| u.peak_memory_bytes),
            stderr_tail: outcome.stderr_tail.clone(),
            attempts: item.attempts + 1,
            finished_at: SystemTime::now(),
        });
    }

    /// A failed worker's replacement, after its group's back-off.
    fn replace_later(self: &Arc<Self>, failed: &Arc<WorkerSlot>) {
        if failed.worker.is_gone() {
            // An agent's session: the agent opens a new one itself.
            failed.worker.status().set_state(WorkerState::Dead, Some("its agent's session ended".into()));
            return;
        }
        let (sched, failed) = (Arc::downgrade(self), failed.clone());
        let pause = failed.group.backoff();
        let reason = failed.worker.status().snapshot(self.stall_after).reason.unwrap_or_default();
        failed
            .worker
            .status()
            .set_state(WorkerState::Failed, Some(format!("{reason}; replaced in {}s", pause.as_secs())));
        self.runtime.spawn(async move {
            tokio::time::sleep(pause).await;
            let Some(s) = sched.upgrade() else { return };
            if s.stopping.load(Ordering::Acquire) {
                return;
            }
            match failed.group.make() {
                Ok(worker) => {
                    info!(failed = failed.worker.id(), replacement = worker.id(), "replacing a failed worker");
                    s.workers.write().retain(|w| !Arc::ptr_eq(w, &failed));
                    s.spawn_worker(worker, failed.group.clone());
                }
                Err(e) => warn!(failed = failed.worker.id(), error = %e, "could not make a replacement worker"),
            }
        });
    }

    /// Drops ended workers named `id` from the list (an agent's earlier
    /// sessions, once it opened a new one).
    pub(crate) fn forget_gone_workers(&self, id: &str) {
        self.workers.write().retain(|w| w.worker.id() != id || !w.worker.is_gone());
    }

    fn slot(&self, id: &str) -> Result<Arc<WorkerSlot>> {
        let workers = self.workers.read();
        workers.iter().find(|w| w.worker.id() == id).cloned().ok_or_else(|| Error::NotFound(format!("no worker {id}")))
    }

    /// The worker finishes its action and takes no other, then stops (DEAD).
    pub fn drain(&self, id: &str) -> Result<()> {
        let slot = self.slot(id)?;
        slot.worker.status().set_state(WorkerState::Draining, Some("drained by an operator".into()));
        self.wakeup.notify_waiters();
        Ok(())
    }

    /// Stops the worker's current action; its client gets ABORTED.
    pub fn abort(&self, id: &str) -> Result<String> {
        let slot = self.slot(id)?;
        let current = slot.current.lock().clone();
        match current {
            Some(op) => {
                info!(worker = id, operation = %op.name, "aborting the action at an operator's request");
                op.abort();
                Ok(op.name.clone())
            }
            None => Err(Error::FailedPrecondition(format!("worker {id} runs no action"))),
        }
    }

    /// One more worker of `group`; refused when the machine's available
    /// memory is below what such a worker needs, unless `force`.
    pub fn add_worker(self: &Arc<Self>, group: &str, force: bool) -> Result<String> {
        let g = self.groups.iter().find(|g| g.name == group).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
            Error::NotFound(format!("no worker group '{group}'; groups: {}", names.join(", ")))
        })?;
        let (_, available) = memory();
        if !force && available < g.memory_per_worker {
            return Err(Error::ResourceExhausted(format!(
                "a worker of group '{group}' needs {} MiB of memory and {} MiB are available; \
                 add it anyway with force",
                g.memory_per_worker >> 20,
                available >> 20
            )));
        }
        let worker = g.make()?;
        let id = worker.id().to_string();
        info!(worker = %id, group, force, "worker added");
        self.spawn_worker(worker, g);
        Ok(id)
    }
}

/// What became of an action, as metrics and the recent list name it.
fn outcome_name(outcome: &RunOutcome) -> &'static str {
    match &outcome.error {
        None if outcome.result.exit_code == 0 => "succeeded",
        None => "failed",
        Some(Error::DeadlineExceeded(_)) => "timed_out",
        Some(Error::Cancelled(_)) => "cancelled",
        Some(Error::Aborted(_)) => "aborted",
        Some(Error::WorkerLost(_)) => "lost",
        Some(_) => "error",
    }
}
