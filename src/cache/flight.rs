//! One upstream download per blob, shared by every client that wants it.
//!
//! The first request for an uncached digest starts a `Flight`: a task that streams the origin's body
//! into a store `Fill` (a staging file), hashing as it writes, and publishes its progress on a watch channel. Every
//! request for that digest while it runs, through any registry or repository name, reads the same
//! growing file and gets bytes as soon as they are written. The task belongs to no client, so it
//! finishes when the client that started it disconnects. The blob is committed to the store only
//! when its digest matched; the last byte of every response is held back until then, so a client can
//! never see a complete response with wrong bytes — on failure its body is cut short instead.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use futures_util::FutureExt;
use tokio::sync::watch;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::{Digest, DigestHasher};
use crate::store::fill::FillReader;
use crate::store::{Fill, Store, StoredBlob};

/// How many times a dropped download is resumed with a Range request before the flight fails.
const MAX_RESUMES: u32 = 5;
/// Bytes read from the fill per chunk handed to a client.
pub const READ_CHUNK: usize = crate::store::disk::READ_CHUNK;
/// Bytes gathered from the origin before they are written, hashed and handed to readers (when that
/// much has already arrived; otherwise whatever has).
const GATHER: usize = 1 << 20;
/// The most recent bytes of a download kept in memory, so readers at the front get the same buffers
/// the download wrote instead of reading them back from the file.
const RECENT: usize = 4 << 20;
/// Smallest read handed to a client while a download is still growing.
const MIN_READ: u64 = 128 * 1024;
/// A range that ends before the blob's end and starts this far beyond the download front is fetched
/// from the origin with a Range request of its own rather than waiting for the fill to get there.
const AHEAD_OF_FRONT: u64 = 4 << 20;

/// An origin body, from some offset.
pub struct BlobSource {
    /// Bytes of the whole blob, when the origin said.
    pub total: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, Error>>,
    /// Another replica's download (or the shared store), not the origin: not origin traffic.
    pub from_peer: bool,
}

/// Opens the origin's body at a byte offset (0 first; later offsets to resume after a drop).
pub type Opener = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<BlobSource, Error>> + Send + Sync>;

#[derive(Clone)]
enum Progress {
    Connecting,
    Receiving { written: u64, total: Option<u64> },
    Complete { total: u64 },
    Failed(Arc<Error>),
}

/// A download in progress, readable while it grows.
pub struct Flight {
    digest: Digest,
    /// The origin, for readers that must continue without the local file (disk full).
    opener: Opener,
    /// The blob's length once the origin announced it.
    total: std::sync::OnceLock<u64>,
    /// Commits as private content: readers other than the one that started it prove access first.
    private: bool,
    /// Set when the download reads another replica's download of private content (`peer`).
    peer_private: Arc<std::sync::atomic::AtomicBool>,
    reader: FillReader,
    /// The last `RECENT` bytes written, by offset (see `remember`).
    recent: Mutex<std::collections::VecDeque<(u64, Bytes)>>,
    progress: watch::Receiver<Progress>,
}

/// What a request gets: the committed blob, or a flight to read along with.
pub enum Joined {
    Stored(StoredBlob),
    /// `started`: this request started the download (a miss); otherwise it joined one (a hit).
    Flight {
        flight: Arc<Flight>,
        started: bool,
    },
}

pub struct Flights {
    /// Downloads running (including their commit), so shutdown can wait for them.
    active: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    /// Bounds concurrent origin downloads (`--max-upstream-concurrency`); more wait their turn.
    downloads: Arc<tokio::sync::Semaphore>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    inflight: Mutex<HashMap<Digest, Arc<Flight>>>,
    /// Flights that have left `inflight` (each after its commit). A request that found neither a
    /// stored blob nor a flight, and sees this unchanged when it takes the lock to start one, knows no
    /// download of its digest was committed in between (see `join_or_start`).
    departed: std::sync::atomic::AtomicU64,
    /// With `--advertise-url`: where each download reads from is agreed with the other replicas.
    peering: std::sync::OnceLock<Arc<super::peer::Peering>>,
}

