//! The HTTP surface, on its own listener (`[server] http_address`), as
//! Buildbarn and NativeLink keep diagnostics off the gRPC port:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the live status page (`page.html`) |
//! | `GET /api/workers/status` | the pool as JSON (`re_execution::pool_status::PoolStatus`) |
//! | `POST /api/workers/add` | `{"group": NAME, "force": false}`: one more worker |
//! | `POST /api/workers/{id}/drain` | finish the current action, take no other |
//! | `POST /api/workers/{id}/abort` | stop the current action (its client gets ABORTED) |
//! | `GET /api/actions/recent?limit=N` | the last finished actions |
//! | `GET /metrics` | Prometheus (OpenMetrics text) |
//!
//! POST routes need the admin token (`Authorization: Bearer ...`); GET
//! routes are open on a loopback listener and need it elsewhere.
mod api;
mod auth;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use re_cas::BlobStore;
use re_execution::Scheduler;
use re_metrics::Metrics;

pub use auth::AdminToken;

/// What the HTTP surface shows and steers.
#[derive(Clone)]
pub struct StatusState {
    pub scheduler: Option<Arc<Scheduler>>,
    pub metrics: Option<Arc<Metrics>>,
    pub cas: Arc<dyn BlobStore>,
    pub admin: AdminToken,
    /// GET routes need no token (a loopback listener).
    pub open_reads: bool,
}

pub fn router(state: StatusState) -> Router {
    let state = Arc::new(state);
    // The page itself holds no data; what it fetches is guarded.
    let page = Router::new().route("/", get(api::page));
    let reads = Router::new()
        .route("/api/workers/status", get(api::workers_status))
        .route("/api/actions/recent", get(api::recent_actions))
        .route("/metrics", get(api::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_reader));
    let controls = Router::new()
        .route("/api/workers/add", post(api::add_worker))
        .route("/api/workers/{id}/drain", post(api::drain))
        .route("/api/workers/{id}/abort", post(api::abort))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_admin));
    page.merge(reads).merge(controls).with_state(state)
}

/// Serves the HTTP surface on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut state: StatusState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    state.open_reads = local.ip().is_loopback();
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    fn state(open_reads: bool) -> StatusState {
        StatusState {
            scheduler: None,
            metrics: Some(Arc::new(Metrics::new())),
            cas: Arc::new(re_cas::memory_store::MemoryStore::new(1 << 20)),
            admin: AdminToken::from_token(Some("0123456789abcdef".into())),
            open_reads,
        }
    }

    async fn status_of(open_reads: bool, method: &str, uri: &str, token: Option<&str>) -> StatusCode {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.header("content-type", "application/json").body(Body::from("{\"group\":\"g\"}")).unwrap();
        router(state(open_reads)).oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn reads_need_the_token_off_loopback_and_controls_always() {
        assert_eq!(status_of(true, "GET", "/metrics", None).await, StatusCode::OK);
        assert_eq!(status_of(false, "GET", "/metrics", None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(false, "GET", "/metrics", Some("0123456789abcdef")).await, StatusCode::OK);
        assert_eq!(status_of(false, "GET", "/api/workers/status", Some("wrong")).await, StatusCode::UNAUTHORIZED);
        // The page holds no data: open everywhere.
        assert_eq!(status_of(false, "GET", "/", None).await, StatusCode::OK);
        assert_eq!(status_of(true, "POST", "/api/workers/add", None).await, StatusCode::UNAUTHORIZED);
        // With the token it reaches the handler: no pool on this server.
        assert_eq!(status_of(true, "POST", "/api/workers/add", Some("0123456789abcdef")).await, StatusCode::NOT_FOUND);
    }
}
