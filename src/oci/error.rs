//! OCI error codes and the JSON body every error response carries. The mapping from code to HTTP
//! status lives here once, so no handler can invent a bare-string error that clients choke on.

use http::StatusCode;
use serde::Serialize;

/// Error codes of the distribution spec (plus the two distribution adds for server-side trouble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    ManifestUnknown,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    DigestInvalid,
    TagInvalid,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The HTTP status the distribution spec pairs with each code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::ManifestInvalid | ErrorCode::NameInvalid | ErrorCode::DigestInvalid | ErrorCode::TagInvalid => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One error as the spec writes it: a code, a human message, optional detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct OciError {
    pub code: ErrorCode,
    pub message: String,
}

impl OciError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OciError { code, message: message.into() }
    }

    /// `{"errors":[{"code":...,"message":...}]}`, the only error body ocicache ever sends.
    pub fn body(&self) -> String {
        #[derive(Serialize)]
        struct Item<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            errors: [Item<'a>; 1],
        }
        serde_json::to_string(&Body { errors: [Item { code: self.code.as_str(), message: &self.message }] })
            .unwrap_or_else(|_| String::from("{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"\"}]}"))
    }
}
