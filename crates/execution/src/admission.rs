//! Admitting an Execute request: action-cache lookup, joining an identical
//! action in flight, `action::prepare` (every check of the action), a worker
//! able to run it at all, inputs pinned and present, the queue's limit.
use std::sync::Arc;
use std::time::SystemTime;

use re_proto::error::ok_status;
use re_proto::reapi::{ExecuteRequest, ExecuteResponse};
use re_proto::{DigestInfo, Error, Result};
use tracing::debug;

use crate::action::prepare;
use crate::operation::Operation;
use crate::platform::Properties;
use crate::queue::{QueuedJob, RequestInfo};
use crate::scheduler::Scheduler;

impl Scheduler {
    /// Admits an action and returns the operation to watch.
    pub async fn execute(&self, req: &ExecuteRequest, request: RequestInfo) -> Result<Arc<Operation>> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Unavailable("this server is shutting down; retry the action".into()));
        }
        let digest = DigestInfo::try_from(req.action_digest.as_ref()).map_err(|e| e.in_field("action_digest"))?;
        if !req.skip_cache_lookup {
            if let Some(result) = self.ac.get(digest).await? {
                debug!(action = %digest, "Execute served from the action cache");
                if let Some(m) = &self.metrics {
                    m.execute_cache_hits.inc();
                }
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
        // Every configured group counts, whether or not it has a worker now.
        // So does every platform an agent has offered, connected now or not.
        let agent_shapes = self.agents.shapes();
        let offered: Vec<&Properties> = self.groups.iter().map(|g| &g.properties).chain(agent_shapes.iter()).collect();
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
                request,
                queued_at: SystemTime::now(),
                attempts: 0,
            });
        }
        debug!(action = %digest, operation = %op.name, priority, "action queued");
        self.wakeup.notify_waiters();
        Ok(op)
    }
}
