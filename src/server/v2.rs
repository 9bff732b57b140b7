//! The `/v2/...` handler: parse the route once, dispatch to the cache, and turn its answer into the
//! exact headers clients depend on (digest, length, media type, ranges).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use http::header::{
    ACCEPT_RANGES, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LINK, RANGE,
};
use http::{HeaderMap, Method, StatusCode, Uri};

use super::response::{self, header, API_VERSION, CONTENT_DIGEST};
use super::AppState;
use crate::cache::{BlobAnswer, ManifestAnswer, ManifestQuery, ReferrersAnswer, ReferrersQuery};
use crate::error::{Error, Resource};
use crate::metrics::CacheResult;
use crate::oci::range::{self, RangeRequest};
use crate::oci::{route, AcceptList, Digest, ErrorCode, OciError, Reference, Route, RouteKind, Target};
use crate::upstream::{cache_then_client, Identity, OriginRequest};

pub async fn handle(State(state): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let _in_progress = InProgress::new(&state.metrics.requests_in_progress);
    let head = method == Method::HEAD;
    let ns = ns_param(uri.query());
    let route = route::parse(uri.path(), ns.as_deref(), &state.default_registry);
    let (route_label, outcome) = match route {
        _ if method != Method::GET && !head => (
            "other",
            Err(Error::Request(OciError::new(
                ErrorCode::Unsupported,
                format!("{method} is not supported: ocicache is a read-only pull-through cache"),
            ))),
        ),
        Err(e) => ("invalid", Err(Error::Request(e))),
        Ok(Route::Base) => ("base", Ok((base(), None))),
        Ok(Route::Api { target, kind }) => {
            let label = match kind {
                RouteKind::Manifest(_) => "manifest",
                RouteKind::Blob(_) => "blob",
                RouteKind::Tags => "tags",
                RouteKind::Referrers(_) => "referrers",
            };
            if !state.cache.origin().registries().is_allowed(&target.registry) {
                (label, Err(Error::RegistryDenied(target.registry.clone())))
            } else {
                let r = api(&state, &target, kind, head, &headers, uri.query()).await;
                (label, r.map(|(resp, result)| (resp, Some((target, result)))))
            }
        }
    };
    let (response, target) = match outcome {
        Ok((resp, t)) => (resp, t),
        Err(e) => {
            let resp = response::error(&e, head);
            let level_warn = resp.status().is_server_error();
            if level_warn {
                tracing::warn!(%method, path = %uri.path(), status = resp.status().as_u16(), error = %e, "request failed");
            } else {
                tracing::info!(%method, path = %uri.path(), status = resp.status().as_u16(), error = %e, "request refused");
            }
            (resp, None)
        }
    };
    let status = response.status().as_u16();
    state.metrics.http_request(route_label, &method, status);
    match target {
        Some((target, result)) => {
            let expected = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|_| !head);
            // A file handed to the connection (sendfile) is counted as sent in full: the body the
            // log sees is empty.
            let handed_off = response.extensions().get::<HandedOff>().map(|h| h.0);
            let expected = handed_off.or(expected);
            let log = RequestLog {
                method,
                registry: target.registry.to_string(),
                repository: target.repository.to_string(),
                reference: uri.path().rsplit('/').next().unwrap_or("").to_owned(),
                route: route_label,
                status,
                cache: result.map(CacheResult::as_str).unwrap_or("-"),
                started,
                bytes: handed_off.unwrap_or(0),
                expected,
            };
            log_when_sent(response, log)
        }
        None => response,
    }
}

/// Bytes of a response handed to the connection to send from a file (see `sendfile`).
#[derive(Clone, Copy)]
struct HandedOff(u64);

/// The one log line per request, written when the body has been sent (or the client went away), so
/// it can say how many bytes went out and how long it took.
struct RequestLog {
    method: Method,
    registry: String,
    repository: String,
    reference: String,
    route: &'static str,
    status: u16,
    cache: &'static str,
    started: Instant,
    bytes: u64,
    expected: Option<u64>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let complete = self.expected.is_none_or(|e| e == self.bytes);
        tracing::info!(
            method = %self.method,
            registry = %self.registry,
            repository = %self.repository,
            reference = %self.reference,
            route = self.route,
            status = self.status,
            cache = self.cache,
            bytes = self.bytes,
            complete,
            ms = self.started.elapsed().as_millis() as u64,
            "request"
        );
    }
}

