//! One upstream download per blob, shared by every client that wants it.
//!
//! The first request for an uncached digest starts a `Flight`: a task that streams the origin's body
//! into a temp file, hashing as it writes, and publishes its progress on a watch channel. Every
//! request for that digest while it runs, through any registry or repository name, reads the same
//! growing file and gets bytes as soon as they are written. The task belongs to no client, so it
//! finishes when the client that started it disconnects. The blob is committed to the store only
//! when its digest matched; the last byte of every response is held back until then, so a client can
//! never see a complete response with wrong bytes — on failure its body is cut short instead.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::watch;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::{Digest, DigestHasher};
use crate::store::{ContentKind, FsStore};

/// How many times a dropped download is resumed with a Range request before the flight fails.
const MAX_RESUMES: u32 = 5;
/// Bytes read from the file per chunk handed to a client.
pub const READ_CHUNK: usize = 1024 * 1024;
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
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
}

/// What a request gets: the committed blob, or a flight to read along with.
pub enum Joined {
    Stored {
        file: File,
        size: u64,
    },
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
    store: FsStore,
    metrics: Arc<Metrics>,
    inflight: Mutex<HashMap<Digest, Arc<Flight>>>,
    /// Flights that have left `inflight` (each after its commit). A request that found neither a
    /// stored blob nor a flight, and sees this unchanged when it takes the lock to start one, knows no
    /// download of its digest was committed in between (see `join_or_start`).
    departed: std::sync::atomic::AtomicU64,
}

impl Flights {
    pub fn new(store: FsStore, metrics: Arc<Metrics>, max_downloads: usize) -> Arc<Self> {
        let downloads = Arc::new(tokio::sync::Semaphore::new(max_downloads.max(1)));
        Arc::new(Flights {
            active: Default::default(),
            idle: Default::default(),
            downloads,
            store,
            metrics,
            inflight: Mutex::default(),
            departed: Default::default(),
        })
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
        let mut temp: Option<crate::store::fs::TempFile> = None;
        loop {
            let departed = self.departed.load(std::sync::atomic::Ordering::SeqCst);
            if let Some(flight) = self.get(digest) {
                discard(temp);
                return Ok(Joined::Flight { flight, started: false });
            }
            match self.store.open_blob(digest).await {
                Ok(Some((file, size))) => {
                    discard(temp);
                    return Ok(Joined::Stored { file, size });
                }
                Ok(None) => {}
                Err(e) => {
                    discard(temp);
                    return Err(e);
                }
            }
            let t = match temp.take() {
                Some(t) => t,
                None => self.store.temp_file().await?,
            };
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = map.get(digest) {
                let flight = f.clone();
                drop(map);
                discard(Some(t));
                return Ok(Joined::Flight { flight, started: false });
            }
            if self.departed.load(std::sync::atomic::Ordering::SeqCst) != departed {
                // A download finished meanwhile, perhaps of this blob: look at the store again.
                drop(map);
                temp = Some(t);
                continue;
            }
            let flight = self.launch(digest, origin, opener, Commit::Shared { private }, t)?;
            map.insert(digest.clone(), flight.clone());
            return Ok(Joined::Flight { flight, started: true });
        }
    }

    /// A download with one client's own credentials, stored marked private. It is listed like any
    /// flight until its commit, so the same client asking again before the file is in place joins it
    /// instead of downloading again; every other request that joins a private flight proves its own
    /// access to the origin first (see `Cache::get_blob`). When another flight of the digest is
    /// already listed, this one runs unlisted.
    pub async fn private(self: &Arc<Self>, digest: &Digest, origin: &str, opener: Opener) -> io::Result<Arc<Flight>> {
        let temp = self.store.temp_file().await?;
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(digest) {
            drop(map);
            return self.launch(digest, origin, opener, Commit::Unlisted, temp);
        }
        let flight = self.launch(digest, origin, opener, Commit::Shared { private: true }, temp)?;
        map.insert(digest.clone(), flight.clone());
        Ok(flight)
    }

