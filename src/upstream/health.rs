//! What ocicache remembers about origin endpoints being unwell, so an outage costs one timeout, not
//! one per request — without ever keeping a registry refused after its origin is back.
//!
//! Each endpoint has a circuit breaker. A failure opens it: the endpoint is skipped for a backoff that
//! doubles while probes keep failing (up to 8x), so requests go to the registry's healthy endpoints
//! first. Once the backoff has passed, one request at a time is let through as a probe (half-open);
//! its success closes the circuit. When every endpoint of a registry is open, the backoff no longer
//! applies — a registry is never left with nothing to try: one probe at a time goes through, at most
//! every [`LAST_RESORT_SPACING`], so a recovered origin is used again within about that long, while a
//! dead one still sees a handful of dials per second at most, not one per request.
//!
//! Only a probe's failure doubles the backoff: requests that were already under way when the circuit
//! opened (30 cold blobs after a restart) count as one failure, not thirty.
//!
//! After a 429 an endpoint is held (not asked) until its `Retry-After` has passed.
//!
//! Both tables are keyed by endpoint URL, which for wildcard-allowed registries (`*.azurecr.io`) a
//! client can invent: they are bounded caches that forget idle entries (a forgotten breaker is a closed
//! one, which costs at most one more attempt).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failed probes double the backoff up to this multiple of the base.
const MAX_BACKOFF_FACTOR: u32 = 8;

/// When every endpoint of a registry is open, probes go through at most this often (per endpoint).
/// Short, because this is also how long a recovered origin may still be refused.
pub const LAST_RESORT_SPACING: Duration = Duration::from_millis(500);

/// Most endpoints remembered (breakers, and separately holds). Real deployments have a few dozen
/// endpoints; the rest are invented under `*.domain` patterns. Each entry costs about 700 bytes of
/// moka bookkeeping besides the breaker, so 10,000 kept some 20 MiB once a flood filled them.
const MAX_ENDPOINTS: u64 = 1_000;

/// Characters of the last error kept for refusals (errors quote URLs and OS messages).
const MAX_REASON: usize = 300;

/// An endpoint not asked about for this long is forgotten.
const IDLE: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Breaker {
    /// Failed probes in a row since the circuit opened (1 = just opened).
    failures: u32,
    /// Until then, the endpoint is skipped while other endpoints of the registry may answer.
    open_until: Instant,
    /// What the last failure was, and when: the fresh reason given to requests that are refused.
    last_error: String,
    failed_at: Instant,
    /// The probe in flight (its id and start), if any: other requests do not wait for it.
    probe: Option<(u64, Instant)>,
    /// When the endpoint was last tried (probe started or failure seen): spaces last-resort probes.
    last_try: Instant,
}

/// Whether a request may try an endpoint now.
pub enum Admission {
    /// The circuit is closed: go ahead.
    Closed,
    /// The circuit is open and this request is its one probe; dropping the guard (the request was
    /// cancelled) frees the slot without counting a result.
    Probe(ProbeGuard),
    /// Not now; why, for the client.
    Skip(Refusal),
}

/// Why an endpoint was not tried, as fresh as the breaker knows.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The circuit is open (the last failure, how long ago, whether a probe is running now).
    Open { last_error: String, ago: Duration, probing: bool },
    /// The endpoint answered 429; it is not asked again before this much time has passed.
    Held(Duration),
}

impl Refusal {
    /// A sentence for the client's error message.
    pub fn describe(&self, endpoint: &str) -> String {
        match self {
            Refusal::Open { last_error, ago, probing } => {
                let ago = ago.as_secs_f64();
                let next = if *probing { "it is being probed right now" } else { "it will be probed again shortly" };
                format!("endpoint {endpoint} failed {ago:.1}s ago ({last_error}); {next}")
            }
            Refusal::Held(wait) => {
                format!("endpoint {endpoint} is rate-limiting; {}s left of its Retry-After", ceil_secs(*wait))
            }
        }
    }
}