impl Flights {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, max_downloads: usize) -> Arc<Self> {
        let downloads = Arc::new(tokio::sync::Semaphore::new(max_downloads.max(1)));
        Arc::new(Flights {
            active: Default::default(),
            idle: Default::default(),
            downloads,
            store,
            metrics,
            inflight: Mutex::default(),
            departed: Default::default(),
            peering: Default::default(),
        })
    }

    /// Coordinates every later download with the other replicas (see `peer`).
    pub fn set_peering(&self, peering: Arc<super::peer::Peering>) {
        let _ = self.peering.set(peering);
    }

    /// Waits until no download is running (each has committed or failed).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The in-flight download of `digest`, if one runs.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Flight>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned()
    }

    /// Returns the stored blob, joins the running flight, or starts one with `opener`.
    ///
    /// No file is touched under the table's lock (a slow disk would stall every blob request): the
    /// store is looked at and the temp file created first, then the lock is taken only to join or
    /// insert. A flight leaves the table only after its commit and counts itself out in `departed`,
    /// so if no flight departed between the store lookup and the insert, the blob cannot have been
    /// committed in between and this is the only download of it; otherwise the store is looked at
    /// again.
    /// `private`: the blob is stored marked private (content of a `--private-registry`).
    pub async fn join_or_start(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        opener: Opener,
        private: bool,
    ) -> io::Result<Joined> {
        let mut fill: Option<Fill> = None;
        loop {
            let departed = self.departed.load(std::sync::atomic::Ordering::SeqCst);
            if let Some(flight) = self.get(digest) {
                return Ok(Joined::Flight { flight, started: false });
            }
            if let Some(blob) = self.store.open_blob(digest).await? {
                return Ok(Joined::Stored(blob));
            }
            let t = match fill.take() {
                Some(t) => t,
                None => self.store.begin_fill(digest).await?,
            };
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = map.get(digest) {
                let flight = f.clone();
                drop(map);
                drop(t);
                return Ok(Joined::Flight { flight, started: false });
            }
            if self.departed.load(std::sync::atomic::Ordering::SeqCst) != departed {
                // A download finished meanwhile, perhaps of this blob: look at the store again.
                drop(map);
                fill = Some(t);
                continue;
            }
            let flight = self.launch(digest, origin, opener, Visibility::Joinable { private }, t);
            map.insert(digest.clone(), flight.clone());
            return Ok(Joined::Flight { flight, started: true });
        }
    }

    /// A download with one client's own credentials, stored marked private. It is listed like any
    /// flight until its commit, so the same client asking again before the file is in place joins it
    /// instead of downloading again; every other request that joins a private flight proves its own
    /// access to the origin first (see `Cache::get_blob`). When another flight of the digest is
    /// already listed, this one is the client's own.
    pub async fn start_private(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        opener: Opener,
    ) -> io::Result<Arc<Flight>> {
        let fill = self.store.begin_fill(digest).await?;
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(digest) {
            drop(map);
            return Ok(self.launch(digest, origin, opener, Visibility::OwnOnly, fill));
        }
        let flight = self.launch(digest, origin, opener, Visibility::Joinable { private: true }, fill);
        map.insert(digest.clone(), flight.clone());
        Ok(flight)
    }

    /// Starts the download task into `fill` (created by the caller, outside any lock).
    fn launch(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        opener: Opener,
        visibility: Visibility,
        fill: Fill,
    ) -> Arc<Flight> {
        let (tx, rx) = watch::channel(Progress::Connecting);
        let private = !matches!(visibility, Visibility::Joinable { private: false });
        let source = self.peering.get().map(|p| p.source(digest, private, opener.clone()));
        let flight = Arc::new(Flight {
            digest: digest.clone(),
            opener: opener.clone(),
            total: std::sync::OnceLock::new(),
            private,
            peer_private: source.as_ref().map(|s| s.private_flag()).unwrap_or_default(),
            reader: fill.reader(),
            recent: Mutex::default(),
            progress: rx,
        });
        let announced = flight.clone();
        let flights = self.clone();
        let digest = digest.clone();
        let origin = origin.to_owned();
        flights.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let _permit = flights.downloads.clone().acquire_owned().await;
            flights.metrics.inflight_downloads.inc();
            // Reads the origin, or another replica's download of the same blob (`peer`).
            let opener = source.as_ref().map_or(opener, |s| s.opener());
            let result = download(&*flights.store, &origin, &announced, opener, &fill, &tx, &flights.metrics).await;
            let private = announced.is_private();
            drop(announced);
            // Its lease goes once the blob is committed, or before a failure is announced (a client
            // retrying with its own credentials then claims the blob afresh).
            let release = |ok| async move {
                if let Some(s) = source {
                    s.finish(ok).await
                }
            };
            match result {
                Ok(total) => {
                    // The bytes are verified: readers may finish now, while the store makes the blob
                    // durable and puts it in place (readers keep reading the fill meanwhile).
                    tx.send_replace(Progress::Complete { total });
                    match flights.store.commit_fill(fill, private).await {
                        Ok(()) => tracing::debug!(%digest, bytes = total, private, "blob stored"),
                        Err(e) => {
                            tracing::warn!(%digest, error = %e, "verified blob could not be stored; it was served, not kept")
                        }
                    }
                    release(true).await;
                }
                Err(e) => {
                    drop(fill);
                    release(false).await;
                    tracing::warn!(%digest, error = %e, "blob download failed; nothing stored");
                    tx.send_replace(Progress::Failed(Arc::new(e)));
                }
            }
            if matches!(visibility, Visibility::Joinable { .. }) {
                let mut map = flights.inflight.lock().unwrap_or_else(|p| p.into_inner());
                map.remove(&digest);
                flights.departed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            flights.metrics.inflight_downloads.dec();
            if flights.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                flights.idle.notify_waiters();
            }
        });
        flight
    }
}

