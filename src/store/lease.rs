//! Cluster-wide single flight: which replica downloads a blob that none of the replicas sharing a
//! bucket has yet. The replica that starts a fill writes a small lease object for the blob
//! (`layout::lease`) only if none exists (`PutMode::Create`, S3's `If-None-Match: *`), so exactly one
//! replica wins; the others read the lease and stream the blob from the winner's running download
//! (`cache::peer`) instead of asking the origin again.
//!
//! A lease says who fills (the owner's `--advertise-url`), until when the claim holds, and whether
//! the content is private. The owner renews it every third of its lifetime while its download makes
//! progress and deletes it once the blob is committed (or the download failed). A lease nobody
//! renews — its owner died, or its download stopped moving — expires, and the next replica that
//! needs the blob takes it over with a conditional update (`If-Match` on the ETag it read), so two
//! replicas cannot both take over the same stale lease. A replica that cannot read the blob from
//! the owner (unreachable, silent, broke off) takes its lease over the same way even while it is
//! live (`take_over`), so that the others falling back with it read from the new owner instead of
//! each asking the origin.
//!
//! Expiry is wall-clock time compared across replicas: clocks that disagree by more than a few
//! seconds shorten or lengthen a lease by as much (the TTL leaves room for that; NTP does the rest).
//! Anyone with write access to the bucket can write a lease; a lease only ever makes a replica ask
//! another one first, and every byte is verified against the digest wherever it came from.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

/// How long a lease holds without renewal. Long enough that a renewal every third of it survives
/// one slow or failed bucket write (and clocks a few seconds apart); short enough that a replica
/// that died mid-download makes the others wait at most this long before one of them takes over —
/// and they only wait when the dead owner's address still accepts connections: a refused
/// connection sends them to the origin at once.
const DEFAULT_TTL: Duration = Duration::from_secs(20);

/// Attempts at claiming one blob while other replicas create, take over and delete its lease at
/// the same moment; after that the fill goes ahead without a lease (at worst one more download).
const CLAIM_ATTEMPTS: usize = 4;

/// The lease lifetime: [`DEFAULT_TTL`], or `OCICACHE_LEASE_TTL` (whole seconds, at least 1) — not
/// a setting: the tests shorten it to see expiry and stalls in seconds rather than tens of seconds.
pub fn ttl() -> Duration {
    static TTL: OnceLock<Duration> = OnceLock::new();
    *TTL.get_or_init(|| {
        std::env::var("OCICACHE_LEASE_TTL")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s >= 1)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TTL)
    })
}

/// The lease object, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The owner's `--advertise-url`: where the others read the running download.
    pub owner: String,
    /// Milliseconds since the Unix epoch until which the claim holds.
    pub expires_unix_ms: u64,
    /// The content may only be served after the origin confirmed the client (`Store::is_private`).
    pub private: bool,
}

impl LeaseRecord {
    fn new(owner: &str, private: bool) -> Self {
        LeaseRecord { owner: owner.to_owned(), expires_unix_ms: unix_ms(SystemTime::now() + ttl()), private }
    }

    fn live(&self, now: SystemTime) -> bool {
        self.expires_unix_ms > unix_ms(now)
    }