/// The probe slot of one endpoint, held while the probe runs.
pub struct ProbeGuard {
    breaker: Arc<Mutex<Breaker>>,
    id: u64,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        let mut b = lock(&self.breaker);
        if b.probe.is_some_and(|(id, _)| id == self.id) {
            b.probe = None;
        }
    }
}

pub struct OriginHealth {
    backoff: Duration,
    spacing: Duration,
    /// A probe running longer than this is taken as abandoned (belt and braces: the guard frees the
    /// slot when a probe is dropped, and every probe is bounded by the client's timeouts).
    probe_timeout: Duration,
    breakers: moka::sync::Cache<String, Arc<Mutex<Breaker>>>,
    holds: moka::sync::Cache<String, Instant>,
    probe_ids: AtomicU64,
}

fn lock(b: &Mutex<Breaker>) -> std::sync::MutexGuard<'_, Breaker> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whole seconds, rounded up (a `Retry-After` of 0 would invite an immediate retry).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn bounded<V: Clone + Send + Sync + 'static>() -> moka::sync::Cache<String, V> {
    moka::sync::Cache::builder().max_capacity(MAX_ENDPOINTS).time_to_idle(IDLE).build()
}

impl OriginHealth {
    /// `backoff`: how long a failed endpoint is skipped at first; `probe_timeout`: the longest a probe
    /// can take (connect and first-byte timeouts of the requests it makes).
    pub fn new(backoff: Duration, probe_timeout: Duration) -> Self {
        OriginHealth {
            backoff,
            spacing: LAST_RESORT_SPACING.min(backoff),
            probe_timeout,
            breakers: bounded(),
            holds: bounded(),
            probe_ids: AtomicU64::new(0),
        }
    }

    /// Normal admission: closed, or open with its backoff passed and no probe running (half-open).
    pub fn admit(&self, endpoint: &str) -> Admission {
        if let Some(wait) = self.held_for(endpoint) {
            return Admission::Skip(Refusal::Held(wait));
        }
        let Some(breaker) = self.breakers.get(endpoint) else { return Admission::Closed };
        let now = Instant::now();
        let mut b = lock(&breaker);
        if now >= b.open_until && !self.probing(&b, now) {
            return self.start_probe(&breaker, &mut b, now);
        }
        Admission::Skip(self.refusal(&b, now))
    }

    /// Admission when no other endpoint of the registry can be tried: the backoff is ignored, but
    /// probes still go one at a time and at most every `LAST_RESORT_SPACING`.
    pub fn admit_last_resort(&self, endpoint: &str) -> Admission {
        if let Some(wait) = self.held_for(endpoint) {
            return Admission::Skip(Refusal::Held(wait));
        }
        let Some(breaker) = self.breakers.get(endpoint) else { return Admission::Closed };
        let now = Instant::now();
        let mut b = lock(&breaker);
        if !self.probing(&b, now) && now.duration_since(b.last_try) >= self.spacing {
            return self.start_probe(&breaker, &mut b, now);
        }
        Admission::Skip(self.refusal(&b, now))
    }

    fn probing(&self, b: &Breaker, now: Instant) -> bool {
        b.probe.is_some_and(|(_, since)| now.duration_since(since) < self.probe_timeout)
    }

    fn start_probe(&self, breaker: &Arc<Mutex<Breaker>>, b: &mut Breaker, now: Instant) -> Admission {
        let id = self.probe_ids.fetch_add(1, Ordering::Relaxed);
        b.probe = Some((id, now));
        b.last_try = now;
        Admission::Probe(ProbeGuard { breaker: breaker.clone(), id })
    }

    fn refusal(&self, b: &Breaker, now: Instant) -> Refusal {
        Refusal::Open {
            last_error: b.last_error.clone(),
            ago: now.duration_since(b.failed_at),
            probing: self.probing(b, now),
        }
    }

