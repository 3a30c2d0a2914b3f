//! The roles a token can hold, and the one each RPC needs: the rule lives
//! here only.
use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    CacheRead,
    CacheWrite,
    Execute,
    Admin,
    Worker,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::CacheRead, Role::CacheWrite, Role::Execute, Role::Admin, Role::Worker];

    pub fn name(self) -> &'static str {
        match self {
            Role::CacheRead => "cache-read",
            Role::CacheWrite => "cache-write",
            Role::Execute => "execute",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a request to the gRPC `path` (`/package.Service/Method`) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Open to anyone (health checks of load balancers, and the reflection
    /// grpcurl needs for them).
    Nothing,
    /// Any known token, whatever its roles (capabilities, reflection).
    AnyToken,
    Role(Role),
    /// Blob traffic: the role, or `worker` (an agent fetches inputs and
    /// uploads outputs; it never writes the action cache itself).
    Blobs(Role),
}

impl Needs {
    /// The role to name when `roles` lack what this needs.
    pub fn missing_from(self, roles: &BTreeSet<Role>) -> Option<Role> {
        match self {
            Needs::Nothing | Needs::AnyToken => None,
            Needs::Role(r) => (!roles.contains(&r)).then_some(r),
            Needs::Blobs(r) => (!roles.contains(&r) && !roles.contains(&Role::Worker)).then_some(r),
        }
    }
}

pub fn required_role(path: &str) -> Needs {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match (service, method) {
        // Load balancers probe health with grpcurl, which first asks
        // reflection for the service's schema (public protos, no data).
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Needs::Nothing,
        ("build.bazel.remote.execution.v2.ContentAddressableStorage", "BatchUpdateBlobs" | "SpliceBlob") => {
            Needs::Blobs(Role::CacheWrite)
        }
        ("build.bazel.remote.execution.v2.ContentAddressableStorage", _) => Needs::Blobs(Role::CacheRead),
        ("google.bytestream.ByteStream", "Read") => Needs::Blobs(Role::CacheRead),
        ("google.bytestream.ByteStream", _) => Needs::Blobs(Role::CacheWrite),
        ("build.bazel.remote.execution.v2.ActionCache", "UpdateActionResult") => Needs::Role(Role::CacheWrite),
        ("build.bazel.remote.execution.v2.ActionCache", _) => Needs::Role(Role::CacheRead),
        ("build.bazel.remote.execution.v2.Execution", _) | ("google.longrunning.Operations", _) => {
            Needs::Role(Role::Execute)
        }
        ("google.devtools.remoteworkers.v1test2.Bots", _) => Needs::Role(Role::Worker),
        // Capabilities and anything unknown (answered UNIMPLEMENTED
        // by the router once the caller is known).
        _ => Needs::AnyToken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rpc_needs_its_role() {
        let cas = "/build.bazel.remote.execution.v2.ContentAddressableStorage/";
        assert_eq!(required_role(&format!("{cas}FindMissingBlobs")), Needs::Blobs(Role::CacheRead));
        assert_eq!(required_role(&format!("{cas}BatchUpdateBlobs")), Needs::Blobs(Role::CacheWrite));
        assert_eq!(required_role("/google.bytestream.ByteStream/Write"), Needs::Blobs(Role::CacheWrite));
        assert_eq!(required_role("/google.bytestream.ByteStream/QueryWriteStatus"), Needs::Blobs(Role::CacheWrite));
        assert_eq!(required_role("/google.bytestream.ByteStream/Read"), Needs::Blobs(Role::CacheRead));
        let bots = "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession";
        assert_eq!(required_role(bots), Needs::Role(Role::Worker));
        // An agent's token moves blobs but never writes the action cache.
        let worker = BTreeSet::from([Role::Worker]);
        assert_eq!(Needs::Blobs(Role::CacheWrite).missing_from(&worker), None);
        let ac_write = required_role("/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult");
        assert_eq!(ac_write.missing_from(&worker), Some(Role::CacheWrite));
        assert_eq!(
            Needs::Role(Role::Worker).missing_from(&BTreeSet::from([Role::CacheRead, Role::Execute])),
            Some(Role::Worker)
        );
        assert_eq!(
            required_role("/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult"),
            Needs::Role(Role::CacheWrite)
        );
        assert_eq!(required_role("/build.bazel.remote.execution.v2.Execution/Execute"), Needs::Role(Role::Execute));
        assert_eq!(required_role("/google.longrunning.Operations/CancelOperation"), Needs::Role(Role::Execute));
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), Needs::Nothing);
        assert_eq!(required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Needs::Nothing);
        assert_eq!(required_role("/build.bazel.remote.execution.v2.Capabilities/GetCapabilities"), Needs::AnyToken);
        assert_eq!(required_role("/nonsense"), Needs::AnyToken);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
    }
}
