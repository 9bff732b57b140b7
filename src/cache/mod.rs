//! Caching behaviour between the HTTP edge and the store: which tags may be served from the cache,
//! one upstream download per blob shared by every waiting client, and coalescing of identical manifest
//! requests. `Cache` is what the server calls; it answers in domain terms and leaves HTTP to the server.

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

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::{FsStore, StoredManifest};
use crate::upstream::OriginClient;

/// Identifies one manifest request upstream: (registry/repository, reference, accepted media types).
type ManifestKey = (String, String, String);

pub struct Cache {
    store: FsStore,
    origin: Arc<OriginClient>,
    flights: Arc<Flights>,
    manifests: Coalesce<ManifestKey, StoredManifest, Error>,
    policy: TagPolicy,
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(store: FsStore, origin: OriginClient, policy: TagPolicy, metrics: Arc<Metrics>) -> Self {
        let flights = Flights::new(store.clone(), metrics.clone());
        Cache {
            store,
            origin: Arc::new(origin),
            flights,
            manifests: Coalesce::default(),
            policy,
            metrics,
        }
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
