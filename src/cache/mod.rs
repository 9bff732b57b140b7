//! Caching behaviour between the HTTP edge and the store: which tags may be served from the cache,
//! one upstream download per blob shared by every waiting client, and coalescing of identical manifest
//! requests. `Cache` is what the server calls; it answers in domain terms and leaves HTTP to the server.

pub mod access;
pub mod blobs;
pub mod coalesce;
pub mod flight;
pub mod manifests;
pub mod peer;
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
use crate::store::{ContentKind, Store, StoredManifest, TagEntry};
use crate::upstream::OriginClient;
use crate::upstream::{Identity, OriginRequest};
use access::{AccessCache, AccessKey};

/// Identifies one manifest request upstream: (registry/repository, reference, accepted media types).
type ManifestKey = (String, String, String);

pub struct Cache {
    access: AccessCache,
    store: Arc<dyn Store>,
    origin: Arc<OriginClient>,
    flights: Arc<Flights>,
    manifests: Coalesce<ManifestKey, StoredManifest, Error>,
    policy: TagPolicy,
    metrics: Arc<Metrics>,
    /// With `--peer-secret-file`: the internal peer endpoint, and with `--advertise-url` fills
    /// coordinated with the other replicas (`peer`).
    peering: Option<Arc<peer::Peering>>,
}

impl Cache {
    pub fn new(
        store: Arc<dyn Store>,
        origin: OriginClient,
        policy: TagPolicy,
        auth_cache_ttl: Duration,
        max_downloads: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let flights = Flights::new(store.clone(), metrics.clone(), max_downloads);
        Cache {
            access: AccessCache::new(auth_cache_ttl),
            store,
            origin: Arc::new(origin),
            flights,
            manifests: Coalesce::default(),
            policy,
            metrics,
            peering: None,
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

    /// A stored manifest, from whichever tier has it.
    pub(crate) async fn stored_manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, Error> {
        Ok(self.store.manifest(d).await?)
    }

    /// Whether content is marked private in the store (a store that cannot tell says yes).
    pub(crate) async fn is_private(&self, kind: ContentKind, d: &Digest) -> bool {
        self.store.is_private(kind, d).await
    }

    /// Marks content private or public.
    pub(crate) async fn mark(&self, kind: ContentKind, d: &Digest, private: bool) -> Result<(), Error> {
        Ok(self.store.set_private(kind, d, private).await?)
    }

    /// A tag's entries.
    pub(crate) async fn tag_entries(&self, target: &Target, tag: &crate::oci::Tag) -> Result<Vec<TagEntry>, Error> {
        Ok(self.store.tag_entries(&target.registry, &target.repository, tag).await?)
    }

    /// Writes a tag entry when it changed (see `Store::put_tag`).
    pub(crate) async fn put_tag(&self, target: &Target, tag: &crate::oci::Tag, entry: &TagEntry) -> Result<(), Error> {
        self.store.put_tag(&target.registry, &target.repository, tag, entry, self.tag_refresh()).await?;
        Ok(())
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

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
