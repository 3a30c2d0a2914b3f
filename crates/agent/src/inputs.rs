//! Before an action runs on the agent: every input file is in the local
//! cache (fetched from the server if not), pinned until the action ends.
use std::sync::Arc;

use re_cas::BlobStore;
use re_execution::action::PreparedAction;
use re_proto::re_server::v1::InputFetch;
use re_proto::{DigestInfo, Result};

use crate::server_cas::ServerCas;

/// Pins the job's blobs locally and fetches the files the cache lacks;
/// returns what came from where. The caller unpins `job.blobs`.
pub async fn ensure_inputs(local: &Arc<dyn BlobStore>, server: &ServerCas, job: &PreparedAction) -> Result<InputFetch> {
    let mut files: Vec<DigestInfo> = job.inputs.files.iter().map(|f| f.digest).filter(|d| !d.is_empty_blob()).collect();
    files.sort_unstable();
    files.dedup();
    // Pinned first: a blob seen present cannot be evicted before it is linked.
    local.pin(&job.blobs);
    let missing = local.find_missing(&files).await?;
    if !missing.is_empty() {
        server.fetch_into(local, &missing).await?;
    }
    let fetched_bytes: u64 = missing.iter().map(|d| d.size).sum();
    let total_bytes: u64 = files.iter().map(|d| d.size).sum();
    Ok(InputFetch {
        cached_blobs: (files.len() - missing.len()) as i64,
        cached_bytes: (total_bytes - fetched_bytes) as i64,
        fetched_blobs: missing.len() as i64,
        fetched_bytes: fetched_bytes as i64,
    })
}