    fn payload(&self) -> PutPayload {
        PutPayload::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Who fills a blob missing from the store.
#[derive(Debug)]
pub enum FillClaim {
    /// This replica: it holds the lease until the guard is released.
    Won(LeaseGuard),
    /// Another replica, reachable at `url`, is filling it now; `private` as its lease says.
    HeldBy { url: String, private: bool },
    /// No coordination: a store no other replica shares, one without create-if-absent writes, a
    /// lease this replica already holds (another of its own downloads), or a claim that kept losing
    /// races. Fill from the origin as usual.
    Local,
}

fn conditional_unsupported(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotImplemented | object_store::Error::NotSupported { .. })
}

/// Claims the fill whose lease lives at `key` for `owner` (see the module documentation).
pub(crate) async fn claim(store: Arc<dyn ObjectStore>, key: Path, owner: &str, private: bool) -> io::Result<FillClaim> {
    for _ in 0..CLAIM_ATTEMPTS {
        let record = LeaseRecord::new(owner, private);
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        match store.put_opts(&key, record.payload(), create).await {
            Ok(put) => return Ok(FillClaim::Won(LeaseGuard::start(store, key, record, put.e_tag, false))),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
            Err(e) if conditional_unsupported(&e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(error = %e, "object storage cannot create objects only if absent: replicas fill blobs without leases (each may ask the origin)");
                });
                return Ok(FillClaim::Local);
            }
            Err(e) => return Err(super::bucket::err(e)),
        }
        let got = match store.get(&key).await {
            Ok(got) => got,
            // Deleted since (its fill committed or failed): try to create it again.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(super::bucket::err(e)),
        };
        let e_tag = got.meta.e_tag.clone();
        let held: Option<LeaseRecord> = match got.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(super::bucket::err(e)),
        };
        match &held {
            Some(h) if h.live(SystemTime::now()) && h.owner == owner => return Ok(FillClaim::Local),
            Some(h) if h.live(SystemTime::now()) => {
                return Ok(FillClaim::HeldBy { url: h.owner.clone(), private: h.private })
            }
            // Expired, or not a lease at all: take it over, unless someone else changes it first.
            _ => {}
        }
        let record = LeaseRecord::new(owner, private);
        let update = PutOptions { mode: PutMode::Update(UpdateVersion { e_tag, version: None }), ..Default::default() };
        match store.put_opts(&key, record.payload(), update).await {
            Ok(put) => {
                let stale = held.map(|h| h.owner).unwrap_or_default();
                tracing::info!(key = %key, stale_owner = %stale, "took over an expired fill lease");
                return Ok(FillClaim::Won(LeaseGuard::start(store, key, record, put.e_tag, true)));
            }
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => continue,
            // A store without conditional updates (a shared directory): remove the stale lease and
            // race for a fresh one with create-if-absent.
            Err(e) if conditional_unsupported(&e) => match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(super::bucket::err(e)),
            },
            Err(e) => return Err(super::bucket::err(e)),
        }
    }
    tracing::info!(key = %key, "fill lease still contended after {CLAIM_ATTEMPTS} attempts; filling without one");
    Ok(FillClaim::Local)
}

/// Attempts at taking over a failed owner's lease: one, and one more after another replica changed
/// it between our read and our write (then it names whoever won, and we read from them).
const TAKEOVER_ATTEMPTS: usize = 2;

/// Takes over the lease at `key` from `failed`, the owner this replica could not read the blob
/// from (unreachable, silent, broke off), even while the lease is live: every replica that falls
/// back at that moment would otherwise ask the origin itself, and every new reader would try the
/// dead address again until the lease expires. The update is conditional on the ETag of the version
/// read here, so of the replicas falling back together exactly one wins; the others get `HeldBy`
/// the winner. A lease naming a different live owner (someone took over already) is `HeldBy` it; no
/// lease at all (the fill ended meanwhile) is claimed afresh. `Local`: no takeover (a store without
/// conditional updates, or still contended) — fill from the origin without a lease.
pub(crate) async fn take_over(
    store: Arc<dyn ObjectStore>,
    key: Path,
    failed: &str,
    owner: &str,
    private: bool,
) -> io::Result<FillClaim> {
    for _ in 0..TAKEOVER_ATTEMPTS {
        let record = LeaseRecord::new(owner, private);
        let (held, e_tag) = match store.get(&key).await {
            Ok(got) => {
                let e_tag = got.meta.e_tag.clone();
                match got.bytes().await {
                    Ok(bytes) => (serde_json::from_slice::<LeaseRecord>(&bytes).ok(), e_tag),
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(super::bucket::err(e)),
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                let create = PutOptions { mode: PutMode::Create, ..Default::default() };
                match store.put_opts(&key, record.payload(), create).await {
                    Ok(put) => return Ok(FillClaim::Won(LeaseGuard::start(store, key, record, put.e_tag, true))),
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                        continue
                    }
                    Err(e) if conditional_unsupported(&e) => return Ok(FillClaim::Local),
                    Err(e) => return Err(super::bucket::err(e)),
                }
            }
            Err(e) => return Err(super::bucket::err(e)),
        };
        match &held {
            Some(h) if h.owner == owner => return Ok(FillClaim::Local),
            Some(h) if h.owner != failed && h.live(SystemTime::now()) => {
                return Ok(FillClaim::HeldBy { url: h.owner.clone(), private: h.private })
            }
            // Still the failed owner's (live or not), or not a lease at all.
            _ => {}
        }
        let update = PutOptions { mode: PutMode::Update(UpdateVersion { e_tag, version: None }), ..Default::default() };
        match store.put_opts(&key, record.payload(), update).await {
            Ok(put) => {
                tracing::info!(key = %key, failed_owner = %failed, "took over the fill lease of a replica that could not serve the blob");
                return Ok(FillClaim::Won(LeaseGuard::start(store, key, record, put.e_tag, true)));
            }
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => continue,
            // A shared directory cannot replace a live lease only if unchanged; deleting it could
            // delete a lease another replica just wrote. Without coordination, as before.
            Err(e) if conditional_unsupported(&e) => return Ok(FillClaim::Local),
            Err(e) => return Err(super::bucket::err(e)),
        }
    }
    Ok(FillClaim::Local)
}

