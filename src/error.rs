//! Every way a request can fail, as one type, and the single place where each failure becomes an
//! OCI error response (status, code, message and the headers clients need to react: a challenge to
//! authenticate, or when to retry).

use std::sync::Arc;

use http::{HeaderValue, StatusCode};

use crate::oci::{ErrorCode, OciError, RegistryName};

/// What an upstream request was about, so a 404 becomes the right OCI code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Manifest,
    Blob,
    Tags,
}

/// An error status from an origin, with the headers a client needs to act on it.
#[derive(Debug, Clone)]
pub struct UpstreamStatus {
    pub registry: RegistryName,
    pub resource: Resource,
    pub what: String,
    pub status: StatusCode,
    /// The origin's `WWW-Authenticate`, passed through unchanged on 401.
    pub challenge: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Request(#[from] OciError),

    #[error("registry {0} is not on this cache's allow-list; ask the operator to add it with --allow-registry or --upstream")]
    RegistryDenied(RegistryName),

    /// The origin answered with an error status; passed on so containerd can fall back or authenticate.
    #[error("{} answered {} for {}", .0.registry, .0.status, .0.what)]
    Upstream(Box<UpstreamStatus>),

    #[error("the credentials configured for {registry} were rejected by the registry ({detail})")]
    CredentialsRejected {
        registry: RegistryName,
        detail: String,
        challenge: Option<HeaderValue>,
        /// The helper that supplied them, asked again once before giving up.
        helper: Option<String>,
    },

    #[error("no credentials for {registry}: {reason}")]
    CredentialSource { registry: RegistryName, reason: String },

    #[error("cannot reach {registry}: {reason}")]
    Unreachable { registry: RegistryName, reason: String },

    /// The origin pointed the cache at a place it may not go (an internal redirect or token realm).
    #[error("{registry}: {reason}")]
    EgressRefused { registry: RegistryName, reason: String },

    #[error("{origin} sent content for {what} that does not match its digest {expected} (got {actual})")]
    DigestMismatch { origin: String, what: String, expected: String, actual: String },

    #[error("{origin} sent a body for {what} that is not what it announced: {detail}")]
    BadUpstreamBody { origin: String, what: String, detail: String },

    #[error("manifest {what} from {registry} is larger than the {limit} bytes a manifest may have")]
    ManifestTooLarge { registry: RegistryName, what: String, limit: usize },

    #[error("range {0:?} cannot be satisfied")]
    RangeNotSatisfiable(String, u64),

    #[error("cache storage failed: {0}")]
    Store(Arc<std::io::Error>),

    #[error("{0}")]
    /// The error of a download or coalesced fetch this request joined: one error, many clients.
    Joined(Arc<Error>),
}

/// An error several requests share (a coalesced or joined download's), handed on to one of them.
impl From<Arc<Error>> for Error {
    fn from(e: Arc<Error>) -> Self {
        Error::Joined(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Store(Arc::new(e))
    }
}

impl Error {
    /// The error behind any sharing wrapper (coalesced requests hand one error to many clients).
    pub fn inner(&self) -> &Error {
        match self {
            Error::Joined(e) => e.inner(),
            e => e,
        }
    }

    /// Status, OCI error and extra headers, decided here and nowhere else.
    pub fn response_parts(&self) -> (StatusCode, OciError, Vec<(http::HeaderName, HeaderValue)>) {
        let msg = self.to_string();
        let mut headers = Vec::new();
        let (status, code) = match self.inner() {
            Error::Request(e) => (e.code.status(), e.code),
            Error::RegistryDenied(_) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
            Error::Upstream(u) => {
                let UpstreamStatus { resource, status, challenge, retry_after, .. } = &**u;
                match *status {
                    StatusCode::UNAUTHORIZED => {
                        if let Some(c) = challenge {
                            headers.push((http::header::WWW_AUTHENTICATE, c.clone()));
                        }
                        (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
                    }
                    StatusCode::FORBIDDEN => (StatusCode::FORBIDDEN, ErrorCode::Denied),
                    StatusCode::NOT_FOUND => (
                        StatusCode::NOT_FOUND,
                        match resource {
                            Resource::Manifest => ErrorCode::ManifestUnknown,
                            Resource::Blob => ErrorCode::BlobUnknown,
                            Resource::Tags => ErrorCode::NameUnknown,
                        },
                    ),
                    StatusCode::TOO_MANY_REQUESTS => {
                        if let Some(r) = retry_after {
                            headers.push((http::header::RETRY_AFTER, r.clone()));
                        }
                        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
                    }
                    s if s.is_client_error() => (s, ErrorCode::Unknown),
                    // The origin's own 5xx, so containerd sees what happened and falls back.
                    s if s.is_server_error() => (s, ErrorCode::Unavailable),
                    _ => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
                }
            }
            Error::CredentialsRejected { challenge, .. } => {
                if let Some(c) = challenge {
                    headers.push((http::header::WWW_AUTHENTICATE, c.clone()));
                }
                (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
            }
            Error::CredentialSource { .. } => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            Error::Unreachable { .. } | Error::EgressRefused { .. } => {
                (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
            }
            Error::DigestMismatch { .. } | Error::BadUpstreamBody { .. } => {
                (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
            }
            Error::ManifestTooLarge { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::ManifestInvalid),
            Error::RangeNotSatisfiable(_, size) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.push((http::header::CONTENT_RANGE, v));
                }
                (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
            }
            Error::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unknown),
            // `inner()` unwraps every `Joined`; this arm only keeps the match total without a panic.
            Error::Joined(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unknown),
        };
        (status, OciError::new(code, msg), headers)
    }

    /// Whether the origin is down or refusing service (unreachable, timeout, 5xx, 429): the cases where
    /// serving a cached answer beats passing the failure on.
    pub fn is_origin_failure(&self) -> bool {
        match self.inner() {
            Error::Unreachable { .. } => true,
            Error::Upstream(u) => u.status.is_server_error() || u.status == StatusCode::TOO_MANY_REQUESTS,
            _ => false,
        }
    }

    /// Whether the origin refused without credentials, so a client that sent its own may try them.
    pub fn wants_client_credentials(&self) -> bool {
        matches!(self.inner(), Error::Upstream(u) if matches!(u.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND))
    }
}
