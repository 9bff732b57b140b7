//! Content negotiation for manifests. A registry answers a tag with an image index only to clients that
//! accept one, so the cache must keep one entry per media type and pick by the client's `Accept`.

use http::header::{HeaderMap, ACCEPT};

/// The media types a client accepts, parameters stripped. Empty means "anything" (no header sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptList {
    types: Vec<String>,
}

impl AcceptList {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut types: Vec<String> = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        types.sort();
        types.dedup();
        AcceptList { types }
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == "*/*" || t.eq_ignore_ascii_case(media_type))
    }

    /// The value to send upstream: what the client asked for, or every manifest type we understand.
    pub fn header_value(&self) -> String {
        if self.types.is_empty() {
            crate::oci::accept::ALL_MANIFEST_TYPES.join(", ")
        } else {
            self.types.join(", ")
        }
    }

    /// A stable key for coalescing identical upstream requests.
    pub fn key(&self) -> String {
        self.types.join(",")
    }
}

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest media type a modern client pulls, indexes first.
pub const ALL_MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Whether a media type is a multi-platform index, which a registry prefers when the client accepts it.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}
