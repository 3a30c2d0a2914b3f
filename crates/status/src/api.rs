//! The routes' handlers.
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use re_proto::Error;
use serde::Deserialize;
use serde_json::json;

use crate::StatusState;

type Shared = State<Arc<StatusState>>;

/// The page: plain HTML and a little JavaScript, no build step.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

fn no_pool() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "execution is disabled on this server"}))).into_response()
}

/// An error of the scheduler as an HTTP answer.
fn error(e: Error) -> Response {
    let code = match &e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::ResourceExhausted(_) | Error::FailedPrecondition(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({"error": e.to_string()}))).into_response()
}

pub async fn workers_status(State(s): Shared) -> Response {
    match &s.scheduler {
        Some(sched) => Json(sched.pool_status()).into_response(),
        None => no_pool(),
    }
}

#[derive(Deserialize)]
pub struct AddRequest {
    group: String,
    #[serde(default)]
    force: bool,
}

pub async fn add_worker(State(s): Shared, Json(req): Json<AddRequest>) -> Response {
    let Some(sched) = &s.scheduler else { return no_pool() };
    match sched.add_worker(&req.group, req.force) {
        Ok(id) => Json(json!({"worker_id": id})).into_response(),
        Err(e) => error(e),
    }
}

pub async fn drain(State(s): Shared, Path(id): Path<String>) -> Response {
    let Some(sched) = &s.scheduler else { return no_pool() };
    match sched.drain(&id) {
        Ok(()) => Json(json!({"worker_id": id, "state": "DRAINING"})).into_response(),
        Err(e) => error(e),
    }
}

pub async fn abort(State(s): Shared, Path(id): Path<String>) -> Response {
    let Some(sched) = &s.scheduler else { return no_pool() };
    match sched.abort(&id) {
        Ok(operation) => Json(json!({"worker_id": id, "aborted": operation})).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
pub struct RecentQuery {
    limit: Option<usize>,
}

pub async fn recent_actions(State(s): Shared, Query(q): Query<RecentQuery>) -> Response {
    let Some(sched) = &s.scheduler else { return Json(json!({"actions": []})).into_response() };
    Json(json!({"actions": sched.recent_actions(q.limit.unwrap_or(50))})).into_response()
}

pub async fn metrics(State(s): Shared) -> Response {
    let Some(m) = &s.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off ([server] metrics = false)\n").into_response();
    };
    let text = m.scrape(|| {
        if let Some(sched) = &s.scheduler {
            sched.refresh_metrics();
        }
        re_cas::metered::refresh(s.cas.as_ref(), m);
    });
    ([(header::CONTENT_TYPE, re_metrics::CONTENT_TYPE)], text).into_response()
}
