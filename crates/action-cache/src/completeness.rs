//! An ActionResult is only served if every blob it names is still in the CAS
//! (Bazel cannot recover from a cache hit it fails to download). Checking also
//! refreshes those blobs' LRU position, so they stay for the build that asked.
use prost::Message;
use re_cas::BlobStore;
use re_proto::reapi::{ActionResult, Tree};
use re_proto::{DigestInfo, Result};

/// Every blob digest the result refers to, including files inside output trees.
/// `Ok(None)` means a tree blob is already gone.
pub async fn referenced_blobs(cas: &dyn BlobStore, result: &ActionResult) -> Result<Option<Vec<DigestInfo>>> {
    let mut digests = Vec::new();
    for f in &result.output_files {
        digests.push(DigestInfo::try_from(f.digest.as_ref())?);
    }
    for d in [&result.stdout_digest, &result.stderr_digest].into_iter().flatten() {
        digests.push(DigestInfo::try_from(d)?);
    }
    for dir in &result.output_directories {
        let tree_digest = DigestInfo::try_from(dir.tree_digest.as_ref())?;
        digests.push(tree_digest);
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

/// True when every referenced blob is present.
pub async fn is_complete(cas: &dyn BlobStore, result: &ActionResult) -> Result<bool> {
    match referenced_blobs(cas, result).await? {
        Some(digests) => Ok(cas.find_missing(&digests).await?.is_empty()),
        None => Ok(false),
    }
}
