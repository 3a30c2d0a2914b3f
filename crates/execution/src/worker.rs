//! What the scheduler needs from a worker, whatever runs the process.
use async_trait::async_trait;
use std::time::Duration;

use re_proto::reapi::{ActionResult, ExecutedActionMetadata};
use re_proto::Error;
use tokio_util::sync::CancellationToken;

use crate::action::PreparedAction;
use crate::platform::Properties;

/// A worker's answer: the result (possibly partial) and, if the run did not
/// complete normally, why (timeout, cancellation, missing inputs...).
pub struct RunOutcome {
    pub result: ActionResult,
    pub error: Option<Error>,
}

#[async_trait]
pub trait Worker: Send + Sync + 'static {
    fn id(&self) -> &str;
    fn properties(&self) -> &Properties;
    /// False while the worker cannot take work (e.g. its engine is down).
    async fn is_healthy(&self) -> bool {
        true
    }
    /// Runs one action; must stop promptly when `cancel` fires.
    async fn run(&self, job: &PreparedAction, cancel: CancellationToken) -> RunOutcome;
}

/// Sets `virtual_execution_duration` from the execution timestamps.
pub fn set_virtual_duration(meta: &mut ExecutedActionMetadata) {
    let d = |t: &prost_types::Timestamp| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    if let (Some(s), Some(e)) = (&meta.execution_start_timestamp, &meta.execution_completed_timestamp) {
        meta.virtual_execution_duration = d(e).checked_sub(d(s)).and_then(|d| prost_types::Duration::try_from(d).ok());
    }
}
