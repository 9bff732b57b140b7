//! Blobs: from the store when committed, else through the shared flight for the digest. A HEAD is
//! answered from the store or a running flight when possible, and otherwise passed to the origin as a
//! HEAD (never turned into a download).

use std::fs::File;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt, TryStreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use http::{HeaderValue, Method, StatusCode};

use super::flight::{BlobSource, Flight, Joined, Opener};
use super::Cache;
use crate::error::{Error, Resource};
use crate::metrics::CacheResult;
use crate::oci::{Digest, Target};
use crate::upstream::{OriginClient, OriginRequest};

pub enum BlobAnswer {
    Stored {
        file: File,
        size: u64,
    },
    /// Being downloaded; `size` when the origin announced it.
    Flight {
        flight: Arc<Flight>,
        size: Option<u64>,
        result: CacheResult,
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
            BlobAnswer::Stored { .. } => CacheResult::Hit,
            BlobAnswer::Flight { result, .. } | BlobAnswer::Head { result, .. } => *result,
        }
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
        let answer = self.blob_inner(target, digest, head, client_auth).await?;
        self.metrics
            .cache_result(target.registry.as_str(), "blob", answer.result());
        Ok(answer)
    }

    async fn blob_inner(
        &self,
        target: &Target,
        digest: &Digest,
        head: bool,
        client_auth: Option<HeaderValue>,
    ) -> Result<BlobAnswer, Error> {
        if head {
            if let Some(size) = self.store.blob_size(digest) {
                return Ok(BlobAnswer::Head {
                    size: Some(size),
                    result: CacheResult::Hit,
                });
            }
            if let Some(size) = self.flights.get(digest).and_then(|f| f.known_size()) {
                return Ok(BlobAnswer::Head {
                    size: Some(size),
                    result: CacheResult::Hit,
                });
            }
            return self.head_blob_upstream(target, digest, client_auth).await;
        }
        let origin_label = target.registry.to_string();
        let public = opener(self.origin.clone(), target.clone(), digest.clone(), None);
        let flight = match self.flights.join_or_start(digest, &origin_label, public)? {
            Joined::Stored { file, size } => return Ok(BlobAnswer::Stored { file, size }),
            Joined::Flight(f) => f,
        };
        match flight.started().await {
            Ok(size) => Ok(BlobAnswer::Flight {
                flight,
                size,
                result: CacheResult::Miss,
            }),
            Err(e) if e.wants_client_credentials() && client_auth.is_some() => {
                let with_client = opener(self.origin.clone(), target.clone(), digest.clone(), client_auth);
                let private = self.flights.private(digest, &origin_label, with_client)?;
                let size = private.started().await.map_err(Error::Shared)?;
                Ok(BlobAnswer::Flight {
                    flight: private,
                    size,
                    result: CacheResult::Skip,
                })
            }
            Err(e) => Err(Error::Shared(e)),
        }
    }

    async fn head_blob_upstream(
        &self,
        target: &Target,
        digest: &Digest,
        client_auth: Option<HeaderValue>,
    ) -> Result<BlobAnswer, Error> {
        let mut req = OriginRequest {
            target,
            method: Method::HEAD,
            resource: Resource::Blob,
            path: format!("blobs/{digest}"),
            accept: None,
            range: None,
            client_auth: None,
        };
        let resp = match self.origin.send(&req).await {
            Ok(r) => r,
            Err(e) if e.wants_client_credentials() && client_auth.is_some() => {
                req.client_auth = client_auth;
                self.origin.send(&req).await?
            }
            Err(e) => return Err(e),
        };
        let size = header_u64(resp.headers().get(CONTENT_LENGTH));
        Ok(BlobAnswer::Head {
            size,
            result: CacheResult::Skip,
        })
    }
}

fn header_u64(v: Option<&HeaderValue>) -> Option<u64> {
    v.and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Opens the origin's blob body at an offset; offsets after the first use a Range request, and the
/// origin must answer 206 from exactly that byte.
fn opener(origin: Arc<OriginClient>, target: Target, digest: Digest, client_auth: Option<HeaderValue>) -> Opener {
    Box::new(move |offset| {
        let (origin, target, digest, client_auth) =
            (origin.clone(), target.clone(), digest.clone(), client_auth.clone());
        async move {
            let req = OriginRequest {
                target: &target,
                method: Method::GET,
                resource: Resource::Blob,
                path: format!("blobs/{digest}"),
                accept: None,
                range: (offset > 0).then(|| format!("bytes={offset}-")),
                client_auth,
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
                    return Err(bad(format!(
                        "resuming at byte {offset}: the origin does not support ranges"
                    )));
                }
                let range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
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
                    reason: crate::upstream::client::describe(&e),
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
