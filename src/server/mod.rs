//! The HTTP edge: one catch-all `/v2` handler (repository names have any number of `/`), plus
//! `/metrics`, `/healthz`, `/readyz` and the replicas' internal peer endpoint (`peer`). Translates
//! between HTTP and the cache; holds no caching logic.

pub mod auth;
mod peer;
pub mod redirect;
mod response;
pub mod sendfile;
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
    /// The cluster's images in use and their warming, with `--warm-from-cluster` (set once the
    /// watchers start, after the state is built).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::warmer::ClusterWarm>>,
    /// Files handed to plain-TCP connections to send with `sendfile` (none with TLS).
    pub sendfile: Option<Arc<sendfile::Handoffs>>,
    /// `--redirect-blobs`: blob GETs answered with a signed URL of the object store.
    pub redirects: Option<redirect::Redirects>,
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
    // Names every image the cluster runs: as private as the content itself.
    let status_route = Router::new()
        .route("/status", get(status))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    api.route_layer(middleware::from_fn_with_state(state.clone(), require_auth))
        .merge(metrics_route)
        .merge(status_route)
        // Its own proof (a signature under the peer secret), not --htpasswd's.
        .route("/_ocicache/peer/blobs/{digest}", get(peer::blob))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(response::not_found)
        .layer(middleware::from_fn(limits))
        .with_state(state)
}

/// The `/v2` API alone on the loopback listener cluster warming pulls through (see
/// `cluster::warmer`): only `user`/`password` get in, and the credentials are removed before the
/// request reaches the cache, so they are neither mistaken for a client's origin credentials nor
/// forwarded anywhere.
pub fn loopback_router(state: Arc<AppState>, user: String, password: String) -> Router {
    use base64::Engine as _;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    let expected = Arc::new(expected);
    let check = move |mut req: Request, next: Next| {
        let expected = expected.clone();
        async move {
            let given = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes().to_vec());
            if given.as_deref() != Some(expected.as_bytes()) {
                let e = OciError::new(ErrorCode::Unauthorized, "authentication required");
                return response::error(&crate::Error::Request(e), req.method() == http::Method::HEAD);
            }
            req.headers_mut().remove(AUTHORIZATION);
            next.run(req).await
        }
    };
    Router::new()
        .route("/v2", any(v2::handle))
        .route("/v2/", any(v2::handle))
        .route("/v2/{*rest}", any(v2::handle))
        .route_layer(middleware::from_fn(check))
        .fallback(response::not_found)
        .layer(middleware::from_fn(limits))
        .with_state(state)
}

/// `/status`: each image the cluster uses and whether a node could pull it from the cache alone.
/// JSON for `Accept: application/json` or `?format=json`, else a text table.
async fn status(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let Some(cluster) = state.cluster.get() else {
        return (
            http::StatusCode::NOT_FOUND,
            "no cluster is watched: start ocicache with --warm-from-cluster, or run `ocicache status --kubernetes`\n",
        )
            .into_response();
    };
    let query = req.uri().query().unwrap_or_default();
    let json_query = url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "format" && v == "json");
    let json_accept =
        req.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(',').any(|t| t.split(';').next().unwrap_or_default().trim() == "application/json")
        });
    let report = cluster.report().await;
    if json_query || json_accept {
        match serde_json::to_vec(&report) {
            Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        }
    } else {
        ([(CONTENT_TYPE, "text/plain; charset=utf-8")], report.text()).into_response()
    }
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
    let store_ok = state.cache.store().healthy().await;
    match (ready, store_ok) {
        (true, true) => "ok\n".into_response(),
        (false, _) => (http::StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
        (_, false) => (http::StatusCode::SERVICE_UNAVAILABLE, "cache directory unavailable\n").into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}
