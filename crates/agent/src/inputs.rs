//! Before an action runs on the agent: every input file is in the local
//! cache (fetched from the server if not), pinned until the action ends.
use std::sync::Arc;

use prost::Message;
use re_cas::BlobStore;
use re_execution::action::PreparedAction;
use re_proto::re_server::v1::InputFetch;
use re_proto::reapi::{ActionResult, Tree};
use re_proto::{DigestInfo, Error, Result};

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

/// Every blob an ActionResult names, the files inside its output Trees
/// included: what the server must hold before it records the result.
pub async fn result_blobs(local: &Arc<dyn BlobStore>, result: &ActionResult) -> Result<Vec<DigestInfo>> {
    let named = result.output_files.iter().map(|f| f.digest.as_ref());
    let named = named.chain([result.stdout_digest.as_ref(), result.stderr_digest.as_ref()]);
    let mut out = named.flatten().map(DigestInfo::try_from).collect::<Result<Vec<_>>>()?;
    for dir in &result.output_directories {
        let tree_digest = DigestInfo::try_from(dir.tree_digest.as_ref())?;
        out.push(tree_digest);
        let raw = local.get(tree_digest).await?.ok_or_else(|| {
            Error::Unavailable(format!("output tree {tree_digest} left the agent's cache before it was uploaded"))
        })?;
        let tree = Tree::decode(raw)
            .map_err(|e| Error::Internal(format!("output tree {tree_digest} does not decode: {e}")))?;
        for d in tree.root.iter().chain(tree.children.iter()) {
            for f in &d.files {
                out.push(DigestInfo::try_from(f.digest.as_ref())?);
            }
        }
    }
    Ok(out)
}