    /// Records a failed attempt made under `admission`. Returns how long the circuit is now open when
    /// this failure opened it or made it longer; `None` when another request had already opened it.
    pub fn failed(&self, endpoint: &str, admission: &Admission, error: &str) -> Option<Duration> {
        let now = Instant::now();
        let breaker = self.breakers.get_with(endpoint.to_owned(), || {
            Arc::new(Mutex::new(Breaker {
                failures: 0,
                open_until: now,
                last_error: String::new(),
                failed_at: now,
                probe: None,
                last_try: now,
            }))
        });
        let mut b = lock(&breaker);
        b.last_error = error.chars().take(MAX_REASON).collect();
        b.failed_at = now;
        b.last_try = now;
        // A request admitted while the circuit was closed, finishing after another one opened it, is
        // the same outage: it does not double the backoff.
        let counts = matches!(admission, Admission::Probe(_)) || b.failures == 0;
        if !counts {
            return None;
        }
        b.failures = b.failures.saturating_add(1);
        let factor = 1u32 << (b.failures - 1).min(MAX_BACKOFF_FACTOR.trailing_zeros());
        let wait = self.backoff * factor;
        b.open_until = now + wait;
        Some(wait)
    }

    /// The endpoint answered: close its circuit. Returns whether it had been open.
    pub fn succeeded(&self, endpoint: &str) -> bool {
        self.breakers.remove(endpoint).is_some()
    }

    /// After a 429: ask `endpoint` nothing until `wait` has passed.
    pub fn hold(&self, endpoint: &str, wait: Duration) {
        self.holds.insert(endpoint.to_owned(), Instant::now() + wait);
    }