/// Who can read a download while it runs. Either way it is stored when complete.
#[derive(Clone, Copy)]
enum Visibility {
    /// Listed in the flight table: any request for the digest joins it (after proving access when
    /// `private`).
    Joinable { private: bool },
    /// Only the client that started it (with its own credentials, while another download of the
    /// digest is listed); stored private.
    OwnOnly,
}

/// Writes a chunk at its offset. When the disk is full, asks for an eviction pass and tries once
/// more (the write is positioned, so a partial first attempt is simply overwritten).
/// `need`: bytes still to be written for this blob, so eviction frees enough at once.
async fn write_at(store: &dyn Store, fill: &Fill, parts: &[Bytes], offset: u64, need: u64) -> io::Result<()> {
    match fill.write_parts_at(parts.to_vec(), offset).await {
        Err(e) if e.kind() == io::ErrorKind::StorageFull => {
            tracing::warn!(digest = %fill.digest(), "disk full while storing a blob: evicting, then retrying");
            if tokio::time::timeout(DISK_FULL_WAIT, store.make_room(need)).await.is_err() {
                return Err(e);
            }
            fill.write_parts_at(parts.to_vec(), offset).await
        }
        other => other,
    }
}

/// How long a fill waits for eviction to make room after the disk filled up.
const DISK_FULL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn download(
    store: &dyn Store,
    origin: &str,
    flight: &Flight,
    opener: Opener,
    fill: &Fill,
    tx: &watch::Sender<Progress>,
    metrics: &Metrics,
) -> Result<u64, Error> {
    let digest = &flight.digest;
    let mut source = opener(0).await?;
    let total = source.total;
    if let Some(t) = total {
        let _ = flight.total.set(t);
    }
    tx.send_replace(Progress::Receiving { written: 0, total });
    let mut hasher = DigestHasher::new(digest.algorithm());
    let mut written: u64 = 0;
    let mut resumes = 0;
    loop {
        // Wait for the next bytes, then take whatever else has already arrived (without waiting), so
        // the file, the hasher and the readers see few, large pieces when the origin is fast and
        // every piece at once when it is slow.
        let mut parts: Vec<Bytes> = Vec::new();
        let mut gathered = 0;
        let mut next = source.body.next().await;
        while let Some(Ok(chunk)) = next {
            gathered += chunk.len();
            parts.push(chunk);
            if gathered >= GATHER {
                next = Some(Ok(Bytes::new()));
                break;
            }
            next = source.body.next().now_or_never().unwrap_or(Some(Ok(Bytes::new())));
            if matches!(&next, Some(Ok(c)) if c.is_empty()) {
                break;
            }
        }
        if gathered > 0 {
            if total.is_some_and(|t| written + gathered as u64 > t) {
                return Err(bad_body(origin, digest, "more bytes than Content-Length"));
            }
            let need = total.map_or(gathered as u64, |t| t - written);
            // Readers at the front get these bytes now, from memory; the file (for late joiners)
            // and the hash (for the final byte) follow in parallel on the blocking pool. Bytes not
            // yet in the file are the newest, and the newest are always in `recent`.
            let mut at = written;
            for p in &parts {
                flight.remember(at, p.clone());
                at += p.len() as u64;
            }
            tx.send_replace(Progress::Receiving { written: at, total });
            let hashed = {
                let (parts, mut hasher) = (parts.clone(), hasher);
                tokio::task::spawn_blocking(move || {
                    for p in &parts {
                        hasher.update(p);
                    }
                    hasher
                })
            };
            let stored = write_at(store, fill, &parts, written, need).await;
            hasher = hashed.await.map_err(|e| Error::from(io::Error::other(e)))?;
            stored?;
            written = at;
            if !source.from_peer {
                metrics.bytes_from_upstream.inc_by(gathered as u64);
            }
        }
        match next {
            Some(Ok(_)) => continue,
            None if total.is_none_or(|t| written == t) => break,
            Some(Err(e)) if total.is_none() => return Err(e),
            // Dropped or short: resume from where we are, if the origin tells us how long the blob is.
            failure => {
                if resumes >= MAX_RESUMES {
                    return Err(match failure {
                        Some(Err(e)) => e,
                        _ => bad_body(origin, digest, "body ended early"),
                    });
                }
                resumes += 1;
                tracing::info!(%digest, offset = written, attempt = resumes, "origin dropped the blob; resuming with a Range request");
                metrics.resumes.inc();
                source = opener(written).await?;
                if source.total != total {
                    return Err(bad_body(origin, digest, "blob length changed while resuming"));
                }
            }
        }
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(Error::DigestMismatch {
            origin: origin.to_owned(),
            what: format!("blob {digest}"),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(written)
}

fn bad_body(origin: &str, digest: &Digest, detail: &str) -> Error {
    Error::BadUpstreamBody { origin: origin.to_owned(), what: format!("blob {digest}"), detail: detail.into() }
}

impl Flight {
    /// Keeps bytes just written at `offset` for readers at the front; the oldest go past `RECENT`.
    fn remember(&self, offset: u64, bytes: Bytes) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.push_back((offset, bytes));
        let mut held: usize = recent.iter().map(|(_, b)| b.len()).sum();
        while held > RECENT && recent.len() > 1 {
            if let Some((_, old)) = recent.pop_front() {
                held -= old.len();
            }
        }
    }

    /// Bytes from `pos` (up to `until`) out of the recent buffers, if they are still there.
    fn recent_bytes(&self, pos: u64, until: u64) -> Option<Bytes> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let (off, bytes) = recent.iter().find(|(off, b)| *off <= pos && pos < off + b.len() as u64)?;
        let from = (pos - off) as usize;
        let to = (until.min(off + bytes.len() as u64) - off) as usize;
        Some(bytes.slice(from..to))
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn is_private(&self) -> bool {
        self.private || self.reads_private_peer()
    }

    /// Reads another replica's download of private content: every client of it, including the one
    /// that started it, proves its access to the origin first (known once `started` returned).
    pub fn reads_private_peer(&self) -> bool {
        self.peer_private.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the origin has answered: the blob's length (if announced), or the origin's error.
    pub async fn started(&self) -> Result<Option<u64>, Arc<Error>> {
        let mut rx = self.progress.clone();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Receiving { total, .. } => return Ok(*total),
                Progress::Complete { total } => return Ok(Some(*total)),
                Progress::Failed(e) => return Err(e.clone()),
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(Error::from(io::Error::other("download task ended without a result"))));
            }
        }
    }

    /// The length if known now, without waiting.
    pub fn known_size(&self) -> Option<u64> {
        match &*self.progress.borrow() {
            Progress::Receiving { total, .. } => *total,
            Progress::Complete { total } => Some(*total),
            _ => None,
        }
    }

    /// Bytes `start..end` (end exclusive; `None` = to the end) as they arrive. When the range ends at the
    /// blob's end, its final byte is sent only once the whole blob is verified (on failure the stream
    /// ends with an error); a range that ends earlier is complete as soon as its bytes are here.
    pub fn read(
        self: &Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let state = ReadState::File(self.clone(), self.progress.clone(), start);
        futures_util::stream::unfold(Some(state), move |state| async move {
            let (flight, mut rx, pos) = match state? {
                ReadState::File(flight, rx, pos) => (flight, rx, pos),
                ReadState::Relay(mut relay) => {
                    return relay.next().await.map(|item| {
                        let more = item.is_ok();
                        (item, more.then_some(ReadState::Relay(relay)))
                    });
                }
            };
            loop {
                let progress = rx.borrow_and_update().clone();
                let (avail, complete) = match &progress {
                    Progress::Connecting => (0, false),
                    Progress::Receiving { written, .. } => (*written, false),
                    Progress::Complete { total } => (*total, true),
                    Progress::Failed(e) => {
                        // The disk filled up under the download: a client reading the whole blob is
                        // carried on from the origin (verified) rather than cut off.
                        let whole = start == 0 && end.is_some() && end == flight.total.get().copied();
                        if whole && is_disk_full(e) {
                            return match relay(flight.clone(), pos).await {
                                Ok(mut relay) => relay.next().await.map(|item| {
                                    let more = item.is_ok();
                                    (item, more.then_some(ReadState::Relay(relay)))
                                }),
                                Err(e) => Some((Err(e), None)),
                            };
                        }
                        return Some((Err(io::Error::other(e.to_string())), None));
                    }
                };
                let stop = match end {
                    Some(e) => e,
                    None if complete => avail,
                    None => u64::MAX,
                };
                // Only a response that ends at the blob's end holds its final byte until the digest
                // matched: a range that ends earlier (a lazy-pulling snapshotter's chunk, which it
                // verifies itself; the origin would send the same bytes) finishes as soon as its bytes
                // are here, without waiting for the rest of the download.
                let ends_at_blob_end = end.is_none() || flight.total.get().is_none_or(|t| stop >= *t);
                if pos >= stop && (complete || !ends_at_blob_end) {
                    return None;
                }
                if !complete && !ends_at_blob_end && pos == start && start > avail.saturating_add(AHEAD_OF_FRONT) {
                    // Far beyond the front: ask the origin for just these bytes, as the client would
                    // have without a cache. Unverifiable alone, like the origin's own answer would be;
                    // if the origin cannot, wait for the fill.
                    match range_from_origin(&flight, start, stop).await {
                        Ok(mut direct) => {
                            return direct.next().await.map(|item| {
                                let more = item.is_ok();
                                (item, more.then_some(ReadState::Relay(direct)))
                            });
                        }
                        Err(e) => {
                            tracing::info!(digest = %flight.digest, start, error = %e, "range beyond the download front: waiting for the download instead");
                        }
                    }
                }
                let mut until = avail.min(stop);
                if !complete && ends_at_blob_end && until > pos && (until == stop || end.is_none()) {
                    until -= 1;
                }
                // While the download runs, wait for a worthwhile amount rather than waking for every packet.
                let last = if ends_at_blob_end { stop.saturating_sub(1) } else { stop };
                let worthwhile = complete || until - pos.min(until) >= MIN_READ || until == last;
                if until > pos && worthwhile {
                    let bytes = match flight.recent_bytes(pos, until) {
                        Some(b) => b,
                        None => {
                            let n = (until - pos).min(READ_CHUNK as u64) as usize;
                            match flight.reader.read_at(pos, n).await {
                                Ok(b) => b,
                                Err(e) => return Some((Err(e), None)),
                            }
                        }
                    };
                    let next = pos + bytes.len() as u64;
                    return Some((Ok(bytes), Some(ReadState::File(flight, rx, next))));
                }
                if rx.changed().await.is_err() {
                    return Some((Err(io::Error::other("download ended without a result")), None));
                }
            }
        })
    }
}

