//! A size-bounded local disk in front of a bucket (`--storage s3://...`): the disk tier is an LRU
//! cache of the bucket, the bucket the shared, unbounded store of every replica.
//!
//! - A hit on disk is served at disk speed; the bucket is not asked.
//! - A miss on disk that the bucket has is streamed to the client, verified, while it is copied to
//!   disk (one copy at a time per blob); the disk copy is committed only if the digest matched.
//! - A fill (a download from the origin) goes to both: uploaded to the bucket, then committed on disk.
//! - Manifests, tags and referrers are read from disk first, then from the bucket (and kept on disk);
//!   written to both. Private markers are honoured from either tier.
//!
//! A bucket that cannot be reached is a miss (the origin is asked), never an error for the client;
//! only "is this private?" fails closed.

use std::collections::HashSet;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::StreamExt;

use super::bucket::Bucket;
use super::{ByteStream, ContentKind, Disk, Fill, Store, StoredBlob, StoredManifest, TagEntry};
use crate::oci::{Digest, RegistryName, Repository, Tag};

/// Blobs copied from the bucket to disk at once; further disk misses stream from the bucket alone.
const MAX_PROMOTIONS: usize = 64;

#[derive(Debug, Clone)]
pub struct Tiered {
    disk: Disk,
    bucket: Bucket,
    /// Blobs being copied from the bucket to disk now.
    promoting: Arc<Mutex<HashSet<Digest>>>,
}

impl Tiered {
    pub fn new(disk: Disk, bucket: Bucket) -> Self {
        Tiered { disk, bucket, promoting: Arc::default() }
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// Claims the copy of `d` to disk, unless one runs or too many do.
    fn claim_promotion(&self, d: &Digest) -> Option<Promotion> {
        let mut set = self.promoting.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_PROMOTIONS || !set.insert(d.clone()) {
            return None;
        }
        Some(Promotion { set: self.promoting.clone(), digest: d.clone() })
    }
}

/// A claimed copy to disk; released when dropped.
struct Promotion {
    set: Arc<Mutex<HashSet<Digest>>>,
    digest: Digest,
}

impl Drop for Promotion {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.digest);
    }
}

/// Copies the bytes of a blob read whole from the bucket into a disk fill as they pass; the fill is
/// committed when the read's verdict is a match and dropped (removed) otherwise. A failed disk write
/// abandons the copy, never the client's read.
pub struct Tee {
    tiered: Tiered,
    digest: Digest,
    claim: Promotion,
}

struct TeeState {
    fill: Option<Fill>,
    started: bool,
    written: u64,
}

impl Tee {
    pub(crate) fn attach(self, whole: ByteStream) -> (ByteStream, super::verify::Verdict) {
        let state = Arc::new(tokio::sync::Mutex::new(TeeState { fill: None, started: false, written: 0 }));
        let (disk, digest) = (self.tiered.disk.clone(), self.digest.clone());
        let writer = state.clone();
        let stream = whole
            .then(move |item| {
                let (state, disk, digest) = (writer.clone(), disk.clone(), digest.clone());
                async move {
                    let Ok(chunk) = &item else { return item };
                    let mut st = state.lock().await;
                    if !st.started {
                        st.started = true;
                        match disk.begin_fill(&digest).await {
                            Ok(f) => st.fill = Some(f),
                            Err(e) => tracing::warn!(%digest, error = %e, "cannot copy a bucket blob to disk"),
                        }
                    }
                    let offset = st.written;
                    if let Some(fill) = &st.fill {
                        if let Err(e) = fill.write_at(chunk.clone(), offset).await {
                            tracing::warn!(%digest, error = %e, "copy of a bucket blob to disk abandoned");
                            st.fill = None;
                        }
                    }
                    st.written += chunk.len() as u64;
                    item
                }
            })
            .boxed();
        let Tee { tiered, digest, claim } = self;
        let verdict = Box::new(move |ok: bool| {
            tokio::spawn(async move {
                let fill = {
                    let mut st = state.lock().await;
                    match st.fill.take() {
                        // An empty blob passes no chunk through the tee: its (empty) copy starts here,
                        // or it would be looked up in the bucket on every read.
                        None if ok && !st.started => tiered.disk.begin_fill(&digest).await.ok(),
                        fill => fill,
                    }
                };
                if let (true, Some(fill)) = (ok, fill) {
                    let private = tiered.bucket.is_private(ContentKind::Blob, &digest).await;
                    match tiered.disk.commit_fill(fill, private).await {
                        Ok(()) => tracing::debug!(%digest, "blob copied from the bucket to disk"),
                        Err(e) => tracing::warn!(%digest, error = %e, "could not keep a bucket blob on disk"),
                    }
                }
                drop(claim);
            });
        });
        (stream, verdict)
    }
}

