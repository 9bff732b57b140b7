//! The HTTP edge: one catch-all `/v2` handler (repository names have any number of `/`), plus
//! `/metrics`, `/healthz` and `/readyz`. Translates between HTTP and the cache; holds no caching logic.

pub mod auth;
mod range;
mod response;
mod v2;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::oci::{ErrorCode, OciError, RegistryName};

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
    pub default_registry: RegistryName,
    /// With `--htpasswd`: every `/v2/` request needs these credentials, and a client's
    /// `Authorization` belongs to the cache, so it is never forwarded to an origin.
    pub htpasswd: Option<Arc<auth::Htpasswd>>,
    /// Whether `/metrics` needs the same credentials.
    pub metrics_auth: bool,
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v2", any(v2::handle))
        .route("/v2/", any(v2::handle))
        .route("/v2/{*rest}", any(v2::handle));
    let mut metrics_route = Router::new().route("/metrics", get(metrics));
    if state.metrics_auth {
        metrics_route = metrics_route.route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    }
    api.route_layer(middleware::from_fn_with_state(state.clone(), require_auth))
        .merge(metrics_route)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .fallback(response::not_found)
        .with_state(state)
}

/// With `--htpasswd`, answers 401 with a Basic challenge unless the request carries valid credentials.
async fn require_auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(htpasswd) = &state.htpasswd else {
        return next.run(req).await;
    };
    if htpasswd.verify(req.headers().get(AUTHORIZATION)).await {
        return next.run(req).await;
    }
    let head = req.method() == http::Method::HEAD;
    let mut resp = response::error(
        &crate::Error::Request(OciError::new(ErrorCode::Unauthorized, "authentication required")),
        head,
    );
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Basic realm=\"ocicache\""),
    );
    resp
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