/// A lease this replica holds: renewed in the background while the download it covers makes
/// progress (`touch`) or waits for the origin's answer (`waiting`), deleted by `release`. Dropped
/// without `release`, it is released in the background.
pub struct LeaseGuard {
    shared: Arc<Held>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    took_over: bool,
}

/// A download's reports on a lease it holds; cheap to clone into the download's body stream.
#[derive(Clone)]
pub struct LeaseProgress(Arc<Held>);

impl LeaseProgress {
    /// Bytes arrived: the lease is renewed at its next turn.
    pub fn touch(&self) {
        self.0.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// The download waits for something that is not stuck (the origin's answer, the upload of the
    /// finished blob): renewed meanwhile; or no longer.
    pub fn waiting(&self, waiting: bool) {
        self.0.waiting.store(waiting, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard").field("key", &self.shared.key).finish_non_exhaustive()
    }
}

struct Held {
    store: Arc<dyn ObjectStore>,
    key: Path,
    record: Mutex<LeaseRecord>,
    /// The ETag of the version this replica wrote last: renewals and the delete apply to it only.
    e_tag: Mutex<Option<String>>,
    progress: AtomicU64,
    waiting: AtomicBool,
    /// Someone else's lease now (ours expired and was taken over): neither renewed nor deleted.
    lost: AtomicBool,
}

impl LeaseGuard {
    fn start(
        store: Arc<dyn ObjectStore>,
        key: Path,
        record: LeaseRecord,
        e_tag: Option<String>,
        took_over: bool,
    ) -> LeaseGuard {
        let shared = Arc::new(Held {
            store,
            key,
            record: Mutex::new(record),
            e_tag: Mutex::new(e_tag),
            progress: AtomicU64::new(0),
            // The download is about to ask the origin.
            waiting: AtomicBool::new(true),
            lost: AtomicBool::new(false),
        });
        let renewer = tokio::spawn(renew(shared.clone()));
        LeaseGuard { shared, renewer: Some(renewer), took_over }
    }

    /// What the download reports to keep the lease alive.
    pub fn progress(&self) -> LeaseProgress {
        LeaseProgress(self.shared.clone())
    }

    /// This claim replaced another replica's lease (expired, or taken over from a failed owner).
    pub fn took_over_expired(&self) -> bool {
        self.took_over
    }

    /// Stops renewing and deletes the lease, if it is still the version this replica wrote.
    pub async fn release(mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        remove(&self.shared).await;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let shared = self.shared.clone();
                rt.spawn(async move { remove(&shared).await });
            }
        }
    }
}

