//! Manifests: served from the store when policy allows, else fetched once (coalesced) from the origin,
//! verified against their digest and stored exactly as received with their media type. Tags are kept
//! per media type so a client is only ever handed a manifest type it accepts. Tags are revalidated
//! with a HEAD after their TTL, and served stale when the origin fails. Content fetched with a
//! client's own credentials is stored private: served only to clients the origin confirms.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method};

use super::{Cache, TagDecision};
use crate::error::{Error, Resource};
use crate::metrics::CacheResult;
use crate::oci::accept::is_index;
use crate::oci::{AcceptList, Digest, Reference, Tag, Target};
use crate::store::disk::{now_secs, valid_media_type};
use crate::store::{ContentKind, Store, StoredManifest, TagEntry};
use crate::upstream::{cache_then_client, Identity, OriginClient, OriginRequest};

/// The distribution registry refuses manifests above 4 MiB; so do we, to bound memory.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

pub struct ManifestQuery {
    pub target: Target,
    pub reference: Reference,
    pub accept: AcceptList,
    pub head: bool,
    /// The pulling client's `Authorization`, used only if the origin refuses the cache's own identity
    /// (and to confirm the client's access to private content).
    pub client_auth: Option<HeaderValue>,
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

    fn path(&self) -> String {
        format!("manifests/{}", self.reference)
    }
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

impl ManifestAnswer {
    pub fn result(&self) -> CacheResult {
        match self {
            ManifestAnswer::Full { result, .. } | ManifestAnswer::Head { result, .. } => *result,
        }
    }
}

/// What an origin HEAD said, and whether it was answered to the cache's own identity.
struct HeadInfo {
    digest: Option<Digest>,
    media_type: String,
    size: Option<u64>,
    public: bool,
}

impl HeadInfo {
    fn answer(self, result: CacheResult) -> ManifestAnswer {
        ManifestAnswer::Head { digest: self.digest, media_type: self.media_type, size: self.size, result }
    }
}

impl Cache {
    pub async fn manifest(&self, q: &ManifestQuery) -> Result<ManifestAnswer, Error> {
        if self.is_private_registry(q) {
            // Fetched with the operator's credentials: the client proves its own access first.
            self.check_access(&q.target, Resource::Manifest, q.path(), q.client_auth.as_ref(), None).await?;
        }
        let answer = match &q.reference {
            Reference::Digest(d) => self.by_digest(q, d).await?,
            Reference::Tag(tag) => self.by_tag(q, tag).await?,
        };
        self.metrics.cache_result(&self.origin.registries().label(&q.target.registry), "manifest", answer.result());
        Ok(answer)
    }

    fn is_private_registry(&self, q: &ManifestQuery) -> bool {
        self.policy.private_registries.contains(&q.target.registry)
    }

    async fn by_digest(&self, q: &ManifestQuery, d: &Digest) -> Result<ManifestAnswer, Error> {
        if let Some(m) = self.stored_manifest(d).await? {
            if !self.is_private_registry(q) && self.is_private(ContentKind::Manifest, d).await {
                let content = Some((ContentKind::Manifest, d));
                self.check_access(&q.target, Resource::Manifest, q.path(), q.client_auth.as_ref(), content).await?;
            }
            return Ok(ManifestAnswer::Full { manifest: m, result: CacheResult::Hit });
        }
        if q.head {
            return Ok(self.head_upstream(q, Identity::Cache).await?.answer(CacheResult::Skip));
        }
        let (manifest, _) = self.fetch(q, Some(d.clone()), false).await?;
        Ok(ManifestAnswer::Full { manifest, result: CacheResult::Miss })
    }

