//! Where cached content lives. Blobs by digest (shared by every registry and repository), manifests by
//! digest with their media type, and tag pointers per (registry, repository, tag, media type). The
//! store knows nothing of registries' protocols or HTTP; it only promises that what it returns was
//! committed whole and matches its digest.
//!
//! One async trait, [`Store`], with three implementations:
//! - [`Disk`]: a local directory (the default; `--cache-dir`, bounded by `--max-size`).
//! - [`Bucket`]: object storage through `object_store` (S3 and compatible servers, GCS, Azure, a
//!   shared directory, or in memory), shared by any number of replicas.
//! - [`Tiered`]: a size-bounded `Disk` in front of a `Bucket` (`--storage s3://...` with
//!   `--cache-dir`/`--max-size` as the local tier): hits on disk at disk speed, a bucket hit streamed
//!   to the client while it is copied to disk, fills written to both.
//!
//! Replicas sharing a bucket also agree, through a lease object in it (`lease`), on which one of
//! them downloads a blob none has yet (`Store::claim_fill`).
//!
//! Nothing outside this module knows which one is in use. Every store owns its I/O (blocking calls
//! run on tokio's blocking pool, never on an async worker) and keeps one guarantee: a body that
//! ends at a blob's end is complete only if the bytes matched the digest — on a mismatch the stream
//! ends with an error instead of its final byte, the bad copy is removed, and
//! `ocicache_store_corrupt_total` counts it. Bytes in a bucket can be written by other replicas and
//! by anyone with access to it, so they are verified as they are read.

pub mod bucket;
pub mod disk;
pub mod eviction;
pub mod fill;
pub mod hot;
pub mod layout;
pub mod lease;
pub mod recency;
pub mod tiered;
pub mod verify;

pub use bucket::{can_sign_urls, Bucket};
pub use disk::{ContentKind, Disk};
pub use fill::Fill;
pub use lease::{FillClaim, LeaseGuard};
pub use tiered::Tiered;

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::oci::{Digest, RegistryName, Repository, Tag};
use eviction::EvictionPolicy;

/// Bytes of a blob as they are read. An error item ends the body early (the client sees a cut
/// response, never a complete one).
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

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

/// A committed blob, opened: its size and how to read it. Opening pins the content where the
/// backend allows (an open file stays readable after eviction unlinks it), so a read that started
/// is not cut by eviction.
pub struct StoredBlob {
    pub size: u64,
    reader: Box<dyn BlobReader>,
}

impl std::fmt::Debug for StoredBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredBlob").field("size", &self.size).finish_non_exhaustive()
    }
}

impl StoredBlob {
    pub fn new(size: u64, reader: Box<dyn BlobReader>) -> Self {
        StoredBlob { size, reader }
    }

    /// Bytes `range` (within `0..size`). A range that ends at the blob's end is verified: its final
    /// byte is sent only once every byte of the blob matched the digest.
    pub fn read(self, range: Range<u64>) -> ByteStream {
        self.reader.read(range)
    }

    /// The open file holding the blob, when `range` of it can be sent exactly as stored (a local
    /// file that needs no verification for this range), so the kernel can send it (`sendfile`).
    pub fn file_for(&self, range: &Range<u64>) -> Option<Arc<std::fs::File>> {
        self.reader.file_for(range)
    }
}

/// How one backend reads an opened blob.
pub trait BlobReader: Send + 'static {
    fn read(self: Box<Self>, range: Range<u64>) -> ByteStream;

    /// See `StoredBlob::file_for`; `None` where bytes must pass through ocicache.
    fn file_for(&self, _range: &Range<u64>) -> Option<Arc<std::fs::File>> {
        None
    }
}