/// Renews every third of the TTL while the download moved since the last renewal or still waits
/// for the origin. A download that stopped moving lets its lease expire, so another replica takes
/// the blob over instead of waiting on it.
async fn renew(held: Arc<Held>) {
    let every = ttl() / 3;
    let mut seen = 0;
    loop {
        tokio::time::sleep(every).await;
        let progress = held.progress.load(Ordering::Relaxed);
        if progress == seen && !held.waiting.load(Ordering::Relaxed) {
            continue;
        }
        seen = progress;
        let record = {
            let mut r = held.record.lock().unwrap_or_else(|p| p.into_inner());
            r.expires_unix_ms = unix_ms(SystemTime::now() + ttl());
            r.clone()
        };
        let e_tag = held.e_tag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let update = PutOptions { mode: PutMode::Update(UpdateVersion { e_tag, version: None }), ..Default::default() };
        let put = match held.store.put_opts(&held.key, record.payload(), update).await {
            // Without conditional updates (a shared directory) the renewal is a plain write.
            Err(e) if conditional_unsupported(&e) => held.store.put(&held.key, record.payload()).await,
            other => other,
        };
        match put {
            Ok(put) => *held.e_tag.lock().unwrap_or_else(|p| p.into_inner()) = put.e_tag,
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
                tracing::warn!(key = %held.key, "fill lease expired and was taken over by another replica");
                held.lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(key = %held.key, error = %e, "could not renew a fill lease; trying again"),
        }
    }
}

