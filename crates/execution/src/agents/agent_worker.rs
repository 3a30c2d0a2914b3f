//! One bot session of a worker agent, as the scheduler sees it: a
//! [`Worker`] whose `run` hands the action to the bot as a lease and waits
//! for the bot to report it COMPLETED. The session lapses when the bot has
//! not called UpdateBotSession for `timeout`; a lease it held is then lost
//! (the scheduler queues the action again, under `crashes_max`).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message;
use re_proto::reapi::ActionResult;
use re_proto::rwapi::{Lease, LeaseState};
use re_proto::{Error, Result};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::action::PreparedAction;
use crate::platform::Properties;
use crate::usage::ResourceUsage;
use crate::worker::{RunOutcome, Worker};
use crate::worker_status::WorkerStatus;

/// Type URLs of what a lease carries.
pub const DIGEST_TYPE_URL: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Digest";
pub const ACTION_RESULT_TYPE_URL: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";

/// What the bot reported for a lease.
pub struct LeaseReport {
    pub result: Option<ActionResult>,
    pub error: Option<Error>,
}

/// The session's one lease, from offer to report.
struct CurrentLease {
    id: String,
    /// The action digest, packed as the payload.
    payload: prost_types::Any,
    state: LeaseState,
    done: Option<oneshot::Sender<LeaseReport>>,
}

pub struct AgentWorker {
    id: String,
    session: String,
    properties: Properties,
    status: Arc<WorkerStatus>,
    timeout: Duration,
    last_seen: Mutex<Instant>,
    /// Replaced by a newer session of the same bot, or told to stop.
    ended: AtomicBool,
    /// The bot said it takes no new lease (UNHEALTHY, terminating).
    refusing: AtomicBool,
    lease: Mutex<Option<CurrentLease>>,
    /// Wakes an UpdateBotSession waiting for a lease or a cancellation.
    changed: Notify,
}

impl AgentWorker {
    pub fn new(
        id: String,
        session: String,
        properties: Properties,
        status: Arc<WorkerStatus>,
        timeout: Duration,
    ) -> Self {
        Self {
            id,
            session,
            properties,
            status,
            timeout,
            last_seen: Mutex::new(Instant::now()),
            ended: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            lease: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// The bot called: its session lives on.
    pub fn touch(&self) {
        *self.last_seen.lock() = Instant::now();
        self.status.beat();
    }

    pub fn lapsed(&self) -> bool {
        self.last_seen.lock().elapsed() > self.timeout
    }

    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Release);
    }

    /// Applies what the bot reported about its leases.
    pub fn report(&self, leases: &[Lease]) {
        let mut current = self.lease.lock();
        let Some(lease) = current.as_mut() else { return };
        let Some(reported) = leases.iter().find(|l| l.id == lease.id) else { return };
        match LeaseState::try_from(reported.state).unwrap_or(LeaseState::Unspecified) {
            LeaseState::Active if lease.state == LeaseState::Pending => lease.state = LeaseState::Active,
            LeaseState::Completed => {
                if let Some(done) = current.take().and_then(|l| l.done) {
                    let _ = done.send(decode_report(reported));
                }
            }
            _ => {}
        }
    }

    /// The leases to send the bot now: the current one (with its payload
    /// while pending), if any.
    pub fn leases(&self) -> Vec<Lease> {
        let current = self.lease.lock();
        let Some(lease) = current.as_ref() else { return vec![] };
        let pending = lease.state == LeaseState::Pending;
        vec![Lease {
            id: lease.id.clone(),
            payload: pending.then(|| lease.payload.clone()),
            state: lease.state as i32,
            ..Default::default()
        }]
    }

    /// Waits until there is something new for the bot, at most `limit`.
    pub async fn wait_for_change(&self, limit: Duration, seen: &[Lease]) {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = self.leases();
        let same = now.len() == seen.len() && now.iter().zip(seen).all(|(a, b)| a.id == b.id && a.state == b.state);
        if !same || self.ended.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(limit, changed).await;
    }

    fn lost(&self, why: &str) -> RunOutcome {
        outcome(Default::default(), Some(Error::WorkerLost(format!("agent {}: {why}", self.id))))
    }
}

fn outcome(result: ActionResult, error: Option<Error>) -> RunOutcome {
    let usage =
        result.execution_metadata.as_ref().and_then(|m| m.auxiliary_metadata.iter().find_map(ResourceUsage::from_any));
    RunOutcome { result, error, usage, stderr_tail: String::new(), cleanup: None }
}

