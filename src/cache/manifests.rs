//! Manifests: served from the store when policy allows, else fetched once (coalesced) from the origin,
//! verified against their digest and stored exactly as received with their media type. Tags are kept
//! per media type so a client is only ever handed a manifest type it accepts.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method};

use super::{Cache, TagDecision};
use crate::error::{Error, Resource};
use crate::metrics::CacheResult;
use crate::oci::accept::is_index;
use crate::oci::{AcceptList, Digest, Reference, Tag, Target};
use crate::store::fs::{now_secs, valid_media_type};
use crate::store::{StoredManifest, TagEntry};
use crate::upstream::{OriginClient, OriginRequest};

/// The distribution registry refuses manifests above 4 MiB; so do we, to bound memory.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

pub struct ManifestQuery {
    pub target: Target,
    pub reference: Reference,
    pub accept: AcceptList,
    pub head: bool,
    /// The pulling client's `Authorization`, used only if the origin refuses the cache's own identity.
    pub client_auth: Option<HeaderValue>,
}

pub enum ManifestAnswer {
    Full {
        manifest: StoredManifest,
        result: CacheResult,
    },
    /// A HEAD answered without the body: what the origin's HEAD (or our tag entry) said.
    Head {
        digest: Option<Digest>,
        media_type: String,
        size: Option<u64>,
        result: CacheResult,
    },
}

impl ManifestQuery {
    /// The same request by digest (to fetch what a tag points at).
    fn for_digest(&self, d: &Digest) -> ManifestQuery {
        ManifestQuery {
            target: self.target.clone(),
            reference: Reference::Digest(d.clone()),
            accept: self.accept.clone(),
            head: false,
            client_auth: self.client_auth.clone(),
        }
    }
}

impl ManifestAnswer {
    pub fn result(&self) -> CacheResult {
        match self {
            ManifestAnswer::Full { result, .. } | ManifestAnswer::Head { result, .. } => *result,
        }
    }
}

impl Cache {
    pub async fn manifest(&self, q: &ManifestQuery) -> Result<ManifestAnswer, Error> {
        let registry = q.target.registry.as_str();
        let answer = match &q.reference {
            Reference::Digest(d) => self.manifest_by_digest(q, d).await?,
            Reference::Tag(tag) => self.by_tag(q, tag).await?,
        };
        self.metrics.cache_result(registry, "manifest", answer.result());
        Ok(answer)
    }

    async fn manifest_by_digest(&self, q: &ManifestQuery, d: &Digest) -> Result<ManifestAnswer, Error> {
        if let Some(m) = self.store.manifest(d)? {
            return Ok(ManifestAnswer::Full {
                manifest: m,
                result: CacheResult::Hit,
            });
        }
        if q.head {
            return self.head_upstream(q, CacheResult::Skip).await;
        }
        let store = self.policy.may_store_manifests(&q.target.registry);
        let (manifest, public) = self.fetch(q, Some(d.clone()), store, false).await?;
        let result = if public && store {
            CacheResult::Miss
        } else {
            CacheResult::Skip
        };
        Ok(ManifestAnswer::Full { manifest, result })
    }

    /// A manifest by tag: fresh cached answers are served as they are; stale ones are revalidated with
    /// a HEAD (and fetched by digest only if the tag moved); when the origin fails, the last known
    /// answer is served anyway (stale-if-error), even for tags that are otherwise never cached.
    async fn by_tag(&self, q: &ManifestQuery, tag: &Tag) -> Result<ManifestAnswer, Error> {
        let decision = self.policy.decide(&q.target.registry, tag);
        let may_store = self.policy.may_store_manifests(&q.target.registry);
        let known = if may_store { self.pick_entry(q, tag)? } else { None };
        if let Some(entry) = &known {
            if decision == TagDecision::Cache && self.policy.is_fresh(tag, entry.fetched_at, now_secs()) {
                return self.serve_entry(q, entry, CacheResult::Hit).await;
            }
            return self.revalidate(q, entry, decision).await;
        }
        let result = match decision {
            TagDecision::Cache => CacheResult::Miss,
            TagDecision::Skip => CacheResult::Skip,
        };
        if q.head {
            let answer = self.head_upstream(q, result).await?;
            if let ManifestAnswer::Head {
                digest: Some(d),
                media_type,
                size: Some(size),
                result: r,
            } = &answer
            {
                if *r == result && may_store {
                    self.remember_tag(q, d, media_type, *size);
                }
            }
            return Ok(answer);
        }
        let (manifest, public) = self.fetch(q, None, may_store, may_store).await?;
        Ok(ManifestAnswer::Full {
            manifest,
            result: if public { result } else { CacheResult::Skip },
        })
    }