    /// Starts the download task into `temp` (created by the caller, outside any lock).
    fn launch(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        opener: Opener,
        commit: Commit,
        temp: crate::store::fs::TempFile,
    ) -> io::Result<Arc<Flight>> {
        let reader = temp.file.try_clone()?;
        let (tx, rx) = watch::channel(Progress::Connecting);
        let private = !matches!(commit, Commit::Shared { private: false });
        let flight = Arc::new(Flight {
            digest: digest.clone(),
            opener: opener.clone(),
            total: std::sync::OnceLock::new(),
            private,
            file: Arc::new(reader),
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
            let file = Arc::new(temp.file);
            let result = download(&flights.store, &origin, &announced, opener, file, &tx, &flights.metrics).await;
            drop(announced);
            match result {
                Ok((total, file)) => {
                    // The bytes are verified: readers may finish now, while the file is made durable
                    // and moved into place (off the async workers: fsync of a large file takes time).
                    tx.send_replace(Progress::Complete { total });
                    let committed = match flights.store.remote() {
                        // Shared tier: the local file was only the staging area.
                        Some(remote) => {
                            drop(file);
                            let kind = ContentKind::Blob.dir();
                            let marked = if private {
                                remote.mark_private(kind, &digest).await
                            } else {
                                remote.mark_public(kind, &digest).await
                            };
                            let uploaded = match marked {
                                Ok(()) => remote.put_blob_file(&digest, &temp.path).await,
                                Err(e) => Err(e),
                            };
                            remove_file(temp.path.clone()).await;
                            uploaded.map_err(io::Error::other)
                        }
                        None => {
                            let (store, path, d) = (flights.store.clone(), temp.path.clone(), digest.clone());
                            tokio::task::spawn_blocking(move || {
                                crate::store::fs::blocking_section(|| -> std::io::Result<()> {
                                    file.sync_all()?;
                                    if private {
                                        store.mark_private_blocking(ContentKind::Blob, &d)?;
                                    }
                                    store.commit_blob_blocking(&path, &d)
                                })
                            })
                            .await
                            .unwrap_or_else(|e| Err(io::Error::other(e)))
                        }
                    };
                    match committed {
                        Ok(()) => tracing::debug!(%digest, bytes = total, private, "blob stored"),
                        Err(e) => {
                            remove_file(temp.path.clone()).await;
                            tracing::warn!(%digest, error = %e, "verified blob could not be stored; it was served, not kept");
                        }
                    }
                }
                Err(e) => {
                    remove_file(temp.path.clone()).await;
                    tracing::warn!(%digest, error = %e, "blob download failed; nothing stored");
                    tx.send_replace(Progress::Failed(Arc::new(e)));
                }
            }
            if matches!(commit, Commit::Shared { .. }) {
                let mut map = flights.inflight.lock().unwrap_or_else(|p| p.into_inner());
                map.remove(&digest);
                flights.departed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            flights.metrics.inflight_downloads.dec();
            if flights.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                flights.idle.notify_waiters();
            }
        });
        Ok(flight)
    }
}

/// How a finished download is published.
#[derive(Clone, Copy)]
enum Commit {
    /// Listed in the flight table (joinable by any request for the digest) and stored.
    Shared { private: bool },
    /// Not joinable; stored as private.
    Unlisted,
}

/// Removes a temp file off the async workers (best effort: a leftover is removed at the next start).
async fn remove_file(path: std::path::PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
}

/// Drops a temp file prepared for a download that another request started first.
fn discard(temp: Option<crate::store::fs::TempFile>) {
    if let Some(t) = temp {
        drop(t.file);
        tokio::spawn(remove_file(t.path));
    }
}

