//! A tower layer in front of every gRPC route (the hand-framed ones too):
//! counts requests by method and final status code, and request and
//! response body bytes by method. Per request the counters are looked up
//! once; per body frame it is one atomic add.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use prometheus::IntCounter as Counter;
use tonic::body::Body;

use crate::Metrics;

/// The methods that get a label of their own (service's short name and
/// method); anything else a client sends is counted as `other`, so a client
/// cannot make the label set grow.
const METHODS: [(&str, &[&str]); 9] = [
    (
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        &["FindMissingBlobs", "BatchUpdateBlobs", "BatchReadBlobs", "GetTree", "SplitBlob", "SpliceBlob"],
    ),
    ("build.bazel.remote.execution.v2.ActionCache", &["GetActionResult", "UpdateActionResult"]),
    ("build.bazel.remote.execution.v2.Execution", &["Execute", "WaitExecution"]),
    ("build.bazel.remote.execution.v2.Capabilities", &["GetCapabilities"]),
    ("google.bytestream.ByteStream", &["Read", "Write", "QueryWriteStatus"]),
    (
        "google.longrunning.Operations",
        &["ListOperations", "GetOperation", "DeleteOperation", "CancelOperation", "WaitOperation"],
    ),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
    ("grpc.reflection.v1.ServerReflection", &["ServerReflectionInfo"]),
    ("grpc.reflection.v1alpha.ServerReflection", &["ServerReflectionInfo"]),
];

/// `ContentAddressableStorage/FindMissingBlobs` for a known method.
fn method_label(path: &str) -> String {
    let known = path.trim_start_matches('/').split_once('/').and_then(|(service, method)| {
        let (_, methods) = METHODS.iter().find(|(s, _)| *s == service)?;
        methods.contains(&method).then(|| format!("{}/{method}", service.rsplit('.').next().unwrap_or(service)))
    });
    known.unwrap_or_else(|| "other".into())
}

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower_service::Service<http::Request<Body>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = method_label(req.uri().path());
        let received = self.metrics.grpc_received_bytes.with_label_values(&[&method]);
        let sent = self.metrics.grpc_sent_bytes.with_label_values(&[&method]);
        let req = req.map(|b| Body::new(Counted { inner: b, bytes: received, outcome: None }));
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut outcome = Outcome { metrics, method, done: false };
            // A trailers-only answer carries its status in the headers.
            if let Some(code) = grpc_code(resp.headers()) {
                outcome.record(code);
            }
            Ok(resp.map(|b| Body::new(Counted { inner: b, bytes: sent, outcome: Some(outcome) })))
        })
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<&str> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok())
}

/// The request's final status code, recorded once.
struct Outcome {
    metrics: Arc<Metrics>,
    method: String,
    done: bool,
}

impl Outcome {
    fn record(&mut self, code: &str) {
        if !self.done {
            self.done = true;
            self.metrics.grpc_requests.with_label_values(&[&self.method, code_name(code)]).inc();
        }
    }
}

impl Drop for Outcome {
    /// Ended without a status: the client reset the stream or went away.
    fn drop(&mut self) {
        self.record("1");
    }
}

fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// A body that counts its data bytes; a response body also records the
/// status its trailers carry.
struct Counted {
    inner: Body,
    bytes: Counter,
    outcome: Option<Outcome>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.inc_by(data.len() as u64);
            } else if let Some(trailers) = frame.trailers_ref() {
                let code = grpc_code(trailers).unwrap_or("2").to_string();
                if let Some(outcome) = self.outcome.as_mut() {
                    outcome.record(&code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_known_services_only() {
        assert_eq!(
            method_label("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"),
            "ContentAddressableStorage/FindMissingBlobs"
        );
        assert_eq!(method_label("/google.bytestream.ByteStream/Write"), "ByteStream/Write");
        assert_eq!(method_label("/evil.Service/Random123"), "other");
        assert_eq!(method_label("/google.bytestream.ByteStream/Random123"), "other");
        assert_eq!(method_label("/google.bytestream.ByteStream/a/b"), "other");
    }
}
