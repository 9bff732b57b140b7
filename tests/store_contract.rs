//! One contract for every `Store`: the cache above it cannot tell which backend is in use, so each
//! backend must keep the same promises — nothing partial or unverified is ever served whole, fills
//! become visible only through a commit, markers, tags and referrers round-trip, and every method
//! runs on a single-threaded runtime (debug builds panic on disk I/O from an async worker).
//!
//! Each case in `case` is written once against a [`Backend`] and instantiated per backend by
//! `backend!`, so a failure names both (`bucket_s3::ranged_reads`, `tiered_memory::...`):
//! - `disk`: `Disk` on a temp dir;
//! - `bucket_memory`, `bucket_localfs`, `bucket_s3`: `Bucket` on object_store's in-memory store, its
//!   local filesystem store, and a real S3-compatible server (moto on loopback);
//! - `tiered_memory`, `tiered_s3`: `Tiered` (a `Disk` in front of a `Bucket`).
//!
//! Cases that need a disk tier (eviction, stale staging files, tag refresh) or a bucket (tampered
//! manifests) run where those exist; the `Tiered`-only cases check the copy from bucket to disk.

mod support;

use std::future::Future;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use ocicache::metrics::Metrics;
use ocicache::oci::{Digest, RegistryName, Repository, Tag};
use ocicache::store::eviction::{evict, plan, scan, EvictionPolicy};
use ocicache::store::{layout, Bucket, ContentKind, Disk, Fill, Store, StoredBlob, StoredManifest, TagEntry, Tiered};
use support::Moto;

/// How long a background effect (a removal, a copy to disk) may take before the test fails.
const SETTLE: Duration = Duration::from_secs(20);

/// Bytes per `Fill::write_at` in these tests: several writes per blob, as a download makes.
const WRITE: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Backends

/// Which object store a bucket lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Objects {
    Memory,
    LocalFs,
    S3,
}

/// A bucket: our own handle on its object store (to look at and tamper with objects behind the
/// store's back) and how the store addresses it.
struct Space {
    objects: Arc<dyn ObjectStore>,
    prefix: &'static str,
    url: String,
}

/// One backend under test: the store, plus everything needed to look under it and to open more
/// instances over the same content (a restart, another replica).
struct Backend {
    /// The directory of the `Disk` store, or of the `Tiered` store's disk tier.
    disk_root: Option<PathBuf>,
    /// The bucket of the `Bucket` store, or of the `Tiered` store's bucket tier.
    space: Option<Space>,
    store: Arc<dyn Store>,
    /// What `store` counts in.
    metrics: Arc<Metrics>,
    dir: tempfile::TempDir,
    _moto: Option<Arc<Moto>>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// One moto server for the tests of this binary that run at the same time; it stops when the last
/// of them drops it (a static that owned it would never be dropped, leaving the process behind).
fn shared_moto() -> Arc<Moto> {
    static MOTO: Mutex<Weak<Moto>> = Mutex::new(Weak::new());
    let mut slot = MOTO.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(moto) = slot.upgrade() {
        return moto;
    }
    let moto = Arc::new(Moto::start());
    *slot = Arc::downgrade(&moto);
    moto
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking test step")
}

impl Backend {
    async fn disk() -> Backend {
        Backend::build(true, None).await
    }

    async fn bucket(objects: Objects) -> Backend {
        Backend::build(false, Some(objects)).await
    }

    async fn tiered(objects: Objects) -> Backend {
        Backend::build(true, Some(objects)).await
    }

    async fn build(with_disk: bool, objects: Option<Objects>) -> Backend {
        let dir = blocking(|| tempfile::tempdir().expect("temp dir")).await;
        let disk_root = with_disk.then(|| dir.path().join("disk"));
        let mut moto = None;
        let space = match objects {
            None => None,
            Some(Objects::Memory) => {
                Some(Space { objects: Arc::new(InMemory::new()), prefix: "", url: "memory://".into() })
            }
            Some(Objects::LocalFs) => {
                let root = dir.path().join("objects");
                let local = blocking(move || {
                    std::fs::create_dir_all(&root).expect("objects dir");
                    LocalFileSystem::new_with_prefix(&root).expect("local object store")
                })
                .await;
                Some(Space { objects: Arc::new(local), prefix: "cache", url: "file://objects/cache".into() })
            }
            Some(Objects::S3) => {
                let bucket = format!("contract-{}-{}", std::process::id(), unique());
                let name = bucket.clone();
                let m = blocking(move || {
                    let m = shared_moto();
                    m.create_bucket(&name);
                    m
                })
                .await;
                let s3 = AmazonS3Builder::new()
                    .with_endpoint(m.endpoint())
                    .with_allow_http(true)
                    .with_bucket_name(&bucket)
                    .with_region("us-east-1")
                    .with_access_key_id("test")
                    .with_secret_access_key("test")
                    .build()
                    .expect("S3 client");
                moto = Some(m);
                // A prefix, as replicas sharing a bucket with other data use.
                Some(Space { objects: Arc::new(s3), prefix: "ocicache/v1", url: format!("s3://{bucket}/ocicache/v1") })
            }
        };
        let metrics = Arc::new(Metrics::new());
        let staging = dir.path().join("staging");
        let store = open_store(disk_root.as_deref(), space.as_ref(), &staging, &metrics).await;
        Backend { disk_root, space, store, metrics, dir, _moto: moto }
    }

    /// The tiers a blob read goes through, in order (the `tier` label of the store's metrics).
    fn tiers(&self) -> &'static [&'static str] {
        match (&self.disk_root, &self.space) {
            (Some(_), None) => &["disk"],
            (None, Some(_)) => &["bucket"],
            _ => &["disk", "bucket"],
        }
    }

    /// A new instance over the same content, counting in its own metrics: a restarted process that
    /// remembers nothing (no digest known as verified, no cached marker or manifest).
    async fn reopen(&self) -> (Arc<dyn Store>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let store = open_store(self.disk_root.as_deref(), self.space.as_ref(), &self.staging_dir(), &metrics).await;
        (store, metrics)
    }

    /// Another replica of a tiered store: its own, empty disk tier, the same bucket.
    async fn replica(&self) -> (Arc<dyn Store>, PathBuf, Arc<Metrics>) {
        assert!(self.space.is_some() && self.disk_root.is_some(), "replicas are of tiered stores");
        let root = self.dir.path().join(format!("replica-{}", unique()));
        let metrics = Arc::new(Metrics::new());
        let store = open_store(Some(&root), self.space.as_ref(), &root, &metrics).await;
        (store, root, metrics)
    }