/// `pwrite` of a whole chunk, on the blocking pool (a write can wait on the disk for a long time).
async fn pwrite(file: &Arc<File>, bytes: &Bytes, offset: u64) -> io::Result<()> {
    let (file, bytes) = (file.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || file.write_all_at(&bytes, offset))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Writes a chunk at its offset. When the disk is full, asks for an eviction pass and tries once
/// more (the write is positioned, so a partial first attempt is simply overwritten).
/// `need`: bytes still to be written for this blob, so eviction frees enough at once.
async fn write_at(
    store: &FsStore,
    digest: &Digest,
    file: &Arc<File>,
    bytes: &Bytes,
    offset: u64,
    need: u64,
) -> io::Result<()> {
    match pwrite(file, bytes, offset).await {
        Err(e) if e.kind() == io::ErrorKind::StorageFull => {
            tracing::warn!(%digest, "disk full while storing a blob: evicting, then retrying");
            let seen = store.usage().passes();
            store.usage().request_pass(need);
            let waited = tokio::time::timeout(DISK_FULL_WAIT, store.usage().wait_for_pass_after(seen)).await;
            if waited.is_err() {
                return Err(e);
            }
            pwrite(file, bytes, offset).await
        }
        other => other,
    }
}

/// How long a fill waits for eviction to make room after the disk filled up.
const DISK_FULL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn download(
    store: &FsStore,
    origin: &str,
    flight: &Flight,
    opener: Opener,
    file: Arc<File>,
    tx: &watch::Sender<Progress>,
    metrics: &Metrics,
) -> Result<(u64, Arc<File>), Error> {
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
    // Small network chunks are gathered so the file, the hasher and the readers see fewer, larger writes.
    let mut pending = BytesMut::new();
    loop {
        let next = match source.body.next().await {
            Some(Ok(chunk)) => {
                pending.extend_from_slice(&chunk);
                Some(Ok(()))
            }
            other => other.map(|r| r.map(|_| ())),
        };
        let ended = !matches!(next, Some(Ok(())));
        if !pending.is_empty() && (ended || pending.len() >= 64 * 1024 || source.body.size_hint().0 == 0) {
            if total.is_some_and(|t| written + pending.len() as u64 > t) {
                return Err(bad_body(origin, digest, "more bytes than Content-Length"));
            }
            let need = total.map_or(pending.len() as u64, |t| t - written);
            let chunk = pending.split().freeze();
            write_at(store, digest, &file, &chunk, written, need).await?;
            hasher.update(&chunk);
            written += chunk.len() as u64;
            metrics.bytes_from_upstream.inc_by(chunk.len() as u64);
            tx.send_replace(Progress::Receiving { written, total });
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
    Ok((written, file))
}

fn bad_body(origin: &str, digest: &Digest, detail: &str) -> Error {
    Error::BadUpstreamBody { origin: origin.to_owned(), what: format!("blob {digest}"), detail: detail.into() }
}

impl Flight {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn is_private(&self) -> bool {
        self.private
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
                    let n = (until - pos).min(READ_CHUNK as u64) as usize;
                    let file = flight.file.clone();
                    let read = tokio::task::spawn_blocking(move || read_exact_at(&file, pos, n)).await;
                    let bytes = match read {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => return Some((Err(e), None)),
                        Err(e) => return Some((Err(io::Error::other(e)), None)),
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
        let file = flight.file.clone();
        let bytes =
            tokio::task::spawn_blocking(move || read_exact_at(&file, off, n)).await.map_err(io::Error::other)??;
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

fn read_exact_at(file: &File, pos: u64, n: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, pos)?;
    Ok(Bytes::from(buf))
}

/// Streams `start..end` of a committed blob file.
pub fn read_file(file: File, start: u64, end: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let file = Arc::new(file);
    futures_util::stream::unfold((file, start), move |(file, pos)| async move {
        if pos >= end {
            return None;
        }
        let n = (end - pos).min(READ_CHUNK as u64) as usize;
        let f = file.clone();
        match tokio::task::spawn_blocking(move || read_exact_at(&f, pos, n)).await {
            Ok(Ok(b)) => Some((Ok(b), (file, pos + n as u64))),
            Ok(Err(e)) => Some((Err(e), (file, end))),
            Err(e) => Some((Err(io::Error::other(e)), (file, end))),
        }
    })
}