/// A blob on disk's miss that the bucket has.
struct BucketHit {
    tiered: Tiered,
    digest: Digest,
    size: u64,
}

impl super::BlobReader for BucketHit {
    fn read(self: Box<Self>, range: Range<u64>) -> ByteStream {
        let whole = range.start == 0 && range.end == self.size;
        let tee = whole.then(|| self.tiered.claim_promotion(&self.digest)).flatten().map(|claim| Tee {
            tiered: self.tiered.clone(),
            digest: self.digest.clone(),
            claim,
        });
        self.tiered.bucket.read_blob(self.digest, self.size, range, tee)
    }
}

/// A write the disk tier took and the bucket did not: the content stays on this replica only, and
/// the request goes on (a bucket outage must not fail pulls the disk can serve).
fn disk_only_on_error(what: &str, of: &(dyn std::fmt::Display + Sync), r: io::Result<()>) {
    if let Err(e) = r {
        tracing::warn!(%of, error = %e, "{what} not written to object storage; kept on local disk only");
    }
}

/// A bucket that cannot be reached is a miss: logged, and the origin is asked instead.
fn miss_on_error<T: Default>(what: &str, of: String, r: io::Result<T>) -> T {
    r.unwrap_or_else(|e| {
        tracing::warn!(%of, error = %e, "object storage {what} failed; treated as a miss");
        T::default()
    })
}

#[async_trait]
impl Store for Tiered {
    fn describe(&self) -> String {
        format!("{} behind {}", self.bucket.url(), self.disk.describe())
    }

