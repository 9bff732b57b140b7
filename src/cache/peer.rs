//! Cluster-wide single flight, the cache's side (`--advertise-url`, `--peer-secret-file`): replicas
//! sharing a bucket download each blob from the origin once between them.
//!
//! Every download is still a local [`Flight`](super::Flight) — its clients get bytes as they arrive,
//! it verifies the digest, it commits to the store — but its source is chosen when it starts
//! ([`FillSource`]): the store's lease (`Store::claim_fill`) says whether this replica fills the blob
//! from the origin (and holds the lease while it does), or another replica is filling it already.
//! Then the flight reads that replica's running download over the internal peer endpoint (from byte
//! 0; the owner holds the final byte back until its own download verified), and carries on from the
//! origin, with a `Range` from where it got to, when the owner cannot be reached, answers an error,
//! sends nothing for a lease lifetime, or breaks off. Falling back, it first takes the failed
//! owner's lease over (`Store::take_over_fill`, conditional on the version it read): of the
//! replicas falling back together one wins and fills the rest from the origin, the others (and new
//! readers) stream from it — at most one such extra hop per download. The origin never sees more
//! than it would without peers; at best it sees one download per blob for the whole cluster, and a
//! dead owner costs one ranged download more, not one per replica.
//!
//! The peer endpoint is no way around access control. A request must carry an HMAC of the digest
//! and the time under the shared secret (`PeerKey`): the secret itself never leaves the process, so
//! a lease pointing somewhere else (anyone with write access to the bucket can write one) learns
//! nothing it could use for another blob or later. Private content stays private: a flight that
//! reads another replica's private download is itself private, and every client of it proves its
//! access to the origin first, on the replica it asked, exactly as for a local private download.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::HeaderValue;

use super::flight::{BlobSource, Opener};
use super::Cache;
use crate::error::Error;
use crate::metrics::{Metrics, PeerFallback};
use crate::oci::Digest;
use crate::store::lease::{self, LeaseProgress};
use crate::store::{ByteStream, ContentKind, FillClaim, LeaseGuard, Store};

/// The internal endpoint replicas read each other's downloads from: `<prefix><digest>`.
pub const PEER_PATH: &str = "/_ocicache/peer/blobs/";
/// `<unix seconds>.<hex HMAC-SHA256 of "<digest>\n<unix seconds>">` under the peer secret.
pub const AUTH_HEADER: &str = "ocicache-peer-auth";
/// `true` when the owner holds the blob as private content.
pub const PRIVATE_HEADER: &str = "ocicache-private";

/// How far a signed request's time may be from the owner's clock: nodes' clocks differ by seconds,
/// and a captured request is useless once this has passed.
const SIGNATURE_WINDOW_SECS: u64 = 60;

/// Time to connect to the owner. Replicas share a cluster network where a live peer connects in
/// milliseconds; a dead one's address refuses or times out, and the origin is asked instead.
const PEER_CONNECT: Duration = Duration::from_secs(2);

/// Bounds releasing a lease after the download ended; it expires on its own if the bucket is slow.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Signs and checks peer requests with the shared secret.
pub struct PeerKey(ring::hmac::Key);