fn decode_report(lease: &Lease) -> LeaseReport {
    let result = lease
        .result
        .as_ref()
        .filter(|a| a.type_url == ACTION_RESULT_TYPE_URL)
        .and_then(|a| ActionResult::decode(a.value.as_slice()).ok());
    let error = lease.status.as_ref().and_then(Error::from_rpc_status);
    match (result, error) {
        (None, None) => LeaseReport {
            result: None,
            error: Some(Error::WorkerLost("the agent completed the lease without an ActionResult".into())),
        },
        (result, error) => LeaseReport { result, error },
    }
}

#[async_trait]
impl Worker for AgentWorker {
    fn id(&self) -> &str {
        &self.id
    }

    fn properties(&self) -> &Properties {
        &self.properties
    }

    fn status(&self) -> &Arc<WorkerStatus> {
        &self.status
    }

    async fn is_healthy(&self) -> bool {
        !self.refusing.load(Ordering::Acquire)
    }

    fn is_gone(&self) -> bool {
        self.ended.load(Ordering::Acquire) || self.lapsed()
    }

    async fn run(&self, job: &PreparedAction, _queued_at: SystemTime, cancel: CancellationToken) -> RunOutcome {
        if self.is_gone() {
            return self.lost("its session ended before the lease was offered");
        }
        let (done, mut answer) = oneshot::channel();
        let digest: re_proto::reapi::Digest = job.action_digest.into();
        let id = uuid::Uuid::new_v4().to_string();
        let payload = prost_types::Any { type_url: DIGEST_TYPE_URL.into(), value: digest.encode_to_vec() };
        *self.lease.lock() = Some(CurrentLease { id, payload, state: LeaseState::Pending, done: Some(done) });
        self.changed.notify_waiters();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut cancelled_at: Option<Instant> = None;
        loop {
            tokio::select! {
                report = &mut answer => {
                    let Ok(report) = report else { return self.lost("the lease was dropped") };
                    let error = match (cancelled_at, report.error) {
                        (Some(_), None) | (Some(_), Some(Error::Cancelled(_))) => {
                            Some(Error::Cancelled("action was cancelled while it ran".into()))
                        }
                        (_, e) => e,
                    };
                    let mut result = report.result.unwrap_or_default();
                    // Named as the pool knows it (`agent/host-worker-1`).
                    if let Some(meta) = result.execution_metadata.as_mut() {
                        meta.worker = self.id.clone();
                    }
                    return outcome(result, error);
                }
                _ = cancel.cancelled(), if cancelled_at.is_none() => {
                    // The bot learns it at its next UpdateBotSession and stops the action.
                    if let Some(l) = self.lease.lock().as_mut() {
                        l.state = LeaseState::Cancelled;
                    }
                    cancelled_at = Some(Instant::now());
                    self.changed.notify_waiters();
                }
                _ = tick.tick() => {
                    let gone = self.is_gone();
                    // A bot that never confirms a cancellation is not waited for.
                    let given_up = cancelled_at.is_some_and(|t| t.elapsed() > self.timeout);
                    if gone || given_up {
                        self.lease.lock().take();
                        if given_up && !gone {
                            return outcome(Default::default(), Some(Error::Cancelled("action was cancelled while it ran".into())));
                        }
                        return self.lost(&format!(
                            "its session lapsed (no UpdateBotSession for {}s) while it ran the action",
                            self.timeout.as_secs()
                        ));
                    }
                }
            }
        }
    }
}

/// The digest a lease's payload names (the agent's side of the contract).
pub fn lease_action_digest(lease: &Lease) -> Result<re_proto::DigestInfo> {
    let payload = lease.payload.as_ref().ok_or_else(|| Error::InvalidArgument("the lease has no payload".into()))?;
    if payload.type_url != DIGEST_TYPE_URL {
        return Err(Error::InvalidArgument(format!("lease payload {} is not a Digest", payload.type_url)));
    }
    let digest = re_proto::reapi::Digest::decode(payload.value.as_slice())
        .map_err(|e| Error::InvalidArgument(format!("lease payload does not decode: {e}")))?;
    re_proto::DigestInfo::try_from(Some(&digest)).map_err(|e| e.in_field("lease payload"))
}
