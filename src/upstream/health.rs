//! What ocicache remembers about origins being unwell, so an outage costs one timeout, not one per
//! request: a circuit breaker per endpoint (a failed endpoint is skipped for a backoff that doubles
//! while it keeps failing) and a hold per registry after a 429 (honouring `Retry-After`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::oci::RegistryName;

/// Consecutive failures double the backoff up to this multiple of the base.
const MAX_BACKOFF_FACTOR: u32 = 8;

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

pub struct OriginHealth {
    backoff: Duration,
    breakers: Mutex<HashMap<String, Breaker>>,
    holds: Mutex<HashMap<RegistryName, Instant>>,
}

impl OriginHealth {
    pub fn new(backoff: Duration) -> Self {
        OriginHealth { backoff, breakers: Mutex::default(), holds: Mutex::default() }
    }

    /// How long the endpoint's circuit stays open, if it is open now.
    pub fn open_for(&self, endpoint: &str) -> Option<Duration> {
        let breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let until = breakers.get(endpoint)?.open_until?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// Records a failure; returns how long the circuit is now open.
    pub fn failed(&self, endpoint: &str) -> Duration {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = breakers.entry(endpoint.to_owned()).or_default();
        b.failures = b.failures.saturating_add(1);
        let factor = 1u32 << (b.failures - 1).min(MAX_BACKOFF_FACTOR.trailing_zeros());
        let wait = self.backoff * factor;
        b.open_until = Some(Instant::now() + wait);
        wait
    }

    /// The endpoint answered: close its circuit. Returns whether it had been failing.
    pub fn succeeded(&self, endpoint: &str) -> bool {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.remove(endpoint).is_some()
    }

    /// After a 429: ask `registry` nothing until `wait` has passed.
    pub fn hold(&self, registry: &RegistryName, wait: Duration) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.insert(registry.clone(), Instant::now() + wait);
    }

    /// Time left on the registry's hold, if any.
    pub fn held_for(&self, registry: &RegistryName) -> Option<Duration> {
        let holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let until = *holds.get(registry)?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn circuit_opens_doubles_and_closes() {
        let h = OriginHealth::new(Duration::from_secs(10));
        assert!(h.open_for("e").is_none());
        assert_eq!(h.failed("e"), Duration::from_secs(10));
        assert!(h.open_for("e").is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(h.open_for("e").is_none(), "half-open after the backoff");
        assert_eq!(h.failed("e"), Duration::from_secs(20));
        for _ in 0..10 {
            h.failed("e");
        }
        assert_eq!(h.failed("e"), Duration::from_secs(80), "backoff is capped");
        assert!(h.succeeded("e"));
        assert!(h.open_for("e").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn registry_hold_expires() {
        let h = OriginHealth::new(Duration::from_secs(10));
        let r = RegistryName::parse("docker.io").unwrap();
        h.hold(&r, Duration::from_secs(30));
        assert!(h.held_for(&r).unwrap() <= Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(h.held_for(&r).is_none());
    }
}