impl PeerKey {
    pub fn new(secret: &[u8]) -> Self {
        PeerKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn message(digest: &str, unix: u64) -> String {
        format!("{digest}\n{unix}")
    }

    /// The `AUTH_HEADER` value for a request of `digest` at `unix` seconds.
    pub fn sign(&self, digest: &str, unix: u64) -> String {
        let tag = ring::hmac::sign(&self.0, Self::message(digest, unix).as_bytes());
        format!("{unix}.{}", hex::encode(tag.as_ref()))
    }

    /// Whether `header` signs a request of `digest` within the window around `now` (constant-time
    /// comparison of the tag).
    pub fn verify(&self, digest: &str, header: Option<&HeaderValue>, now: u64) -> bool {
        let Some((unix, tag)) = header.and_then(|h| h.to_str().ok()).and_then(|h| h.split_once('.')) else {
            return false;
        };
        let (Ok(unix), Ok(tag)) = (unix.parse::<u64>(), hex::decode(tag)) else { return false };
        if unix.abs_diff(now) > SIGNATURE_WINDOW_SECS {
            return false;
        }
        ring::hmac::verify(&self.0, Self::message(digest, unix).as_bytes(), &tag).is_ok()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// This replica's part in the cluster: it answers peers (with the secret), and with an advertised
/// address it also claims fills and reads other replicas' downloads.
pub struct Peering {
    key: PeerKey,
    /// `--advertise-url` without its trailing `/`, as leases name it.
    advertise: Option<String>,
    client: reqwest::Client,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Peering {
    pub fn new(
        secret: &[u8],
        advertise: Option<&url::Url>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Peering, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(PEER_CONNECT)
            // Peers are addressed directly; a redirect from one is not followed anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .build()
            .map_err(|e| format!("peer client: {e}"))?;
        Ok(Peering {
            key: PeerKey::new(secret),
            advertise: advertise.map(|u| u.as_str().trim_end_matches('/').to_owned()),
            client,
            store,
            metrics,
        })
    }

    pub fn key(&self) -> &PeerKey {
        &self.key
    }

    /// Whether this replica claims fills (it has an address the others can reach).
    pub fn coordinates_fills(&self) -> bool {
        self.advertise.is_some()
    }

    /// The source of one download of `digest`, which would otherwise read `origin`. `private`: the
    /// download is stored as private content (said in its lease).
    pub fn source(self: &Arc<Self>, digest: &Digest, private: bool, origin: Opener) -> FillSource {
        FillSource {
            state: Arc::new(SourceState {
                peering: self.clone(),
                digest: digest.clone(),
                private,
                origin,
                mode: Mutex::new(Mode::Unclaimed),
                peer_private: Arc::new(AtomicBool::new(false)),
                peer_failure: Mutex::new(None),
                lease: Mutex::new(None),
                took_over: AtomicBool::new(false),
            }),
        }
    }
}

/// Where one download's bytes come from (see the module documentation).
pub struct FillSource {
    state: Arc<SourceState>,
}

struct SourceState {
    peering: Arc<Peering>,
    digest: Digest,
    private: bool,
    origin: Opener,
    mode: Mutex<Mode>,
    /// Set once the download reads another replica's download of content that is private there
    /// (or here): its clients prove their access first.
    peer_private: Arc<AtomicBool>,
    /// Why the owner's body ended early, recorded by the body for the fallback that follows.
    peer_failure: Mutex<Option<PeerFallback>>,
    lease: Mutex<Option<LeaseGuard>>,
    /// Set at the first fallback from an owner: a download tries to take over a failed owner's lease
    /// once, so it reads at most one more replica before the origin (never a loop between them).
    took_over: AtomicBool,
}

#[derive(Clone)]
enum Mode {
    /// The first open has not happened.
    Unclaimed,
    /// This replica holds the lease and downloads from the origin.
    Owner(LeaseProgress),
    /// Reading the running download of the replica at this address.
    Peer(String),
    /// From the origin, without a lease (no coordination, or after the owner failed).
    Origin,
}

impl FillSource {
    /// The opener the download uses instead of the origin's.
    pub fn opener(&self) -> Opener {
        let state = self.state.clone();
        Arc::new(move |offset| state.clone().open(offset).boxed())
    }

    /// Set while the download reads another replica's private content (see `Flight::is_private`).
    pub fn private_flag(&self) -> Arc<AtomicBool> {
        self.state.peer_private.clone()
    }

    /// The download ended (`ok`: verified and committed, or at least served): releases the lease
    /// this replica held, and counts a download the owner's bytes carried whole.
    pub async fn finish(self, ok: bool) {
        let s = &self.state;
        let mode = s.mode.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if ok && matches!(mode, Mode::Peer(_)) {
            s.peering.metrics.peer_fills.inc();
        }
        let held = s.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(guard) = held {
            if tokio::time::timeout(RELEASE_WAIT, guard.release()).await.is_err() {
                tracing::warn!(digest = %s.digest, "releasing a fill lease timed out; it expires on its own");
            }
        }
    }
}

impl SourceState {
    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    async fn open(self: Arc<Self>, offset: u64) -> Result<BlobSource, Error> {
        let mode = self.mode.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match mode {
            Mode::Unclaimed => self.start().await,
            Mode::Owner(progress) => self.origin_as_owner(progress, offset).await,
            Mode::Peer(url) => {
                // The owner's body broke off (it recorded why): the rest comes from the origin.
                let reason = self.peer_failure.lock().unwrap_or_else(|p| p.into_inner()).take();
                let reason = reason.unwrap_or(PeerFallback::Error);
                self.peering.metrics.peer_fallback(reason);
                tracing::warn!(digest = %self.digest, peer = %url, offset, reason = reason.as_str(), "the replica filling this blob failed; continuing without it");
                self.take_over(&url, offset).await
            }
            Mode::Origin => (self.origin)(offset).await,
        }
    }

    /// The first open: claim the fill, then read from the origin as the owner, from the owner, or
    /// from the origin as before.
    async fn start(self: Arc<Self>) -> Result<BlobSource, Error> {
        let Some(advertise) = self.peering.advertise.clone() else {
            self.set_mode(Mode::Origin);
            return (self.origin)(0).await;
        };
        let claim = self.peering.store.claim_fill(&self.digest, &advertise, self.private).await;
        let claim = claim.unwrap_or_else(|e| {
            tracing::warn!(digest = %self.digest, error = %e, "cannot claim the fill in shared storage; filling without a lease");
            FillClaim::Local
        });
        match claim {
            FillClaim::Won(guard) => {
                if guard.took_over_expired() {
                    self.peering.metrics.peer_fallback(PeerFallback::Expired);
                }
                // The owner before this claim may have committed the blob and released its lease
                // just now: then the blob is read from the store, not the origin.
                if let Ok(Some(blob)) = self.peering.store.open_blob(&self.digest).await {
                    guard.release().await;
                    self.set_mode(Mode::Origin);
                    tracing::debug!(digest = %self.digest, "blob committed by another replica meanwhile; read from the store");
                    let size = blob.size;
                    let body = blob.read(0..size).map(|r| r.map_err(Error::from)).boxed();
                    return Ok(BlobSource { total: Some(size), body, from_peer: true });
                }
                let progress = guard.progress();
                *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
                self.set_mode(Mode::Owner(progress.clone()));
                self.origin_as_owner(progress, 0).await
            }
            FillClaim::HeldBy { url, private } => match self.clone().read_peer(&url).await {
                Ok((source, peer_private)) => {
                    if private || peer_private || self.private {
                        self.peer_private.store(true, Ordering::SeqCst);
                    }
                    tracing::debug!(digest = %self.digest, peer = %url, "reading the blob from the replica filling it");
                    self.set_mode(Mode::Peer(url));
                    Ok(source)
                }
                Err(reason) => {
                    self.peering.metrics.peer_fallback(reason);
                    tracing::warn!(digest = %self.digest, peer = %url, reason = reason.as_str(), "the replica filling this blob cannot serve it; continuing without it");
                    self.take_over(&url, 0).await
                }
            },
            FillClaim::Local => {
                self.set_mode(Mode::Origin);
                (self.origin)(0).await
            }
        }
    }

    /// The owner at `failed` cannot serve this download (the fallback is counted): the rest, from
    /// `offset`, comes from the origin — with this replica taking over the lease, so that the other
    /// replicas falling back now and new readers stream from here rather than each asking the origin
    /// or trying the failed address again — or, when another replica won that takeover, from that
    /// replica. Once per download: after that, any failure goes to the origin without a lease.
    async fn take_over(self: Arc<Self>, failed: &str, offset: u64) -> Result<BlobSource, Error> {
        let first = !self.took_over.swap(true, Ordering::SeqCst);
        let claim = match self.peering.advertise.as_deref() {
            Some(me) if first => {
                let private = self.private || self.peer_private.load(Ordering::SeqCst);
                let claim = self.peering.store.take_over_fill(&self.digest, failed, me, private).await;
                claim.unwrap_or_else(|e| {
                    tracing::warn!(digest = %self.digest, error = %e, "cannot take over the fill in shared storage; filling without a lease");
                    FillClaim::Local
                })
            }
            _ => FillClaim::Local,
        };
        match claim {
            FillClaim::Won(guard) => {
                // The fill may have ended meanwhile with the blob committed: read it from the store.
                if let Ok(Some(blob)) = self.peering.store.open_blob(&self.digest).await {
                    guard.release().await;
                    self.set_mode(Mode::Origin);
                    let size = blob.size;
                    let body = blob.read(offset.min(size)..size).map(|r| r.map_err(Error::from)).boxed();
                    return Ok(BlobSource { total: Some(size), body, from_peer: true });
                }
                tracing::info!(digest = %self.digest, failed = %failed, offset, "took over the fill: the other replicas read it from here");
                let progress = guard.progress();
                *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
                self.set_mode(Mode::Owner(progress.clone()));
                self.origin_as_owner(progress, offset).await
            }
            FillClaim::HeldBy { url, private } => match self.clone().read_peer(&url).await {
                Ok((source, peer_private)) => {
                    if private || peer_private || self.private {
                        self.peer_private.store(true, Ordering::SeqCst);
                    }
                    tracing::info!(digest = %self.digest, peer = %url, offset, "another replica took over the fill; reading it from there");
                    self.set_mode(Mode::Peer(url));
                    Ok(skip(source, offset))
                }
                Err(reason) => {
                    self.peering.metrics.peer_fallback(reason);
                    tracing::warn!(digest = %self.digest, peer = %url, reason = reason.as_str(), "the replica that took over this blob cannot serve it either; asking the origin");
                    self.set_mode(Mode::Origin);
                    (self.origin)(offset).await
                }
            },
            FillClaim::Local => {
                self.set_mode(Mode::Origin);
                (self.origin)(offset).await
            }
        }
    }

    /// The origin's body, renewing the lease while bytes arrive; once they all arrived the lease is
    /// kept while the blob is verified and committed.
    async fn origin_as_owner(&self, progress: LeaseProgress, offset: u64) -> Result<BlobSource, Error> {
        progress.waiting(true);
        let source = (self.origin)(offset).await;
        progress.waiting(false);
        let source = source?;
        let body = futures_util::stream::unfold((source.body, progress), |(mut body, progress)| async move {
            match body.next().await {
                Some(item) => {
                    progress.touch();
                    Some((item, (body, progress)))
                }
                None => {
                    progress.waiting(true);
                    None
                }
            }
        })
        .boxed();
        Ok(BlobSource { total: source.total, body, from_peer: false })
    }

    /// Asks the owner at `url` for its download from byte 0. `Err` says why not (for the metric);
    /// `Ok` carries whether the owner holds the blob as private.
    async fn read_peer(self: Arc<Self>, url: &str) -> Result<(BlobSource, bool), PeerFallback> {
        let target = format!("{}{PEER_PATH}{}", url.trim_end_matches('/'), self.digest);
        let parsed = url::Url::parse(&target).map_err(|_| PeerFallback::Error)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(PeerFallback::Error);
        }
        let auth = self.peering.key.sign(&self.digest.to_string(), unix_now());
        let stall = lease::ttl();
        let send = self.peering.client.get(parsed).header(AUTH_HEADER, auth).send();
        let resp = match tokio::time::timeout(stall, send).await {
            Err(_) => return Err(PeerFallback::Stalled),
            Ok(Err(e)) if e.is_connect() || e.is_timeout() => return Err(PeerFallback::Unreachable),
            Ok(Err(e)) => {
                tracing::debug!(peer = %url, error = %crate::upstream::describe(&e), "peer request failed");
                return Err(PeerFallback::Unreachable);
            }
            Ok(Ok(resp)) => resp,
        };
        if resp.status() != http::StatusCode::OK {
            tracing::info!(peer = %url, digest = %self.digest, status = resp.status().as_u16(), "the replica holding the lease answered an error");
            return Err(PeerFallback::Error);
        }
        let Some(total) = resp.content_length() else { return Err(PeerFallback::Error) };
        let private = resp.headers().get(PRIVATE_HEADER).is_some_and(|v| v.as_bytes() == b"true");
        let peer = url.to_owned();
        let metrics = self.peering.metrics.clone();
        let state = self.clone();
        let fail = move |reason: PeerFallback, detail: String| {
            *state.peer_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            Error::BadUpstreamBody { origin: format!("replica {peer}"), what: format!("blob {}", state.digest), detail }
        };
        let body = futures_util::stream::unfold(
            (resp.bytes_stream(), 0u64, false),
            move |(mut body, got, done): (_, u64, bool)| {
                let (fail, metrics) = (fail.clone(), metrics.clone());
                async move {
                    if done {
                        return None;
                    }
                    match tokio::time::timeout(stall, body.next()).await {
                        Ok(Some(Ok(chunk))) => {
                            metrics.peer_bytes.inc_by(chunk.len() as u64);
                            let got = got + chunk.len() as u64;
                            Some((Ok::<Bytes, Error>(chunk), (body, got, false)))
                        }
                        Ok(Some(Err(e))) => {
                            let e = fail(PeerFallback::Error, crate::upstream::describe(&e));
                            Some((Err(e), (body, got, true)))
                        }
                        Ok(None) if got == total => None,
                        Ok(None) => {
                            let e = fail(PeerFallback::Error, format!("body ended after {got} of {total} bytes"));
                            Some((Err(e), (body, got, true)))
                        }
                        Err(_) => {
                            let e = fail(PeerFallback::Stalled, format!("no bytes for {}s", stall.as_secs()));
                            Some((Err(e), (body, got, true)))
                        }
                    }
                }
            },
        )
        .boxed();
        Ok((BlobSource { total: Some(total), body, from_peer: true }, private))
    }
}

/// `source`, read from byte 0, without its first `n` bytes: the peer endpoint always serves a blob
/// from its start, and a download that changes owner mid-blob already has those.
fn skip(source: BlobSource, n: u64) -> BlobSource {
    if n == 0 {
        return source;
    }
    let body = futures_util::stream::unfold((source.body, n), |(mut body, mut left)| async move {
        loop {
            match body.next().await? {
                Ok(chunk) if left > 0 => {
                    if chunk.len() as u64 <= left {
                        left -= chunk.len() as u64;
                        continue;
                    }
                    return Some((Ok(chunk.slice(left as usize..)), (body, 0)));
                }
                item => return Some((item, (body, left))),
            }
        }
    })
    .boxed();
    BlobSource { body, ..source }
}

/// A blob as this replica can hand it to a peer: its running download or the stored blob.
pub struct PeerBlob {
    pub size: u64,
    pub private: bool,
    pub body: ByteStream,
}

impl Cache {
    /// The cluster part of this replica, when `--peer-secret-file` is set.
    pub fn peering(&self) -> Option<&Arc<Peering>> {
        self.peering.as_ref()
    }

    /// Takes part in the cluster: answers peers with `secret`, and with `advertise` also claims
    /// fills and reads other replicas' downloads.
    pub fn enable_peering(&mut self, secret: &[u8], advertise: Option<&url::Url>) -> Result<(), String> {
        let peering = Arc::new(Peering::new(secret, advertise, self.store.clone(), self.metrics.clone())?);
        if peering.coordinates_fills() {
            self.flights.set_peering(peering.clone());
        }
        self.peering = Some(peering);
        Ok(())
    }

    /// What a peer asking for `d` gets: this replica's running download of it from byte 0 (its
    /// final byte once verified), or the stored blob; `None` when neither is here (or the download
    /// failed, or cannot say its length), and the peer asks the origin itself.
    pub async fn peer_blob(&self, d: &Digest) -> Result<Option<PeerBlob>, Error> {
        if let Some(flight) = self.flights.get(d) {
            return Ok(match flight.started().await {
                Ok(Some(size)) => {
                    Some(PeerBlob { size, private: flight.is_private(), body: flight.read(0, Some(size)).boxed() })
                }
                _ => None,
            });
        }
        let Some(blob) = self.store.open_blob(d).await? else { return Ok(None) };
        let private = self.store.is_private(ContentKind::Blob, d).await;
        let size = blob.size;
        Ok(Some(PeerBlob { size, private, body: blob.read(0..size) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_digest_the_time_and_the_secret() {
        let key = PeerKey::new(b"0123456789abcdef-secret");
        let d = "sha256:aaaa";
        let now = 1_800_000_000;
        let h = |s: String| HeaderValue::from_str(&s).unwrap();
        assert!(key.verify(d, Some(&h(key.sign(d, now))), now));
        assert!(key.verify(d, Some(&h(key.sign(d, now - 30))), now), "clock differences are allowed");
        assert!(!key.verify(d, Some(&h(key.sign(d, now - 120))), now), "an old signature is refused");
        assert!(!key.verify("sha256:bbbb", Some(&h(key.sign(d, now))), now), "signed for another blob");
        let other = PeerKey::new(b"another secret of some length");
        assert!(!key.verify(d, Some(&h(other.sign(d, now))), now), "signed with another secret");
        assert!(!key.verify(d, None, now));
        assert!(!key.verify(d, Some(&h("0123456789abcdef-secret".into())), now), "the bare secret is no signature");
        assert!(!key.verify(d, Some(&h(format!("{now}.zz"))), now));
    }
}
