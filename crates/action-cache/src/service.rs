//! build.bazel.remote.execution.v2.ActionCache.
use std::sync::Arc;

use re_cas::BlobStore;
use re_proto::reapi::action_cache_server::{ActionCache, ActionCacheServer};
use re_proto::reapi::{ActionResult, GetActionResultRequest, UpdateActionResultRequest};
use re_proto::{check_digest_function, check_instance, DigestInfo, Error, Result};
use tonic::{Request, Response, Status};

use crate::store::ActionCacheStore;

#[derive(Clone)]
pub struct ActionCacheService {
    /// A [`crate::CompletenessCheckingStore`] in the server: hits are complete.
    ac: Arc<dyn ActionCacheStore>,
    /// Where inlined stdout, stderr and output files are read from.
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

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let req = request.into_inner();
        check_instance(&self.instance_name, &req.instance_name)?;
        check_digest_function(req.digest_function)?;
        let action = DigestInfo::try_from(req.action_digest.as_ref()).map_err(|e| e.in_field("action_digest"))?;
        let mut result = self
            .ac
            .get(action)
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
        check_digest_function(req.digest_function)?;
        if !self.update_enabled {
            return Err(Error::PermissionDenied(
                "this server does not accept action results from clients (action_cache_update_enabled = false); \
                 let the client stop uploading results it ran locally (e.g. Bazel's --noremote_upload_local_results)"
                    .into(),
            )
            .into());
        }
        let action = DigestInfo::try_from(req.action_digest.as_ref()).map_err(|e| e.in_field("action_digest"))?;
        let mut result = req.action_result.ok_or_else(|| Error::InvalidArgument("action_result is required".into()))?;
        // Inline data is a transport convenience; the blobs are the record.
        result.stdout_raw = Default::default();
        result.stderr_raw = Default::default();
        for f in result.output_files.iter_mut() {
            f.contents = Default::default();
        }
        self.ac.put(action, &result).await?;
        Ok(Response::new(result))
    }
}