    /// A manifest by tag: fresh cached answers are served as they are; stale ones are revalidated with
    /// a HEAD (and fetched by digest only if the tag moved); when the origin fails, the last known
    /// answer is served anyway (stale-if-error), even for tags that are otherwise never cached.
    async fn by_tag(&self, q: &ManifestQuery, tag: &Tag) -> Result<ManifestAnswer, Error> {
        let decision = self.policy.decide(&q.target.registry, tag);
        if let Some(entry) = self.pick_entry(q, tag).await? {
            let identity = if entry.private {
                self.check_access(&q.target, Resource::Manifest, q.path(), q.client_auth.as_ref(), None).await?;
                Identity::Client(q.client_auth.clone())
            } else {
                Identity::Cache
            };
            if decision == TagDecision::Cache && self.policy.is_fresh(tag, entry.fetched_at, now_secs()) {
                return self.serve_entry(q, &entry, CacheResult::Hit).await;
            }
            return self.revalidate(q, &entry, decision, identity).await;
        }
        let result = match decision {
            TagDecision::Cache => CacheResult::Miss,
            TagDecision::Skip => CacheResult::Skip,
        };
        if q.head {
            let info = self.head_upstream(q, Identity::Cache).await?;
            if let (Some(d), Some(size)) = (&info.digest, info.size) {
                let private = !info.public || self.is_private_registry(q);
                self.remember_tag(q, d, &info.media_type, size, private).await;
            }
            return Ok(info.answer(result));
        }
        let (manifest, _) = self.fetch(q, None, true).await?;
        Ok(ManifestAnswer::Full { manifest, result })
    }