    async fn blob_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        if let Some(size) = self.disk.blob_size(d).await? {
            return Ok(Some(size));
        }
        Ok(miss_on_error("lookup", d.to_string(), self.bucket.blob_size(d).await))
    }

    async fn open_blob(&self, d: &Digest) -> io::Result<Option<StoredBlob>> {
        if let Some(blob) = self.disk.open_blob(d).await? {
            return Ok(Some(blob));
        }
        let Some(size) = miss_on_error("lookup", d.to_string(), self.bucket.blob_size(d).await) else {
            return Ok(None);
        };
        Ok(Some(StoredBlob::new(size, Box::new(BucketHit { tiered: self.clone(), digest: d.clone(), size }))))
    }

    /// The bucket's object, even when the disk tier has a copy: redirecting is what the operator
    /// chose, to take the bytes off this pod's network.
    async fn blob_url(&self, d: &Digest, ttl: Duration) -> Option<url::Url> {
        self.bucket.signed_blob_url(d, ttl).await
    }

    async fn begin_fill(&self, d: &Digest) -> io::Result<Fill> {
        self.disk.begin_fill(d).await
    }

    /// Uploaded first (from the staging file), then placed on disk. A failed upload keeps the blob
    /// on this replica's disk only (logged): the client got verified bytes either way.
    async fn commit_fill(&self, fill: Fill, private: bool) -> io::Result<()> {
        if let Err(e) = self.bucket.commit_fill_from(&fill, private).await {
            tracing::warn!(digest = %fill.digest(), error = %e, "blob not uploaded to object storage; kept on local disk only");
        }
        self.disk.commit_fill(fill, private).await
    }

    async fn make_room(&self, need: u64) {
        self.disk.make_room(need).await
    }

    async fn manifest(&self, d: &Digest) -> io::Result<Option<StoredManifest>> {
        if let Some(m) = self.disk.manifest(d).await? {
            return Ok(Some(m));
        }
        let Some(m) = miss_on_error("read", d.to_string(), self.bucket.manifest(d).await) else { return Ok(None) };
        let private = self.bucket.is_private(ContentKind::Manifest, d).await;
        if let Err(e) = self.disk.put_manifest(&m, private).await {
            tracing::warn!(digest = %d, error = %e, "could not keep a local copy of a manifest");
        }
        Ok(Some(m))
    }

    async fn put_manifest(&self, m: &StoredManifest, private: bool) -> io::Result<()> {
        self.disk.put_manifest(m, private).await?;
        disk_only_on_error("manifest", &m.digest, self.bucket.put_manifest(m, private).await);
        Ok(())
    }

    /// Private in either tier is private. A bucket that cannot be asked leaves the disk tier's
    /// marker, which was copied with the content when it was stored here, as the answer: failing
    /// closed there would refuse every cached blob during a bucket outage that is also an origin
    /// outage.
    async fn is_private(&self, kind: ContentKind, d: &Digest) -> bool {
        if self.disk.is_private(kind, d).await {
            return true;
        }
        self.bucket.private_marker(kind, d).await.unwrap_or_else(|e| {
            tracing::warn!(digest = %d, error = %e, "object storage unreachable: the disk tier's private marker decides");
            false
        })
    }

    /// Marking private must reach both tiers (or fail: fail closed). Unmarking in a bucket that
    /// cannot be reached leaves its marker, which only makes other replicas check the origin.
    async fn set_private(&self, kind: ContentKind, d: &Digest, private: bool) -> io::Result<()> {
        self.disk.set_private(kind, d, private).await?;
        let shared = self.bucket.set_private(kind, d, private).await;
        if private {
            return shared;
        }
        disk_only_on_error("public mark", d, shared);
        Ok(())
    }

    async fn tag_entries(&self, registry: &RegistryName, repo: &Repository, tag: &Tag) -> io::Result<Vec<TagEntry>> {
        let local = self.disk.tag_entries(registry, repo, tag).await?;
        if !local.is_empty() {
            return Ok(local);
        }
        let entries = miss_on_error("read", tag.to_string(), self.bucket.tag_entries(registry, repo, tag).await);
        for e in &entries {
            let _ = self.disk.put_tag(registry, repo, tag, e, None).await;
        }
        Ok(entries)
    }

    async fn put_tag(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        tag: &Tag,
        entry: &TagEntry,
        refresh_every: Option<Duration>,
    ) -> io::Result<bool> {
        let written = self.disk.put_tag(registry, repo, tag, entry, refresh_every).await?;
        if written {
            disk_only_on_error(
                "tag",
                tag,
                self.bucket.put_tag(registry, repo, tag, entry, refresh_every).await.map(drop),
            );
        }
        Ok(written)
    }

    async fn referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
    ) -> io::Result<Option<Vec<u8>>> {
        if let Some(json) = self.disk.referrers(registry, repo, subject).await? {
            return Ok(Some(json));
        }
        let found = miss_on_error("read", subject.to_string(), self.bucket.referrers(registry, repo, subject).await);
        if let Some(json) = &found {
            let _ = self.disk.put_referrers(registry, repo, subject, json.clone()).await;
        }
        Ok(found)
    }

    async fn put_referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
        json: Vec<u8>,
    ) -> io::Result<()> {
        self.disk.put_referrers(registry, repo, subject, json.clone()).await?;
        disk_only_on_error("referrers", subject, self.bucket.put_referrers(registry, repo, subject, json).await);
        Ok(())
    }

    fn start_eviction(&self, policy: super::eviction::EvictionPolicy, metrics: Arc<crate::metrics::Metrics>) {
        self.disk.start_eviction(policy, metrics)
    }

    async fn healthy(&self) -> bool {
        self.disk.healthy().await
    }

    /// The lease lives in the bucket, where every replica sees it.
    async fn claim_fill(&self, d: &Digest, owner: &str, private: bool) -> io::Result<super::FillClaim> {
        self.bucket.claim_fill(d, owner, private).await
    }

    async fn take_over_fill(
        &self,
        d: &Digest,
        failed: &str,
        owner: &str,
        private: bool,
    ) -> io::Result<super::FillClaim> {
        self.bucket.take_over_fill(d, failed, owner, private).await
    }

    async fn shutdown(&self) {
        self.disk.shutdown().await
    }
}