    /// A plain `Bucket` on this backend's bucket (what a replica without a disk tier would be).
    async fn bare_bucket(&self) -> Arc<dyn Store> {
        let staging = self.dir.path().join(format!("staging-{}", unique()));
        open_store(None, self.space.as_ref(), &staging, &Metrics::new()).await
    }

    /// Where fills are staged until they are committed.
    fn staging_dir(&self) -> PathBuf {
        match &self.disk_root {
            Some(root) => root.join("tmp"),
            None => self.dir.path().join("staging"),
        }
    }

    fn file(&self, rel: &str) -> Option<PathBuf> {
        self.disk_root.as_ref().map(|r| r.join(rel))
    }

    fn key(&self, rel: &str) -> Option<ObjectPath> {
        self.space.as_ref().map(|s| object_key(s, rel))
    }

    fn objects(&self) -> Option<&Arc<dyn ObjectStore>> {
        self.space.as_ref().map(|s| &s.objects)
    }

    /// Whether the disk (tier) holds `rel`; `None` without one.
    async fn has_file(&self, rel: &str) -> Option<bool> {
        match self.file(rel) {
            Some(p) => Some(blocking(move || p.exists()).await),
            None => None,
        }
    }

    /// Whether the bucket (tier) holds `rel`; `None` without one.
    async fn has_object(&self, rel: &str) -> Option<bool> {
        let (objects, key) = (self.objects()?, self.key(rel)?);
        Some(match objects.head(&key).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("head {key}: {e}"),
        })
    }

    /// Whether any tier still holds `rel`.
    async fn holds(&self, rel: &str) -> bool {
        self.has_file(rel).await.unwrap_or(false) || self.has_object(rel).await.unwrap_or(false)
    }

    /// Replaces `rel` with `bytes` behind the store's back, in every tier that has it.
    async fn tamper(&self, rel: &str, bytes: &[u8]) {
        let mut done = 0;
        if let Some(p) = self.file(rel) {
            let bytes = bytes.to_vec();
            blocking(move || std::fs::write(p, bytes).expect("tamper with a file")).await;
            done += 1;
        }
        if let (Some(objects), Some(key)) = (self.objects(), self.key(rel)) {
            objects.put(&key, PutPayload::from(bytes.to_vec())).await.expect("tamper with an object");
            done += 1;
        }
        assert!(done > 0);
    }

    async fn delete_object(&self, rel: &str) {
        let (objects, key) = (self.objects().expect("a bucket"), self.key(rel).expect("a bucket"));
        objects.delete(&key).await.expect("delete object");
    }

    /// Blob files on disk and blob objects in the bucket (`None` for a tier the backend lacks).
    async fn blob_copies(&self) -> (Option<usize>, Option<usize>) {
        let files = match &self.disk_root {
            Some(root) => {
                let blobs = root.join("blobs");
                Some(blocking(move || files_under(&blobs).len()).await)
            }
            None => None,
        };
        let objects = match &self.space {
            Some(s) => {
                let prefix = object_key(s, "blobs");
                let listed: Vec<_> = s.objects.list(Some(&prefix)).try_collect().await.expect("list blobs");
                Some(listed.len())
            }
            None => None,
        };
        (files, objects)
    }

    /// Names of the files in the staging directory.
    async fn staged(&self) -> Vec<String> {
        let dir = self.staging_dir();
        blocking(move || match std::fs::read_dir(&dir) {
            Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {}: {e}", dir.display()),
        })
        .await
    }
}

fn object_key(s: &Space, rel: &str) -> ObjectPath {
    if s.prefix.is_empty() {
        ObjectPath::from(rel)
    } else {
        ObjectPath::from(format!("{}/{rel}", s.prefix))
    }
}

