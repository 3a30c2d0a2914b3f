//! One tower layer in front of every gRPC route, the hand-framed ByteStream
//! and FindMissingBlobs paths included (they bypass the generated services,
//! so an interceptor per service would miss them). A refused call gets a
//! trailers-only gRPC answer: UNAUTHENTICATED without a known token,
//! PERMISSION_DENIED naming the role it lacks.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::Status;

use crate::roles::{required_role, Needs};
use crate::TokensFile;

#[derive(Clone)]
pub struct AuthLayer {
    tokens: Arc<TokensFile>,
}

impl AuthLayer {
    pub fn new(tokens: Arc<TokensFile>) -> Self {
        Self { tokens }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, tokens: self.tokens.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<TokensFile>,
}

impl<S> Auth<S> {
    fn check(&self, req: &http::Request<Body>) -> Result<(), Status> {
        let path = req.uri().path();
        let needs = required_role(path);
        if needs == Needs::Nothing {
            return Ok(());
        }
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return Err(Status::unauthenticated(
                "no token: send the header 'authorization: Bearer TOKEN' \
                 (Bazel: --remote_header=authorization='Bearer TOKEN')",
            ));
        };
        let table = self.tokens.current();
        let Some(roles) = table.roles(token) else {
            return Err(Status::unauthenticated("the token is not in the server's tokens file"));
        };
        match needs.missing_from(roles) {
            Some(role) => {
                let method = path.trim_start_matches('/').rsplit_once('.').map_or(path, |(_, m)| m);
                Err(Status::permission_denied(format!("{method} needs the '{role}' role, which this token lacks")))
            }
            None => Ok(()),
        }
    }
}

impl<S> tower_service::Service<http::Request<Body>> for Auth<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.check(&req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}
