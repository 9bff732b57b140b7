//! The local-disk store. Every write goes to `tmp/`, is fsynced, then renamed into place (and the
//! directory fsynced), so a crash at any point leaves either the old state or the complete new file,
//! never a partial one where a reader looks.
//!
//! Layout under the cache directory:
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>
//! manifests/<alg>/<hex[0..2]>/<hex>            media type, newline, raw bytes
//! tags/<registry>/<repository>/_tags/<tag>/<hex(media type)>.json
//! private/<blobs|manifests>/<alg>/<hex>        marker: content only served after an access check
//! tmp/                                          fills in progress; stale ones are removed at start
//! ```
//! `_tags` cannot collide with a repository component (those start with `[a-z0-9]`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

use bytes::Bytes;

use super::{StoredManifest, TagEntry};
use crate::oci::{Digest, RegistryName, Repository, Tag};

/// Temp files untouched for this long belong to no live fill (fills write continuously).
const STALE_TMP: Duration = Duration::from_secs(15 * 60);

/// The two kinds of content-addressed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub struct FsStore {
    root: PathBuf,
    usage: Arc<Usage>,
    hot: Arc<super::hot::HotCache>,
    /// The shared tier in object storage, when configured (`--storage s3://...`).
    remote: Option<Arc<super::object::ObjectTier>>,
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

impl FsStore {
    pub fn open(root: &Path) -> io::Result<Self> {
        for dir in ["blobs", "manifests", "tags", "private", "tmp"] {
            fs::create_dir_all(root.join(dir))?;
        }
        let store = FsStore { root: root.to_path_buf(), usage: Arc::default(), hot: Arc::default(), remote: None };
        store.remove_stale_temp_files();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This store with a shared object-storage tier behind it.
    pub fn with_remote(mut self, remote: Arc<super::object::ObjectTier>) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn remote(&self) -> Option<&Arc<super::object::ObjectTier>> {
        self.remote.as_ref()
    }

    /// A path below the root as a `/`-separated key, for the object tier.
    pub fn relative_key(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        Some(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"))
    }

    /// The on-disk form of a manifest: media type, newline, bytes.
    pub fn manifest_file_content(media_type: &str, bytes: &[u8]) -> Vec<u8> {
        let mut content = Vec::with_capacity(media_type.len() + 1 + bytes.len());
        content.extend_from_slice(media_type.as_bytes());
        content.push(b'\n');
        content.extend_from_slice(bytes);
        content
    }

    /// Parses the on-disk form of a manifest.
    pub fn parse_manifest_file(d: &Digest, raw: Bytes) -> io::Result<StoredManifest> {
        let Some(nl) = raw.iter().position(|&b| b == b'\n') else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("manifest {d} has no media type line")));
        };
        let media_type = String::from_utf8_lossy(&raw[..nl]).into_owned();
        Ok(StoredManifest { digest: d.clone(), media_type, bytes: raw.slice(nl + 1..) })
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

    fn content_path(&self, kind: &str, d: &Digest) -> PathBuf {
        self.root.join(kind).join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.content_path("blobs", d)
    }

