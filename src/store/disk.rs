//! The local-disk store. Every write goes to `tmp/`, is fsynced, then renamed into place (and the
//! directory fsynced), so a crash at any point leaves either the old state or the complete new file,
//! never a partial one where a reader looks.
//!
//! Every method that touches the disk is `async` and runs its I/O on tokio's blocking pool
//! (`spawn_blocking`), so a slow disk (an fsync, a cold directory lookup) stalls one blocking thread,
//! never an async worker serving other requests. The `*_blocking` forms are for code that already runs
//! on a blocking thread; debug builds check that they are not called from an async worker.
//!
//! The layout under the cache directory is `layout`'s; `tmp/` holds fills in progress (stale ones are
//! removed at start).
//!
//! Blobs this process wrote were verified as they arrived; a blob found on disk from before (a
//! restart, another tool) is verified on its first full read, as bucket objects are, and then
//! remembered as verified (bounded: a forgotten one is verified again).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};

use prometheus_client::metrics::counter::Counter;

pub use super::layout::valid_media_type;
use super::{layout, StoredManifest, TagEntry};
use crate::oci::{Digest, RegistryName, Repository, Tag};

/// Temp files untouched for this long belong to no live fill (fills write continuously).
const STALE_TMP: Duration = Duration::from_secs(15 * 60);
/// Digests remembered as verified: a few hundred bytes each; one forgotten costs one more hash.
const MAX_VERIFIED: u64 = 200_000;

/// The two kinds of content-addressed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    Blob,
    Manifest,
}

