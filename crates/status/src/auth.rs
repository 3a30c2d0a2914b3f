//! The admin token: read from `[server] admin_token_file`, compared in
//! constant time, never logged; and the layers that require it of the
//! controls (always) and of the reads (off loopback).
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::StatusState;

/// The controls (POST routes) need the token.
pub async fn require_admin(State(s): State<Arc<StatusState>>, req: Request, next: Next) -> Response {
    match s.admin.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    }
}

/// The reads need it unless the listener is on loopback.
pub async fn require_reader(State(s): State<Arc<StatusState>>, req: Request, next: Next) -> Response {
    if s.open_reads {
        return next.run(req).await;
    }
    require_admin(State(s), req, next).await
}

/// Who may steer: the token of `[server] admin_token_file`, or any token of
/// the gRPC tokens file that holds the `admin` role.
#[derive(Clone, Default)]
pub struct AdminToken(Option<String>, Option<Arc<re_auth::TokensFile>>);

impl AdminToken {
    /// The token in `path` (its first line, trimmed); none if unset.
    pub fn load(path: Option<&std::path::Path>) -> std::io::Result<Self> {
        let Some(path) = path else { return Ok(Self(None, None)) };
        let text = std::fs::read_to_string(path)?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        Ok(Self((!token.is_empty()).then_some(token), None))
    }

    pub fn from_token(token: Option<String>) -> Self {
        Self(token, None)
    }

    /// Also accepts the tokens with the `admin` role in `tokens`.
    pub fn with_roles(self, tokens: Option<Arc<re_auth::TokensFile>>) -> Self {
        Self(self.0, tokens)
    }

    /// Ok when `headers` carry `Authorization: Bearer <the token>`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        if self.0.is_none() && self.1.is_none() {
            return Err((
                StatusCode::UNAUTHORIZED,
                "no admin token is configured ([server] admin_token_file, or the admin role in [server.auth] tokens_file)"
                    .into(),
            ));
        }
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let file_token = self.0.as_ref().is_some_and(|t| constant_time_eq(given.as_bytes(), t.as_bytes()));
        let admin_role = || {
            self.1.as_ref().is_some_and(|f| f.current().roles(given).is_some_and(|r| r.contains(&re_auth::Role::Admin)))
        };
        if file_token || admin_role() {
            Ok(())
        } else {
            Err((StatusCode::UNAUTHORIZED, "this needs the admin token (Authorization: Bearer ...)".into()))
        }
    }
}

/// Equal bytes, in a time that depends on the lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let t = AdminToken::from_token(Some("s3cret".into()));
        let mut h = HeaderMap::new();
        assert!(t.check(&h).is_err());
        h.insert("authorization", "Bearer s3cre".parse().unwrap());
        assert!(t.check(&h).is_err());
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(t.check(&h).is_ok());
        assert!(AdminToken::default().check(&h).is_err(), "no token configured: nothing passes");
    }
}