    /// The size of a committed blob, if present.
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Opens a committed blob for reading, recording the access for eviction.
    pub fn open_blob(&self, d: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.blob_path(d)) {
            Ok(f) => {
                let meta = f.metadata()?;
                touch(&f, &meta);
                Ok(Some((f, meta.len())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new, uniquely named file in `tmp/`, opened for reading and writing.
    pub fn temp_file(&self) -> io::Result<TempFile> {
        let path = self.root.join("tmp").join(format!("fill-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file })
    }

    /// Moves a fully written and verified temp file into place as blob `d`.
    pub fn commit_blob(&self, temp: &Path, d: &Digest) -> io::Result<()> {
        let dest = self.blob_path(d);
        let size = fs::metadata(temp)?.len();
        place(temp, &dest)?;
        self.usage.added(size);
        Ok(())
    }

    pub fn manifest(&self, d: &Digest) -> io::Result<Option<StoredManifest>> {
        let path = self.content_path("manifests", d);
        if let Some((m, touched)) = self.hot.manifest(d) {
            if touched.elapsed() < TOUCH_EVERY {
                return Ok(Some(m));
            }
            // Record the access on disk (for eviction) at most once a minute, and make sure the file
            // is still there: an evicted manifest is fetched again rather than served from memory.
            match File::open(&path) {
                Ok(f) => {
                    if let Ok(meta) = f.metadata() {
                        touch(&f, &meta);
                    }
                    self.hot.put_manifest(m.clone(), std::time::Instant::now());
                    return Ok(Some(m));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        touch(&file, &meta);
        let mut raw = Vec::with_capacity(meta.len() as usize);
        io::Read::read_to_end(&mut file, &mut raw)?;
        let Some(nl) = raw.iter().position(|&b| b == b'\n') else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("manifest {d} has no media type line")));
        };
        let media_type = String::from_utf8_lossy(&raw[..nl]).into_owned();
        let bytes = Bytes::from(raw).slice(nl + 1..);
        let m = StoredManifest { digest: d.clone(), media_type, bytes };
        self.hot.put_manifest(m.clone(), std::time::Instant::now());
        Ok(Some(m))
    }

    /// Stores manifest bytes under their digest. The caller has verified `d` against `bytes`.
    pub fn put_manifest(&self, d: &Digest, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        if !valid_media_type(media_type) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe media type"));
        }
        let mut content = Vec::with_capacity(media_type.len() + 1 + bytes.len());
        content.extend_from_slice(media_type.as_bytes());
        content.push(b'\n');
        content.extend_from_slice(bytes);
        self.write_atomic(&self.content_path("manifests", d), &content)?;
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
        self.root.join("private").join(kind.dir()).join(d.algorithm().as_str()).join(d.hex())
    }

    /// Whether content was fetched with a client's own credentials (or from a private registry) and
    /// so may only be served after that client proved access.
    pub fn is_private(&self, kind: ContentKind, d: &Digest) -> bool {
        self.private_marker(kind, d).exists()
    }

    /// Marks content private. Called before the content is committed, so it is never visible unmarked.
    pub fn mark_private(&self, kind: ContentKind, d: &Digest) -> io::Result<()> {
        self.write_atomic(&self.private_marker(kind, d), b"")
    }

    /// The origin served this content anonymously: it is public after all.
    pub fn mark_public(&self, kind: ContentKind, d: &Digest) -> io::Result<()> {
        match fs::remove_file(self.private_marker(kind, d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The file holding a tag's entry for one media type.
    pub fn tag_file(&self, registry: &RegistryName, repo: &Repository, tag: &Tag, media_type: &str) -> PathBuf {
        self.tag_dir(registry, repo, tag).join(format!("{}.json", hex::encode(media_type)))
    }

    /// The directory holding a tag's entries.
    pub fn tag_dir(&self, registry: &RegistryName, repo: &Repository, tag: &Tag) -> PathBuf {
        self.root.join("tags").join(registry.as_str()).join(repo.as_str()).join("_tags").join(tag.as_str())
    }

    /// Every media type's entry for a tag.
    pub fn tag_entries(&self, registry: &RegistryName, repo: &Repository, tag: &Tag) -> io::Result<Vec<TagEntry>> {
        let dir = self.tag_dir(registry, repo, tag);
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

    pub fn put_tag(&self, registry: &RegistryName, repo: &Repository, tag: &Tag, entry: &TagEntry) -> io::Result<()> {
        if !valid_media_type(&entry.media_type) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe media type"));
        }
        let dir = self.tag_dir(registry, repo, tag);
        let path = self.tag_file(registry, repo, tag, &entry.media_type);
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let written = self.write_atomic(&path, &json);
        self.hot.forget_tag(&dir);
        written
    }

    /// The file holding the referrers list of `subject` in a repository (`_referrers` cannot collide
    /// with a repository component, as `_tags`).
    fn referrers_file(&self, registry: &RegistryName, repo: &Repository, subject: &Digest) -> PathBuf {
        self.root.join("tags").join(registry.as_str()).join(repo.as_str()).join("_referrers").join(format!(
            "{}-{}.json",
            subject.algorithm().as_str(),
            subject.hex()
        ))
    }

    /// The stored referrers list of `subject`, as written by `put_referrers`.
    pub fn referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
    ) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.referrers_file(registry, repo, subject)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn put_referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
        json: &[u8],
    ) -> io::Result<()> {
        self.write_atomic(&self.referrers_file(registry, repo, subject), json)
    }

    fn write_atomic(&self, dest: &Path, content: &[u8]) -> io::Result<()> {
        let mut tmp = self.temp_file()?;
        let result = tmp.file.write_all(content).and_then(|_| tmp.file.sync_all()).and_then(|_| place(&tmp.path, dest));
        if result.is_err() {
            let _ = fs::remove_file(&tmp.path);
        }
        result
    }
}

/// Access is recorded at most this often per file, to keep hits free of metadata writes.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Records an access in the file's modification time (ocicache's own LRU clock; see `eviction`).
fn touch(file: &File, meta: &fs::Metadata) {
    let stale = meta.modified().map(|t| t.elapsed().unwrap_or_default() >= TOUCH_EVERY).unwrap_or(true);
    if stale {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Renames `temp` to `dest` (creating parents) and fsyncs the directory so the rename survives a crash.
fn place(temp: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().ok_or_else(|| io::Error::other("destination has no parent"))?;
    fs::create_dir_all(parent)?;
    fs::rename(temp, dest)?;
    File::open(parent)?.sync_all()
}

/// Media types become part of stored files; only the characters RFC 6838 names allow are accepted.
pub fn valid_media_type(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 255
        && m.bytes().all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b))
        && m.bytes().filter(|&b| b == b'/').count() == 1
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