    /// Time left on the endpoint's hold, if any.
    pub fn held_for(&self, endpoint: &str) -> Option<Duration> {
        let until = self.holds.get(endpoint)?;
        let left = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        if left.is_none() {
            self.holds.invalidate(endpoint);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(30);

    fn health() -> OriginHealth {
        OriginHealth::new(BASE, Duration::from_secs(35))
    }

    /// Tries `e` the way `OriginClient::send` does for a single-endpoint registry; `up` says whether
    /// the origin answers. Returns whether the request reached the origin.
    fn request(h: &OriginHealth, e: &str, up: bool) -> bool {
        let admission = match h.admit(e) {
            Admission::Skip(_) => h.admit_last_resort(e),
            a => a,
        };
        if matches!(admission, Admission::Skip(_)) {
            return false;
        }
        if up {
            h.succeeded(e);
        } else {
            h.failed(e, &admission, "connection refused");
        }
        true
    }

    #[tokio::test(start_paused = true)]
    async fn circuit_opens_doubles_on_failed_probes_and_closes_on_success() {
        let h = health();
        assert!(matches!(h.admit("e"), Admission::Closed));
        assert_eq!(h.failed("e", &Admission::Closed, "refused"), Some(BASE));
        assert!(matches!(h.admit("e"), Admission::Skip(Refusal::Open { probing: false, .. })));
        tokio::time::advance(BASE + Duration::from_secs(1)).await;
        let probe = h.admit("e");
        assert!(matches!(probe, Admission::Probe(_)), "half-open after the backoff");
        assert!(matches!(h.admit("e"), Admission::Skip(Refusal::Open { probing: true, .. })), "one probe at a time");
        assert_eq!(h.failed("e", &probe, "refused"), Some(BASE * 2));
        drop(probe);
        for _ in 0..10 {
            tokio::time::advance(BASE * 9).await;
            let probe = h.admit("e");
            h.failed("e", &probe, "refused");
        }
        tokio::time::advance(BASE * 9).await;
        let probe = h.admit("e");
        assert_eq!(h.failed("e", &probe, "refused"), Some(BASE * 8), "backoff is capped");
        drop(probe);
        assert!(h.succeeded("e"));
        assert!(matches!(h.admit("e"), Admission::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_already_under_way_when_the_circuit_opened_count_as_one_failure() {
        // 30 cold blobs asked for at once after a restart, the origin down: all were admitted while
        // the circuit was closed, all fail. Before, each doubled the backoff (to 8x30s).
        let h = health();
        let admitted: Vec<Admission> = (0..30).map(|_| h.admit("e")).collect();
        assert!(admitted.iter().all(|a| matches!(a, Admission::Closed)));
        let opened: Vec<_> = admitted.iter().map(|a| h.failed("e", a, "refused")).collect();
        assert_eq!(opened[0], Some(BASE));
        assert!(opened[1..].iter().all(Option::is_none), "{opened:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_only_endpoint_down_for_45s_of_requests_is_served_within_a_second_of_coming_back() {
        let h = health();
        let mut dials = 0;
        // A request every 100 ms for 45 s while the origin is down.
        for _ in 0..450 {
            dials += usize::from(request(&h, "e", false));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!(dials <= 100, "a dead origin was dialled {dials} times in 45 s");
        // Back: a request arriving at once, and one every 100 ms after, is served within a second.
        let back = Instant::now();
        while !request(&h, "e", true) {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!(back.elapsed() <= Duration::from_secs(1), "served {:?} after the origin came back", back.elapsed());
        assert!(matches!(h.admit("e"), Admission::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn while_a_probe_runs_other_requests_fail_at_once_with_its_fresh_reason() {
        let h = health();
        h.failed("e", &Admission::Closed, "first failure");
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = h.admit_last_resort("e");
        assert!(matches!(probe, Admission::Probe(_)));
        h.failed("e", &probe, "second failure");
        tokio::time::advance(Duration::from_secs(1)).await;
        let _probe = h.admit_last_resort("e");
        match h.admit_last_resort("e") {
            Admission::Skip(r @ Refusal::Open { probing: true, .. }) => {
                let text = r.describe("http://o/");
                assert!(text.contains("second failure") && text.contains("1.0s ago"), "{text}");
            }
            _ => panic!("a second probe while one runs"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_the_slot_and_a_stuck_one_expires() {
        let h = health();
        h.failed("e", &Admission::Closed, "refused");
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = h.admit_last_resort("e");
        assert!(matches!(probe, Admission::Probe(_)));
        drop(probe); // the client went away mid-probe
        tokio::time::advance(LAST_RESORT_SPACING).await;
        let leaked = h.admit_last_resort("e");
        assert!(matches!(leaked, Admission::Probe(_)));

        // A probe that is never finished nor dropped (leaked) stops blocking after the probe timeout.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(h.admit_last_resort("e"), Admission::Skip(_)));
        std::mem::forget(leaked);
        tokio::time::advance(Duration::from_secs(34)).await;
        assert!(matches!(h.admit_last_resort("e"), Admission::Probe(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn hold_counts_down_and_expires() {
        let h = health();
        h.hold("e", Duration::from_secs(30));
        let Admission::Skip(Refusal::Held(first)) = h.admit("e") else { panic!("not held") };
        assert_eq!(ceil_secs(first), 30);
        tokio::time::advance(Duration::from_millis(10_500)).await;
        let Admission::Skip(Refusal::Held(left)) = h.admit_last_resort("e") else { panic!("not held") };
        assert_eq!(ceil_secs(left), 20);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(h.held_for("e").is_none());
        assert!(matches!(h.admit("e"), Admission::Closed));
    }

    #[test]
    fn invented_endpoints_do_not_grow_the_tables_past_their_bound() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _ctx = rt.enter();
        let h = health();
        for i in 0..100_000 {
            let e = format!("https://r{i}.azurecr.io/");
            h.failed(&e, &Admission::Closed, "refused");
            h.hold(&e, Duration::from_secs(60));
        }
        h.breakers.run_pending_tasks();
        h.holds.run_pending_tasks();
        assert!(h.breakers.entry_count() <= MAX_ENDPOINTS, "{}", h.breakers.entry_count());
        assert!(h.holds.entry_count() <= MAX_ENDPOINTS, "{}", h.holds.entry_count());
    }
}
