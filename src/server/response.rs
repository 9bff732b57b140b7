//! Building responses: OCI error bodies for every failure, and the headers registries send.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

use crate::error::Error;
use crate::oci::{ErrorCode, OciError};

pub const API_VERSION: &str = "docker-distribution-api-version";
pub const CONTENT_DIGEST: &str = "docker-content-digest";

/// The one place an `Error` becomes an HTTP response.
pub fn error(e: &Error, head: bool) -> Response {
    let (status, oci, headers) = e.response_parts();
    let body = oci.body();
    let mut resp = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .header(API_VERSION, "registry/2.0");
    for (k, v) in headers {
        resp = resp.header(k, v);
    }
    let body = if head { Body::empty() } else { Body::from(body) };
    resp.body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

pub async fn not_found() -> Response {
    error(&Error::Request(OciError::new(ErrorCode::Unsupported, "no such endpoint")), false)
}

pub fn header(v: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(v.as_ref()).unwrap_or_else(|_| HeaderValue::from_static(""))
}
