//! An in-process fake origin, for the faults a real registry cannot produce on demand: a download
//! held at a chosen byte (so concurrent clients really overlap), wrong bytes for a digest, a
//! connection dropped mid-blob, error statuses. Every test using it says which fault it injects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;

#[derive(Clone, Debug)]
pub enum Fault {
    /// Serve the blob normally (honouring Range).
    None,
    /// Send this many bytes, then wait until `release()` before sending the rest.
    HoldAt(usize),
    /// Like `HoldAt`, for GETs without a `Range` only: ranged GETs are served at once (a client's
    /// range beside a fill that is stuck).
    HoldUnrangedAt(usize),
    /// Serve other bytes of the same length (the digest will not match).
    WrongBytes,
    /// On the first GET, send this many bytes and then break the connection.
    DropOnceAt(usize),
    /// Answer with this status and headers, no body.
    Status(u16, Vec<(String, String)>),
    /// Answer 307 to this URL.
    Redirect(String),
}

#[derive(Clone, Debug)]
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

struct Blob {
    data: Bytes,
    fault: Fault,
    dropped: bool,
}

/// Pages of descriptors a referrers list is served in.
type ReferrerPages = Vec<Vec<serde_json::Value>>;

pub struct FakeState {
    blobs: Mutex<HashMap<String, Blob>>,
    manifests: Mutex<HashMap<String, (Bytes, String, Fault)>>,
    /// Referrers API: subject digest -> (pages of descriptors, fault).
    referrers: Mutex<HashMap<String, (ReferrerPages, Fault)>>,
    requests: Mutex<Vec<FakeRequest>>,
    gate: tokio::sync::watch::Sender<bool>,
}

