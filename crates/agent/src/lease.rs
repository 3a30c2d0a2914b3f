//! One lease on the agent: the action is prepared from the server's CAS,
//! its inputs brought into the local cache, run by a local worker through
//! the same action frame as on the server, its outputs uploaded; the lease
//! comes back COMPLETED with the ActionResult (or the error) in it.
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use re_action_cache::completeness::referenced_blobs;
use re_cas::BlobStore;
use re_execution::action::{prepare, ActionLimits};
use re_execution::agents::agent_worker::ACTION_RESULT_TYPE_URL;
use re_execution::agents::input_fetch;
use re_execution::worker::Worker;
use re_proto::error::ok_status;
use re_proto::reapi::ActionResult;
use re_proto::rwapi::{Lease, LeaseState};
use re_proto::{DigestInfo, Error};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::inputs::ensure_inputs;
use crate::server_cas::ServerCas;

/// What a lease needs on this agent.
#[derive(Clone)]
pub struct LeaseContext {
    /// The local cache, reading through to the server.
    pub store: Arc<dyn BlobStore>,
    pub server: ServerCas,
    pub limits: ActionLimits,
}

/// Runs the lease's action; the returned lease is COMPLETED.
pub async fn run_lease(
    ctx: LeaseContext,
    worker: Arc<dyn Worker>,
    lease_id: String,
    digest: DigestInfo,
    cancel: CancellationToken,
) -> Lease {
    let (result, error) = match run_action(&ctx, worker.as_ref(), digest, cancel).await {
        Ok((result, error)) => (Some(result), error),
        Err(e) => (None, Some(e)),
    };
    if let Some(e) = &error {
        warn!(action = %digest, error = %e, "lease ended with an error");
    }
    Lease {
        id: lease_id,
        state: LeaseState::Completed as i32,
        result: result.map(|r| prost_types::Any { type_url: ACTION_RESULT_TYPE_URL.into(), value: r.encode_to_vec() }),
        status: Some(error.as_ref().map(|e| e.to_rpc_status()).unwrap_or_else(ok_status)),
        ..Default::default()
    }
}

async fn run_action(
    ctx: &LeaseContext,
    worker: &dyn Worker,
    digest: DigestInfo,
    cancel: CancellationToken,
) -> re_proto::Result<(ActionResult, Option<Error>)> {
    let job = prepare(ctx.store.as_ref(), digest, &ctx.limits).await?;
    let fetch = ensure_inputs(&ctx.store, &ctx.server, &job).await;
    let fetch = match fetch {
        Ok(f) => f,
        Err(e) => {
            ctx.store.unpin(&job.blobs);
            return Err(e);
        }
    };
    info!(
        action = %digest,
        cached = fetch.cached_blobs,
        fetched = fetch.fetched_blobs,
        fetched_bytes = fetch.fetched_bytes,
        "inputs ready"
    );
    let mut outcome = worker.run(&job, SystemTime::now(), cancel).await;
    ctx.store.unpin(&job.blobs);
    if let Some(meta) = outcome.result.execution_metadata.as_mut() {
        meta.auxiliary_metadata.push(input_fetch::to_any(&fetch));
    }
    // Outputs reach the server before the result names them.
    let uploaded = match referenced_blobs(ctx.store.as_ref(), &outcome.result).await {
        Ok(Some(blobs)) => ctx.server.upload_from(&ctx.store, &blobs).await,
        Ok(None) => Err(Error::Unavailable("an output tree left the agent's cache before it was uploaded".into())),
        Err(e) => Err(e),
    };
    if let Some(cleanup) = outcome.cleanup.take() {
        cleanup.await;
    }
    if let Err(e) = uploaded {
        return Err(Error::Unavailable(format!("the action ran but its outputs could not be uploaded: {e}")));
    }
    Ok((outcome.result, outcome.error))
}