    /// The tag entry for the media types this client accepts; an index is preferred, as registries do.
    async fn pick_entry(&self, q: &ManifestQuery, tag: &Tag) -> Result<Option<TagEntry>, Error> {
        let entries = self.tag_entries(&q.target, tag).await?;
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
        identity: Identity,
    ) -> Result<ManifestAnswer, Error> {
        let (unchanged_result, changed_result) = match decision {
            TagDecision::Cache => (CacheResult::Hit, CacheResult::Miss),
            TagDecision::Skip => (CacheResult::Skip, CacheResult::Skip),
        };
        match self.head_upstream(q, identity).await {
            Ok(HeadInfo { digest: Some(d), media_type, size, public }) => {
                let private = !public || self.is_private_registry(q);
                let unchanged = d.to_string() == entry.digest;
                self.metrics.revalidation(&self.origin.registries().label(&q.target.registry), !unchanged);
                if unchanged {
                    self.remember_tag(q, &d, &entry.media_type, entry.size, private).await;
                    return self.serve_entry(q, entry, unchanged_result).await;
                }
                tracing::info!(target = %q.target, reference = %q.reference, from = %entry.digest, to = %d, "tag moved upstream");
                if q.head {
                    if let Some(size) = size {
                        self.remember_tag(q, &d, &media_type, size, private).await;
                    }
                    return Ok(ManifestAnswer::Head { digest: Some(d), media_type, size, result: changed_result });
                }
                let (manifest, fetched_public) = self.fetch(&q.for_digest(&d), Some(d.clone()), false).await?;
                let private = !fetched_public || self.is_private_registry(q);
                self.remember_tag(q, &d, &manifest.media_type, manifest.bytes.len() as u64, private).await;
                Ok(ManifestAnswer::Full { manifest, result: changed_result })
            }
            // The origin's HEAD gave no digest: ask with a GET instead.
            Ok(info) if q.head => Ok(info.answer(changed_result)),
            Ok(_) => {
                let (manifest, _) = self.fetch(q, None, true).await?;
                Ok(ManifestAnswer::Full { manifest, result: changed_result })
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
        if let Some(m) = self.stored_manifest(&d).await? {
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
        let (manifest, _) = self.fetch(&q.for_digest(&d), Some(d), false).await?;
        Ok(ManifestAnswer::Full { manifest, result })
    }

    async fn remember_tag(&self, q: &ManifestQuery, d: &Digest, media_type: &str, size: u64, private: bool) {
        if let Reference::Tag(tag) = &q.reference {
            let entry = TagEntry {
                digest: d.to_string(),
                media_type: media_type.to_owned(),
                size,
                fetched_at: now_secs(),
                private,
            };
            if let Err(e) = self.put_tag(&q.target, tag, &entry).await {
                tracing::warn!(target = %q.target, %tag, error = %e, "could not store tag");
            }
        }
    }

    /// Fetches the manifest with the cache's own identity (coalesced with identical requests) and
    /// stores it, falling back to the client's credentials when the origin refuses; such an answer is
    /// stored marked private. Returns the manifest and whether it is public.
    async fn fetch(
        &self,
        q: &ManifestQuery,
        expected: Option<Digest>,
        remember_tag: bool,
    ) -> Result<(StoredManifest, bool), Error> {
        let key = (q.target.to_string(), q.reference.to_string(), q.accept.key());
        let origin = self.origin.clone();
        let target = q.target.clone();
        let reference = q.reference.clone();
        let accept = q.accept.header_value();
        let store = self.store.clone();
        let exp = expected.clone();
        let private_registry = self.is_private_registry(q);
        let refresh = self.tag_refresh();
        let public = self
            .manifests
            .run(key, async move {
                let m = fetch_once(&origin, &target, &reference, &accept, exp.as_ref(), Identity::Cache).await?;
                keep(&*store, &target, &reference, &m, private_registry, remember_tag, refresh).await;
                Ok(m)
            })
            .await;
        let (m, public) = cache_then_client(public, q.client_auth.as_ref(), |identity| async move {
            let accept = q.accept.header_value();
            let m = fetch_once(&self.origin, &q.target, &q.reference, &accept, expected.as_ref(), identity).await?;
            keep(&*self.store, &q.target, &q.reference, &m, true, remember_tag, refresh).await;
            // The client just proved access to this manifest.
            let key = super::access::AccessKey::new(q.client_auth.as_ref(), &q.target, &q.path());
            self.access.grant(key);
            Ok(m)
        })
        .await?;
        Ok((m, public && !private_registry))
    }

    /// HEAD at the origin with `identity`, falling back to the client's credentials when the cache's
    /// own identity is refused.
    async fn head_upstream(&self, q: &ManifestQuery, identity: Identity) -> Result<HeadInfo, Error> {
        let as_cache = matches!(identity, Identity::Cache);
        let req = OriginRequest {
            target: &q.target,
            method: Method::HEAD,
            resource: Resource::Manifest,
            path: q.path(),
            accept: Some(q.accept.header_value()),
            range: None,
            identity,
        };
        let first = self.origin.send(&req).await;
        let (resp, public) = if as_cache {
            cache_then_client(first, q.client_auth.as_ref(), |identity| async move {
                self.origin.send(&OriginRequest { identity, ..req }).await
            })
            .await?
        } else {
            (first?, false)
        };
        let h = resp.headers();
        let digest: Option<Digest> =
            h.get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let size = h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
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
        Ok(HeadInfo { digest, media_type, size, public })
    }
}

/// Stores a fetched manifest (marked private or public, so it is never visible with the wrong
/// mark) and, for a tag, the tag entry. Runs inside the coalesced fetch, which outlives the request
/// that started it, so it holds the store itself rather than the `Cache`.
async fn keep(
    store: &dyn Store,
    target: &Target,
    reference: &Reference,
    m: &StoredManifest,
    private: bool,
    remember_tag: bool,
    refresh: Option<std::time::Duration>,
) {
    if let Err(e) = store.put_manifest(m, private).await {
        tracing::warn!(%target, digest = %m.digest, error = %e, "could not store manifest");
        return;
    }
    if let (true, Reference::Tag(tag)) = (remember_tag, reference) {
        let entry = TagEntry {
            digest: m.digest.to_string(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            fetched_at: now_secs(),
            private,
        };
        if let Err(e) = store.put_tag(&target.registry, &target.repository, tag, &entry, refresh).await {
            tracing::warn!(%target, %tag, error = %e, "could not store tag");
        }
    }
}

/// One GET of a manifest, read whole (bounded) and verified.
async fn fetch_once(
    origin: &OriginClient,
    target: &Target,
    reference: &Reference,
    accept: &str,
    expected: Option<&Digest>,
    identity: Identity,
) -> Result<StoredManifest, Error> {
    let req = OriginRequest {
        target,
        method: Method::GET,
        resource: Resource::Manifest,
        path: format!("manifests/{reference}"),
        accept: Some(accept.to_owned()),
        range: None,
        identity,
    };
    let resp = origin.send(&req).await?;
    let too_large = || Error::ManifestTooLarge {
        registry: target.registry.clone(),
        what: reference.to_string(),
        limit: MAX_MANIFEST_BYTES,
    };
    let content_type = resp.headers().get(CONTENT_TYPE).cloned();
    let header_digest: Option<Digest> =
        resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let bytes = read_bounded(target, resp, MAX_MANIFEST_BYTES, too_large).await?;
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
    Ok(StoredManifest { digest, media_type, bytes })
}

/// An origin's answer read whole, refused with `too_large()` past `limit` bytes (manifests and
/// referrers lists are held in memory, so they are bounded).
pub(crate) async fn read_bounded(
    target: &Target,
    resp: reqwest::Response,
    limit: usize,
    too_large: impl Fn() -> Error,
) -> Result<Bytes, Error> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Unreachable {
            registry: target.registry.clone(),
            reason: crate::upstream::describe(&e),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
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