/// A store over a disk directory, a bucket, or both (tiered, staging in the disk tier's `tmp/` as
/// `store::open` does it); `staging` is the bucket's own staging directory when there is no disk.
async fn open_store(disk_root: Option<&Path>, space: Option<&Space>, staging: &Path, m: &Metrics) -> Arc<dyn Store> {
    let disk = match disk_root {
        Some(root) => {
            let root = root.to_path_buf();
            Some(blocking(move || Disk::open(&root)).await.expect("open disk store").with_metrics(m))
        }
        None => None,
    };
    let bucket = match space {
        Some(s) => {
            let staging = match disk_root {
                Some(root) => root.join("tmp"),
                None => staging.to_path_buf(),
            };
            let (objects, prefix, url) = (s.objects.clone(), s.prefix, s.url.clone());
            let bucket = blocking(move || Bucket::new(objects, prefix, &url, &staging)).await;
            Some(bucket.expect("bucket store").with_metrics(m))
        }
        None => None,
    };
    match (disk, bucket) {
        (Some(disk), None) => Arc::new(disk),
        (None, Some(bucket)) => Arc::new(bucket),
        (Some(disk), Some(bucket)) => Arc::new(Tiered::new(disk, bucket)),
        (None, None) => unreachable!("a backend has a disk, a bucket or both"),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Deterministic bytes that differ per `seed` (so blobs of one test have distinct digests).
fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fill of `data`, written in several pieces, not committed.
async fn written_fill(store: &dyn Store, data: &[u8]) -> Fill {
    let d = Digest::sha256_of(data);
    let fill = store.begin_fill(&d).await.expect("begin fill");
    write_pieces(&fill, data, false).await;
    fill
}

/// Writes `data` into `fill` piece by piece, first to last or last to first.
async fn write_pieces(fill: &Fill, data: &[u8], reverse: bool) {
    let mut pieces: Vec<(usize, &[u8])> = data.chunks(WRITE).enumerate().collect();
    if reverse {
        pieces.reverse();
    }
    for (i, piece) in pieces {
        fill.write_at(Bytes::copy_from_slice(piece), (i * WRITE) as u64).await.expect("write fill");
    }
}

async fn commit(store: &dyn Store, data: &[u8], private: bool) -> Digest {
    let fill = written_fill(store, data).await;
    let d = fill.digest().clone();
    store.commit_fill(fill, private).await.expect("commit fill");
    d
}

/// Everything a read yields: the bytes, and the error that ended it early, if one did.
async fn drain(blob: StoredBlob, range: Range<u64>) -> (Vec<u8>, Option<io::Error>) {
    let mut body = blob.read(range);
    let mut out = Vec::new();
    while let Some(item) = body.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

async fn open(store: &dyn Store, d: &Digest) -> StoredBlob {
    store.open_blob(d).await.expect("open blob").unwrap_or_else(|| panic!("blob {d} is not stored"))
}

/// Bytes `range` of a stored blob, which must read without an error.
async fn read_range(store: &dyn Store, d: &Digest, range: Range<u64>) -> Vec<u8> {
    let (body, err) = drain(open(store, d).await, range.clone()).await;
    assert!(err.is_none(), "reading {range:?} of {d} failed: {err:?}");
    body
}

async fn read_whole(store: &dyn Store, d: &Digest) -> Vec<u8> {
    let blob = open(store, d).await;
    let size = blob.size;
    let (body, err) = drain(blob, 0..size).await;
    assert!(err.is_none(), "reading {d} whole failed: {err:?}");
    body
}

/// Polls `check` (with a short back-off, not as synchronisation) until it holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE;
    let mut wait = Duration::from_millis(2);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {SETTLE:?} waiting for {what}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

/// `ocicache_store_corrupt_total{tier=...}` as `/metrics` shows it.
fn corrupt_count(m: &Metrics, tier: &str) -> u64 {
    let series = format!("ocicache_store_corrupt_total{{tier=\"{tier}\"}} ");
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().expect("counter value"))
        .unwrap_or(0)
}

fn blob_key(d: &Digest) -> String {
    layout::content(ContentKind::Blob, d)
}

fn manifest_key(d: &Digest) -> String {
    layout::content(ContentKind::Manifest, d)
}

fn names() -> (RegistryName, Repository, Tag) {
    (
        RegistryName::parse("registry.test:5000").expect("registry"),
        Repository::parse("team/app").expect("repository"),
        Tag::parse("v1.2").expect("tag"),
    )
}

fn manifest(body: &str, media_type: &str) -> StoredManifest {
    let bytes = Bytes::from(body.to_owned());
    StoredManifest { digest: Digest::sha256_of(&bytes), media_type: media_type.into(), bytes }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn entry(digest: &str, media_type: &str, fetched_at: u64) -> TagEntry {
    TagEntry { digest: digest.into(), media_type: media_type.into(), size: 512, fetched_at, private: false }
}

fn sorted(mut entries: Vec<TagEntry>) -> Vec<TagEntry> {
    entries.sort_by(|a, b| a.media_type.cmp(&b.media_type));
    entries
}

// ---------------------------------------------------------------------------------------------
// The contract

mod case {
    use super::*;

    /// A fill dropped before its commit (a failed download) leaves nothing: no blob, no staging file.
    pub async fn dropped_fill_leaves_nothing(b: &Backend) {
        let store = &*b.store;
        let data = bytes_of(700_000, 1);
        let d = Digest::sha256_of(&data);
        let fill = written_fill(store, &data).await;
        assert_eq!(b.staged().await.len(), 1, "the fill is staged while it is written");
        drop(fill);
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), None);
        assert!(store.open_blob(&d).await.expect("open_blob").is_none());
        eventually("the dropped fill's staging file to be removed", || async { b.staged().await.is_empty() }).await;
        // A half-written one too.
        let fill = store.begin_fill(&d).await.expect("begin fill");
        fill.write_at(Bytes::from(data[..1000].to_vec()), 0).await.expect("write");
        drop(fill);
        eventually("the half-written fill's staging file to be removed", || async { b.staged().await.is_empty() })
            .await;
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), None);
        assert!(!b.holds(&blob_key(&d)).await, "no tier holds the blob");
        let (fresh, _) = b.reopen().await;
        assert!(fresh.open_blob(&d).await.expect("open_blob").is_none());
    }

    /// A committed fill is the blob, whole, with the privacy it was committed with, also for a
    /// restarted process; nothing stays staged.
    pub async fn committed_fill_reads_whole_with_its_privacy(b: &Backend) {
        let store = &*b.store;
        let public = bytes_of(1_300_000, 2);
        let private = bytes_of(90_000, 3);
        let dp = commit(store, &public, false).await;
        let dq = commit(store, &private, true).await;
        assert_eq!(store.blob_size(&dp).await.expect("blob_size"), Some(public.len() as u64));
        assert_eq!(store.blob_size(&dq).await.expect("blob_size"), Some(private.len() as u64));
        assert_eq!(open(store, &dp).await.size, public.len() as u64);
        assert!(read_whole(store, &dp).await == public, "the committed bytes are read back");
        assert!(read_whole(store, &dq).await == private);
        assert!(!store.is_private(ContentKind::Blob, &dp).await, "committed public");
        assert!(store.is_private(ContentKind::Blob, &dq).await, "committed private");
        // Blob privacy is not manifest privacy.
        assert!(!store.is_private(ContentKind::Manifest, &dq).await);
        eventually("nothing to stay staged after the commits", || async { b.staged().await.is_empty() }).await;
        assert!(b.holds(&blob_key(&dp)).await);

        let (fresh, _) = b.reopen().await;
        assert!(read_whole(&*fresh, &dp).await == public, "durable: a restarted process reads it, verified");
        assert!(read_whole(&*fresh, &dq).await == private);
        assert!(!fresh.is_private(ContentKind::Blob, &dp).await);
        assert!(fresh.is_private(ContentKind::Blob, &dq).await, "the marker is durable too");
    }

    /// A commit's privacy is the blob's privacy, whatever marker was there before: a marker left
    /// without its blob (a crash between marking and placing it, or content fetched privately
    /// before) does not make a public fill private, or the blob could not be served without asking
    /// the origin (nor during an origin outage).
    pub async fn commit_decides_privacy_over_a_leftover_marker(b: &Backend) {
        let store = &*b.store;
        let (public, private) = (bytes_of(20_000, 15), bytes_of(20_000, 16));
        let (dp, dq) = (Digest::sha256_of(&public), Digest::sha256_of(&private));
        store.set_private(ContentKind::Blob, &dp, true).await.expect("leftover marker");
        commit(store, &public, false).await;
        commit(store, &private, true).await;
        assert!(!store.is_private(ContentKind::Blob, &dp).await, "committed public over a leftover marker");
        assert!(store.is_private(ContentKind::Blob, &dq).await);
        let (fresh, _) = b.reopen().await;
        assert!(!fresh.is_private(ContentKind::Blob, &dp).await);
        assert!(fresh.is_private(ContentKind::Blob, &dq).await);
    }

    /// A fill whose process died mid-way (its `Fill` never dropped, or a staging file left from a
    /// crash) is never visible as a blob; a restart removes stale staging files but not fresh ones
    /// (they may belong to a live process sharing the directory), and a shutdown removes its own.
    pub async fn leaked_fill_is_never_a_blob(b: &Backend) {
        let store = &*b.store;
        let data = bytes_of(600_000, 4);
        let d = Digest::sha256_of(&data);
        // Completely written and verified, but the process "dies" before the commit.
        std::mem::forget(written_fill(store, &data).await);
        assert_eq!(b.staged().await.len(), 1);
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), None);
        assert!(store.open_blob(&d).await.expect("open_blob").is_none());
        assert!(!b.holds(&blob_key(&d)).await);

        if b.disk_root.is_some() {
            // Another process's fill, dead for an hour: same bytes, staged the way a fill is.
            let stale = b.staging_dir().join("fill-1-00000000deadbeef");
            let (path, bytes) = (stale.clone(), data.clone());
            blocking(move || {
                std::fs::write(&path, bytes).expect("stale staging file");
                let f = std::fs::File::options().write(true).open(&path).expect("open stale file");
                f.set_modified(SystemTime::now() - Duration::from_secs(3600)).expect("age the stale file");
            })
            .await;
            let (fresh, _) = b.reopen().await;
            assert!(fresh.open_blob(&d).await.expect("open_blob").is_none(), "a staged file is no blob");
            assert_eq!(fresh.blob_size(&d).await.expect("blob_size"), None);
            let left = b.staged().await;
            assert!(!left.contains(&"fill-1-00000000deadbeef".to_owned()), "the stale file was removed at open");
            assert_eq!(left.len(), 1, "the fresh one (maybe a live fill) was kept: {left:?}");
        } else {
            let (fresh, _) = b.reopen().await;
            assert!(fresh.open_blob(&d).await.expect("open_blob").is_none());
        }
        store.shutdown().await;
        assert_eq!(b.staged().await, Vec::<String>::new(), "shutdown removes this process's unfinished fills");
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), None);
    }

    /// Two fills of one digest (two downloads that raced) both commit: one blob with the right bytes,
    /// and readers during and after the commits read them correctly.
    pub async fn concurrent_fills_make_one_blob(b: &Backend) {
        let store = &*b.store;
        let data = bytes_of(2_500_000, 5);
        let d = Digest::sha256_of(&data);
        let (fa, fb) = (store.begin_fill(&d).await.expect("fill a"), store.begin_fill(&d).await.expect("fill b"));
        // Written interleaved, as two downloads progress side by side.
        tokio::join!(write_pieces(&fa, &data, false), write_pieces(&fb, &data, true));
        let reader = async {
            // A reader that arrives while the commits run sees the blob whole once it is there.
            let blob = loop {
                if let Some(blob) = store.open_blob(&d).await.expect("open_blob") {
                    break blob;
                }
                tokio::task::yield_now().await;
            };
            let size = blob.size;
            drain(blob, 0..size).await
        };
        let (ca, cb, (during, err)) = tokio::join!(store.commit_fill(fa, false), store.commit_fill(fb, false), reader);
        ca.expect("commit a");
        cb.expect("commit b");
        assert!(err.is_none(), "read during the commits failed: {err:?}");
        assert!(during == data, "read during the commits: {} bytes, not the blob", during.len());
        let (files, objects) = b.blob_copies().await;
        assert!(files.is_none_or(|n| n == 1), "one blob file, not {files:?}");
        assert!(objects.is_none_or(|n| n == 1), "one blob object, not {objects:?}");
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), Some(data.len() as u64));
        assert!(read_whole(store, &d).await == data);
        let (fresh, _) = b.reopen().await;
        assert!(read_whole(&*fresh, &d).await == data, "the one copy matches its digest");
        eventually("both staging files to be gone", || async { b.staged().await.is_empty() }).await;
    }

    /// Ranges come back exactly, whether they end inside the blob (sent as stored) or at its end
    /// (verified first), from the instance that committed the blob and from a restarted one.
    pub async fn ranged_reads(b: &Backend) {
        // Over one 5 MiB multipart part and several 1 MiB disk read chunks.
        let data = bytes_of(6 * 1024 * 1024 + 1234, 6);
        let n = data.len() as u64;
        let d = commit(&*b.store, &data, false).await;
        let (fresh, _) = b.reopen().await;
        let ranges = [0..n, 1000..2_100_000, 5..n - 1, n / 2..n, n - 1..n, 0..1, 4_000_000..5_300_000];
        for store in [&b.store, &fresh] {
            assert_eq!(open(&**store, &d).await.size, n);
            for r in ranges.clone() {
                let got = read_range(&**store, &d, r.clone()).await;
                assert!(got == data[r.start as usize..r.end as usize], "range {r:?}: {} bytes differ", got.len());
            }
        }
    }

    /// An empty blob (a real thing: empty layers and configs) is stored and read whole.
    pub async fn empty_blob(b: &Backend) {
        let d = commit(&*b.store, b"", false).await;
        assert_eq!(d, Digest::sha256_of(b""));
        assert_eq!(b.store.blob_size(&d).await.expect("blob_size"), Some(0));
        assert_eq!(read_range(&*b.store, &d, 0..0).await, Vec::<u8>::new());
        let (fresh, _) = b.reopen().await;
        let blob = open(&*fresh, &d).await;
        assert_eq!(blob.size, 0);
        let (body, err) = drain(blob, 0..0).await;
        assert!(body.is_empty() && err.is_none(), "{err:?}");
    }

    /// Bytes replaced behind the store's back (disk rot, a person or a bug with bucket access) are
    /// never served as the complete blob: a read that ends at the blob's end withholds at least
    /// the final byte and ends with an error, the bad copy is removed and counted. A tiered store
    /// then finds the bucket copy bad too, and keeps neither.
    pub async fn corrupt_blob_is_detected_and_removed(b: &Backend) {
        let data = bytes_of(1_500_000, 7);
        let n = data.len();
        let d = commit(&*b.store, &data, false).await;
        let mut bad = data.clone();
        bad[n / 2] ^= 0x55;
        b.tamper(&blob_key(&d), &bad).await;

        // A process that never verified this blob.
        let (fresh, metrics) = b.reopen().await;
        // By design a range that ends before the blob's end cannot be verified (the rest of the
        // blob is not read) and is sent as stored, as the origin would send it unverified too.
        assert!(read_range(&*fresh, &d, 0..1000).await == bad[..1000]);
        assert!(read_range(&*fresh, &d, 700_000..n as u64 - 1).await == bad[700_000..n - 1]);

        for tier in b.tiers() {
            let blob = open(&*fresh, &d).await;
            assert_eq!(blob.size, n as u64);
            let (body, err) = drain(blob, 0..n as u64).await;
            assert!(err.is_some(), "{tier}: a read of a corrupt blob ends with an error");
            assert!(body.len() < n, "{tier}: never the complete body ({} bytes)", body.len());
            assert_eq!(corrupt_count(&metrics, tier), 1, "{tier}: counted\n{}", metrics.render());
            let key = blob_key(&d);
            match *tier {
                "disk" => {
                    eventually("the corrupt file to be removed", || async { b.has_file(&key).await == Some(false) })
                        .await
                }
                _ => {
                    eventually("the corrupt object to be removed", || async { b.has_object(&key).await == Some(false) })
                        .await
                }
            }
        }
        assert_eq!(fresh.blob_size(&d).await.expect("blob_size"), None, "no copy is left");
        assert!(fresh.open_blob(&d).await.expect("open_blob").is_none());
        eventually("no copy of a bad blob to stay staged", || async { b.staged().await.is_empty() }).await;
        assert!(!b.holds(&blob_key(&d)).await, "a bad bucket copy is not copied to disk");
        assert_eq!(corrupt_count(&b.metrics, "disk") + corrupt_count(&b.metrics, "bucket"), 0);
    }

    /// A manifest object in the bucket that does not match its digest is not returned, and is removed.
    pub async fn corrupt_manifest_is_not_served_and_removed(b: &Backend) {
        let tampered = manifest(r#"{"schemaVersion":2,"layers":[]}"#, OCI_MANIFEST);
        let unparsable = manifest(r#"{"schemaVersion":2,"config":{}}"#, OCI_MANIFEST);
        for m in [&tampered, &unparsable] {
            b.store.put_manifest(m, false).await.expect("put manifest");
        }
        let objects = b.objects().expect("a bucket");
        let put = |m: &StoredManifest, raw: Vec<u8>| {
            let key = b.key(&manifest_key(&m.digest)).expect("a bucket");
            async move { objects.put(&key, PutPayload::from(raw)).await.expect("tamper") }
        };
        put(&tampered, layout::manifest_file_content(OCI_MANIFEST, br#"{"schemaVersion":2,"layers":[{}]}"#)).await;
        put(&unparsable, b"no media type line".to_vec()).await;
        // A process that has no copy of its own: the bucket's is all there is.
        let (reader, disk, metrics) = if b.disk_root.is_some() {
            let (replica, root, metrics) = b.replica().await;
            (replica, Some(root), metrics)
        } else {
            let (fresh, metrics) = b.reopen().await;
            (fresh, None, metrics)
        };
        for m in [&tampered, &unparsable] {
            assert!(reader.manifest(&m.digest).await.expect("manifest").is_none(), "a corrupt manifest is a miss");
            let key = manifest_key(&m.digest);
            eventually("the corrupt manifest object to be removed", || async {
                b.has_object(&key).await == Some(false)
            })
            .await;
            if let Some(root) = &disk {
                let p = root.join(&key);
                assert!(!blocking(move || p.exists()).await, "not copied to the replica's disk");
            }
        }
        assert_eq!(corrupt_count(&metrics, "bucket"), 2);
        assert!(reader.manifest(&tampered.digest).await.expect("manifest").is_none());
    }

    /// Manifests keep their bytes and media type, and their privacy as last stored.
    pub async fn manifests_round_trip(b: &Backend) {
        let store = &*b.store;
        let image =
            manifest(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#, OCI_MANIFEST);
        let index = manifest(r#"{"schemaVersion":2,"manifests":[]}"#, OCI_INDEX);
        let docker = manifest("{\"schemaVersion\":2}\n\n\r\nwith newlines", DOCKER_MANIFEST);
        assert!(store.manifest(&image.digest).await.expect("manifest").is_none());
        store.put_manifest(&image, false).await.expect("put");
        store.put_manifest(&index, true).await.expect("put");
        store.put_manifest(&docker, false).await.expect("put");
        let (fresh, _) = b.reopen().await;
        for s in [&b.store, &fresh] {
            for m in [&image, &index, &docker] {
                let got = s.manifest(&m.digest).await.expect("manifest").expect("stored");
                assert_eq!((&got.digest, &got.media_type, &got.bytes), (&m.digest, &m.media_type, &m.bytes));
            }
            assert!(!s.is_private(ContentKind::Manifest, &image.digest).await);
            assert!(s.is_private(ContentKind::Manifest, &index.digest).await);
            assert!(!s.is_private(ContentKind::Blob, &index.digest).await, "kinds are marked apart");
        }
        // Stored again as public (the origin served it anonymously after all): public.
        store.put_manifest(&index, false).await.expect("put");
        assert!(!store.is_private(ContentKind::Manifest, &index.digest).await);
        let (fresh, _) = b.reopen().await;
        assert!(!fresh.is_private(ContentKind::Manifest, &index.digest).await);
        // A media type that could leave its directory or break the stored form is refused.
        for bad in ["../../etc/passwd", "text/plain\nx", "", "a/b/c"] {
            let m = StoredManifest { media_type: bad.into(), ..manifest("{}", OCI_MANIFEST) };
            assert!(store.put_manifest(&m, false).await.is_err(), "media type {bad:?} accepted");
        }
    }

    /// Private markers turn on and off for blobs and manifests, independently, and durably.
    pub async fn private_markers_round_trip(b: &Backend) {
        let store = &*b.store;
        let d = Digest::sha256_of(b"marked content");
        for kind in [ContentKind::Blob, ContentKind::Manifest] {
            assert!(!store.is_private(kind, &d).await, "{kind:?}: nothing marked yet");
        }
        store.set_private(ContentKind::Blob, &d, true).await.expect("mark");
        assert!(store.is_private(ContentKind::Blob, &d).await);
        assert!(!store.is_private(ContentKind::Manifest, &d).await);
        assert!(b.reopen().await.0.is_private(ContentKind::Blob, &d).await, "durable");
        store.set_private(ContentKind::Manifest, &d, true).await.expect("mark");
        store.set_private(ContentKind::Blob, &d, false).await.expect("unmark");
        assert!(!store.is_private(ContentKind::Blob, &d).await, "unmarked right away, even if the answer was cached");
        assert!(store.is_private(ContentKind::Manifest, &d).await);
        let (fresh, _) = b.reopen().await;
        assert!(!fresh.is_private(ContentKind::Blob, &d).await);
        assert!(fresh.is_private(ContentKind::Manifest, &d).await);
        // Unmarking what is not marked is fine; marking twice too.
        store.set_private(ContentKind::Blob, &d, false).await.expect("unmark again");
        store.set_private(ContentKind::Manifest, &d, true).await.expect("mark again");
        store.set_private(ContentKind::Manifest, &d, false).await.expect("unmark");
        assert!(!b.reopen().await.0.is_private(ContentKind::Manifest, &d).await);
    }

    /// A tag has one entry per media type; writing one replaces only that one.
    pub async fn tag_entries_round_trip(b: &Backend) {
        let store = &*b.store;
        let (r, repo, tag) = names();
        assert_eq!(store.tag_entries(&r, &repo, &tag).await.expect("tag entries"), vec![], "unknown tag");
        let oci = entry("sha256:aa", OCI_INDEX, 100);
        let docker = TagEntry { private: true, ..entry("sha256:bb", DOCKER_MANIFEST, 100) };
        let plain = entry("sha256:cc", OCI_MANIFEST, 100);
        for e in [&oci, &docker, &plain] {
            assert!(store.put_tag(&r, &repo, &tag, e, None).await.expect("put tag"), "a new entry is written");
        }
        let moved = entry("sha256:dd", OCI_INDEX, 200);
        assert!(store.put_tag(&r, &repo, &tag, &moved, None).await.expect("put tag"), "a moved tag is written");
        let want = sorted(vec![moved.clone(), docker.clone(), plain.clone()]);
        assert_eq!(sorted(store.tag_entries(&r, &repo, &tag).await.expect("tag entries")), want);
        let (fresh, _) = b.reopen().await;
        assert_eq!(sorted(fresh.tag_entries(&r, &repo, &tag).await.expect("tag entries")), want, "durable");
        // Other tags, repositories and registries are apart, including a repository named like
        // this one's tag directory.
        let other_tag = Tag::parse("v1").expect("tag");
        let nested = Repository::parse("team/app/v1.2").expect("repository");
        let other_registry = RegistryName::parse("other.test").expect("registry");
        assert_eq!(fresh.tag_entries(&r, &repo, &other_tag).await.expect("tag entries"), vec![]);
        assert_eq!(fresh.tag_entries(&r, &nested, &tag).await.expect("tag entries"), vec![]);
        assert_eq!(fresh.tag_entries(&other_registry, &repo, &tag).await.expect("tag entries"), vec![]);
        let unsafe_type = entry("sha256:ee", "../../x", 1);
        assert!(store.put_tag(&r, &repo, &tag, &unsafe_type, None).await.is_err(), "unsafe media type accepted");
    }

    /// Disk (and the tiered store, whose disk tier decides): an unchanged entry with only a newer
    /// `fetched_at` is not rewritten until it lags by `refresh_every`, yet reads fresh in this
    /// process; a restart sees the last written one.
    pub async fn unchanged_tag_is_rewritten_only_when_stale(b: &Backend) {
        let store = &*b.store;
        let (r, repo, tag) = names();
        let every = Some(Duration::from_secs(150));
        let e = entry("sha256:aa", OCI_INDEX, 1000);
        assert!(store.put_tag(&r, &repo, &tag, &e, every).await.expect("put"));
        let later = TagEntry { fetched_at: 1100, ..e.clone() };
        assert!(!store.put_tag(&r, &repo, &tag, &later, every).await.expect("put"), "unchanged: not rewritten");
        assert_eq!(store.tag_entries(&r, &repo, &tag).await.expect("entries"), vec![later.clone()], "reads fresh");
        assert_eq!(b.reopen().await.0.tag_entries(&r, &repo, &tag).await.expect("entries"), vec![e.clone()]);
        let stale = TagEntry { fetched_at: 1150, ..e.clone() };
        assert!(store.put_tag(&r, &repo, &tag, &stale, every).await.expect("put"), "lags by 150 s: rewritten");
        assert_eq!(b.reopen().await.0.tag_entries(&r, &repo, &tag).await.expect("entries"), vec![stale.clone()]);
        assert!(!store
            .put_tag(&r, &repo, &tag, &TagEntry { fetched_at: 99_999, ..e.clone() }, None)
            .await
            .expect("put"));
        let moved = TagEntry { digest: "sha256:bb".into(), ..stale.clone() };
        assert!(store.put_tag(&r, &repo, &tag, &moved, None).await.expect("put"), "changed: always written");
        assert_eq!(b.reopen().await.0.tag_entries(&r, &repo, &tag).await.expect("entries"), vec![moved.clone()]);
        if b.space.is_some() {
            // The bucket got what the disk tier wrote: a replica starts from the same entry.
            let (replica, _, _) = b.replica().await;
            assert_eq!(replica.tag_entries(&r, &repo, &tag).await.expect("entries"), vec![moved]);
        }
    }

    pub async fn referrers_round_trip(b: &Backend) {
        let store = &*b.store;
        let (r, repo, _) = names();
        let (s1, s2) = (Digest::sha256_of(b"subject 1"), Digest::sha256_of(b"subject 2"));
        assert_eq!(store.referrers(&r, &repo, &s1).await.expect("referrers"), None);
        let first = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
        let second = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:ab"}]}"#.to_vec();
        store.put_referrers(&r, &repo, &s1, first.clone()).await.expect("put");
        assert_eq!(store.referrers(&r, &repo, &s1).await.expect("referrers"), Some(first));
        assert_eq!(store.referrers(&r, &repo, &s2).await.expect("referrers"), None);
        store.put_referrers(&r, &repo, &s1, second.clone()).await.expect("replace");
        assert_eq!(store.referrers(&r, &repo, &s1).await.expect("referrers"), Some(second.clone()));
        let (fresh, _) = b.reopen().await;
        assert_eq!(fresh.referrers(&r, &repo, &s1).await.expect("referrers"), Some(second));
        let other = Repository::parse("team/other").expect("repository");
        assert_eq!(fresh.referrers(&r, &other, &s1).await.expect("referrers"), None);
    }

    /// Eviction unlinks files; a read that opened the blob before (started or not) completes
    /// with the right bytes, verified or not.
    pub async fn eviction_does_not_cut_an_open_read(b: &Backend) {
        let root = b.disk_root.clone().expect("a disk tier");
        let data = bytes_of(3 * 1024 * 1024 + 77, 8);
        let d = commit(&*b.store, &data, false).await;
        let waiting = open(&*b.store, &d).await;
        // A process that has not verified the blob yet, mid-read.
        let (fresh, _) = b.reopen().await;
        let started = open(&*fresh, &d).await;
        let mut body = started.read(0..data.len() as u64);
        let first = body.next().await.expect("a first chunk").expect("first chunk read");
        assert!(!first.is_empty() && first.len() < data.len());

        let file = root.join(blob_key(&d));
        let evicted = blocking(move || {
            let disk = Disk::open(&root).expect("open disk");
            let victims =
                plan(scan(&disk), &EvictionPolicy { max_size: Some(0), max_age: None }, None, SystemTime::now());
            assert!(victims.iter().any(|v| v.path == file), "the blob is a victim: {victims:?}");
            evict(&disk, &victims);
            !file.exists()
        })
        .await;
        assert!(evicted, "the blob file was removed");
        let mut rest = first.to_vec();
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.expect("the started read continues"));
        }
        assert!(rest == data, "the started read got the whole blob");
        let (got, err) = drain(waiting, 0..data.len() as u64).await;
        assert!(err.is_none() && got == data, "the opened read got the whole blob: {err:?}");
        // Gone from disk; a tiered store still has the bucket copy.
        let expect = b.space.is_some().then_some(data.len() as u64);
        assert_eq!(b.store.blob_size(&d).await.expect("blob_size"), expect);
        assert_eq!(b.has_file(&blob_key(&d)).await, Some(false));
    }

    /// Tiered: a fill goes to both tiers, with its marker.
    pub async fn fill_goes_to_both_tiers(b: &Backend) {
        let data = bytes_of(400_000, 9);
        let d = commit(&*b.store, &data, true).await;
        let key = blob_key(&d);
        assert_eq!((b.has_file(&key).await, b.has_object(&key).await), (Some(true), Some(true)));
        let marker = layout::private_marker(ContentKind::Blob, &d);
        assert_eq!((b.has_file(&marker).await, b.has_object(&marker).await), (Some(true), Some(true)));
        // Another replica reads it from the bucket.
        let (replica, _, _) = b.replica().await;
        assert!(read_whole(&*replica, &d).await == data);
        assert!(replica.is_private(ContentKind::Blob, &d).await);
    }

    /// Tiered: a blob only in the bucket (committed by another replica) is served, and its first
    /// whole read leaves a copy on disk (with its marker) that later reads use without the bucket.
    pub async fn bucket_blob_is_served_and_copied_down(b: &Backend) {
        let store = &*b.store;
        let data = bytes_of(2_200_000, 10);
        let other = bytes_of(300_000, 11);
        let d = commit(&*b.bare_bucket().await, &data, true).await;
        let (replica, _, _) = b.replica().await;
        let e = commit(&*replica, &other, false).await;
        let key = blob_key(&d);
        assert_eq!(b.has_file(&key).await, Some(false));
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), Some(data.len() as u64));
        assert!(store.is_private(ContentKind::Blob, &d).await, "the bucket's marker is honoured");
        // A range is served from the bucket as well.
        assert!(read_range(store, &d, 10..20).await == data[10..20]);
        assert!(read_whole(store, &d).await == data);
        eventually("the blob to be copied to disk", || async { b.has_file(&key).await == Some(true) }).await;
        assert_eq!(b.has_file(&layout::private_marker(ContentKind::Blob, &d)).await, Some(true), "marker copied");
        eventually("the copy's staging file to be gone", || async { b.staged().await.is_empty() }).await;
        b.delete_object(&key).await;
        assert!(read_whole(store, &d).await == data, "served from disk, without the bucket");
        assert!(read_range(store, &d, 1_000_000..data.len() as u64).await == data[1_000_000..]);
        let (fresh, _) = b.reopen().await;
        assert!(read_whole(&*fresh, &d).await == data, "the disk copy is whole and matches");
        // The other replica's blob, likewise.
        assert!(read_whole(store, &e).await == other);
        eventually("the second blob to be copied to disk", || async { b.has_file(&blob_key(&e)).await == Some(true) })
            .await;
        assert!(!store.is_private(ContentKind::Blob, &e).await);
    }

    /// Tiered: a client that leaves a bucket read half-way leaves no partial copy on disk, and the
    /// next whole read copies the blob (the abandoned copy released its claim); two whole reads at
    /// once both get the blob.
    pub async fn abandoned_bucket_read_leaves_no_copy(b: &Backend) {
        let store = &*b.store;
        let data = bytes_of(3 * 1024 * 1024 + 5, 14);
        let d = commit(&*b.bare_bucket().await, &data, false).await;
        let key = blob_key(&d);
        let mut body = open(store, &d).await.read(0..data.len() as u64);
        let first = body.next().await.expect("a first chunk").expect("first chunk read");
        assert!(first.len() < data.len());
        drop(body);
        eventually("the abandoned copy's staging file to be removed", || async { b.staged().await.is_empty() }).await;
        assert_eq!(b.has_file(&key).await, Some(false), "no partial copy");
        let (one, two) = tokio::join!(read_whole(store, &d), read_whole(store, &d));
        assert!(one == data && two == data, "both concurrent reads got the blob");
        eventually("the blob to be copied to disk", || async { b.has_file(&key).await == Some(true) }).await;
        b.delete_object(&key).await;
        let (fresh, _) = b.reopen().await;
        assert!(read_whole(&*fresh, &d).await == data, "the disk copy is whole and matches");
    }

    /// Tiered: an empty blob (`sha256:e3b0...`, used by artifacts) only in the bucket is copied to
    /// disk by its first read like any other, rather than looked up in the bucket on every read.
    pub async fn empty_bucket_blob_is_copied_down(b: &Backend) {
        let d = commit(&*b.bare_bucket().await, b"", false).await;
        let key = blob_key(&d);
        assert_eq!(b.has_file(&key).await, Some(false));
        assert_eq!(read_range(&*b.store, &d, 0..0).await, Vec::<u8>::new());
        eventually("the empty blob to be copied to disk", || async { b.has_file(&key).await == Some(true) }).await;
        b.delete_object(&key).await;
        assert_eq!(b.store.blob_size(&d).await.expect("blob_size"), Some(0), "served from disk");
        assert_eq!(read_range(&*b.store, &d, 0..0).await, Vec::<u8>::new());
    }

    /// Housekeeping: healthy, described, and bounded where it has a disk: eviction empties the disk
    /// (tier) when asked to make room, and never touches the bucket, which keeps everything.
    pub async fn housekeeping(b: &Backend) {
        let store = &*b.store;
        assert!(store.healthy().await);
        let describe = store.describe();
        if let Some(root) = &b.disk_root {
            assert!(describe.contains(&root.display().to_string()), "{describe}");
        }
        if let Some(s) = &b.space {
            assert!(describe.contains(&s.url), "{describe}");
        }
        let data = bytes_of(50_000, 13);
        let d = commit(store, &data, false).await;
        store.start_eviction(EvictionPolicy { max_size: Some(1), max_age: None }, b.metrics.clone());
        tokio::time::timeout(SETTLE, store.make_room(1)).await.expect("make_room returns once a pass ran");
        // The pass that make_room waited for ran after the commit.
        assert!(b.has_file(&blob_key(&d)).await != Some(true), "evicted from disk");
        let expect = b.space.is_some().then_some(data.len() as u64);
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), expect, "the bucket keeps everything");
        if b.space.is_some() {
            assert!(read_whole(store, &d).await == data);
        }
    }

    /// Tiered: a bucket blob with wrong bytes is not copied to disk, and is removed from the bucket.
    pub async fn corrupt_bucket_blob_is_not_copied_down(b: &Backend) {
        let store = &*b.store;
        let data = bytes_of(1_100_000, 12);
        let (replica, _, _) = b.replica().await;
        let d = commit(&*replica, &data, false).await;
        let key = blob_key(&d);
        let mut bad = data.clone();
        bad[17] ^= 1;
        b.objects()
            .expect("a bucket")
            .put(&b.key(&key).expect("a bucket"), PutPayload::from(bad))
            .await
            .expect("tamper");
        let blob = open(store, &d).await;
        let (body, err) = drain(blob, 0..data.len() as u64).await;
        assert!(err.is_some() && body.len() < data.len(), "{} bytes, error {err:?}", body.len());
        assert_eq!(corrupt_count(&b.metrics, "bucket"), 1);
        eventually("the corrupt object to be removed", || async { b.has_object(&key).await == Some(false) }).await;
        eventually("the abandoned copy's staging file to be removed", || async { b.staged().await.is_empty() }).await;
        assert_eq!(b.has_file(&key).await, Some(false), "not copied to disk");
        assert_eq!(store.blob_size(&d).await.expect("blob_size"), None);
    }

    /// Tiered: manifests, tags and referrers only in the bucket are found, and kept on disk.
    pub async fn bucket_metadata_is_found_and_copied_down(b: &Backend) {
        let store = &*b.store;
        let (replica, _, _) = b.replica().await;
        let (r, repo, tag) = names();
        let m = manifest(r#"{"schemaVersion":2,"manifests":[{"platform":{}}]}"#, OCI_INDEX);
        let entries =
            sorted(vec![entry(&m.digest.to_string(), OCI_INDEX, 10), entry("sha256:bb", DOCKER_MANIFEST, 10)]);
        let refs = br#"{"manifests":[]}"#.to_vec();
        replica.put_manifest(&m, true).await.expect("put manifest");
        for e in &entries {
            replica.put_tag(&r, &repo, &tag, e, None).await.expect("put tag");
        }
        replica.put_referrers(&r, &repo, &m.digest, refs.clone()).await.expect("put referrers");

        let got = store.manifest(&m.digest).await.expect("manifest").expect("found in the bucket");
        assert_eq!((got.media_type.as_str(), &got.bytes), (OCI_INDEX, &m.bytes));
        assert!(store.is_private(ContentKind::Manifest, &m.digest).await);
        assert_eq!(sorted(store.tag_entries(&r, &repo, &tag).await.expect("tags")), entries);
        assert_eq!(store.referrers(&r, &repo, &m.digest).await.expect("referrers"), Some(refs.clone()));
        let copies = [
            manifest_key(&m.digest),
            layout::private_marker(ContentKind::Manifest, &m.digest),
            layout::tag_entry(&r, &repo, &tag, OCI_INDEX),
            layout::tag_entry(&r, &repo, &tag, DOCKER_MANIFEST),
            layout::referrers(&r, &repo, &m.digest),
        ];
        for rel in &copies {
            assert_eq!(b.has_file(rel).await, Some(true), "{rel} copied to disk");
        }
        for rel in &copies {
            b.delete_object(rel).await;
        }
        let (fresh, _) = b.reopen().await;
        let got = fresh.manifest(&m.digest).await.expect("manifest").expect("from disk");
        assert_eq!(got.bytes, m.bytes);
        assert!(fresh.is_private(ContentKind::Manifest, &m.digest).await);
        assert_eq!(sorted(fresh.tag_entries(&r, &repo, &tag).await.expect("tags")), entries);
        assert_eq!(fresh.referrers(&r, &repo, &m.digest).await.expect("referrers"), Some(refs));
    }
}

