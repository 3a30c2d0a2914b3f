//! build.bazel.remote.execution.v2.ActionCache.
use std::sync::Arc;

use prost::Message;
use re_cas::BlobStore;
use re_proto::reapi::action_cache_server::{ActionCache, ActionCacheServer};
use re_proto::reapi::{ActionResult, GetActionResultRequest, UpdateActionResultRequest};
use re_proto::{check_instance, DigestInfo, Error, Result};
use tonic::{Request, Response, Status};

use crate::completeness::is_complete;
use crate::store::ActionCacheStore;

#[derive(Clone)]
pub struct ActionCacheService {
    ac: Arc<dyn ActionCacheStore>,
    cas: Arc<dyn BlobStore>,
    instance_name: String,
    update_enabled: bool,
    /// Most bytes inlined into one GetActionResult reply.
    inline_limit: u64,
}

impl ActionCacheService {
    pub fn new(
        ac: Arc<dyn ActionCacheStore>,
        cas: Arc<dyn BlobStore>,
        instance_name: String,
        update_enabled: bool,
        inline_limit: u64,
    ) -> Self {
        Self { ac, cas, instance_name, update_enabled, inline_limit }
    }

    pub fn into_server(self) -> ActionCacheServer<Self> {
        ActionCacheServer::new(self)
    }

    /// The cached result for `action` if all its blobs are still stored.
    /// Shared with the execution service's cache lookup.
    pub async fn lookup(&self, action: DigestInfo) -> Result<Option<ActionResult>> {
        lookup_complete(self.ac.as_ref(), self.cas.as_ref(), action).await
    }

    async fn inline(&self, result: &mut ActionResult, req: &GetActionResultRequest) -> Result<()> {
        let mut budget = self.inline_limit;
        let mut fetch = |d: Option<&re_proto::reapi::Digest>| -> Option<DigestInfo> {
            let d = DigestInfo::try_from(d).ok()?;
            (d.size <= budget).then(|| {
                budget -= d.size;
                d
            })
        };
        if req.inline_stdout && result.stdout_raw.is_empty() {
            if let Some(d) = fetch(result.stdout_digest.as_ref()) {
                result.stdout_raw = self.cas.get(d).await?.unwrap_or_default();
            }
        }
        if req.inline_stderr && result.stderr_raw.is_empty() {
            if let Some(d) = fetch(result.stderr_digest.as_ref()) {
                result.stderr_raw = self.cas.get(d).await?.unwrap_or_default();
            }
        }
        for f in result.output_files.iter_mut() {
            if req.inline_output_files.contains(&f.path) && f.contents.is_empty() {
                if let Some(d) = fetch(f.digest.as_ref()) {
                    f.contents = self.cas.get(d).await?.unwrap_or_default();
                }
            }
        }
        Ok(())
    }
}

/// Reads and decodes a cached result, treating an incomplete one as a miss.
pub async fn lookup_complete(
    ac: &dyn ActionCacheStore,
    cas: &dyn BlobStore,
    action: DigestInfo,
) -> Result<Option<ActionResult>> {
    let Some(raw) = ac.get(action).await? else { return Ok(None) };
    let Ok(result) = ActionResult::decode(raw) else {
        tracing::warn!(%action, "dropping undecodable action result");
        ac.remove(action).await?;
        return Ok(None);
    };
    if !is_complete(cas, &result).await? {
        tracing::debug!(%action, "cached result refers to evicted blobs; reporting a miss");
        return Ok(None);
    }
    Ok(Some(result))
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let req = request.into_inner();
        check_instance(&self.instance_name, &req.instance_name)?;
        let action = DigestInfo::try_from(req.action_digest.as_ref())?;
        let mut result = self
            .lookup(action)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no cached result for action {action}")))?;
        self.inline(&mut result, &req).await?;
        Ok(Response::new(result))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let req = request.into_inner();
        check_instance(&self.instance_name, &req.instance_name)?;
        if !self.update_enabled {
            return Err(Error::PermissionDenied(
                "this server does not accept action results from clients (action_cache_update_enabled = false); \
                 use --noremote_upload_local_results"
                    .into(),
            )
            .into());
        }
        let action = DigestInfo::try_from(req.action_digest.as_ref())?;
        let mut result = req.action_result.ok_or_else(|| Error::InvalidArgument("action_result is required".into()))?;
        // Inline data is a transport convenience; the blobs are the record.
        result.stdout_raw = Default::default();
        result.stderr_raw = Default::default();
        for f in result.output_files.iter_mut() {
            f.contents = Default::default();
        }
        crate::completeness::referenced_blobs(self.cas.as_ref(), &result).await?;
        self.ac.put(action, result.encode_to_vec().into()).await?;
        Ok(Response::new(result))
    }
}
