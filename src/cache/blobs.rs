//! Blobs: from the store when committed, else through the shared flight for the digest. Private
//! blobs (fetched with a client's credentials, or from a `--private-registry`) are served only after
//! the origin confirmed the client's access. A HEAD is answered from the store or a running flight
//! when possible, and otherwise passed to the origin as a HEAD (never turned into a download).

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt, TryStreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use http::{HeaderValue, Method, StatusCode};

use super::flight::{BlobSource, Flight, Joined, Opener};
use super::Cache;
use crate::error::{Error, Resource};
use crate::metrics::CacheResult;
use crate::oci::{Digest, Target};
use crate::store::ContentKind;
use crate::store::{ByteStream, StoredBlob};
use crate::upstream::{cache_then_client, Identity, OriginClient, OriginRequest};

/// What a blob request gets: bytes to send (from the store or a download), or for a HEAD the size.
pub enum BlobAnswer {
    Bytes { body: BlobBody, result: CacheResult },
    Head { size: Option<u64>, result: CacheResult },
}

impl BlobAnswer {
    pub fn result(&self) -> CacheResult {
        match self {
            BlobAnswer::Bytes { result, .. } | BlobAnswer::Head { result, .. } => *result,
        }
    }
}

/// A blob's bytes, wherever they come from: the size when known (a download whose origin sent no
/// length has none) and how to read a range of them. The HTTP layer needs nothing else.
pub struct BlobBody {
    size: Option<u64>,
    source: Source,
}

enum Source {
    Stored(StoredBlob),
    Flight(Arc<Flight>),
}

impl BlobBody {
    fn stored(blob: StoredBlob) -> Self {
        BlobBody { size: Some(blob.size), source: Source::Stored(blob) }
    }

    fn flight(flight: Arc<Flight>, size: Option<u64>) -> Self {
        BlobBody { size, source: Source::Flight(flight) }
    }

    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The stored file, when bytes `start..end` can be sent from it as they are (see
    /// `StoredBlob::file_for`).
    pub fn file_for(&self, start: u64, end: u64) -> Option<Arc<std::fs::File>> {
        match &self.source {
            Source::Stored(blob) => blob.file_for(&(start..end)),
            Source::Flight(_) => None,
        }
    }

    /// Bytes `start..end` (`None`: to the end, for a blob of unknown size). A body that ends at the
    /// blob's end completes only if the blob matched its digest.
    pub fn read(self, start: u64, end: Option<u64>) -> ByteStream {
        match self.source {
            Source::Stored(blob) => {
                let size = blob.size;
                blob.read(start..end.unwrap_or(size))
            }
            Source::Flight(flight) => flight.read(start, end).boxed(),
        }
    }
}

/// One blob request as the cache sees it.
struct BlobRequest<'a> {
    target: &'a Target,
    digest: &'a Digest,
    client_auth: Option<&'a HeaderValue>,
    private_registry: bool,
}

impl BlobRequest<'_> {
    fn path(&self) -> String {
        format!("blobs/{}", self.digest)
    }
}

