//! Who may read cached private content. Content fetched with a client's own credentials, or from a
//! `--private-registry`, is served only to a client the origin confirms: a HEAD for that exact
//! repository and reference with the client's credentials. Confirmations are remembered per
//! (credential, registry/repository, reference) for `--auth-cache-ttl`, so a pull costs one small
//! request per object per TTL, not a download.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::oci::{Digest, Target};

/// Entries are pruned when the table grows past this.
const PRUNE_AT: usize = 50_000;

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
    granted: Mutex<HashMap<AccessKey, Instant>>,
}

impl AccessCache {
    pub fn new(ttl: Duration) -> Self {
        AccessCache { ttl, granted: Mutex::default() }
    }

    pub fn granted(&self, key: &AccessKey) -> bool {
        let map = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|until| *until > Instant::now())
    }

    pub fn grant(&self, key: AccessKey) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PRUNE_AT {
            map.retain(|_, until| *until > now);
        }
        map.insert(key, now + self.ttl);
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
}
