//! The internal endpoint replicas read each other's downloads from (`GET /_ocicache/peer/blobs/<digest>`,
//! see `cache::peer`): on the same listener as the API, outside `--htpasswd`, with its own proof.
//!
//! Without `--peer-secret-file` the endpoint does not exist (404). A request without a valid
//! signature of the digest under the secret gets 401 and nothing else. A replica that has neither a
//! running download nor the blob answers 404, and the asking replica goes to the origin.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};

use super::AppState;
use crate::cache::peer::{unix_now, AUTH_HEADER, PRIVATE_HEADER};
use crate::oci::Digest;

pub async fn blob(State(state): State<Arc<AppState>>, Path(digest): Path<String>, headers: HeaderMap) -> Response {
    let resp = answer(&state, &digest, &headers).await;
    state.metrics.http_request("peer", &Method::GET, resp.status().as_u16());
    resp
}

async fn answer(state: &AppState, digest: &str, headers: &HeaderMap) -> Response {
    let Some(peering) = state.cache.peering() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !peering.key().verify(digest, headers.get(AUTH_HEADER), unix_now()) {
        tracing::warn!(%digest, "peer request without a valid signature refused");
        return (StatusCode::UNAUTHORIZED, "peer signature missing or invalid\n").into_response();
    }
    let Ok(d) = digest.parse::<Digest>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match state.cache.peer_blob(&d).await {
        Ok(Some(blob)) => Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, blob.size)
            .header(PRIVATE_HEADER, if blob.private { "true" } else { "false" })
            .body(Body::from_stream(blob.body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot serve a blob to a peer");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