    /// The tag entry for the media types this client accepts; an index is preferred, as registries do.
    fn pick_entry(&self, q: &ManifestQuery, tag: &Tag) -> Result<Option<TagEntry>, Error> {
        let entries = self.store.tag_entries(&q.target.registry, &q.target.repository, tag)?;
        Ok(entries
            .into_iter()
            .filter(|e| q.accept.accepts(&e.media_type) && e.digest.parse::<Digest>().is_ok())
            .max_by_key(|e| (is_index(&e.media_type), e.fetched_at)))
    }

    async fn revalidate(
        &self,
        q: &ManifestQuery,
        entry: &TagEntry,
        decision: TagDecision,
    ) -> Result<ManifestAnswer, Error> {
        let (unchanged_result, changed_result) = match decision {
            TagDecision::Cache => (CacheResult::Hit, CacheResult::Miss),
            TagDecision::Skip => (CacheResult::Skip, CacheResult::Skip),
        };
        let registry = q.target.registry.as_str();
        match self.head_upstream(q, unchanged_result).await {
            Ok(ManifestAnswer::Head {
                digest: Some(d),
                media_type,
                size,
                ..
            }) => {
                let unchanged = d.to_string() == entry.digest;
                self.metrics.revalidation(registry, !unchanged);
                if unchanged {
                    self.remember_tag(q, &d, &entry.media_type, entry.size);
                    return self.serve_entry(q, entry, unchanged_result).await;
                }
                tracing::info!(target = %q.target, reference = %q.reference, from = %entry.digest, to = %d, "tag moved upstream");
                if q.head {
                    if let Some(size) = size {
                        self.remember_tag(q, &d, &media_type, size);
                    }
                    return Ok(ManifestAnswer::Head {
                        digest: Some(d),
                        media_type,
                        size,
                        result: changed_result,
                    });
                }
                let by_digest = q.for_digest(&d);
                let (manifest, public) = self.fetch(&by_digest, Some(d.clone()), true, false).await?;
                if public {
                    self.remember_tag(q, &d, &manifest.media_type, manifest.bytes.len() as u64);
                }
                Ok(ManifestAnswer::Full {
                    manifest,
                    result: changed_result,
                })
            }
            // The origin's HEAD gave no digest: ask with a GET instead.
            Ok(answer) if q.head => Ok(answer),
            Ok(_) => {
                let (manifest, public) = self.fetch(q, None, true, true).await?;
                Ok(ManifestAnswer::Full {
                    manifest,
                    result: if public { changed_result } else { CacheResult::Skip },
                })
            }
            Err(e) if e.is_origin_failure() => {
                tracing::warn!(
                    target = %q.target,
                    reference = %q.reference,
                    digest = %entry.digest,
                    error = %e,
                    "origin failed; serving the cached manifest (stale-if-error)"
                );
                self.serve_entry(q, entry, CacheResult::Stale).await
            }
            Err(e) => Err(e),
        }
    }

    /// Answers from a tag entry: the stored manifest, or for a HEAD what the entry records.
    async fn serve_entry(
        &self,
        q: &ManifestQuery,
        entry: &TagEntry,
        result: CacheResult,
    ) -> Result<ManifestAnswer, Error> {
        let d: Digest = entry.digest.parse()?;
        if let Some(m) = self.store.manifest(&d)? {
            return Ok(ManifestAnswer::Full { manifest: m, result });
        }
        if q.head {
            return Ok(ManifestAnswer::Head {
                digest: Some(d),
                media_type: entry.media_type.clone(),
                size: Some(entry.size),
                result,
            });
        }
        let (manifest, _) = self.fetch(&q.for_digest(&d), Some(d), true, false).await?;
        Ok(ManifestAnswer::Full { manifest, result })
    }

    fn remember_tag(&self, q: &ManifestQuery, d: &Digest, media_type: &str, size: u64) {
        if let Reference::Tag(tag) = &q.reference {
            let entry = TagEntry {
                digest: d.to_string(),
                media_type: media_type.to_owned(),
                size,
                fetched_at: now_secs(),
            };
            if let Err(e) = self
                .store
                .put_tag(&q.target.registry, &q.target.repository, tag, &entry)
            {
                tracing::warn!(target = %q.target, %tag, error = %e, "could not store tag");
            }
        }
    }

