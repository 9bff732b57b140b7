//! Caching behaviour between the HTTP edge and the store: which tags may be served from the cache,
//! one upstream download per blob shared by every waiting client, and coalescing of identical manifest
//! requests. `Cache` is what the server calls; it answers in domain terms and leaves HTTP to the server.

pub mod access;
pub mod blobs;
pub mod coalesce;
pub mod flight;
pub mod manifests;
pub mod policy;

use std::sync::Arc;

pub use blobs::BlobAnswer;
pub use coalesce::Coalesce;
pub use flight::{BlobSource, Flight, Flights, Joined, Opener};
pub use manifests::{ManifestAnswer, ManifestQuery};
pub use policy::{TagDecision, TagPolicy};

use std::time::Duration;

use http::{HeaderValue, Method};

use crate::error::{Error, Resource};
use crate::metrics::Metrics;
use crate::oci::accept::ALL_MANIFEST_TYPES;
use crate::oci::{Digest, Target};
use crate::store::ContentKind;
use crate::store::{FsStore, StoredManifest};
use crate::upstream::OriginClient;
use crate::upstream::{Identity, OriginRequest};
use access::{AccessCache, AccessKey};

/// Identifies one manifest request upstream: (registry/repository, reference, accepted media types).
type ManifestKey = (String, String, String);

pub struct Cache {
    access: AccessCache,
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
            self.store.mark_public(kind, digest)?;
        }
        Ok(())
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