impl ContentKind {
    pub fn dir(self) -> &'static str {
        match self {
            ContentKind::Blob => "blobs",
            ContentKind::Manifest => "manifests",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Disk {
    root: PathBuf,
    usage: Arc<Usage>,
    hot: Arc<super::hot::HotCache>,
    /// Uses of stored files not yet written to their mtimes (see `recency`).
    recency: Arc<super::recency::Recency>,
    /// Blobs known to match their digest in this process (committed by a verified fill, or read
    /// whole once); others are verified on their next full read.
    verified: moka::sync::Cache<Digest, ()>,
    /// Content found not to match its digest (`ocicache_store_corrupt_total{tier="disk"}`).
    corrupt: Counter,
}

/// Approximate bytes and files in the store, kept between eviction passes (each pass rescans and
/// corrects it), and the signals between writers and the evictor.
#[derive(Debug, Default)]
pub struct Usage {
    bytes: AtomicU64,
    entries: AtomicU64,
    changed: Notify,
    forced: AtomicBool,
    needed: AtomicU64,
    passes: AtomicU64,
    passed: Notify,
}

impl Usage {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    fn added(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    pub fn reset(&self, bytes: u64, entries: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.entries.store(entries, Ordering::Relaxed);
    }

    /// A write ran out of space: ask for a pass that frees at least `need` bytes (and a tenth of the
    /// store), even below `--max-size`.
    pub fn request_pass(&self, need: u64) {
        self.needed.fetch_max(need, Ordering::SeqCst);
        self.forced.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Bytes asked for by writers that ran out of space since the last pass.
    pub fn take_needed(&self) -> u64 {
        self.needed.swap(0, Ordering::SeqCst)
    }

    /// Waits for growth or a request; returns whether a pass was requested.
    pub async fn wait_for_pressure(&self) -> bool {
        self.changed.notified().await;
        self.forced.swap(false, Ordering::SeqCst)
    }

    pub fn passed(&self) {
        self.passes.fetch_add(1, Ordering::SeqCst);
        self.passed.notify_waiters();
    }

    /// Eviction passes completed so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }

    /// Waits until more than `seen` passes have completed.
    pub async fn wait_for_pass_after(&self, seen: u64) {
        loop {
            let notified = self.passed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.passes() > seen {
                return;
            }
            notified.await;
        }
    }
}

/// A temp file being filled; `commit_blob` moves it into place.
pub struct TempFile {
    pub path: PathBuf,
    pub file: File,
}

impl Disk {
    pub fn open(root: &Path) -> io::Result<Self> {
        for dir in ["blobs", "manifests", "tags", "private", "tmp"] {
            fs::create_dir_all(root.join(dir))?;
        }
        let store = Disk {
            root: root.to_path_buf(),
            usage: Arc::default(),
            hot: Arc::default(),
            recency: Arc::default(),
            verified: crate::bounded::lru(MAX_VERIFIED),
            corrupt: Counter::default(),
        };
        store.remove_stale_temp_files();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Counts corrupt content found in this tier in the process's metrics.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.corrupt = metrics.store_corrupt("disk");
        self
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Removes this process's unfinished temp files (at shutdown: nothing partial stays behind).
    pub fn remove_own_temp_files(&self) {
        let prefix = format!("fill-{}-", std::process::id());
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > STALE_TMP)
                .unwrap_or(true);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn content_path(&self, kind: ContentKind, d: &Digest) -> PathBuf {
        self.root.join(layout::content(kind, d))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.content_path(ContentKind::Blob, d)
    }

    /// Runs `f` on tokio's blocking pool (or right here outside a runtime, as in `ocicache gc`).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Disk) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        if tokio::runtime::Handle::try_current().is_err() {
            return f(self);
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || on_blocking_thread(|| f(&store)))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    pub fn blob_size_blocking(&self, d: &Digest) -> Option<u64> {
        assert_blocking_thread();
        fs::metadata(self.blob_path(d)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    pub fn open_blob_blocking(&self, d: &Digest) -> io::Result<Option<(File, u64)>> {
        assert_blocking_thread();
        match File::open(self.blob_path(d)) {
            Ok(f) => {
                let meta = f.metadata()?;
                self.record_use(ContentKind::Blob, d);
                Ok(Some((f, meta.len())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records a use of stored content for eviction (in memory; see `recency`). A full table asks the
    /// evictor for a pass, which writes the uses to disk and empties it.
    fn record_use(&self, kind: ContentKind, d: &Digest) {
        if !self.recency.record(kind, d, SystemTime::now()) {
            self.usage.changed.notify_one();
        }
    }

    /// Writes the uses recorded since the last call to the files' mtimes (ocicache's LRU clock), so
    /// an eviction pass, `ocicache gc` and a restarted process see them. Returns the files updated.
    pub fn flush_recency_blocking(&self) -> usize {
        assert_blocking_thread();
        let mut updated = 0;
        for ((kind, d), at) in self.recency.take() {
            let Ok(f) = File::open(self.content_path(kind, &d)) else { continue };
            let older = f.metadata().and_then(|m| m.modified()).map(|m| m < at).unwrap_or(true);
            if older && f.set_modified(at).is_ok() {
                updated += 1;
            }
        }
        updated
    }

    pub async fn flush_recency(&self) -> usize {
        self.blocking(|s| Ok(s.flush_recency_blocking())).await.unwrap_or(0)
    }

    /// Whether the in-memory record of uses is full and waits for a flush.
    pub fn recency_full(&self) -> bool {
        self.recency.is_full()
    }

    /// The last use of content recorded in memory and not yet flushed.
    pub fn recorded_use(&self, kind: ContentKind, d: &Digest) -> Option<SystemTime> {
        self.recency.last_use(kind, d)
    }

    pub fn temp_file_blocking(&self) -> io::Result<TempFile> {
        assert_blocking_thread();
        let path = self.root.join("tmp").join(format!("fill-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file })
    }

    /// Moves a fully written and verified temp file into place as blob `d`.
    pub fn commit_blob_blocking(&self, temp: &Path, d: &Digest) -> io::Result<()> {
        assert_blocking_thread();
        let dest = self.blob_path(d);
        let size = fs::metadata(temp)?.len();
        place(temp, &dest)?;
        self.usage.added(size);
        Ok(())
    }

    pub fn manifest_blocking(&self, d: &Digest) -> io::Result<Option<StoredManifest>> {
        assert_blocking_thread();
        let path = self.content_path(ContentKind::Manifest, d);
        if let Some((m, _)) = self.hot.manifest(d) {
            // An evicted manifest is fetched again rather than served from memory.
            return match fs::symlink_metadata(&path) {
                Ok(_) => {
                    self.record_use(ContentKind::Manifest, d);
                    self.hot.put_manifest(m.clone(), std::time::Instant::now());
                    Ok(Some(m))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
        }
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        self.record_use(ContentKind::Manifest, d);
        // Read from the file once per process (then from memory): checked like a blob from before a
        // restart, so a damaged or edited file is fetched again rather than served.
        let m = match layout::parse_manifest_file(d, Bytes::from(raw)) {
            Ok(m) if d.matches(&m.bytes) => m,
            _ => {
                self.corrupt.inc();
                tracing::error!(digest = %d, root = %self.root.display(), "stored manifest does not match its digest: removed, will be fetched again");
                let _ = fs::remove_file(&path);
                self.forget_private_marker(&path);
                return Ok(None);
            }
        };
        self.hot.put_manifest(m.clone(), std::time::Instant::now());
        Ok(Some(m))
    }

    pub fn put_manifest_blocking(&self, d: &Digest, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        if !valid_media_type(media_type) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe media type"));
        }
        let content = layout::manifest_file_content(media_type, bytes);
        self.write_atomic(&self.content_path(ContentKind::Manifest, d), &content)?;
        self.usage.added(content.len() as u64);
        Ok(())
    }

    /// Drops the private marker of an evicted blob or manifest file.
    pub fn forget_private_marker(&self, content: &Path) {
        let (Some(hex), Some(alg_dir)) = (content.file_name(), content.parent().and_then(Path::parent)) else {
            return;
        };
        let (Some(alg), Some(kind)) = (alg_dir.file_name(), alg_dir.parent().and_then(Path::file_name)) else {
            return;
        };
        let _ = fs::remove_file(self.root.join("private").join(kind).join(alg).join(hex));
    }

    fn private_marker(&self, kind: ContentKind, d: &Digest) -> PathBuf {
        self.root.join(layout::private_marker(kind, d))
    }

    pub fn is_private_blocking(&self, kind: ContentKind, d: &Digest) -> bool {
        assert_blocking_thread();
        self.private_marker(kind, d).exists()
    }

    pub fn mark_private_blocking(&self, kind: ContentKind, d: &Digest) -> io::Result<()> {
        self.write_atomic(&self.private_marker(kind, d), b"")
    }

    pub fn mark_public_blocking(&self, kind: ContentKind, d: &Digest) -> io::Result<()> {
        assert_blocking_thread();
        match fs::remove_file(self.private_marker(kind, d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The file holding a tag's entry for one media type.
    pub fn tag_file(&self, registry: &RegistryName, repo: &Repository, tag: &Tag, media_type: &str) -> PathBuf {
        self.root.join(layout::tag_entry(registry, repo, tag, media_type))
    }

    /// The directory holding a tag's entries.
    pub fn tag_dir(&self, registry: &RegistryName, repo: &Repository, tag: &Tag) -> PathBuf {
        self.root.join(layout::tag_dir(registry, repo, tag))
    }

    pub fn tag_entries_blocking(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        tag: &Tag,
    ) -> io::Result<Vec<TagEntry>> {
        self.tag_dir_entries_blocking(self.tag_dir(registry, repo, tag))
    }

    fn tag_dir_entries_blocking(&self, dir: PathBuf) -> io::Result<Vec<TagEntry>> {
        assert_blocking_thread();
        if let Some(entries) = self.hot.tag(&dir) {
            return Ok(entries);
        }
        let entries = self.read_tag_dir(&dir)?;
        self.hot.put_tag(dir, entries.clone());
        Ok(entries)
    }

    fn read_tag_dir(&self, dir: &Path) -> io::Result<Vec<TagEntry>> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "json") {
                // An unreadable entry is a cache miss, not an error: it is rewritten on the next fetch.
                if let Ok(e) = fs::read(entry.path()).and_then(|b| serde_json::from_slice(&b).map_err(io::Error::other))
                {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    pub fn put_tag_blocking(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        tag: &Tag,
        entry: &TagEntry,
        refresh_every: Option<Duration>,
    ) -> io::Result<bool> {
        let (dir, path) = (self.tag_dir(registry, repo, tag), self.tag_file(registry, repo, tag, &entry.media_type));
        self.put_tag_file_blocking(dir, &path, entry.clone(), refresh_every)
    }

    fn put_tag_file_blocking(
        &self,
        dir: PathBuf,
        path: &Path,
        entry: TagEntry,
        refresh_every: Option<Duration>,
    ) -> io::Result<bool> {
        assert_blocking_thread();
        if !valid_media_type(&entry.media_type) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe media type"));
        }
        let persisted: Option<TagEntry> = fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let current = match &persisted {
            Some(p) => {
                let same = TagEntry { fetched_at: entry.fetched_at, ..p.clone() } == entry;
                let lag = Duration::from_secs(entry.fetched_at.saturating_sub(p.fetched_at));
                !same || refresh_every.is_some_and(|every| lag >= every)
            }
            None => true,
        };
        if current {
            let json = serde_json::to_vec(&entry).map_err(io::Error::other)?;
            if let Err(e) = self.write_atomic(path, &json) {
                self.hot.forget_tag(&dir);
                return Err(e);
            }
        }
        // The in-memory copy carries the fresh entry either way.
        let mut entries = match self.hot.tag(&dir) {
            Some(e) => e,
            None => self.read_tag_dir(&dir)?,
        };
        entries.retain(|e| e.media_type != entry.media_type);
        entries.push(entry);
        self.hot.put_tag(dir, entries);
        Ok(current)
    }

    /// The file holding the referrers list of `subject` in a repository (`_referrers` cannot collide
    /// with a repository component, as `_tags`).
    fn referrers_file(&self, registry: &RegistryName, repo: &Repository, subject: &Digest) -> PathBuf {
        self.root.join(layout::referrers(registry, repo, subject))
    }

    fn write_atomic(&self, dest: &Path, content: &[u8]) -> io::Result<()> {
        assert_blocking_thread();
        let mut tmp = self.temp_file_blocking()?;
        let result = tmp.file.write_all(content).and_then(|_| tmp.file.sync_all()).and_then(|_| place(&tmp.path, dest));
        if result.is_err() {
            let _ = fs::remove_file(&tmp.path);
        }
        result
    }
}

/// How long a manifest served from memory goes without checking that its file was not evicted.
const RECHECK_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    /// Set while a store closure runs on tokio's blocking pool (see `Disk::blocking`).
    static ON_BLOCKING_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn on_blocking_thread<T>(f: impl FnOnce() -> T) -> T {
    let was = ON_BLOCKING_THREAD.with(|c| c.replace(true));
    let out = f();
    ON_BLOCKING_THREAD.with(|c| c.set(was));
    out
}

/// Runs `f` as store I/O off the async workers: for code that is already on a blocking thread of
/// its own (a `spawn_blocking` closure outside the store) and calls several `*_blocking` methods.
pub fn blocking_section<T>(f: impl FnOnce() -> T) -> T {
    on_blocking_thread(f)
}

/// Debug builds (every test) catch disk I/O on an async worker: inside a tokio runtime, the sync
/// store methods may only run within `Disk::blocking` or a `blocking_section`.
fn assert_blocking_thread() {
    #[cfg(debug_assertions)]
    if tokio::runtime::Handle::try_current().is_ok() && !ON_BLOCKING_THREAD.with(|c| c.get()) {
        panic!("store I/O on an async worker thread: use the async Disk methods");
    }
}

/// Renames `temp` to `dest` (creating parents) and fsyncs the directory so the rename survives a crash.
fn place(temp: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().ok_or_else(|| io::Error::other("destination has no parent"))?;
    fs::create_dir_all(parent)?;
    fs::rename(temp, dest)?;
    File::open(parent)?.sync_all()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads an opened blob file; see `Disk::open_blob` for when the read is verified.
struct DiskBlob {
    file: Arc<File>,
    digest: Digest,
    size: u64,
    store: Disk,
}

impl super::BlobReader for DiskBlob {
    /// Committed files are never modified (eviction only unlinks), so once verified a blob's file
    /// can go to the socket as is.
    fn file_for(&self, range: &std::ops::Range<u64>) -> Option<Arc<File>> {
        (range.end < self.size || self.store.verified.contains_key(&self.digest)).then(|| self.file.clone())
    }

    fn read(self: Box<Self>, range: std::ops::Range<u64>) -> super::ByteStream {
        let this = *self;
        if range.end < this.size || this.store.verified.contains_key(&this.digest) {
            return read_file(this.file, range).boxed();
        }
        // Not verified in this process yet: read it whole once, hashing.
        let whole = read_file(this.file.clone(), 0..this.size).boxed();
        let (store, digest) = (this.store.clone(), this.digest.clone());
        let verdict: super::verify::Verdict = Box::new(move |ok| {
            if ok {
                store.verified.insert(digest, ());
            } else {
                store.found_corrupt(&digest);
            }
        });
        super::verify::verified(whole, this.digest, this.size, range, verdict)
    }
}

/// Streams `range` of a file in chunks read on the blocking pool.
pub fn read_file(file: Arc<File>, range: std::ops::Range<u64>) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let end = range.end;
    futures_util::stream::unfold((file, range.start), move |(file, pos)| async move {
        if pos >= end {
            return None;
        }
        let n = (end - pos).min(READ_CHUNK as u64) as usize;
        let f = file.clone();
        match tokio::task::spawn_blocking(move || super::fill::read_exact_at(&f, pos, n)).await {
            Ok(Ok(b)) => Some((Ok(b), (file, pos + n as u64))),
            Ok(Err(e)) => Some((Err(e), (file, end))),
            Err(e) => Some((Err(io::Error::other(e)), (file, end))),
        }
    })
}

/// Bytes read from a file per chunk handed to a client.
pub const READ_CHUNK: usize = 1024 * 1024;

impl Disk {
    /// A blob that failed its digest: removed (the next request fetches it again), logged, counted.
    fn found_corrupt(&self, d: &Digest) {
        self.corrupt.inc();
        self.verified.invalidate(d);
        tracing::error!(digest = %d, root = %self.root.display(), "stored blob does not match its digest: removed, will be fetched again");
        let path = self.blob_path(d);
        let store = self.clone();
        let remove = move || {
            let _ = fs::remove_file(&path);
            store.forget_private_marker(&path);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }

    /// Whether a blob is remembered as verified in this process (for tests of the store).
    pub fn is_verified(&self, d: &Digest) -> bool {
        self.verified.contains_key(d)
    }
}

#[async_trait]
impl super::Store for Disk {
    fn describe(&self) -> String {
        format!("disk {}", self.root.display())
    }

    async fn blob_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        let d = d.clone();
        self.blocking(move |s| Ok(s.blob_size_blocking(&d))).await
    }

    /// Blobs this process committed were verified while they were written; any other (from before
    /// a restart) is verified on its first read that ends at the blob's end.
    async fn open_blob(&self, d: &Digest) -> io::Result<Option<super::StoredBlob>> {
        let d = d.clone();
        let opened = self
            .blocking({
                let d = d.clone();
                move |s| s.open_blob_blocking(&d)
            })
            .await?;
        Ok(opened.map(|(file, size)| {
            super::StoredBlob::new(
                size,
                Box::new(DiskBlob { file: Arc::new(file), digest: d, size, store: self.clone() }),
            )
        }))
    }

    async fn begin_fill(&self, d: &Digest) -> io::Result<super::Fill> {
        let d = d.clone();
        self.blocking(move |s| super::Fill::create_blocking(&s.root.join("tmp"), &d)).await
    }

    async fn commit_fill(&self, mut fill: super::Fill, private: bool) -> io::Result<()> {
        let Some(path) = fill.path().map(Path::to_path_buf) else {
            return Err(io::Error::other("fill already committed"));
        };
        let d = fill.digest().clone();
        let file = fill.file().try_clone()?;
        let committed = self
            .blocking(move |s| {
                file.sync_all()?;
                // Either way: a marker left without its blob (a crash between marking and placing, an
                // earlier private fill) must not make a public blob private, as in the bucket.
                if private {
                    s.mark_private_blocking(ContentKind::Blob, &d)?;
                } else {
                    s.mark_public_blocking(ContentKind::Blob, &d)?;
                }
                s.commit_blob_blocking(&path, &d)?;
                s.verified.insert(d, ());
                Ok(())
            })
            .await;
        if committed.is_ok() {
            // Renamed into place: the file is the store's now, not a staging file to remove.
            fill.take_path();
        }
        committed
    }

    async fn make_room(&self, need: u64) {
        let seen = self.usage.passes();
        self.usage.request_pass(need);
        self.usage.wait_for_pass_after(seen).await;
    }

    /// The hottest manifests are answered from memory; a file is looked at again (is it still
    /// there, or was it evicted?) at most once a minute per manifest.
    async fn manifest(&self, d: &Digest) -> io::Result<Option<StoredManifest>> {
        if let Some((m, checked)) = self.hot.manifest(d) {
            if checked.elapsed() < RECHECK_EVERY {
                self.record_use(ContentKind::Manifest, d);
                return Ok(Some(m));
            }
        }
        let d = d.clone();
        self.blocking(move |s| s.manifest_blocking(&d)).await
    }

    async fn put_manifest(&self, m: &StoredManifest, private: bool) -> io::Result<()> {
        let m = m.clone();
        self.blocking(move |s| {
            if private {
                s.mark_private_blocking(ContentKind::Manifest, &m.digest)?;
            } else {
                s.mark_public_blocking(ContentKind::Manifest, &m.digest)?;
            }
            s.put_manifest_blocking(&m.digest, &m.media_type, &m.bytes)
        })
        .await
    }

    /// An unreadable marker directory counts as private: fail closed.
    async fn is_private(&self, kind: ContentKind, d: &Digest) -> bool {
        let d = d.clone();
        self.blocking(move |s| Ok(s.is_private_blocking(kind, &d))).await.unwrap_or(true)
    }

    async fn set_private(&self, kind: ContentKind, d: &Digest, private: bool) -> io::Result<()> {
        let d = d.clone();
        self.blocking(
            move |s| if private { s.mark_private_blocking(kind, &d) } else { s.mark_public_blocking(kind, &d) },
        )
        .await
    }

    async fn tag_entries(&self, registry: &RegistryName, repo: &Repository, tag: &Tag) -> io::Result<Vec<TagEntry>> {
        let dir = self.tag_dir(registry, repo, tag);
        if let Some(entries) = self.hot.tag(&dir) {
            return Ok(entries);
        }
        self.blocking(move |s| s.tag_dir_entries_blocking(dir)).await
    }

    /// Every revalidation of an unchanged tag (each `:latest` pull with a short `--tag-ttl`) comes
    /// here with only a newer `fetched_at`. Rewriting the file each time would cost two fsyncs per
    /// pull, so the fresh `fetched_at` is kept in memory and the file is rewritten only when the
    /// entry changed otherwise, or when its `fetched_at` lags by `refresh_every` or more (`None`:
    /// never for that alone). A restart can therefore see a `fetched_at` up to `refresh_every` old,
    /// which only makes the tag revalidate sooner.
    async fn put_tag(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        tag: &Tag,
        entry: &TagEntry,
        refresh_every: Option<Duration>,
    ) -> io::Result<bool> {
        let (dir, path, entry) =
            (self.tag_dir(registry, repo, tag), self.tag_file(registry, repo, tag, &entry.media_type), entry.clone());
        self.blocking(move |s| s.put_tag_file_blocking(dir, &path, entry, refresh_every)).await
    }

    async fn referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
    ) -> io::Result<Option<Vec<u8>>> {
        let path = self.referrers_file(registry, repo, subject);
        self.blocking(move |_| {
            assert_blocking_thread();
            match fs::read(path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn put_referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
        json: Vec<u8>,
    ) -> io::Result<()> {
        let path = self.referrers_file(registry, repo, subject);
        self.blocking(move |s| s.write_atomic(&path, &json)).await
    }

    fn start_eviction(&self, policy: super::eviction::EvictionPolicy, metrics: Arc<crate::metrics::Metrics>) {
        super::eviction::spawn(self.clone(), policy, metrics);
    }

    /// A stat can hang on a failing disk: off the async workers, like all store I/O.
    async fn healthy(&self) -> bool {
        self.blocking(|s| Ok(s.root.join("tmp").is_dir())).await.unwrap_or(false)
    }

    async fn shutdown(&self) {
        // Uses recorded in memory become mtimes, so the next process evicts in the same order.
        self.flush_recency().await;
        let _ = self
            .blocking(|s| {
                s.remove_own_temp_files();
                Ok(())
            })
            .await;
    }
}
