//! Caching behaviour between the HTTP edge and the store: which tags may be served from the cache,
//! one upstream download per blob shared by every waiting client, and coalescing of identical manifest
//! requests. `Cache` is what the server calls; it answers in domain terms and leaves HTTP to the server.

pub mod access;
pub mod blobs;
pub mod coalesce;
pub mod flight;
pub mod manifests;
pub mod policy;
pub mod referrers;

use std::sync::Arc;

pub use blobs::BlobAnswer;
pub use coalesce::Coalesce;
pub use flight::{BlobSource, Flight, Flights, Joined, Opener};
pub use manifests::{ManifestAnswer, ManifestQuery};
pub use policy::{TagDecision, TagPolicy};
pub use referrers::{ReferrersAnswer, ReferrersQuery};

use std::time::Duration;

use http::{HeaderValue, Method};

use crate::error::{Error, Resource};
use crate::metrics::Metrics;
use crate::oci::accept::ALL_MANIFEST_TYPES;
use crate::oci::{Digest, Target};
use crate::store::ContentKind;
use crate::store::{FsStore, StoredManifest, TagEntry};
use crate::upstream::OriginClient;
use crate::upstream::{Identity, OriginRequest};
use access::{AccessCache, AccessKey};

/// Identifies one manifest request upstream: (registry/repository, reference, accepted media types).
type ManifestKey = (String, String, String);

/// How long a private-marker lookup in the shared tier is reused: markers change rarely, and a
/// lookup per manifest request would cost a bucket round trip each.
const REMOTE_MARK_TTL: Duration = Duration::from_secs(30);

