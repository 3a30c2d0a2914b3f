//! The one error type of re-server and the one place it becomes a gRPC status.
use prost::Message;

use crate::google::rpc::{precondition_failure::Violation, PreconditionFailure, Status as RpcStatus};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// A ByteStream read_offset past the end of the blob.
    #[error("{0}")]
    OutOfRange(String),
    /// Blobs the request needs are not in the CAS; each becomes a MISSING
    /// violation so Bazel re-uploads them and retries.
    #[error("{message}")]
    MissingBlobs { message: String, blobs: Vec<crate::DigestInfo> },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Unavailable(String),
    /// The worker failed under the action (its container vanished, its
    /// engine went away, it panicked): the action itself is not to blame and
    /// may run again elsewhere.
    #[error("{0}")]
    WorkerLost(String),
    /// An operator stopped the action (status API).
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Internal(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// Names the request field an INVALID_ARGUMENT is about
    /// (`blob_digests[3]: digest ...: hash must be ...`).
    pub fn in_field(self, field: impl std::fmt::Display) -> Self {
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{field}: {m}")),
            other => other,
        }
    }

    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::MissingBlobs { .. } | Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Unavailable(_) | Error::WorkerLost(_) => Code::Unavailable,
            Error::Aborted(_) => Code::Aborted,
            Error::Io { source, .. } if source.raw_os_error() == Some(libc_enospc()) => Code::ResourceExhausted,
            Error::Internal(_) | Error::Io { .. } => Code::Internal,
        }
    }

    /// The `google.rpc.Status` form, used inside ExecuteResponse and batch replies.
    pub fn to_rpc_status(&self) -> RpcStatus {
        let mut details = Vec::new();
        if let Error::MissingBlobs { blobs, .. } = self {
            let failure = PreconditionFailure {
                violations: blobs
                    .iter()
                    .map(|d| Violation {
                        r#type: "MISSING".into(),
                        subject: format!("blobs/{}/{}", d.hash_hex(), d.size),
                        description: String::new(),
                    })
                    .collect(),
            };
            details.push(prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.PreconditionFailure".into(),
                value: failure.encode_to_vec(),
            });
        }
        RpcStatus { code: self.code() as i32, message: self.to_string(), details }
    }

    /// The error a `google.rpc.Status` from elsewhere (a worker agent)
    /// stands for; `None` when it is OK. UNAVAILABLE means the worker failed
    /// under the action, and MISSING violations come back as MissingBlobs.
    pub fn from_rpc_status(status: &RpcStatus) -> Option<Error> {
        use tonic::Code;
        let m = status.message.clone();
        Some(match Code::from_i32(status.code) {
            Code::Ok => return None,
            Code::InvalidArgument => Error::InvalidArgument(m),
            Code::NotFound => Error::NotFound(m),
            Code::OutOfRange => Error::OutOfRange(m),
            Code::FailedPrecondition => {
                let blobs: Vec<crate::DigestInfo> = status
                    .details
                    .iter()
                    .filter(|d| d.type_url == "type.googleapis.com/google.rpc.PreconditionFailure")
                    .filter_map(|d| PreconditionFailure::decode(d.value.as_slice()).ok())
                    .flat_map(|f| f.violations)
                    .filter(|v| v.r#type == "MISSING")
                    .filter_map(|v| crate::digest::parse_blob_subject(&v.subject))
                    .collect();
                match blobs.is_empty() {
                    true => Error::FailedPrecondition(m),
                    false => Error::MissingBlobs { message: m, blobs },
                }
            }
            Code::ResourceExhausted => Error::ResourceExhausted(m),
            Code::PermissionDenied => Error::PermissionDenied(m),
            Code::DeadlineExceeded => Error::DeadlineExceeded(m),
            Code::Cancelled => Error::Cancelled(m),
            Code::Unavailable => Error::WorkerLost(m),
            Code::Aborted => Error::Aborted(m),
            _ => Error::Internal(m),
        })
    }
}

/// A blocking task that panicked or was cancelled (runtime shutdown): the
/// request it served cannot finish, so the client sees INTERNAL.
impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("a background task of the server failed: {e}"))
    }
}

const fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux
}

/// A plain OK `google.rpc.Status`.
pub fn ok_status() -> RpcStatus {
    RpcStatus { code: 0, message: String::new(), details: vec![] }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        if matches!(err.code(), tonic::Code::Internal) {
            tracing::warn!(error = %err, "internal error");
        }
        let rpc = err.to_rpc_status();
        if rpc.details.is_empty() {
            tonic::Status::new(err.code(), rpc.message)
        } else {
            tonic::Status::with_details(err.code(), rpc.message.clone(), rpc.encode_to_vec().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_blobs_become_precondition_failure_details() {
        let d = crate::DigestInfo::of_bytes(b"x");
        let status: tonic::Status = Error::MissingBlobs { message: "missing".into(), blobs: vec![d] }.into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let rpc = RpcStatus::decode(status.details()).unwrap();
        let pf = PreconditionFailure::decode(rpc.details[0].value.as_slice()).unwrap();
        assert_eq!(pf.violations[0].r#type, "MISSING");
        assert_eq!(pf.violations[0].subject, format!("blobs/{}/1", d.hash_hex()));
    }
}
