//! `CompletenessCheckingStore`: an action-cache decorator that serves a
//! result only while every blob it names (outputs, stdout, stderr and the
//! files inside output Trees) is still in the CAS. Required whenever the
//! action cache and the CAS evict independently: Bazel cannot recover from a
//! cache hit whose outputs it then fails to download. Checking refreshes
//! those blobs' LRU position, so they stay for the build that asked. Both
//! the ActionCache service and the scheduler's cache lookup hold this layer.
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message;
use re_cas::BlobStore;
use re_proto::reapi::{ActionResult, Tree};
use re_proto::{DigestInfo, Result};

use crate::store::ActionCacheStore;

pub struct CompletenessCheckingStore {
    inner: Arc<dyn ActionCacheStore>,
    cas: Arc<dyn BlobStore>,
}

impl CompletenessCheckingStore {
    pub fn new(inner: Arc<dyn ActionCacheStore>, cas: Arc<dyn BlobStore>) -> Self {
        Self { inner, cas }
    }
}

#[async_trait]
impl ActionCacheStore for CompletenessCheckingStore {
    async fn get(&self, action: DigestInfo) -> Result<Option<ActionResult>> {
        let Some(result) = self.inner.get(action).await? else { return Ok(None) };
        let complete = match referenced_blobs(self.cas.as_ref(), &result).await? {
            Some(digests) => self.cas.find_missing(&digests).await?.is_empty(),
            None => false,
        };
        if !complete {
            tracing::debug!(%action, "cached result refers to evicted blobs; reporting a miss");
            return Ok(None);
        }
        Ok(Some(result))
    }

    /// Refuses results naming malformed digests; stores the rest.
    async fn put(&self, action: DigestInfo, result: &ActionResult) -> Result<()> {
        named_digests(result)?;
        self.inner.put(action, result).await
    }
}

/// The digests a result names directly (not those inside its Trees); a
/// malformed one is named by its field.
fn named_digests(result: &ActionResult) -> Result<Vec<DigestInfo>> {
    let field = |name: String, d: Option<&re_proto::reapi::Digest>| {
        DigestInfo::try_from(d).map_err(|e| e.in_field(format!("action_result.{name}")))
    };
    let mut out = Vec::new();
    for (i, f) in result.output_files.iter().enumerate() {
        out.push(field(format!("output_files[{i}].digest"), f.digest.as_ref())?);
    }
    for (i, d) in result.output_directories.iter().enumerate() {
        out.push(field(format!("output_directories[{i}].tree_digest"), d.tree_digest.as_ref())?);
    }
    for (name, d) in [("stdout_digest", &result.stdout_digest), ("stderr_digest", &result.stderr_digest)] {
        if let Some(d) = d {
            out.push(field(name.into(), Some(d))?);
        }
    }
    Ok(out)
}

/// Every blob digest the result refers to, including files inside output
/// trees. `Ok(None)` means a tree blob is already gone (or damaged).
pub async fn referenced_blobs(cas: &dyn BlobStore, result: &ActionResult) -> Result<Option<Vec<DigestInfo>>> {
    let mut digests = named_digests(result)?;
    for dir in &result.output_directories {
        let tree_digest = DigestInfo::try_from(dir.tree_digest.as_ref())?;
        let Some(raw) = cas.get(tree_digest).await? else { return Ok(None) };
        let Ok(tree) = Tree::decode(raw) else { return Ok(None) };
        for d in tree.root.iter().chain(tree.children.iter()) {
            for f in &d.files {
                digests.push(DigestInfo::try_from(f.digest.as_ref())?);
            }
        }
    }
    digests.sort_unstable();
    digests.dedup();
    Ok(Some(digests))
}