/// Bytes `start..stop` straight from the origin (a Range request from `start`, read only as far as
/// `stop`), for a range far beyond the download front.
async fn range_from_origin(
    flight: &Flight,
    start: u64,
    stop: u64,
) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    let source = (flight.opener)(start).await.map_err(|e| io::Error::other(e.to_string()))?;
    tracing::debug!(digest = %flight.digest, start, stop, "range beyond the download front asked of the origin");
    let want = stop - start;
    let stream = futures_util::stream::unfold((source.body, 0u64), move |(mut body, sent)| async move {
        if sent >= want {
            // Dropping the body here closes the origin's connection: nothing past `stop` is read.
            return None;
        }
        match body.next().await {
            Some(Ok(mut chunk)) => {
                chunk.truncate((want - sent).min(chunk.len() as u64) as usize);
                let n = chunk.len() as u64;
                Some((Ok(chunk), (body, sent + n)))
            }
            Some(Err(e)) => Some((Err(io::Error::other(e.to_string())), (body, want))),
            None => Some((Err(io::Error::other("the origin's range ended early")), (body, want))),
        }
    });
    Ok(stream.boxed())
}

/// Where a reader gets its bytes: the flight's file, or (after the disk filled up) the origin.
enum ReadState {
    File(Arc<Flight>, watch::Receiver<Progress>, u64),
    Relay(BoxStream<'static, io::Result<Bytes>>),
}

fn is_disk_full(e: &Error) -> bool {
    matches!(e.inner(), Error::Store(io) if io.kind() == io::ErrorKind::StorageFull)
}

/// Continues a reader at `pos` straight from the origin. The bytes it already sent are hashed from
/// the (unlinked, still open) file, the rest as they pass; the final byte is sent only if the whole
/// blob matches its digest, as for every other response.
async fn relay(flight: Arc<Flight>, pos: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    let total = flight.total.get().copied().ok_or_else(|| io::Error::other("blob length unknown"))?;
    let mut hasher = DigestHasher::new(flight.digest.algorithm());
    let mut off = 0;
    while off < pos {
        let n = (pos - off).min(READ_CHUNK as u64) as usize;
        // Readers get bytes before they are written; what the file lacks is in the recent buffers.
        let bytes = match flight.recent_bytes(off, pos) {
            Some(b) => b,
            None => flight.reader.read_at(off, n).await?,
        };
        let n = bytes.len();
        hasher.update(&bytes);
        off += n as u64;
    }
    let source = (flight.opener)(pos).await.map_err(|e| io::Error::other(e.to_string()))?;
    if source.total.is_some_and(|t| t != total) && pos == 0 {
        return Err(io::Error::other("blob length changed"));
    }
    tracing::warn!(digest = %flight.digest, offset = pos, "disk full: serving the rest of the blob straight from the origin, not stored");
    let digest = flight.digest.clone();
    let state = (source.body, hasher, pos, None::<Bytes>, false);
    let stream = futures_util::stream::unfold(state, move |(mut body, mut hasher, mut received, held, done)| {
        let digest = digest.clone();
        async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) if !chunk.is_empty() => {
                    hasher.update(&chunk);
                    received += chunk.len() as u64;
                    if received > total {
                        return Some((
                            Err(io::Error::other("origin sent more than the blob's length")),
                            (body, hasher, received, None, true),
                        ));
                    }
                    // Keep the final byte back until the digest is checked.
                    let mut out = match held {
                        Some(h) => {
                            let mut v = h.to_vec();
                            v.extend_from_slice(&chunk);
                            Bytes::from(v)
                        }
                        None => chunk,
                    };
                    let last = out.split_off(out.len() - 1);
                    Some((Ok(out), (body, hasher, received, Some(last), false)))
                }
                Some(Ok(_)) => Some((Ok(Bytes::new()), (body, hasher, received, held, false))),
                Some(Err(e)) => Some((Err(io::Error::other(e.to_string())), (body, hasher, received, None, true))),
                None if received == total && hasher.clone().finish() == digest => {
                    Some((Ok(held.unwrap_or_default()), (body, hasher, received, None, true)))
                }
                None => Some((
                    Err(io::Error::other("blob from the origin did not verify")),
                    (body, hasher, received, None, true),
                )),
            }
        }
    });
    Ok(stream.boxed())
}
