//! The pool scheduler: admits Execute requests (cache lookup, in-flight
//! deduplication, input checks, platform feasibility, queue limit), hands
//! queued actions to idle workers, and records results.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use parking_lot::Mutex;
use re_action_cache::ActionCacheStore;
use re_cas::BlobStore;
use re_proto::error::ok_status;
use re_proto::reapi::{ExecuteRequest, ExecuteResponse};
use re_proto::{DigestInfo, Error, Result};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::action::{prepare, ActionLimits, PreparedAction};
use crate::config::PoolConfig;
use crate::operation::Operation;
use crate::platform::{PlatformMatcher, Properties};
use crate::queue::{Queue, QueuedJob};
use crate::worker::Worker;

/// One worker as the scheduler sees it.
struct WorkerSlot {
    worker: Arc<dyn Worker>,
    /// Whether its last health check passed.
    healthy: AtomicBool,
}

pub struct Scheduler {
    cas: Arc<dyn BlobStore>,
    /// Completeness-checked: a hit's outputs are all in the CAS.
    ac: Arc<dyn ActionCacheStore>,
    matcher: PlatformMatcher,
    workers: Vec<Arc<WorkerSlot>>,
    /// Set by `shutdown`: no new action is admitted or started.
    stopping: AtomicBool,
    /// Actions being run by a worker; `idle` is notified when one ends.
    running: AtomicUsize,
    idle: Notify,
    queue: Mutex<Queue>,
    wakeup: Notify,
    operations: DashMap<String, Arc<Operation>>,
    /// Cacheable actions queued or running, by action digest.
    in_flight: DashMap<DigestInfo, Arc<Operation>>,
    max_queue_size: usize,
    interval: Duration,
    limits: ActionLimits,
    result_ttl: Duration,
    abandon_grace: Duration,
}

impl Scheduler {
    /// Creates the scheduler and starts one task per worker plus a janitor.
    pub fn start(
        config: &PoolConfig,
        cas: Arc<dyn BlobStore>,
        ac: Arc<dyn ActionCacheStore>,
        workers: Vec<Arc<dyn Worker>>,
    ) -> Arc<Self> {
        let sched = Arc::new(Self {
            cas,
            ac,
            matcher: PlatformMatcher::new(config.platform_match.clone()),
            workers: workers
                .into_iter()
                .map(|worker| Arc::new(WorkerSlot { worker, healthy: AtomicBool::new(true) }))
                .collect(),
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
        });
        for slot in &sched.workers {
            let (sched, slot) = (Arc::downgrade(&sched), slot.clone());
            // A thread of its own per worker: the process it waits for and the
            // files it makes are handled where it runs, without hand-offs
            // between threads (re_proto::blocking).
            std::thread::Builder::new()
                .name(format!("worker {}", slot.worker.id()))
                .spawn(move || {
                    re_proto::blocking::mark_dedicated();
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt.block_on(Self::worker_loop(sched, slot)),
                        Err(e) => warn!(worker = slot.worker.id(), error = %e, "worker thread could not start"),
                    }
                })
                .expect("starting a worker thread");
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

    /// Admits an action and returns the operation to watch.
    pub async fn execute(&self, req: &ExecuteRequest, invocation: String) -> Result<Arc<Operation>> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(Error::Unavailable("this server is shutting down; retry the action".into()));
        }
        let digest = DigestInfo::try_from(req.action_digest.as_ref()).map_err(|e| e.in_field("action_digest"))?;
        if !req.skip_cache_lookup {
            if let Some(result) = self.ac.get(digest).await? {
                debug!(action = %digest, "Execute served from the action cache");
                let op = Operation::new(digest);
                op.complete(ExecuteResponse {
                    result: Some(result),
                    cached_result: true,
                    status: Some(ok_status()),
                    ..Default::default()
                });
                // Not kept for WaitExecution: the Execute stream already ends
                // with this answer, and keeping every hit for result_ttl lets a
                // client that repeats cached Executes grow the server unbounded.
                return Ok(op);
            }
        }
        if let Some(op) = self.in_flight.get(&digest).map(|o| o.clone()).filter(|o| !o.is_done()) {
            debug!(action = %digest, operation = %op.name, "joining identical action in flight");
            return Ok(op);
        }

