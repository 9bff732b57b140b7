//! The OCI 1.1 referrers API through the cache: `GET /v2/<name>/referrers/<digest>` lists the
//! signatures, SBOMs and attestations that point at a manifest. Admission controllers (Kyverno,
//! sigstore's policy-controller) and Flux ask it before a pod may start, so it must answer during an
//! outage too: each subject's list is kept and served for the tag TTL, revalidated after, and served
//! stale (`Warning: 110`) when the origin fails.
//!
//! The list is fetched whole (every `Link` page, bounded) and unfiltered, so one stored answer serves
//! every `artifactType` filter; the filter is applied here and announced with `OCI-Filters-Applied`.
//! Origins without the API (404, as distribution 2.x) are answered from the referrers tag schema: the
//! index a client pushed under the tag `<alg>-<hex>`, fetched through the ordinary manifest path (so it
//! is cached and verified like any manifest). No tag there means no referrers: an empty list.

use bytes::Bytes;
use http::header::{ACCEPT, LINK};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::manifests::{read_bounded, ManifestAnswer, ManifestQuery, MAX_MANIFEST_BYTES};
use super::Cache;
use crate::error::{Error, Resource};
use crate::metrics::CacheResult;
use crate::oci::accept::OCI_INDEX;
use crate::oci::{AcceptList, Digest, Reference, Tag, Target};
use crate::store::disk::now_secs;
use crate::upstream::{Identity, OriginRequest};

/// Pages followed per list: a subject with more referrers than this many pages hold is an attack
/// or a mistake, and the byte bound below applies anyway.
const MAX_PAGES: usize = 16;

pub struct ReferrersQuery {
    pub target: Target,
    pub subject: Digest,
    /// `?artifactType=`: only descriptors of this artifact type.
    pub artifact_type: Option<String>,
    pub client_auth: Option<HeaderValue>,
}

pub struct ReferrersAnswer {
    /// The image index to send, already filtered.
    pub index: Bytes,
    /// Whether `artifactType` filtering was applied (the `OCI-Filters-Applied` header).
    pub filtered: bool,
    pub result: CacheResult,
}

/// One subject's referrers as last fetched, stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredReferrers {
    /// Seconds since the Unix epoch when the origin last answered.
    fetched_at: u64,
    /// The descriptors, as the origin listed them (validated: each has a digest, media type, size).
    manifests: Vec<serde_json::Value>,
}

/// The part of an image index the referrers answer is made of.
#[derive(Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

/// A list as the origin gave it.
struct Listed {
    manifests: Vec<serde_json::Value>,
    /// Fetched with the cache's own identity: may be stored and served to every client.
    storable: bool,
    /// The tag-schema index was served stale by the manifest cache (the origin failed).
    stale: bool,
}

impl Cache {
    pub async fn referrers(&self, q: &ReferrersQuery) -> Result<ReferrersAnswer, Error> {
        let a = self.referrers_answer(q).await?;
        self.metrics.cache_result(&self.origin.registries().label(&q.target.registry), "referrers", a.result);
        Ok(a)
    }