fn log_when_sent(response: Response, mut log: RequestLog) -> Response {
    let (parts, body) = response.into_parts();
    let counted = body.into_data_stream().inspect(move |chunk| {
        // Borrow the whole record, so the closure owns it and it is logged when the body is dropped.
        let log: &mut RequestLog = &mut log;
        if let Ok(b) = chunk {
            log.bytes += b.len() as u64;
        }
    });
    Response::from_parts(parts, Body::from_stream(counted))
}

/// containerd's `?ns=<registry>`; the only query parameter ocicache reads on manifests and blobs.
fn ns_param(query: Option<&str>) -> Option<String> {
    query_param(query, "ns")
}

/// The first value of a query parameter.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn base() -> Response {
    ([(CONTENT_TYPE, "application/json"), (API_VERSION.parse().unwrap_or(CONTENT_TYPE), "registry/2.0")], "{}")
        .into_response()
}

type Answer = (Response, Option<CacheResult>);

async fn api(
    state: &AppState,
    target: &Target,
    kind: RouteKind,
    head: bool,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Answer, Error> {
    // With --htpasswd the client's credentials are the cache's, not an origin's.
    let client_auth = if state.htpasswd.is_some() { None } else { headers.get(AUTHORIZATION).cloned() };
    match kind {
        RouteKind::Manifest(reference) => {
            let q = ManifestQuery {
                target: target.clone(),
                reference,
                accept: AcceptList::from_headers(headers),
                head,
                client_auth,
            };
            let answer = state.cache.manifest(&q).await?;
            let result = answer.result();
            let mut resp = manifest_response(answer, head, &q.reference);
            if result == CacheResult::Stale {
                resp.headers_mut()
                    .insert(http::header::WARNING, http::HeaderValue::from_static("110 - \"Response is Stale\""));
            }
            Ok((resp, Some(result)))
        }
        RouteKind::Blob(digest) => {
            if let Some(ttl) = state.redirects.as_ref().and_then(|r| r.ttl_for(head, headers)) {
                if let Some(url) = state.cache.blob_redirect(target, &digest, client_auth.clone(), ttl).await? {
                    return Ok((super::redirect::response(&digest, &url), Some(CacheResult::Hit)));
                }
            }
            let answer = state.cache.blob(target, &digest, head, client_auth).await?;
            let result = answer.result();
            // RFC 9110 §14.2: Range is defined for GET only; a HEAD describes the whole blob.
            let range = headers.get(RANGE).and_then(|v| v.to_str().ok()).filter(|_| !head);
            Ok((blob_response(state, answer, &digest, head, range)?, Some(result)))
        }
        RouteKind::Tags => Ok((tags(state, target, head, query, client_auth).await?, None)),
        RouteKind::Referrers(subject) => {
            let q = ReferrersQuery {
                target: target.clone(),
                subject,
                artifact_type: query_param(query, "artifactType"),
                client_auth,
            };
            let answer = state.cache.referrers(&q).await?;
            Ok((referrers_response(&answer, head), Some(answer.result)))
        }
    }
}

/// The referrers list as an image index; `OCI-Filters-Applied` says the `artifactType` filter was
/// applied, `Warning: 110` that the origin failed and this is the last list it gave.
fn referrers_response(answer: &ReferrersAnswer, head: bool) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header(API_VERSION, "registry/2.0")
        .header(CONTENT_TYPE, crate::oci::accept::OCI_INDEX)
        .header(CONTENT_LENGTH, answer.index.len());
    if answer.filtered {
        b = b.header("oci-filters-applied", "artifactType");
    }
    if answer.result == CacheResult::Stale {
        b = b.header(http::header::WARNING, "110 - \"Response is Stale\"");
    }
    let body = if head { Body::empty() } else { Body::from(answer.index.clone()) };
    b.body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn manifest_response(answer: ManifestAnswer, head: bool, reference: &Reference) -> Response {
    let mut b = Response::builder().status(StatusCode::OK).header(API_VERSION, "registry/2.0");
    match answer {
        ManifestAnswer::Full { manifest, .. } => {
            b = b
                .header(CONTENT_TYPE, header(&manifest.media_type))
                .header(CONTENT_LENGTH, manifest.bytes.len())
                .header(CONTENT_DIGEST, header(manifest.digest.to_string()))
                .header(ETAG, header(format!("\"{}\"", manifest.digest)));
            let body = if head { Body::empty() } else { Body::from(manifest.bytes) };
            b.body(body)
        }
        ManifestAnswer::Head { digest, media_type, size, .. } => {
            b = b.header(CONTENT_TYPE, header(&media_type));
            if let Some(d) = digest.or(match reference {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(_) => None,
            }) {
                b = b.header(CONTENT_DIGEST, header(d.to_string())).header(ETAG, header(format!("\"{d}\"")));
            }
            if let Some(s) = size {
                b = b.header(CONTENT_LENGTH, s);
            }
            b.body(Body::empty())
        }
    }
    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn blob_response(
    state: &AppState,
    answer: BlobAnswer,
    digest: &Digest,
    head: bool,
    range_header: Option<&str>,
) -> Result<Response, Error> {
    let base = Response::builder()
        .header(API_VERSION, "registry/2.0")
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_DIGEST, header(digest.to_string()))
        .header(ETAG, header(format!("\"{digest}\"")))
        .header(CACHE_CONTROL, "max-age=31536000")
        .header(ACCEPT_RANGES, "bytes");
    let size = match &answer {
        BlobAnswer::Bytes { body, .. } => body.size(),
        BlobAnswer::Head { size, .. } => *size,
    };
    let (status, range) = match size {
        Some(size) => match range::parse(range_header, size) {
            RangeRequest::Full => (StatusCode::OK, range::ByteRange { start: 0, end: size }),
            RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
            RangeRequest::Unsatisfiable => {
                return Err(Error::RangeNotSatisfiable(range_header.unwrap_or("").to_owned(), size))
            }
        },
        // Unknown length (the origin sent none): the whole body, chunked.
        None => (StatusCode::OK, range::ByteRange { start: 0, end: u64::MAX }),
    };
    let mut b = base.status(status);
    if let Some(size) = size {
        b = b.header(CONTENT_LENGTH, range.len());
        if status == StatusCode::PARTIAL_CONTENT {
            b = b.header(CONTENT_RANGE, range.content_range(size));
        }
    }
    if head {
        return Ok(b.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    }
    // Bytes a client gets without the origin being asked for them: stored, or a download it joined.
    let counter = state.metrics.bytes_from_cache.clone();
    let count = move |b: &bytes::Bytes| {
        counter.inc_by(b.len() as u64);
    };
    let body = match answer {
        BlobAnswer::Bytes { body, result } => {
            if let (Some(handoffs), Some(file)) = (&state.sendfile, body.file_for(range.start, range.end)) {
                // The connection sends the file itself after the head (see `sendfile`).
                if result == CacheResult::Hit {
                    state.metrics.bytes_from_cache.inc_by(range.len());
                }
                let token = handoffs.offer(file, range.start, range.end);
                let mut resp =
                    b.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
                // hyper writes a complete empty response; the connection puts the real length back.
                resp.headers_mut().insert(CONTENT_LENGTH, http::HeaderValue::from_static("0"));
                resp.headers_mut().insert(super::sendfile::MARKER, header(token.to_string()));
                resp.extensions_mut().insert(HandedOff(range.len()));
                return Ok(resp);
            }
            let end = size.map(|_| range.end);
            let stream = body.read(range.start, end);
            if result == CacheResult::Hit {
                Body::from_stream(stream.inspect_ok(count))
            } else {
                Body::from_stream(stream)
            }
        }
        BlobAnswer::Head { .. } => Body::empty(),
    };
    Ok(b.body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Tag lists are passed through from the origin (they change too often to be worth caching).
async fn tags(
    state: &AppState,
    target: &Target,
    head: bool,
    query: Option<&str>,
    client_auth: Option<http::HeaderValue>,
) -> Result<Response, Error> {
    let forwarded: Vec<(String, String)> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "n" || k == "last")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut path = String::from("tags/list");
    if !forwarded.is_empty() {
        path.push('?');
        path.push_str(&url::form_urlencoded::Serializer::new(String::new()).extend_pairs(forwarded).finish());
    }
    let req = OriginRequest {
        target,
        method: if head { Method::HEAD } else { Method::GET },
        resource: Resource::Tags,
        path,
        accept: None,
        range: None,
        identity: Identity::Cache,
    };
    let origin = state.cache.origin();
    let first = origin.send(&req).await;
    let (resp, _) = cache_then_client(first, client_auth.as_ref(), |identity| async move {
        origin.send(&OriginRequest { identity, ..req }).await
    })
    .await?;
    let mut b = Response::builder().status(resp.status()).header(API_VERSION, "registry/2.0");
    for name in [CONTENT_TYPE, LINK] {
        if let Some(v) = resp.headers().get(&name) {
            b = b.header(name, v.clone());
        }
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(resp.bytes_stream().map(|r| r.map_err(std::io::Error::other)))
    };
    Ok(b.body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Counts a request as in progress until it is answered or the client goes away.
struct InProgress(prometheus_client::metrics::gauge::Gauge);

impl InProgress {
    fn new(g: &prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        InProgress(g.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}
