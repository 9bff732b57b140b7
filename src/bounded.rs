//! Tables keyed by what clients choose (repository names, registry names under a `*.domain` pattern,
//! endpoints, credentials) must not grow with what clients invent. Every such table is a moka cache
//! built here, with a size bound and an expiry.
//!
//! The eviction policy is LRU, not moka's default TinyLFU: TinyLFU may refuse to admit a new key while
//! the table is full of others, so a flood of invented names would stop a real client's new entry (a
//! token being fetched, a grant just confirmed) from being kept at all. With LRU a new entry is always
//! kept and the least recently used one goes.
//!
//! An entry costs about 700 bytes beyond its key and value (moka's bookkeeping, measured with 10,000
//! entries), so bounds are chosen for memory too: 10,000 entries is about 7 MiB.
//!
//! moka keeps its own clock, not tokio's: where a test moves tokio's paused clock, the table stores the
//! entry's own deadline (a `tokio::time::Instant`) and the caller checks it; moka's expiry then only
//! reclaims memory.

use std::hash::Hash;
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// At most `capacity` entries, each dropped `ttl` after it was written.
pub fn expiring<K, V>(capacity: u64, ttl: Duration) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder().max_capacity(capacity).eviction_policy(EvictionPolicy::lru()).time_to_live(ttl).build()
}

/// At most `capacity` entries, the least recently used dropped first; no expiry.
pub fn lru<K, V>(capacity: u64) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder().max_capacity(capacity).eviction_policy(EvictionPolicy::lru()).build()
}

/// At most `capacity` entries, each dropped once nobody has read or written it for `idle`.
pub fn idle_expiring<K, V>(capacity: u64, idle: Duration) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder().max_capacity(capacity).eviction_policy(EvictionPolicy::lru()).time_to_idle(idle).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_keys_stays_within_the_bound_and_new_keys_are_kept() {
        let t: Cache<u64, u64> = expiring(1_000, Duration::from_secs(60));
        for k in 0..100_000 {
            t.insert(k, k);
        }
        t.run_pending_tasks();
        assert!(t.entry_count() <= 1_000, "{} entries", t.entry_count());
        t.insert(1_000_000, 1);
        t.run_pending_tasks();
        assert_eq!(t.get(&1_000_000), Some(1), "LRU admits a new key even when full");
    }
}