// ---------------------------------------------------------------------------------------------
// Instantiation: every case on every backend it applies to. current_thread everywhere: a store
// that did blocking I/O on the one worker would stall (and panic in debug builds).

macro_rules! tests {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "current_thread")]
            async fn $case() {
                let b = $make.await;
                case::$case(&b).await;
            }
        )*
    };
}

macro_rules! backend {
    ($name:ident = $make:expr; $($extra:ident),* $(,)?) => {
        mod $name {
            use super::*;
            tests!($make;
                dropped_fill_leaves_nothing,
                committed_fill_reads_whole_with_its_privacy,
                commit_decides_privacy_over_a_leftover_marker,
                leaked_fill_is_never_a_blob,
                concurrent_fills_make_one_blob,
                ranged_reads,
                empty_blob,
                corrupt_blob_is_detected_and_removed,
                manifests_round_trip,
                private_markers_round_trip,
                tag_entries_round_trip,
                referrers_round_trip,
                housekeeping,
                $($extra),*
            );
        }
    };
}

backend!(disk = Backend::disk();
    eviction_does_not_cut_an_open_read,
    unchanged_tag_is_rewritten_only_when_stale,
);
backend!(bucket_memory = Backend::bucket(Objects::Memory);
    corrupt_manifest_is_not_served_and_removed,
);
backend!(bucket_localfs = Backend::bucket(Objects::LocalFs);
    corrupt_manifest_is_not_served_and_removed,
);
backend!(bucket_s3 = Backend::bucket(Objects::S3);
    corrupt_manifest_is_not_served_and_removed,
);
backend!(tiered_memory = Backend::tiered(Objects::Memory);
    eviction_does_not_cut_an_open_read,
    unchanged_tag_is_rewritten_only_when_stale,
    corrupt_manifest_is_not_served_and_removed,
    fill_goes_to_both_tiers,
    bucket_blob_is_served_and_copied_down,
    empty_bucket_blob_is_copied_down,
    abandoned_bucket_read_leaves_no_copy,
    corrupt_bucket_blob_is_not_copied_down,
    bucket_metadata_is_found_and_copied_down,
);
backend!(tiered_s3 = Backend::tiered(Objects::S3);
    eviction_does_not_cut_an_open_read,
    unchanged_tag_is_rewritten_only_when_stale,
    corrupt_manifest_is_not_served_and_removed,
    fill_goes_to_both_tiers,
    bucket_blob_is_served_and_copied_down,
    empty_bucket_blob_is_copied_down,
    abandoned_bucket_read_leaves_no_copy,
    corrupt_bucket_blob_is_not_copied_down,
    bucket_metadata_is_found_and_copied_down,
);