pub struct FakeOrigin {
    pub port: u16,
    state: Arc<FakeState>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

const CHUNK: usize = 64 * 1024;

impl FakeOrigin {
    pub fn start() -> FakeOrigin {
        let (gate, _) = tokio::sync::watch::channel(false);
        let state = Arc::new(FakeState {
            blobs: Mutex::default(),
            manifests: Mutex::default(),
            referrers: Mutex::default(),
            requests: Mutex::default(),
            gate,
        });
        let (port, shutdown) = serve_in_background(axum::Router::new().fallback(handle).with_state(state.clone()));
        FakeOrigin { port, state, _shutdown: shutdown }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serves `data` at `/v2/<any repo>/blobs/<digest of data>` with `fault`; returns the digest.
    pub fn add_blob(&self, data: Vec<u8>, fault: Fault) -> String {
        let digest = super::sha256_digest(&data);
        self.state.blobs.lock().unwrap().insert(digest.clone(), Blob { data: data.into(), fault, dropped: false });
        digest
    }

    /// Serves `body` as manifest `reference` (tag or digest) of any repository. `Fault::HoldAt(_)`
    /// holds the whole answer until `release()`.
    pub fn add_manifest(&self, reference: &str, body: &[u8], media_type: &str, fault: Fault) -> String {
        let digest = super::sha256_digest(body);
        self.state
            .manifests
            .lock()
            .unwrap()
            .insert(reference.to_owned(), (Bytes::copy_from_slice(body), media_type.to_owned(), fault));
        digest
    }

    /// Serves the OCI 1.1 referrers API for `subject` (any repository): page `i` of `pages` at
    /// `?page=i`, each linked to the next with `Link: <...>; rel="next"`. `Fault::Status` answers
    /// with that status instead. Replaces what was set before.
    pub fn set_referrers(&self, subject: &str, pages: ReferrerPages, fault: Fault) {
        self.state.referrers.lock().unwrap().insert(subject.to_owned(), (pages, fault));
    }

    /// Lets every held download continue.
    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests().iter().filter(|r| r.method == method && r.path.contains(path_contains)).count()
    }
}

async fn handle(State(st): State<Arc<FakeState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let range = headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_owned);
    st.requests.lock().unwrap().push(FakeRequest {
        method: method.to_string(),
        path: uri.to_string(),
        range: range.clone(),
    });
    let path = uri.path();
    if path == "/v2/" {
        return Response::new(Body::from("{}"));
    }
    if let Some((repo_path, subject)) = path.rsplit_once("/referrers/") {
        let found = st.referrers.lock().unwrap().get(subject).cloned();
        let Some((pages, fault)) = found else {
            return status(404);
        };
        if let Fault::Status(code, _) = fault {
            return status(code);
        }
        let page: usize = uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("page=")))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": pages.get(page).cloned().unwrap_or_default(),
        });
        let mut b = Response::builder().header("content-type", "application/vnd.oci.image.index.v1+json");
        if page + 1 < pages.len() {
            b = b.header("link", format!("<{repo_path}/referrers/{subject}?page={}>; rel=\"next\"", page + 1));
        }
        return b.body(Body::from(body.to_string())).unwrap();
    }
    if let Some((_, reference)) = path.rsplit_once("/manifests/") {
        let found = st.manifests.lock().unwrap().get(reference).cloned();
        let Some((body, media_type, fault)) = found else {
            return status(404);
        };
        match fault {
            Fault::HoldAt(_) => {
                let _ = st.gate.subscribe().wait_for(|open| *open).await;
            }
            Fault::Status(code, hdrs) => {
                let mut r = status(code);
                for (k, v) in hdrs {
                    r.headers_mut()
                        .insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
                }
                return r;
            }
            _ => {}
        }
        let digest = super::sha256_digest(&body);
        let len = body.len();
        let body = if method == Method::HEAD { Body::empty() } else { Body::from(body) };
        return Response::builder()
            .header("content-type", media_type)
            .header("content-length", len)
            .header("docker-content-digest", digest)
            // As Docker Hub reports its pull allowance.
            .header("ratelimit-limit", "100;w=21600")
            .header("ratelimit-remaining", "76;w=21600")
            .body(body)
            .unwrap();
    }
    let Some(digest) = path.rsplit_once("/blobs/").map(|(_, d)| d.to_owned()) else {
        return status(404);
    };
    let (data, fault) = {
        let mut blobs = st.blobs.lock().unwrap();
        let Some(b) = blobs.get_mut(&digest) else {
            return status(404);
        };
        let fault = match &b.fault {
            Fault::DropOnceAt(n) if !b.dropped && method == Method::GET && range.is_none() => {
                b.dropped = true;
                Fault::DropOnceAt(*n)
            }
            Fault::DropOnceAt(_) => Fault::None,
            Fault::HoldUnrangedAt(n) if range.is_none() => Fault::HoldAt(*n),
            Fault::HoldUnrangedAt(_) => Fault::None,
            f => f.clone(),
        };
        (b.data.clone(), fault)
    };
    if let Fault::Redirect(to) = &fault {
        return Response::builder().status(307).header("location", to).body(Body::empty()).unwrap();
    }
    if let Fault::Status(code, hdrs) = &fault {
        let mut r = status(*code);
        for (k, v) in hdrs {
            r.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        return r;
    }
    let total = data.len();
    let (start, code) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-'))
    {
        Some(s) => (s.parse::<usize>().unwrap(), StatusCode::PARTIAL_CONTENT),
        None => (0, StatusCode::OK),
    };
    let body_bytes = match fault {
        Fault::WrongBytes => Bytes::from(data.iter().map(|b| b.wrapping_add(1)).collect::<Vec<u8>>()),
        _ => data.clone(),
    };
    let mut builder = Response::builder()
        .status(code)
        .header("content-length", total - start)
        .header("content-type", "application/octet-stream")
        .header("docker-content-digest", &digest);
    if code == StatusCode::PARTIAL_CONTENT {
        builder = builder.header("content-range", format!("bytes {start}-{}/{total}", total - 1));
    }
    if method == Method::HEAD {
        return builder.body(Body::empty()).unwrap();
    }
    let gate = st.gate.subscribe();
    let stream = futures_util::stream::unfold((start, gate), move |(pos, mut gate)| {
        let body_bytes = body_bytes.clone();
        let fault = fault.clone();
        async move {
            if pos >= total {
                return None;
            }
            let mut end = (pos + CHUNK).min(total);
            match fault {
                Fault::HoldAt(at) if pos >= at => {
                    let _ = gate.wait_for(|open| *open).await;
                }
                Fault::HoldAt(at) if end > at => end = at,
                Fault::DropOnceAt(at) if pos >= at => {
                    return Some((Err(std::io::Error::other("injected drop")), (total, gate)));
                }
                Fault::DropOnceAt(at) if end > at => end = at,
                _ => {}
            }
            Some((Ok::<Bytes, std::io::Error>(body_bytes.slice(pos..end)), (end, gate)))
        }
    });
    builder.body(Body::from_stream(stream)).unwrap()
}

/// Serves `app` on 127.0.0.1 (a port of its own) from a runtime on its own thread, so synchronous
/// tests can use it too; it stops when the returned sender is dropped. For in-process stand-ins.
pub fn serve_in_background(app: axum::Router) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        rt.shutdown_background();
    });
    (port, tx)
}

fn status(code: u16) -> Response {
    let mut r = Response::new(Body::from("{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"fake\"}]}"));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}
