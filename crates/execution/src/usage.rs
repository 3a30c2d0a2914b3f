//! What an action used, and its form in ExecutedActionMetadata:
//! `re_server.v1.ResourceUsage` (proto/re_server/v1/resource_usage.proto)
//! packed in `auxiliary_metadata`.
use std::time::Duration;

use prost::Message;
use re_proto::re_server::v1::ResourceUsage as ResourceUsageProto;

/// The type URL clients find the message under.
pub const TYPE_URL: &str = "type.googleapis.com/re_server.v1.ResourceUsage";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    pub user_cpu: Duration,
    pub system_cpu: Duration,
    pub peak_memory_bytes: u64,
    /// `wait4`, `cgroup` or `sampled`.
    pub source: &'static str,
}

impl ResourceUsage {
    pub fn cpu_seconds(&self) -> f64 {
        (self.user_cpu + self.system_cpu).as_secs_f64()
    }

    pub fn to_any(&self) -> prost_types::Any {
        let d = |d: Duration| prost_types::Duration::try_from(d).ok();
        let msg = ResourceUsageProto {
            user_cpu: d(self.user_cpu),
            system_cpu: d(self.system_cpu),
            peak_memory_bytes: self.peak_memory_bytes as i64,
            source: self.source.to_string(),
        };
        prost_types::Any { type_url: TYPE_URL.into(), value: msg.encode_to_vec() }
    }

    /// Reads it back (a worker agent's report), if `any` holds one.
    pub fn from_any(any: &prost_types::Any) -> Option<Self> {
        if any.type_url != TYPE_URL {
            return None;
        }
        let msg = ResourceUsageProto::decode(any.value.as_slice()).ok()?;
        let d = |d: Option<prost_types::Duration>| d.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
        let source = match msg.source.as_str() {
            "wait4" => "wait4",
            "cgroup" => "cgroup",
            _ => "sampled",
        };
        Some(Self {
            user_cpu: d(msg.user_cpu),
            system_cpu: d(msg.system_cpu),
            peak_memory_bytes: msg.peak_memory_bytes.max(0) as u64,
            source,
        })
    }
}