/// A content store. See the module documentation for the implementations and the guarantee.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// For logs and `/status`: what this store is (`disk /var/cache/ocicache`, `s3://b over disk ...`).
    fn describe(&self) -> String;

    /// The size of a committed blob, if present (no verification: that happens on reading).
    async fn blob_size(&self, d: &Digest) -> io::Result<Option<u64>>;

    /// Opens a committed blob for reading, recording the use for eviction.
    async fn open_blob(&self, d: &Digest) -> io::Result<Option<StoredBlob>>;

    /// A URL at which the object store itself serves blob `d` for the next `ttl`, signed with the
    /// store's credentials (`--redirect-blobs`), so its bytes need not pass through ocicache.
    /// `None` (serve the bytes as usual) where the store cannot sign (local disk, a shared
    /// directory, credentials that cannot sign), the object is not there, or this process has not
    /// verified the object's bytes against the digest: a client fetching from the store directly
    /// gets them unchecked by ocicache, so only an object seen whole and matching is handed out.
    async fn blob_url(&self, _d: &Digest, _ttl: Duration) -> Option<url::Url> {
        None
    }

    /// Starts writing blob `d`: a staging file on local disk, readable while it grows, that becomes
    /// visible only through `commit_fill` (after the writer verified the digest).
    async fn begin_fill(&self, d: &Digest) -> io::Result<Fill>;

    /// Makes a completely written, verified fill the committed blob, marked private or public first
    /// as `private` says (so it is never visible with the wrong marker, whatever marker was left
    /// before). Durable when this returns.
    async fn commit_fill(&self, fill: Fill, private: bool) -> io::Result<()>;

    /// A fill ran out of local space: frees at least `need` bytes if the store can (eviction), and
    /// returns once it tried.
    async fn make_room(&self, need: u64);

    /// A stored manifest (verified against its digest where other writers could have touched it).
    async fn manifest(&self, d: &Digest) -> io::Result<Option<StoredManifest>>;

    /// Stores manifest bytes the caller verified against their digest, marked private or public first.
    async fn put_manifest(&self, m: &StoredManifest, private: bool) -> io::Result<()>;

    /// Whether content may only be served after the origin confirmed the client's access. A store
    /// that cannot tell says private: fail closed.
    async fn is_private(&self, kind: ContentKind, d: &Digest) -> bool;

    /// Marks content private, or public (the origin served it anonymously after all).
    async fn set_private(&self, kind: ContentKind, d: &Digest, private: bool) -> io::Result<()>;

    /// Every media type's entry for a tag.
    async fn tag_entries(&self, registry: &RegistryName, repo: &Repository, tag: &Tag) -> io::Result<Vec<TagEntry>>;

    /// Records what a tag points to for one media type; returns whether anything was written (an
    /// unchanged entry is rewritten only when its `fetched_at` lags by `refresh_every`).
    async fn put_tag(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        tag: &Tag,
        entry: &TagEntry,
        refresh_every: Option<Duration>,
    ) -> io::Result<bool>;

    /// The stored referrers list of `subject` (JSON as written by `put_referrers`).
    async fn referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
    ) -> io::Result<Option<Vec<u8>>>;

    async fn put_referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
        json: Vec<u8>,
    ) -> io::Result<()>;

    /// Starts background eviction of whatever this store bounds (the local disk tier).
    fn start_eviction(&self, policy: EvictionPolicy, metrics: Arc<Metrics>);

    /// Whether the store can be used now (for `/readyz`).
    async fn healthy(&self) -> bool;

    /// At shutdown: recorded uses written down, this process's unfinished fills removed.
    async fn shutdown(&self);

    /// Cluster-wide single flight (`--advertise-url`): claims the fill of blob `d` for the replica
    /// reachable at `owner` with a lease in shared storage (`lease`), so that replicas sharing the
    /// store download each blob from the origin once. A store no other replica shares has nothing
    /// to coordinate: `Local`.
    async fn claim_fill(&self, _d: &Digest, _owner: &str, _private: bool) -> io::Result<FillClaim> {
        Ok(FillClaim::Local)
    }

    /// Takes over the fill of blob `d` from `failed`, an owner this replica could not read it from,
    /// for `owner` (`lease::take_over`): one replica becomes the owner the others read from.
    async fn take_over_fill(&self, _d: &Digest, _failed: &str, _owner: &str, _private: bool) -> io::Result<FillClaim> {
        Ok(FillClaim::Local)
    }
}

/// Opens the configured store: `Disk` on `cache_dir`, or with `storage` (`s3://`, `gs://`, `az://`,
/// `file://`) a `Tiered` store with `cache_dir` as its local tier.
pub async fn open(cache_dir: &Path, storage: Option<&str>, metrics: &Metrics) -> Result<Arc<dyn Store>, String> {
    let dir = cache_dir.to_path_buf();
    let disk = tokio::task::spawn_blocking(move || Disk::open(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open cache directory {}: {e}", cache_dir.display()))?
        .with_metrics(metrics);
    match storage {
        None => Ok(Arc::new(disk)),
        Some(url) => {
            let bucket = Bucket::connect(url, &cache_dir.join("tmp")).await?.with_metrics(metrics);
            tracing::info!(storage = %url, disk_tier = %cache_dir.display(), "object storage behind a local disk tier");
            Ok(Arc::new(Tiered::new(disk, bucket)))
        }
    }
}

#[cfg(test)]
mod tests;
