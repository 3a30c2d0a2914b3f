//! Generated REAPI v2 and google.* protobuf code, plus the small helpers every
//! other crate shares: [`DigestInfo`] and the one [`Error`] type that maps to
//! `tonic::Status`.

pub mod blocking;
pub mod config_error;
pub mod digest;
pub mod error;

pub use config_error::ConfigError;
pub use digest::DigestInfo;
pub use error::{Error, Result};

// Module nesting mirrors the protobuf packages because prost emits
// `super::super::...` paths between them.
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod build {
    pub mod bazel {
        pub mod remote {
            pub mod execution {
                pub mod v2 {
                    include!(concat!(env!("OUT_DIR"), "/build.bazel.remote.execution.v2.rs"));
                }
            }
        }
        pub mod semver {
            include!(concat!(env!("OUT_DIR"), "/build.bazel.semver.rs"));
        }
    }
}

#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod google {
    pub mod bytestream {
        include!(concat!(env!("OUT_DIR"), "/google.bytestream.rs"));
    }
    pub mod longrunning {
        include!(concat!(env!("OUT_DIR"), "/google.longrunning.rs"));
    }
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
    pub mod devtools {
        pub mod remoteworkers {
            pub mod v1test2 {
                include!(concat!(env!("OUT_DIR"), "/google.devtools.remoteworkers.v1test2.rs"));
            }
        }
    }
}

/// re-server's own messages (see `proto/re_server`).
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod re_server {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/re_server.v1.rs"));
    }
}

/// Short alias for the REAPI package.
pub use build::bazel::remote::execution::v2 as reapi;
/// Short alias for the Remote Workers API's Bots package.
pub use google::devtools::remoteworkers::v1test2 as rwapi;

/// Encoded `FileDescriptorSet` of every proto above, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reapi_descriptor.bin"));

/// gRPC metadata key under which Bazel sends `RequestMetadata`.
pub const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// Decodes the `RequestMetadata` a client attached to a request, if any.
pub fn request_metadata(md: &tonic::metadata::MetadataMap) -> Option<reapi::RequestMetadata> {
    use prost::Message;
    let raw = md.get_bin(REQUEST_METADATA_HEADER)?.to_bytes().ok()?;
    reapi::RequestMetadata::decode(raw).ok()
}

/// Rejects a `digest_function` other than SHA-256 (or unset, which means it).
/// Requests name their digest function since REAPI 2.3; this server hashes
/// with SHA-256 only, so any other value would make it misread every digest.
pub fn check_digest_function(value: i32) -> Result<()> {
    use reapi::digest_function::Value;
    match Value::try_from(value) {
        Ok(Value::Unknown) | Ok(Value::Sha256) => Ok(()),
        Ok(other) => Err(Error::InvalidArgument(format!(
            "digest_function: {} is not served; this server hashes with SHA256 only",
            other.as_str_name()
        ))),
        Err(_) => Err(Error::InvalidArgument(format!(
            "digest_function: {value} is not a known digest function; this server hashes with SHA256 only"
        ))),
    }
}

/// Rejects a request for an instance this server does not serve.
pub fn check_instance(served: &str, requested: &str) -> Result<()> {
    if served == requested {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "unknown instance name '{requested}': this server serves instance '{served}'; \
             set the client's instance name to '{served}' (e.g. Bazel's --remote_instance_name={served})"
        )))
    }
}
