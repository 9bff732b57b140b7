//! Where cached content lives. Blobs by digest (shared by every registry and repository), manifests by
//! digest with their media type, and tag pointers per (registry, repository, tag, media type). The
//! store knows nothing of registries' protocols or HTTP; it only promises that what it returns was
//! committed whole.

pub mod eviction;
pub mod fs;
pub mod hot;
pub mod object;
pub mod recency;

pub use fs::{ContentKind, FsStore};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::Digest;

/// A manifest exactly as the origin sent it, with the media type it was sent as.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What a tag pointed to when it was last fetched, for one media type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagEntry {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Seconds since the Unix epoch when the origin last confirmed this.
    pub fetched_at: u64,
    /// Fetched with a client's own credentials or from a private registry: every client must be
    /// confirmed by the origin before it is served.
    #[serde(default)]
    pub private: bool,
}

#[cfg(test)]
mod tests;