/// Deletes the lease if it is still the version this replica wrote last. (Between the check and the
/// delete another replica could take it over only if it had expired, which a lease whose download
/// just ended has not.)
async fn remove(held: &Held) {
    if held.lost.load(Ordering::Relaxed) {
        return;
    }
    let ours = held.e_tag.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match held.store.head(&held.key).await {
        Ok(meta) if meta.e_tag == ours => {
            if let Err(e) = held.store.delete(&held.key).await {
                tracing::warn!(key = %held.key, error = %e, "could not delete a fill lease; it expires on its own");
            }
        }
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(key = %held.key, error = %e, "could not delete a fill lease; it expires on its own"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn key() -> Path {
        Path::from("leases/sha256/abc")
    }

    async fn read(store: &Arc<dyn ObjectStore>) -> Option<LeaseRecord> {
        let got = store.get(&key()).await.ok()?;
        serde_json::from_slice(&got.bytes().await.ok()?).ok()
    }

    #[tokio::test]
    async fn one_replica_wins_the_others_see_it_and_release_frees_the_blob() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let FillClaim::Won(guard) = claim(store.clone(), key(), "http://a:3000", true).await.unwrap() else {
            panic!("the first claim wins")
        };
        assert!(!guard.took_over_expired());
        match claim(store.clone(), key(), "http://b:3000", false).await.unwrap() {
            FillClaim::HeldBy { url, private } => assert_eq!((url.as_str(), private), ("http://a:3000", true)),
            other => panic!("expected HeldBy, got {other:?}"),
        }
        // Its own lease is not a peer to read from.
        assert!(matches!(claim(store.clone(), key(), "http://a:3000", true).await.unwrap(), FillClaim::Local));
        guard.release().await;
        assert!(read(&store).await.is_none(), "released lease still there");
        assert!(matches!(claim(store.clone(), key(), "http://b:3000", false).await.unwrap(), FillClaim::Won(_)));
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_once() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let stale = LeaseRecord {
            owner: "http://dead:3000".into(),
            expires_unix_ms: unix_ms(SystemTime::now() - Duration::from_secs(1)),
            private: false,
        };
        store.put(&key(), stale.payload()).await.unwrap();
        let FillClaim::Won(guard) = claim(store.clone(), key(), "http://b:3000", false).await.unwrap() else {
            panic!("an expired lease is taken over")
        };
        assert!(guard.took_over_expired());
        assert_eq!(read(&store).await.unwrap().owner, "http://b:3000");
        assert!(matches!(claim(store.clone(), key(), "http://c:3000", false).await.unwrap(), FillClaim::HeldBy { .. }));
        // Garbage in the lease's place is treated like an expired lease.
        store.put(&key(), PutPayload::from_static(b"not json")).await.unwrap();
        assert!(matches!(claim(store.clone(), key(), "http://c:3000", false).await.unwrap(), FillClaim::Won(_)));
        // The taken-over guard no longer owns the object: releasing it leaves c's lease alone.
        guard.release().await;
        assert_eq!(read(&store).await.unwrap().owner, "http://c:3000");
    }

    #[tokio::test]
    async fn a_failed_owners_live_lease_is_taken_over_by_one_replica_the_others_read_from_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let FillClaim::Won(dead) = claim(store.clone(), key(), "http://a:3000", false).await.unwrap() else {
            panic!("wins")
        };
        let FillClaim::Won(b) = take_over(store.clone(), key(), "http://a:3000", "http://b:3000", false).await.unwrap()
        else {
            panic!("b takes over the live lease of a, which failed it")
        };
        assert!(b.took_over_expired());
        assert_eq!(read(&store).await.unwrap().owner, "http://b:3000");
        // c fell back from a at the same time: it reads from b, it does not take over again.
        match take_over(store.clone(), key(), "http://a:3000", "http://c:3000", false).await.unwrap() {
            FillClaim::HeldBy { url, .. } => assert_eq!(url, "http://b:3000"),
            other => panic!("expected HeldBy b, got {other:?}"),
        }
        // New readers find b too.
        assert!(
            matches!(claim(store.clone(), key(), "http://d:3000", false).await.unwrap(), FillClaim::HeldBy { url, .. } if url == "http://b:3000")
        );
        // The dead owner's guard no longer owns the lease: its release leaves b's alone.
        dead.release().await;
        assert_eq!(read(&store).await.unwrap().owner, "http://b:3000");
        b.release().await;
        assert!(read(&store).await.is_none());
        // No lease (the fill ended meanwhile): claimed afresh.
        assert!(matches!(
            take_over(store.clone(), key(), "http://a:3000", "http://c:3000", false).await.unwrap(),
            FillClaim::Won(_)
        ));
    }

    #[tokio::test]
    async fn concurrent_takeovers_have_one_winner() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let FillClaim::Won(_dead) = claim(store.clone(), key(), "http://a:3000", false).await.unwrap() else {
            panic!("wins")
        };
        let tries = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                take_over(store, key(), "http://a:3000", &format!("http://r{i}:3000"), false).await.unwrap()
            })
        });
        let mut won = Vec::new();
        let mut held_by = Vec::new();
        for t in tries.collect::<Vec<_>>() {
            match t.await.unwrap() {
                FillClaim::Won(g) => won.push(g),
                FillClaim::HeldBy { url, .. } => held_by.push(url),
                FillClaim::Local => {}
            }
        }
        assert_eq!(won.len(), 1, "exactly one takeover wins");
        let winner = read(&store).await.unwrap().owner;
        assert!(held_by.iter().all(|u| *u == winner), "losers read from {winner}: {held_by:?}");
    }

    #[tokio::test]
    async fn a_shared_directory_takes_over_without_conditional_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let stale = LeaseRecord { owner: "http://dead:3000".into(), expires_unix_ms: 1, private: false };
        store.put(&key(), stale.payload()).await.unwrap();
        let FillClaim::Won(guard) = claim(store.clone(), key(), "http://b:3000", false).await.unwrap() else {
            panic!("an expired lease is taken over")
        };
        assert!(matches!(claim(store.clone(), key(), "http://c:3000", false).await.unwrap(), FillClaim::HeldBy { .. }));
        guard.release().await;
        assert!(read(&store).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_while_bytes_arrive_and_left_to_expire_when_they_stop() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let FillClaim::Won(guard) = claim(store.clone(), key(), "http://a:3000", false).await.unwrap() else {
            panic!("wins")
        };
        let first = read(&store).await.unwrap().expires_unix_ms;
        guard.progress().waiting(false);
        guard.progress().touch();
        // Renewals compare wall-clock expiry; the paused tokio clock only drives when they happen.
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(ttl() / 3 + Duration::from_millis(10)).await;
        let renewed = read(&store).await.unwrap().expires_unix_ms;
        assert!(renewed > first, "not renewed while bytes arrived");
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(ttl() / 3 + Duration::from_millis(10)).await;
        assert_eq!(read(&store).await.unwrap().expires_unix_ms, renewed, "renewed without progress");
        drop(guard);
        // Dropped unreleased: removed in the background.
        for _ in 0..100 {
            if read(&store).await.is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("a dropped guard left its lease");
    }
}
