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
use crate::upstream::{cache_then_client, Identity, OriginClient, OriginRequest};

pub enum BlobAnswer {
    Stored {
        file: std::fs::File,
        size: u64,
    },
    /// Being downloaded; `size` when the origin announced it. `started`: by this request (a miss),
    /// rather than joined (the origin is not asked again: a hit).
    Flight {
        flight: Arc<Flight>,
        size: Option<u64>,
        started: bool,
    },
    /// In the shared object tier (another replica fetched it); streamed from there.
    Remote {
        size: u64,
    },
    /// HEAD: the size if known.
    Head {
        size: Option<u64>,
        result: CacheResult,
    },
}

impl BlobAnswer {
    pub fn result(&self) -> CacheResult {
        match self {
            BlobAnswer::Stored { .. } | BlobAnswer::Remote { .. } => CacheResult::Hit,
            BlobAnswer::Flight { started: true, .. } => CacheResult::Miss,
            BlobAnswer::Flight { started: false, .. } => CacheResult::Hit,
            BlobAnswer::Head { result, .. } => *result,
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

    /// Private content needs the client's access confirmed first; public content does not.
    async fn confirm_if_private(&self, req: &BlobRequest<'_>, private: bool) -> Result<(), Error> {
        if private || req.private_registry {
            let content = Some((ContentKind::Blob, req.digest));
            self.check_access(req.target, Resource::Blob, req.path(), req.client_auth, content).await?;
        }
        Ok(())
    }

    /// The blob's size in the shared object tier, after any access check it needs; `None` when there
    /// is no tier, the blob is not there, or the tier cannot be reached (then the origin is asked).
    async fn remote_blob(&self, req: &BlobRequest<'_>) -> Result<Option<u64>, Error> {
        let Some(remote) = self.store.remote() else { return Ok(None) };
        match remote.blob_size(req.digest).await {
            Ok(Some(size)) => {
                self.confirm_if_private(req, self.is_private(ContentKind::Blob, req.digest).await).await?;
                Ok(Some(size))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(digest = %req.digest, error = %e, "object storage lookup failed; asking the origin");
                Ok(None)
            }
        }
    }

    async fn head_blob(&self, req: &BlobRequest<'_>) -> Result<BlobAnswer, Error> {
        if let Some(size) = self.store.blob_size(req.digest).await {
            self.confirm_if_private(req, self.store.is_private(ContentKind::Blob, req.digest).await).await?;
            return Ok(BlobAnswer::Head { size: Some(size), result: CacheResult::Hit });
        }
        if let Some(size) = self.remote_blob(req).await? {
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
        if self.store.remote().is_some()
            && self.flights.get(req.digest).is_none()
            && self.store.blob_size(req.digest).await.is_none()
        {
            if let Some(size) = self.remote_blob(req).await? {
                return Ok(BlobAnswer::Remote { size });
            }
        }
        let label = req.target.registry.to_string();
        let open = opener(self.origin.clone(), req.target.clone(), req.digest.clone(), Identity::Cache);
        let (flight, started) = match self.flights.join_or_start(req.digest, &label, open, req.private_registry).await?
        {
            Joined::Stored { file, size } => {
                if !req.private_registry {
                    self.confirm_if_private(req, self.store.is_private(ContentKind::Blob, req.digest).await).await?;
                }
                return Ok(BlobAnswer::Stored { file, size });
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
            let private = self.flights.private(req.digest, &label, open).await?;
            let size = private.started().await?;
            Ok((private, size))
        })
        .await?;
        Ok(BlobAnswer::Flight { flight, size, started: started || !public })
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
            Ok(BlobSource { total, body })
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