        let job = prepare(self.cas.as_ref(), digest, &self.limits).await?;
        let offered: Vec<&Properties> = self.workers.iter().map(|w| w.worker.properties()).collect();
        if let Some(blame) = self.matcher.never_matchable(&offered, &job.platform) {
            let wanted: Vec<String> = blame.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(Error::FailedPrecondition(format!(
                "no configured worker can run this action: no worker offers {}; compare the action's platform \
                 properties (e.g. Bazel's --remote_default_exec_properties or exec_properties) with the \
                 properties of [[execution.pool.workers]]",
                wanted.join(", ")
            )));
        }
        // Pin first, then check: a blob seen present cannot be evicted after.
        self.cas.pin(&job.blobs);
        let missing = match self.cas.find_missing(&job.blobs).await {
            Ok(m) => m,
            Err(e) => {
                self.cas.unpin(&job.blobs);
                return Err(e);
            }
        };
        if !missing.is_empty() {
            self.cas.unpin(&job.blobs);
            return Err(Error::MissingBlobs {
                message: format!("{} input blobs are missing from the CAS", missing.len()),
                blobs: missing,
            });
        }

        let do_not_cache = job.action.do_not_cache;
        let priority = req.execution_policy.as_ref().map(|p| p.priority).unwrap_or(0);
        let op = Operation::new(digest);
        {
            let mut queue = self.queue.lock();
            if queue.len() >= self.max_queue_size {
                drop(queue);
                self.cas.unpin(&job.blobs);
                return Err(Error::ResourceExhausted(format!(
                    "the execution queue is full ({} actions waiting, max_queue_size = {}); retry later",
                    self.max_queue_size, self.max_queue_size
                )));
            }
            if !do_not_cache {
                // Re-checked under the queue lock so two racing requests share one run.
                match self.in_flight.entry(digest) {
                    dashmap::Entry::Occupied(e) if !e.get().is_done() => {
                        let existing = e.get().clone();
                        drop(queue);
                        self.cas.unpin(&job.blobs);
                        return Ok(existing);
                    }
                    dashmap::Entry::Occupied(mut e) => {
                        e.insert(op.clone());
                    }
                    dashmap::Entry::Vacant(e) => {
                        e.insert(op.clone());
                    }
                }
            }
            self.operations.insert(op.name.clone(), op.clone());
            queue.push(QueuedJob {
                op: op.clone(),
                job: Arc::new(job),
                priority,
                invocation,
                queued_at: SystemTime::now(),
            });
        }
        debug!(action = %digest, operation = %op.name, priority, "action queued");
        self.wakeup.notify_waiters();
        Ok(op)
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

    async fn worker_loop(sched: Weak<Self>, slot: Arc<WorkerSlot>) {
        let worker = &slot.worker;
        loop {
            let Some(s) = sched.upgrade() else { return };
            if s.stopping.load(Ordering::Acquire) {
                return;
            }
            let ok = worker.is_healthy().await;
            slot.healthy.store(ok, Ordering::Relaxed);
            if !ok {
                let pause = s.interval * 10;
                drop(s);
                tokio::time::sleep(pause).await;
                continue;
            }
            let notified = s.wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let item = s.queue.lock().take_for(&s.matcher, worker.properties());
            match item {
                Some(item) => s.run_one(worker.as_ref(), item).await,
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

    async fn run_one(&self, worker: &dyn Worker, item: QueuedJob) {
        let QueuedJob { op, job, queued_at, .. } = item;
        if op.cancel.is_cancelled() {
            self.finish(&op, &job, None, Some(Error::Cancelled("action was cancelled before it ran".into()))).await;
            return;
        }
        op.set_executing();
        self.running.fetch_add(1, Ordering::AcqRel);
        debug!(action = %job.action_digest, operation = %op.name, worker = worker.id(), "action started");
        let mut outcome = worker.run(&job, queued_at, op.cancel.clone()).await;
        if self.stopping.load(Ordering::Acquire) && matches!(outcome.error, Some(Error::Cancelled(_))) {
            outcome.error = Some(Error::Unavailable(
                "the server shut down while the action ran and stopped it; run it again".into(),
            ));
        }
        debug!(
            action = %job.action_digest,
            worker = worker.id(),
            exit_code = outcome.result.exit_code,
            error = ?outcome.error.as_ref().map(|e| e.to_string()),
            "action finished"
        );
        let cleanup = outcome.cleanup.take();
        self.finish(&op, &job, Some(outcome.result), outcome.error).await;
        // After the client has its answer: the worker's leftovers go.
        if let Some(cleanup) = cleanup {
            cleanup.await;
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.idle.notify_waiters();
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
        for slot in &self.workers {
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

    async fn finish(
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
        let healthy = |props: &Properties| {
            self.workers
                .iter()
                .any(|w| w.healthy.load(Ordering::Relaxed) && self.matcher.matches(w.worker.properties(), props))
        };
        let stranded = self
            .queue
            .lock()
            .names_where(|j| j.queued_at.elapsed().unwrap_or_default() >= j.job.timeout && !healthy(&j.job.platform));
        for name in stranded {
            let Some(item) = self.queue.lock().remove(&name) else { continue };
            let down: Vec<&str> = self
                .workers
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