/// (content kind, digest) -> (private, when the tier said so). Digests are the client's to choose.
type RemoteMarks = moka::sync::Cache<(&'static str, Digest), (bool, tokio::time::Instant)>;

/// Private-marker answers kept at most (those of the last `REMOTE_MARK_TTL`); one forgotten costs
/// one bucket lookup.
const MAX_REMOTE_MARKS: u64 = 20_000;

pub struct Cache {
    access: AccessCache,
    /// Recent answers of the shared tier to "is this private?", per (kind, digest).
    remote_marks: RemoteMarks,
    store: FsStore,
    origin: Arc<OriginClient>,
    flights: Arc<Flights>,
    manifests: Coalesce<ManifestKey, StoredManifest, Error>,
    policy: TagPolicy,
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(
        store: FsStore,
        origin: OriginClient,
        policy: TagPolicy,
        auth_cache_ttl: Duration,
        max_downloads: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let flights = Flights::new(store.clone(), metrics.clone(), max_downloads);
        Cache {
            access: AccessCache::new(auth_cache_ttl),
            remote_marks: crate::bounded::expiring(MAX_REMOTE_MARKS, REMOTE_MARK_TTL),
            store,
            origin: Arc::new(origin),
            flights,
            manifests: Coalesce::default(),
            policy,
            metrics,
        }
    }

    /// Confirms with the origin that the client may read `path` of `target` (a HEAD with exactly the
    /// client's credentials, or none), unless it was confirmed within the auth-cache TTL. An
    /// anonymous confirmation shows the content is public after all, and `content` is unmarked.
    pub(crate) async fn check_access(
        &self,
        target: &Target,
        resource: Resource,
        path: String,
        client_auth: Option<&HeaderValue>,
        content: Option<(ContentKind, &Digest)>,
    ) -> Result<(), Error> {
        let key = AccessKey::new(client_auth, target, &path);
        if self.access.granted(&key) {
            return Ok(());
        }
        let accept = (resource == Resource::Manifest).then(|| ALL_MANIFEST_TYPES.join(", "));
        let req = OriginRequest {
            target,
            method: Method::HEAD,
            resource,
            path,
            accept,
            range: None,
            identity: Identity::Client(client_auth.cloned()),
        };
        if let Err(e) = self.origin.send(&req).await {
            tracing::info!(%target, path = %req.path, error = %e, "client not confirmed for private content");
            return Err(e);
        }
        self.access.grant(key);
        if let (None, Some((kind, digest))) = (client_auth, content) {
            self.mark(kind, digest, false).await?;
        }
        Ok(())
    }

    /// A stored manifest: local, else from the shared object tier (verified, then kept locally too).
    /// A tier that cannot be reached is a miss, not an error: the origin is asked instead.
    pub(crate) async fn stored_manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, Error> {
        if let Some(m) = self.store.manifest(d).await? {
            return Ok(Some(m));
        }
        let Some(remote) = self.store.remote() else { return Ok(None) };
        let raw = match remote.get_manifest(d).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "object storage read failed; asking the origin");
                return Ok(None);
            }
        };
        let m = FsStore::parse_manifest_file(d, raw)?;
        if !d.matches(&m.bytes) {
            tracing::warn!(digest = %d, "manifest in object storage does not match its digest; ignored");
            return Ok(None);
        }
        if self.is_private(ContentKind::Manifest, d).await {
            self.store.mark_private(ContentKind::Manifest, d).await?;
        }
        if let Err(e) = self.store.put_manifest(d, &m.media_type, m.bytes.clone()).await {
            tracing::warn!(digest = %d, error = %e, "could not keep a local copy of a manifest");
        }
        Ok(Some(m))
    }

    /// Whether content is marked private, locally or in the shared tier (an unreachable tier counts
    /// as private: fail closed).
    pub(crate) async fn is_private(&self, kind: ContentKind, d: &Digest) -> bool {
        if self.store.is_private(kind, d).await {
            return true;
        }
        let Some(remote) = self.store.remote() else { return false };
        let key = (kind.dir(), d.clone());
        if let Some((private, at)) = self.remote_marks.get(&key) {
            if at.elapsed() < REMOTE_MARK_TTL {
                return private;
            }
        }
        match remote.is_private(kind.dir(), d).await {
            Ok(private) => {
                self.remote_marks.insert(key, (private, tokio::time::Instant::now()));
                private
            }
            Err(_) => true,
        }
    }

    /// Marks content private or public in every tier.
    pub(crate) async fn mark(&self, kind: ContentKind, d: &Digest, private: bool) -> Result<(), Error> {
        self.remote_marks.invalidate(&(kind.dir(), d.clone()));
        if private {
            self.store.mark_private(kind, d).await?;
        } else {
            self.store.mark_public(kind, d).await?;
        }
        if let Some(r) = self.store.remote() {
            let done = if private { r.mark_private(kind.dir(), d).await } else { r.mark_public(kind.dir(), d).await };
            done.map_err(|e| Error::from(std::io::Error::other(e.to_string())))?;
        }
        Ok(())
    }

    /// A tag's entries: local, else from the shared tier (then kept locally too).
    pub(crate) async fn tag_entries(&self, target: &Target, tag: &crate::oci::Tag) -> Result<Vec<TagEntry>, Error> {
        let local = self.store.tag_entries(&target.registry, &target.repository, tag).await?;
        let Some(remote) = self.store.remote() else { return Ok(local) };
        if !local.is_empty() {
            return Ok(local);
        }
        let dir = self.store.tag_dir(&target.registry, &target.repository, tag);
        let Some(rel) = self.store.relative_key(&dir) else { return Ok(local) };
        let entries = remote.tag_entries(&rel).await.unwrap_or_else(|e| {
            tracing::warn!(%target, %tag, error = %e, "object storage read failed");
            Vec::new()
        });
        for e in &entries {
            let _ = self.store.put_tag(&target.registry, &target.repository, tag, e, None).await;
        }
        Ok(entries)
    }

    /// Writes a tag entry in every tier, when it changed (see `FsStore::put_tag`).
    pub(crate) async fn put_tag(&self, target: &Target, tag: &crate::oci::Tag, entry: &TagEntry) -> Result<(), Error> {
        let written = self.store.put_tag(&target.registry, &target.repository, tag, entry, self.tag_refresh()).await?;
        if !written {
            return Ok(());
        }
        put_tag_remote(&self.store, target, tag, entry).await
    }

    /// How far a tag file's `fetched_at` may lag the one in memory before the file is rewritten:
    /// half the tag TTL, so a restart costs at most an early revalidation. With no TTL, freshness is
    /// never read from `fetched_at`, so it alone never causes a write.
    pub(crate) fn tag_refresh(&self) -> Option<Duration> {
        let ttl = self.policy.tag_ttl;
        (!ttl.is_zero()).then(|| ttl / 2)
    }

    /// Waits for running downloads to finish and be committed (used at shutdown).
    pub async fn downloads_finished(&self) {
        self.flights.wait_idle().await
    }

    pub fn origin(&self) -> &OriginClient {
        &self.origin
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &FsStore {
        &self.store
    }
}

/// Writes a tag entry to the shared tier, if there is one.
pub(crate) async fn put_tag_remote(
    store: &FsStore,
    target: &Target,
    tag: &crate::oci::Tag,
    entry: &TagEntry,
) -> Result<(), Error> {
    let Some(remote) = store.remote() else { return Ok(()) };
    let path = store.tag_file(&target.registry, &target.repository, tag, &entry.media_type);
    let Some(rel) = store.relative_key(&path) else { return Ok(()) };
    let json = serde_json::to_vec(entry).map_err(|e| Error::from(std::io::Error::other(e)))?;
    remote.put_tag(&rel, json.into()).await.map_err(|e| Error::from(std::io::Error::other(e.to_string())))
}