impl Cache {
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        head: bool,
        client_auth: Option<HeaderValue>,
    ) -> Result<BlobAnswer, Error> {
        let req = BlobRequest {
            target,
            digest,
            client_auth: client_auth.as_ref(),
            private_registry: self.policy.private_registries.contains(&target.registry),
        };
        let answer = if head { self.head_blob(&req).await? } else { self.get_blob(&req).await? };
        self.metrics.cache_result(&self.origin.registries().label(&target.registry), "blob", answer.result());
        Ok(answer)
    }

    /// `--redirect-blobs`: a signed URL at which the object store serves a blob it holds (and this
    /// process verified there), given only where a normal answer would have served the bytes: the
    /// client's access to private content is confirmed first, exactly as for a `200`. `None`: answer
    /// as usual (not in the bucket, a store that cannot sign, a download under way).
    pub async fn blob_redirect(
        &self,
        target: &Target,
        digest: &Digest,
        client_auth: Option<HeaderValue>,
        ttl: std::time::Duration,
    ) -> Result<Option<url::Url>, Error> {
        let req = BlobRequest {
            target,
            digest,
            client_auth: client_auth.as_ref(),
            private_registry: self.policy.private_registries.contains(&target.registry),
        };
        // As in `get_blob`: a private registry's client proves its access before the store is asked.
        self.confirm_if_private(&req, false).await?;
        let Some(url) = self.store.blob_url(digest, ttl).await else { return Ok(None) };
        self.confirm_if_private(&req, self.store.is_private(ContentKind::Blob, digest).await).await?;
        self.metrics.cache_result(&self.origin.registries().label(&target.registry), "blob", CacheResult::Hit);
        self.metrics.blob_redirects.inc();
        Ok(Some(url))
    }

    /// Private content needs the client's access confirmed first; public content does not.
    async fn confirm_if_private(&self, req: &BlobRequest<'_>, private: bool) -> Result<(), Error> {
        if private || req.private_registry {
            let content = Some((ContentKind::Blob, req.digest));
            self.check_access(req.target, Resource::Blob, req.path(), req.client_auth, content).await?;
        }
        Ok(())
    }

    async fn head_blob(&self, req: &BlobRequest<'_>) -> Result<BlobAnswer, Error> {
        if let Some(size) = self.store.blob_size(req.digest).await? {
            self.confirm_if_private(req, self.store.is_private(ContentKind::Blob, req.digest).await).await?;
            return Ok(BlobAnswer::Head { size: Some(size), result: CacheResult::Hit });
        }
        if let Some(flight) = self.flights.get(req.digest) {
            if let Some(size) = flight.known_size() {
                self.confirm_if_private(req, flight.is_private()).await?;
                return Ok(BlobAnswer::Head { size: Some(size), result: CacheResult::Hit });
            }
        }
        self.confirm_if_private(req, false).await?;
        let up = OriginRequest {
            target: req.target,
            method: Method::HEAD,
            resource: Resource::Blob,
            path: req.path(),
            accept: None,
            range: None,
            identity: Identity::Cache,
        };
        let first = self.origin.send(&up).await;
        let (resp, _) = cache_then_client(first, req.client_auth, |identity| async move {
            self.origin.send(&OriginRequest { identity, ..up }).await
        })
        .await?;
        let size = header_u64(resp.headers().get(CONTENT_LENGTH));
        Ok(BlobAnswer::Head { size, result: CacheResult::Skip })
    }

    async fn get_blob(&self, req: &BlobRequest<'_>) -> Result<BlobAnswer, Error> {
        // Content of a private registry is fetched with the cache's credentials, so the client
        // proves its own access before anything is served or fetched.
        self.confirm_if_private(req, false).await?;
        let label = req.target.registry.to_string();
        let open = opener(self.origin.clone(), req.target.clone(), req.digest.clone(), Identity::Cache);
        let (flight, started) = match self.flights.join_or_start(req.digest, &label, open, req.private_registry).await?
        {
            Joined::Stored(blob) => {
                if !req.private_registry {
                    self.confirm_if_private(req, self.store.is_private(ContentKind::Blob, req.digest).await).await?;
                }
                return Ok(BlobAnswer::Bytes { body: BlobBody::stored(blob), result: CacheResult::Hit });
            }
            Joined::Flight { flight, started } => (flight, started),
        };
        if flight.is_private() && !req.private_registry {
            // Joined a download another client was allowed to start: prove access too.
            self.confirm_if_private(req, true).await?;
        }
        let first = flight.started().await.map(|size| (flight, size));
        let ((flight, size), public) = cache_then_client(first, req.client_auth, |identity| async move {
            // Fetched with the client's credentials: a download of its own, stored as private.
            let open = opener(self.origin.clone(), req.target.clone(), req.digest.clone(), identity);
            let private = self.flights.start_private(req.digest, &label, open).await?;
            let size = private.started().await?;
            Ok((private, size))
        })
        .await?;
        if flight.reads_private_peer() && !req.private_registry {
            // The bytes come from another replica's private download: no origin has seen this
            // client yet, so it proves its access as for any private content.
            self.confirm_if_private(req, true).await?;
        }
        // Started by this request (or fetched with the client's own credentials): a miss; joined a
        // download already under way: a hit (the origin is not asked again).
        let result = if started || !public { CacheResult::Miss } else { CacheResult::Hit };
        Ok(BlobAnswer::Bytes { body: BlobBody::flight(flight, size), result })
    }
}

fn header_u64(v: Option<&HeaderValue>) -> Option<u64> {
    v.and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Opens the origin's blob body at an offset; offsets after the first use a Range request, and the
/// origin must answer 206 from exactly that byte.
fn opener(origin: Arc<OriginClient>, target: Target, digest: Digest, identity: Identity) -> Opener {
    Arc::new(move |offset| {
        let (origin, target, digest, identity) = (origin.clone(), target.clone(), digest.clone(), identity.clone());
        async move {
            let req = OriginRequest {
                target: &target,
                method: Method::GET,
                resource: Resource::Blob,
                path: format!("blobs/{digest}"),
                accept: None,
                range: (offset > 0).then(|| format!("bytes={offset}-")),
                identity,
            };
            let resp = origin.send(&req).await?;
            let bad = |detail: String| Error::BadUpstreamBody {
                origin: target.registry.to_string(),
                what: format!("blob {digest}"),
                detail,
            };
            let total = if offset == 0 {
                header_u64(resp.headers().get(CONTENT_LENGTH))
            } else {
                if resp.status() != StatusCode::PARTIAL_CONTENT {
                    return Err(bad(format!("resuming at byte {offset}: the origin does not support ranges")));
                }
                let range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                let (start, total) =
                    parse_content_range(range).ok_or_else(|| bad(format!("bad Content-Range {range:?}")))?;
                if start != offset {
                    return Err(bad(format!("asked for byte {offset}, got {start}")));
                }
                Some(total)
            };
            let registry = target.registry.clone();
            let body = resp
                .bytes_stream()
                .map_err(move |e| Error::Unreachable {
                    registry: registry.clone(),
                    reason: crate::upstream::describe(&e),
                })
                .boxed();
            Ok(BlobSource { total, body, from_peer: false })
        }
        .boxed()
    })
}

/// `bytes START-END/TOTAL` -> (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}
