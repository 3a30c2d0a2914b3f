//! What the scheduler needs from a worker, whatever runs the process. Every
//! worker is an [`crate::run_frame::ActionFrame`] around a launcher.
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::future::BoxFuture;
use re_proto::reapi::ActionResult;
use re_proto::Error;
use tokio_util::sync::CancellationToken;

use crate::action::PreparedAction;
use crate::platform::Properties;
use crate::usage::ResourceUsage;
use crate::worker_status::WorkerStatus;

/// A worker's answer: the result (possibly partial) and, if the run did not
/// complete normally, why (timeout, cancellation, missing inputs; a lost
/// worker is `Error::WorkerLost`).
pub struct RunOutcome {
    pub result: ActionResult,
    pub error: Option<Error>,
    /// What the action used, where it could be measured.
    pub usage: Option<ResourceUsage>,
    /// The end of its stderr, when it failed.
    pub stderr_tail: String,
    /// What is left to undo (the action's directory), run once the client
    /// has its answer and before the worker takes its next action.
    pub cleanup: Option<BoxFuture<'static, ()>>,
}

#[async_trait]
pub trait Worker: Send + Sync + 'static {
    fn id(&self) -> &str;
    fn properties(&self) -> &Properties;
    /// Its state, heartbeat and current action, as operators see them.
    fn status(&self) -> &Arc<WorkerStatus>;
    /// False while the worker cannot take work (e.g. its engine is down).
    async fn is_healthy(&self) -> bool {
        true
    }
    /// True once the worker will never take work again (a worker agent's
    /// session that ended): it is not replaced, its agent comes back itself.
    fn is_gone(&self) -> bool {
        false
    }
    /// Runs one action queued at `queued_at`; must stop promptly when `cancel` fires.
    async fn run(&self, job: &PreparedAction, queued_at: SystemTime, cancel: CancellationToken) -> RunOutcome;
    /// The server is stopping and no action runs: release what outlives actions.
    async fn shutdown(&self) {}
}