    async fn referrers_answer(&self, q: &ReferrersQuery) -> Result<ReferrersAnswer, Error> {
        if self.policy.private_registries.contains(&q.target.registry) {
            // Listed with the operator's credentials: the client proves access to the subject first,
            // and nothing is stored (as for manifests of a private registry).
            let path = format!("manifests/{}", q.subject);
            self.check_access(&q.target, Resource::Manifest, path, q.client_auth.as_ref(), None).await?;
            let listed = self.fetch_referrers(q).await?;
            return Ok(answer(q, &listed.manifests, CacheResult::Skip));
        }
        let stored = self.stored_referrers(q).await;
        let ttl = self.policy.tag_ttl.as_secs();
        if let Some(s) = &stored {
            if ttl > 0 && now_secs().saturating_sub(s.fetched_at) < ttl {
                return Ok(answer(q, &s.manifests, CacheResult::Hit));
            }
        }
        match self.fetch_referrers(q).await {
            Ok(Listed { manifests, stale: true, .. }) => Ok(answer(q, &manifests, CacheResult::Stale)),
            Ok(Listed { manifests, storable: true, .. }) => {
                self.keep_referrers(q, &manifests).await;
                Ok(answer(q, &manifests, CacheResult::Miss))
            }
            Ok(Listed { manifests, .. }) => Ok(answer(q, &manifests, CacheResult::Skip)),
            Err(e) if e.is_origin_failure() => match stored {
                Some(s) => {
                    tracing::warn!(target = %q.target, subject = %q.subject, error = %e, "origin failed; serving the cached referrers (stale-if-error)");
                    Ok(answer(q, &s.manifests, CacheResult::Stale))
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The origin's referrers API, every page; on 404 the referrers tag schema.
    async fn fetch_referrers(&self, q: &ReferrersQuery) -> Result<Listed, Error> {
        let mut identity = Identity::Cache;
        let mut path = format!("referrers/{}", q.subject);
        let mut manifests = Vec::new();
        let mut bytes = 0usize;
        for page in 0.. {
            if page == MAX_PAGES {
                tracing::warn!(target = %q.target, subject = %q.subject, pages = MAX_PAGES, "referrers list has more pages than are followed; answering with the first ones");
                break;
            }
            let mut req = OriginRequest {
                target: &q.target,
                method: Method::GET,
                resource: Resource::Manifest,
                path: path.clone(),
                accept: Some(OCI_INDEX.to_owned()),
                range: None,
                identity: identity.clone(),
            };
            let resp = match self.origin.send(&req).await {
                Ok(r) => r,
                Err(e) if not_found(&e) && page == 0 => return self.listed_by_tag_schema(q).await,
                // Not `cache_then_client`: here a 404 means the origin has no referrers API (answered
                // from the tag schema), not a repository hidden from the cache's identity.
                Err(e)
                    if page == 0 && matches!(identity, Identity::Cache) && refused(&e) && q.client_auth.is_some() =>
                {
                    identity = Identity::Client(q.client_auth.clone());
                    req.identity = identity.clone();
                    match self.origin.send(&req).await {
                        Ok(r) => r,
                        Err(e) if not_found(&e) => return self.listed_by_tag_schema(q).await,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let next = next_page(resp.headers(), &q.subject);
            let too_large = || Error::ManifestTooLarge {
                registry: q.target.registry.clone(),
                what: format!("referrers list of {}", q.subject),
                limit: MAX_MANIFEST_BYTES,
            };
            let body = read_bounded(&q.target, resp, MAX_MANIFEST_BYTES.saturating_sub(bytes), too_large).await?;
            bytes += body.len();
            let doc: IndexDoc = serde_json::from_slice(&body).map_err(|e| Error::BadUpstreamBody {
                origin: q.target.registry.to_string(),
                what: format!("referrers of {}", q.subject),
                detail: format!("not an image index: {e}"),
            })?;
            manifests.extend(doc.manifests.into_iter().filter(valid_descriptor));
            match next {
                Some(p) => path = p,
                None => break,
            }
        }
        Ok(Listed { manifests, storable: matches!(identity, Identity::Cache), stale: false })
    }

    /// The referrers tag schema: the index under the tag `<alg>-<hex>`, through the manifest cache.
    async fn listed_by_tag_schema(&self, q: &ReferrersQuery) -> Result<Listed, Error> {
        let tag = Tag::parse(&format!("{}-{}", q.subject.algorithm().as_str(), q.subject.hex()))?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let mq = ManifestQuery {
            target: q.target.clone(),
            reference: Reference::Tag(tag),
            accept: AcceptList::from_headers(&headers),
            head: false,
            client_auth: q.client_auth.clone(),
        };
        match self.manifest(&mq).await {
            Ok(ManifestAnswer::Full { manifest, result }) => {
                let doc: IndexDoc = serde_json::from_slice(&manifest.bytes).unwrap_or(IndexDoc { manifests: vec![] });
                Ok(Listed {
                    manifests: doc.manifests.into_iter().filter(valid_descriptor).collect(),
                    storable: result != CacheResult::Skip && !manifest_private(self, &manifest.digest).await,
                    stale: result == CacheResult::Stale,
                })
            }
            Ok(ManifestAnswer::Head { .. }) => Ok(Listed { manifests: Vec::new(), storable: false, stale: false }),
            // No tag: nothing refers to the subject (yet).
            Err(e) if not_found(&e) => Ok(Listed { manifests: Vec::new(), storable: true, stale: false }),
            Err(e) => Err(e),
        }
    }

    async fn stored_referrers(&self, q: &ReferrersQuery) -> Option<StoredReferrers> {
        let raw = self.store.referrers(&q.target.registry, &q.target.repository, &q.subject).await.ok()??;
        serde_json::from_slice(&raw).ok()
    }

    async fn keep_referrers(&self, q: &ReferrersQuery, manifests: &[serde_json::Value]) {
        let stored = StoredReferrers { fetched_at: now_secs(), manifests: manifests.to_vec() };
        let Ok(json) = serde_json::to_vec(&stored) else { return };
        let written = self.store.put_referrers(&q.target.registry, &q.target.repository, &q.subject, json).await;
        if let Err(e) = written {
            tracing::warn!(target = %q.target, subject = %q.subject, error = %e, "could not store referrers");
        }
    }
}

/// The image index sent to the client, filtered by `artifactType` when asked.
fn answer(q: &ReferrersQuery, manifests: &[serde_json::Value], result: CacheResult) -> ReferrersAnswer {
    let selected: Vec<&serde_json::Value> = manifests
        .iter()
        .filter(|d| match &q.artifact_type {
            Some(want) => d.get("artifactType").and_then(|a| a.as_str()) == Some(want.as_str()),
            None => true,
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": selected,
    });
    ReferrersAnswer {
        index: Bytes::from(serde_json::to_vec(&index).unwrap_or_default()),
        filtered: q.artifact_type.is_some(),
        result,
    }
}

/// A descriptor worth listing: a valid digest, a media type and a size.
fn valid_descriptor(d: &serde_json::Value) -> bool {
    d.get("digest").and_then(|v| v.as_str()).is_some_and(|s| s.parse::<Digest>().is_ok())
        && d.get("mediaType").and_then(|v| v.as_str()).is_some()
        && d.get("size").and_then(|v| v.as_u64()).is_some()
}

/// An index fetched with a client's own credentials is private: listed for that client, not stored.
async fn manifest_private(cache: &Cache, d: &Digest) -> bool {
    cache.is_private(crate::store::ContentKind::Manifest, d).await
}

fn not_found(e: &Error) -> bool {
    matches!(e.inner(), Error::Upstream(u) if u.status == StatusCode::NOT_FOUND)
}

fn refused(e: &Error) -> bool {
    matches!(e.inner(), Error::Upstream(u) if matches!(u.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
}

/// The next page from a `Link: </v2/<name>/referrers/<digest>?n=..&last=..>; rel="next"` header,
/// as a path below the repository. Only the query is taken from the link: the page must be of the
/// same subject in the same repository, wherever the link points.
fn next_page(headers: &HeaderMap, subject: &Digest) -> Option<String> {
    let link = headers.get(LINK)?.to_str().ok()?;
    let next = link.split(',').find(|l| l.contains("rel=\"next\"") || l.contains("rel=next"))?;
    let target = next.trim().strip_prefix('<')?.split_once('>')?.0;
    let query = target.split_once('?').map(|(_, q)| q).filter(|q| !q.is_empty())?;
    // Re-encode the pairs, so nothing but a query can follow the path.
    let pairs = url::form_urlencoded::parse(query.as_bytes());
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    Some(format!("referrers/{subject}?{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_keeps_only_the_query() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(LINK, HeaderValue::from_static("</v2/x/referrers/sha256:aa?n=2&last=b>; rel=\"next\""));
        assert_eq!(next_page(&h, &d).unwrap(), format!("referrers/{d}?n=2&last=b"));
        h.insert(LINK, HeaderValue::from_static("<https://evil.test/other/path?last=..%2F..>; rel=\"next\""));
        assert_eq!(next_page(&h, &d).unwrap(), format!("referrers/{d}?last=..%2F.."));
        h.insert(LINK, HeaderValue::from_static("</v2/x/referrers/sha256:aa>; rel=\"prev\""));
        assert!(next_page(&h, &d).is_none());
    }

    #[test]
    fn filter_by_artifact_type() {
        let t = Target {
            registry: crate::oci::RegistryName::parse("r.test").unwrap(),
            repository: crate::oci::Repository::parse("a").unwrap(),
        };
        let d = |n: u8, at: &str| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", hex::encode([n; 32])), "size": 10, "artifactType": at})
        };
        let list = vec![d(1, "sig"), d(2, "sbom"), d(3, "sig")];
        assert!(list.iter().all(valid_descriptor));
        assert!(!valid_descriptor(&serde_json::json!({"digest": "nope", "mediaType": "x", "size": 1})));
        let mut q = ReferrersQuery {
            target: t,
            subject: format!("sha256:{}", "b".repeat(64)).parse().unwrap(),
            artifact_type: Some("sig".into()),
            client_auth: None,
        };
        let a = answer(&q, &list, CacheResult::Hit);
        let v: serde_json::Value = serde_json::from_slice(&a.index).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert!(a.filtered);
        q.artifact_type = None;
        let a = answer(&q, &list, CacheResult::Hit);
        let v: serde_json::Value = serde_json::from_slice(&a.index).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 3);
        assert!(!a.filtered);
    }
}
