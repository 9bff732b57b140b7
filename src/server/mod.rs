//! The HTTP edge: one catch-all `/v2` handler (repository names have any number of `/`), plus
//! `/metrics`, `/healthz` and `/readyz`. Translates between HTTP and the cache; holds no caching logic.

mod range;
mod response;
mod v2;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use http::header::CONTENT_TYPE;

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::oci::RegistryName;

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
    pub default_registry: RegistryName,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", any(v2::handle))
        .route("/v2/", any(v2::handle))
        .route("/v2/{*rest}", any(v2::handle))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .fallback(response::not_found)
        .with_state(state)
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
