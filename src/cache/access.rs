//! Who may read cached private content. Content fetched with a client's own credentials, or from a
//! `--private-registry`, is served only to a client the origin confirms: a HEAD for that exact
//! repository and reference with the client's credentials. Confirmations are remembered per
//! (credential, registry/repository, reference) for `--auth-cache-ttl`, so a pull costs one small
//! request per object per TTL, not a download.

use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::oci::{Digest, Target};

/// Confirmations kept at most. Keys carry client-chosen repositories, references and credentials;
/// a confirmation forgotten early costs one HEAD to the origin, nothing more.
const MAX_GRANTS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessKey {
    /// SHA-256 of the client's `Authorization`, or empty for anonymous clients; never the secret.
    credential: String,
    target: String,
    path: String,
}

impl AccessKey {
    pub fn new(auth: Option<&HeaderValue>, target: &Target, path: &str) -> Self {
        let credential = auth.map(|a| Digest::sha256_of(a.as_bytes()).hex().to_owned()).unwrap_or_default();
        AccessKey { credential, target: target.to_string(), path: path.to_owned() }
    }
}

pub struct AccessCache {
    ttl: Duration,
    /// Confirmation -> until when it holds (tokio's clock, which tests move; moka's own expiry at the
    /// same TTL only gives the memory back).
    granted: moka::sync::Cache<AccessKey, Instant>,
}

impl AccessCache {
    pub fn new(ttl: Duration) -> Self {
        // moka refuses a zero time-to-live; with a zero TTL nothing is granted anyway.
        AccessCache { ttl, granted: crate::bounded::expiring(MAX_GRANTS, ttl.max(Duration::from_millis(1))) }
    }

    pub fn granted(&self, key: &AccessKey) -> bool {
        self.granted.get(key).is_some_and(|until| until > Instant::now())
    }

    pub fn grant(&self, key: AccessKey) {
        if self.ttl.is_zero() {
            return;
        }
        self.granted.insert(key, Instant::now() + self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{RegistryName, Repository};

    #[tokio::test(start_paused = true)]
    async fn grants_are_per_credential_and_expire() {
        let t =
            Target { registry: RegistryName::parse("r.test").unwrap(), repository: Repository::parse("a").unwrap() };
        let alice = HeaderValue::from_static("Basic YWxpY2U6cHc=");
        let cache = AccessCache::new(Duration::from_secs(60));
        let k = AccessKey::new(Some(&alice), &t, "blobs/x");
        cache.grant(k.clone());
        assert!(cache.granted(&k));
        assert!(!cache.granted(&AccessKey::new(None, &t, "blobs/x")));
        assert!(!cache.granted(&AccessKey::new(Some(&alice), &t, "blobs/y")));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!cache.granted(&k));
    }

    #[test]
    fn grants_for_invented_names_stay_within_their_bound() {
        let cache = AccessCache::new(Duration::from_secs(60));
        let alice = HeaderValue::from_static("Basic YWxpY2U6cHc=");
        let mut last = None;
        for i in 0..100_000 {
            let t = Target {
                registry: RegistryName::parse("r.test").unwrap(),
                repository: Repository::parse(&format!("invented/{i}")).unwrap(),
            };
            let k = AccessKey::new(Some(&alice), &t, "manifests/v1");
            cache.grant(k.clone());
            last = Some(k);
        }
        cache.granted.run_pending_tasks();
        assert!(cache.granted.entry_count() <= MAX_GRANTS, "{} grants", cache.granted.entry_count());
        assert!(cache.granted(&last.unwrap()), "the newest grant is kept");
    }
}
