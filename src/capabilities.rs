//! build.bazel.remote.execution.v2.Capabilities, from `[capabilities]`.
use re_proto::build::bazel::semver::SemVer;
use re_proto::reapi::capabilities_server::{Capabilities, CapabilitiesServer};
use re_proto::reapi::digest_function::Value as DigestFunction;
use re_proto::reapi::priority_capabilities::PriorityRange;
use re_proto::reapi::symlink_absolute_path_strategy::Value as SymlinkStrategy;
use re_proto::reapi::{
    ActionCacheUpdateCapabilities, CacheCapabilities, ExecutionCapabilities, GetCapabilitiesRequest,
    PriorityCapabilities, ServerCapabilities,
};
use tonic::{Request, Response, Status};

use crate::config::CapabilitiesConfig;

pub struct CapabilitiesService {
    instance_name: String,
    caps: ServerCapabilities,
}

fn semver(major: i32, minor: i32) -> SemVer {
    SemVer { major, minor, patch: 0, prerelease: String::new() }
}

impl CapabilitiesService {
    pub fn new(instance_name: String, config: &CapabilitiesConfig, exec_available: bool) -> Self {
        let compressors: Vec<i32> = config.compressors().iter().map(|c| c.to_proto() as i32).collect();
        let caps = ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: vec![DigestFunction::Sha256 as i32],
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                    update_enabled: config.action_cache_update_enabled,
                }),
                cache_priority_capabilities: None,
                max_batch_total_size_bytes: config.max_batch_total_size_bytes as i64,
                symlink_absolute_path_strategy: SymlinkStrategy::Disallowed as i32,
                supported_compressors: compressors.clone(),
                supported_batch_update_compressors: compressors,
                ..Default::default()
            }),
            execution_capabilities: Some(ExecutionCapabilities {
                digest_function: DigestFunction::Sha256 as i32,
                exec_enabled: config.exec_enabled && exec_available,
                // Lower values run sooner; 0 is the default.
                execution_priority_capabilities: Some(PriorityCapabilities {
                    priorities: vec![PriorityRange { min_priority: i32::MIN, max_priority: i32::MAX }],
                }),
                supported_node_properties: vec![],
                digest_functions: vec![DigestFunction::Sha256 as i32],
            }),
            deprecated_api_version: None,
            low_api_version: Some(semver(2, 0)),
            high_api_version: Some(semver(2, 3)),
        };
        Self { instance_name, caps }
    }

    pub fn into_server(self) -> CapabilitiesServer<Self> {
        CapabilitiesServer::new(self)
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        re_proto::check_instance(&self.instance_name, &request.get_ref().instance_name)?;
        Ok(Response::new(self.caps.clone()))
    }
}
