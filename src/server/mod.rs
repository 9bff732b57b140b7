//! The HTTP edge: one catch-all `/v2` handler (repository names have any number of `/`), plus
//! `/metrics`, `/healthz` and `/readyz`. Translates between HTTP and the cache; holds no caching logic.

pub mod auth;
mod response;
pub mod tls;
mod v2;

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
    /// Cleared at shutdown so load balancers stop sending new pulls before the listener closes.
    pub ready: std::sync::atomic::AtomicBool,
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
        .route("/readyz", get(readyz))
        .fallback(response::not_found)
        .layer(middleware::from_fn(limits))
        .with_state(state)
}

/// Longest request target accepted; distribution names are at most 255 characters.
const MAX_URI: usize = 8 * 1024;
/// Most header bytes accepted in one request.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuses oversized requests with an OCI error before any work is done.
async fn limits(req: Request, next: Next) -> Response {
    let head = req.method() == http::Method::HEAD;
    let uri_len = req.uri().path().len() + req.uri().query().map_or(0, str::len);
    if uri_len > MAX_URI {
        let e = OciError::new(ErrorCode::NameInvalid, format!("request target longer than {MAX_URI} bytes"));
        let mut resp = response::error(&crate::Error::Request(e), head);
        *resp.status_mut() = http::StatusCode::URI_TOO_LONG;
        return resp;
    }
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        let e = OciError::new(ErrorCode::Unsupported, format!("request headers larger than {MAX_HEADER_BYTES} bytes"));
        let mut resp = response::error(&crate::Error::Request(e), head);
        *resp.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return resp;
    }
    next.run(req).await
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
    resp.headers_mut().insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"ocicache\""));
    resp
}

/// Ready while serving and while the cache directory is usable.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.ready.load(std::sync::atomic::Ordering::SeqCst);
    // A stat can hang on a failing disk: off the async workers, like all store I/O.
    let tmp = state.cache.store().root().join("tmp");
    let store_ok = tokio::task::spawn_blocking(move || tmp.is_dir()).await.unwrap_or(false);
    match (ready, store_ok) {
        (true, true) => "ok\n".into_response(),
        (false, _) => (http::StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
        (_, false) => (http::StatusCode::SERVICE_UNAVAILABLE, "cache directory unavailable\n").into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}