    /// Fetches the manifest with the cache's own identity (coalesced with identical requests, and
    /// stored when `store`), falling back to the client's credentials when the origin refuses; such a
    /// private answer is never stored. Returns whether the manifest is public.
    async fn fetch(
        &self,
        q: &ManifestQuery,
        expected: Option<Digest>,
        store: bool,
        remember_tag: bool,
    ) -> Result<(StoredManifest, bool), Error> {
        let key = (q.target.to_string(), q.reference.to_string(), q.accept.key());
        let origin = self.origin.clone();
        let target = q.target.clone();
        let reference = q.reference.clone();
        let accept = q.accept.header_value();
        let cache_store = self.store.clone();
        let exp = expected.clone();
        let public = self
            .manifests
            .run(key, async move {
                let m = fetch_once(&origin, &target, &reference, &accept, exp.as_ref(), None).await?;
                if store {
                    if let Err(e) = cache_store.put_manifest(&m.digest, &m.media_type, &m.bytes) {
                        tracing::warn!(%target, digest = %m.digest, error = %e, "could not store manifest");
                    }
                    if let (true, Reference::Tag(tag)) = (remember_tag, &reference) {
                        let entry = TagEntry {
                            digest: m.digest.to_string(),
                            media_type: m.media_type.clone(),
                            size: m.bytes.len() as u64,
                            fetched_at: now_secs(),
                        };
                        if let Err(e) = cache_store.put_tag(&target.registry, &target.repository, tag, &entry) {
                            tracing::warn!(%target, %tag, error = %e, "could not store tag");
                        }
                    }
                }
                Ok(m)
            })
            .await;
        match public {
            Ok(m) => Ok((m, true)),
            Err(e) if e.wants_client_credentials() && q.client_auth.is_some() => {
                let accept = q.accept.header_value();
                let m = fetch_once(
                    &self.origin,
                    &q.target,
                    &q.reference,
                    &accept,
                    expected.as_ref(),
                    q.client_auth.clone(),
                )
                .await?;
                Ok((m, false))
            }
            Err(e) => Err(Error::Shared(e)),
        }
    }

    async fn head_upstream(&self, q: &ManifestQuery, public_result: CacheResult) -> Result<ManifestAnswer, Error> {
        let mut req = OriginRequest {
            target: &q.target,
            method: Method::HEAD,
            resource: Resource::Manifest,
            path: format!("manifests/{}", q.reference),
            accept: Some(q.accept.header_value()),
            range: None,
            client_auth: None,
        };
        let (resp, result) = match self.origin.send(&req).await {
            Ok(r) => (r, public_result),
            Err(e) if e.wants_client_credentials() && q.client_auth.is_some() => {
                req.client_auth = q.client_auth.clone();
                (self.origin.send(&req).await?, CacheResult::Skip)
            }
            Err(e) => return Err(e),
        };
        let h = resp.headers();
        let digest = h
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let size = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let media_type = media_type_of(h.get(CONTENT_TYPE), &[]);
        if let (Reference::Digest(want), Some(got)) = (&q.reference, &digest) {
            if want != got {
                return Err(Error::DigestMismatch {
                    origin: q.target.registry.to_string(),
                    what: format!("manifest {}", q.reference),
                    expected: want.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        Ok(ManifestAnswer::Head {
            digest,
            media_type,
            size,
            result,
        })
    }
}

/// One GET of a manifest, read whole (bounded) and verified.
async fn fetch_once(
    origin: &OriginClient,
    target: &Target,
    reference: &Reference,
    accept: &str,
    expected: Option<&Digest>,
    client_auth: Option<HeaderValue>,
) -> Result<StoredManifest, Error> {
    let req = OriginRequest {
        target,
        method: Method::GET,
        resource: Resource::Manifest,
        path: format!("manifests/{reference}"),
        accept: Some(accept.to_owned()),
        range: None,
        client_auth,
    };
    let resp = origin.send(&req).await?;
    let too_large = || Error::ManifestTooLarge {
        registry: target.registry.clone(),
        what: reference.to_string(),
        limit: MAX_MANIFEST_BYTES,
    };
    if resp.content_length().is_some_and(|l| l > MAX_MANIFEST_BYTES as u64) {
        return Err(too_large());
    }
    let content_type = resp.headers().get(CONTENT_TYPE).cloned();
    let header_digest: Option<Digest> = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Unreachable {
            registry: target.registry.clone(),
            reason: crate::upstream::client::describe(&e),
        })?;
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let bytes: Bytes = body.freeze();
    let mismatch = |expected: &Digest| Error::DigestMismatch {
        origin: target.registry.to_string(),
        what: format!("manifest {}/{reference}", target.repository),
        expected: expected.to_string(),
        actual: Digest::sha256_of(&bytes).to_string(),
    };
    // The digest we file it under: the one asked for, else the origin's, else our own sha256.
    let digest = match (expected, &header_digest) {
        (Some(e), _) => e.clone(),
        (None, Some(h)) => h.clone(),
        (None, None) => Digest::sha256_of(&bytes),
    };
    if !digest.matches(&bytes) {
        return Err(mismatch(&digest));
    }
    let media_type = media_type_of(content_type.as_ref(), &bytes);
    Ok(StoredManifest {
        digest,
        media_type,
        bytes,
    })
}

/// The manifest's media type: the origin's Content-Type, else the `mediaType` inside, else OCI.
fn media_type_of(content_type: Option<&HeaderValue>, body: &[u8]) -> String {
    let from_header = content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|m| valid_media_type(m) && m != "application/octet-stream" && m != "text/plain");
    if let Some(m) = from_header {
        return m;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.media_type)
        .filter(|m| valid_media_type(m))
        .unwrap_or_else(|| crate::oci::accept::OCI_MANIFEST.to_owned())
}
