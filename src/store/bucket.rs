//! Object storage (S3 and S3-compatible servers, GCS, Azure Blob, a shared directory, or in memory),
//! shared by any number of replicas: blobs, manifests, tag entries, referrers and private markers
//! live in the bucket under the same keys as on disk (`layout`), so a new replica serves everything
//! the others cached. Fills are staged in a local directory and uploaded once verified.
//!
//! Anyone with write access to the bucket (another replica, a person, a bug) can put bytes there, so
//! nothing read from it is trusted: manifests are checked against their digest before use, and a
//! blob read that ends at the blob's end is verified while it streams (`verify`). A mismatch removes
//! the object, is logged and counted in `ocicache_store_corrupt_total{tier="bucket"}`.
//!
//! With `--redirect-blobs` a blob GET can be answered with a signed URL of the object (S3, GCS and
//! Azure sign them with the store's credentials), so the bytes go from the store to the client. The
//! client then gets them unchecked by ocicache, so a URL is only given for an object this process has
//! verified (it uploaded those bytes, or read them whole and they matched) and that has not changed
//! since (same ETag): an object someone replaced is served through ocicache again, verified, and
//! removed if it does not match.
//!
//! Credentials, region and endpoint come from the standard AWS environment
//! (`AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
//! web identity), so the seed's examples work unchanged.

use std::io;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart};
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncReadExt;

use super::{layout, ByteStream, ContentKind, Fill, StoredBlob, StoredManifest, TagEntry};
use crate::oci::{Digest, RegistryName, Repository, Tag};

/// Multipart parts of this size (S3's minimum) stream a blob to the bucket; with one part in flight
/// while the next is read, an upload holds about 10 MiB.
const PART: usize = 5 * 1024 * 1024;

/// How long a private-marker answer is reused: markers change rarely, and a lookup per manifest
/// request would cost a bucket round trip each.
const MARK_TTL: Duration = Duration::from_secs(30);

/// Private-marker answers kept at most (digests are the client's to choose); one forgotten costs one
/// bucket lookup.
const MAX_MARKS: u64 = 20_000;

/// Verified blob objects remembered for redirects (only objects that exist and matched get in); one
/// forgotten is served through ocicache once more, which verifies it again.
const MAX_VERIFIED: u64 = 20_000;

/// Whether `--storage URL` names a store that can sign URLs for `--redirect-blobs` (S3, GCS, Azure;
/// not a shared directory). Whether its credentials can sign shows only when it signs.
pub fn can_sign_urls(url: &str) -> bool {
    ["s3://", "gs://", "az://", "azure://"].iter().any(|p| url.starts_with(p))
}

/// Retries of one bucket request. Every lookup on a request's path (is the blob there? is it
/// private?) waits for them, and a bucket that is down is a miss (the origin or the disk tier
/// answers), so a request gives up on the bucket within seconds rather than object_store's default
/// of up to 3 minutes per request.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(5), ..Default::default() }
}

/// A bucket endpoint that does not accept a connection within this long is treated as down.
fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new().with_connect_timeout(Duration::from_secs(2))
}

pub(super) fn err(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        e => io::Error::other(format!("object storage: {e}")),
    }
}

#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    /// Where fills are written before they are verified and uploaded.
    staging: PathBuf,
    /// Recent answers to "is this private?", per (kind, digest), with when they were given.
    marks: moka::sync::Cache<(ContentKind, Digest), (bool, tokio::time::Instant)>,
    corrupt: Counter,
    /// Signs URLs of objects (`--redirect-blobs`), for the stores that can.
    signer: Option<Arc<dyn Signer>>,
    /// The ETag of each blob object whose bytes this process verified: uploaded them itself, or
    /// read the object whole and it matched its digest. Only these objects are handed out as URLs.
    verified: moka::sync::Cache<Digest, String>,
    /// A signing failure is logged once at warn (it repeats for every request), then at debug.
    sign_failure_logged: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.url)
    }
}

impl Bucket {
    /// Connects to `s3://bucket[/prefix]` (or `gs://`, `az://`, `file:///dir`) and checks, once,
    /// that the bucket can be listed: a missing bucket or bad credentials fail the start with the
    /// store's own message. Fills are staged in `staging`.
    pub async fn connect(url: &str, staging: &FsPath) -> Result<Bucket, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("--storage {url}: not a URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() && scheme != "file" {
            return Err(format!("--storage {url}: no bucket name"));
        }
        let built = |e: object_store::Error| format!("--storage {url}: {e}");
        let (store, signer, prefix): (Arc<dyn ObjectStore>, Option<Arc<dyn Signer>>, &str) = match scheme {
            "s3" => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry())
                    .with_client_options(client_options());
                let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL")).ok();
                if let Some(e) = endpoint.filter(|e| !e.is_empty()) {
                    builder = builder.with_allow_http(e.starts_with("http://")).with_endpoint(e);
                }
                let s3 = Arc::new(builder.build().map_err(built)?);
                (s3.clone(), Some(s3), prefix)
            }
            "gs" => {
                let builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry())
                    .with_client_options(client_options());
                let gcs = Arc::new(builder.build().map_err(built)?);
                (gcs.clone(), Some(gcs), prefix)
            }
            "az" | "azure" => {
                let builder = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(retry())
                    .with_client_options(client_options());
                let azure = Arc::new(builder.build().map_err(built)?);
                (azure.clone(), Some(azure), prefix)
            }
            // A directory shared by replicas (an NFS mount, say): the whole path is the root.
            "file" => {
                let dir = std::path::Path::new(rest);
                if !dir.is_absolute() {
                    return Err(format!("--storage {url}: use file:///absolute/path"));
                }
                std::fs::create_dir_all(dir).map_err(|e| format!("--storage {url}: {e}"))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(built)?;
                (Arc::new(local), None, "")
            }
            _ => {
                return Err(format!("--storage {url}: use s3://, gs://, az:// or file:// (local disk is the default)"))
            }
        };
        let mut bucket = Bucket::new(store, prefix, url, staging).map_err(|e| format!("--storage {url}: {e}"))?;
        bucket.signer = signer;
        bucket.store.list_with_delimiter(Some(&bucket.key("blobs"))).await.map_err(|e| {
            format!(
                "--storage {url}: cannot list the bucket ({e}); check the bucket name, the credentials and the \
                 endpoint (AWS_ENDPOINT_URL_S3/AWS_REGION for S3, GOOGLE_* for GCS, AZURE_* for Azure)"
            )
        })?;
        Ok(bucket)
    }

    /// A bucket on any `ObjectStore` (tests use object_store's in-memory and local-filesystem stores).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str, staging: &FsPath) -> io::Result<Bucket> {
        std::fs::create_dir_all(staging)?;
        Ok(Bucket {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            url: url.to_owned(),
            staging: staging.to_path_buf(),
            marks: crate::bounded::expiring(MAX_MARKS, MARK_TTL),
            corrupt: Counter::default(),
            signer: None,
            verified: crate::bounded::lru(MAX_VERIFIED),
            sign_failure_logged: Arc::default(),
        })
    }

    /// Signs URLs of verified blob objects with `signer` (tests give one to a store built by `new`).
    pub fn with_signer(mut self, signer: Arc<dyn Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Remembers that the object of blob `d` with this ETag holds the verified bytes.
    fn verified_object(&self, d: &Digest, e_tag: Option<String>) {
        if let Some(tag) = e_tag {
            self.verified.insert(d.clone(), tag);
        }
    }

    /// See `Store::blob_url`: a signed URL of blob `d`'s object, if this process verified that object
    /// and it is unchanged (a HEAD, so a deleted or replaced object is never handed out).
    pub(crate) async fn signed_blob_url(&self, d: &Digest, ttl: Duration) -> Option<url::Url> {
        let signer = self.signer.as_ref()?;
        let verified = self.verified.get(d)?;
        let key = self.blob_key(d);
        match self.store.head(&key).await {
            Ok(meta) if meta.e_tag.as_deref() == Some(verified.as_str()) => {}
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                // Replaced or removed since it was verified: served through ocicache, which checks it.
                self.verified.invalidate(d);
                return None;
            }
            Err(e) => {
                tracing::debug!(digest = %d, error = %e, "object storage lookup failed; the blob is not redirected");
                return None;
            }
        }
        match signer.signed_url(http::Method::GET, &key, ttl).await {
            Ok(url) => Some(url),
            Err(e) => {
                if !self.sign_failure_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(bucket = %self.url, error = %e, "cannot sign object URLs: blobs are served through ocicache instead of redirected (logged once)");
                } else {
                    tracing::debug!(bucket = %self.url, error = %e, "cannot sign an object URL");
                }
                None
            }
        }
    }

    /// Counts corrupt content found in the bucket in the process's metrics.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.corrupt = metrics.store_corrupt("bucket");
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object key for a key relative to the store root.
    fn key(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn blob_key(&self, d: &Digest) -> Path {
        self.key(&layout::content(ContentKind::Blob, d))
    }

    /// Uploads a verified blob from its staging file with a multipart upload (aborted on failure,
    /// so no parts are left behind); skipped when another replica already stored it.
    pub(crate) async fn put_blob_file(&self, d: &Digest, file: &FsPath) -> io::Result<()> {
        if super::Store::blob_size(self, d).await?.is_some() {
            return Ok(());
        }
        match self.upload_blob_file(d, file).await {
            // Replicas that filled the same blob at once (one from the origin, the others from it)
            // race to upload it; the store may refuse all but the first to complete. Their bytes
            // are the same verified blob, so the object being there is success.
            Err(e) if matches!(super::Store::blob_size(self, d).await, Ok(Some(_))) => {
                tracing::debug!(digest = %d, error = %e, "another replica uploaded this blob first");
                Ok(())
            }
            other => other,
        }
    }

    async fn upload_blob_file(&self, d: &Digest, file: &FsPath) -> io::Result<()> {
        let upload = self.store.put_multipart(&self.blob_key(d)).await.map_err(err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let result: io::Result<()> = async {
            let mut f = tokio::fs::File::open(file).await?;
            let mut buf = vec![0u8; PART];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(1).await.map_err(err)?;
                writer.write(&buf[..n]);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                // The bytes were verified before the upload: this object may be handed out as a URL.
                let put = writer.finish().await.map_err(err)?;
                self.verified_object(d, put.e_tag);
                Ok(())
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Uploads a verified fill (marked first, so it is never visible with the wrong marker); the
    /// staging file stays the fill's.
    pub(crate) async fn commit_fill_from(&self, fill: &Fill, private: bool) -> io::Result<()> {
        let path = fill.path().map(FsPath::to_path_buf).ok_or_else(|| io::Error::other("fill already committed"))?;
        super::Store::set_private(self, ContentKind::Blob, fill.digest(), private).await?;
        self.put_blob_file(fill.digest(), &path).await
    }

    /// Bytes `range` of a blob object, as stored (unverified).
    async fn get_range(&self, d: &Digest, range: Range<u64>) -> io::Result<ByteStream> {
        Ok(self.get_object_range(d, range).await?.1)
    }

    /// Bytes `range` of a blob object, as stored (unverified), with the object's ETag.
    async fn get_object_range(&self, d: &Digest, range: Range<u64>) -> io::Result<(Option<String>, ByteStream)> {
        if range.is_empty() {
            return Ok((None, futures_util::stream::empty().boxed()));
        }
        let opts = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let got = self.store.get_opts(&self.blob_key(d), opts).await.map_err(err)?;
        let e_tag = got.meta.e_tag.clone();
        Ok((e_tag, got.into_stream().map_err(err).boxed()))
    }

    /// A stream of `range` of blob `d` (`size` bytes), verified when it ends at the blob's end;
    /// `tee` sees every byte of the whole blob as it passes (the tiered store copies it to disk).
    pub(crate) fn read_blob(
        &self,
        d: Digest,
        size: u64,
        range: Range<u64>,
        tee: Option<super::tiered::Tee>,
    ) -> ByteStream {
        let bucket = self.clone();
        if range.end < size {
            // A range that ends earlier cannot be verified alone, and needs not be: the origin would
            // send exactly these bytes unverified too.
            return futures_util::stream::once(async move { bucket.get_range(&d, range).await }).try_flatten().boxed();
        }
        let (b, digest) = (self.clone(), d.clone());
        // The ETag of the object read: once its bytes matched, that object may be handed out as a URL.
        let read_e_tag: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let seen = read_e_tag.clone();
        let whole = futures_util::stream::once(async move {
            let (e_tag, stream) = b.get_object_range(&digest, 0..size).await?;
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = e_tag;
            Ok::<_, io::Error>(stream)
        })
        .try_flatten();
        let (whole, on_verdict): (ByteStream, Option<super::verify::Verdict>) = match tee {
            Some(tee) => {
                let (stream, verdict) = tee.attach(whole.boxed());
                (stream, Some(verdict))
            }
            None => (whole.boxed(), None),
        };
        let digest_of_read = d.clone();
        let verdict: super::verify::Verdict = Box::new(move |ok| {
            if ok {
                let e_tag = read_e_tag.lock().unwrap_or_else(|p| p.into_inner()).take();
                bucket.verified_object(&d, e_tag);
            } else {
                bucket.verified.invalidate(&d);
                bucket.found_corrupt(ContentKind::Blob, &d);
            }
            if let Some(v) = on_verdict {
                v(ok);
            }
        });
        super::verify::verified(whole, digest_of_read, size, range, verdict)
    }

    /// Bytes that failed their digest: the object is removed (the next request fetches it from the
    /// origin again), logged and counted.
    fn found_corrupt(&self, kind: ContentKind, d: &Digest) {
        self.corrupt.inc();
        tracing::error!(digest = %d, bucket = %self.url, kind = kind.dir(), "object in the bucket does not match its digest: removed, will be fetched again");
        let (store, key) = (self.store.clone(), self.key(&layout::content(kind, d)));
        tokio::spawn(async move {
            if let Err(e) = store.delete(&key).await {
                tracing::warn!(%key, error = %e, "could not remove a corrupt object");
            }
        });
    }

    async fn get(&self, rel: &str) -> io::Result<Option<Bytes>> {
        match self.store.get(&self.key(rel)).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn put(&self, rel: &str, content: Bytes) -> io::Result<()> {
        self.store.put(&self.key(rel), PutPayload::from(content)).await.map(|_| ()).map_err(err)
    }

    /// Content-addressed objects are written once: if another replica won the race, its copy (the
    /// same verified bytes) stays.
    async fn put_create(&self, rel: &str, content: Bytes) -> io::Result<()> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.key(rel), PutPayload::from(content.clone()), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(())
            }
            // Some S3-compatible servers do not implement conditional writes: write plainly.
            Err(object_store::Error::NotImplemented) | Err(object_store::Error::NotSupported { .. }) => {
                self.put(rel, content).await
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn exists(&self, rel: &str) -> io::Result<bool> {
        match self.store.head(&self.key(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// Whether content carries a private marker, or why the bucket could not say (recent answers
    /// are reused for `MARK_TTL`).
    pub(crate) async fn private_marker(&self, kind: ContentKind, d: &Digest) -> io::Result<bool> {
        let key = (kind, d.clone());
        if let Some((private, at)) = self.marks.get(&key) {
            if at.elapsed() < MARK_TTL {
                return Ok(private);
            }
        }
        let private = self.exists(&layout::private_marker(kind, d)).await?;
        self.marks.insert(key, (private, tokio::time::Instant::now()));
        Ok(private)
    }

    /// Removes this process's staging files (at shutdown).
    fn remove_own_staging_files(&self) {
        let prefix = format!("fill-{}-", std::process::id());
        let Ok(entries) = std::fs::read_dir(&self.staging) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Reads a blob object of known size (`Bucket::read_blob`).
struct BucketBlob {
    bucket: Bucket,
    digest: Digest,
    size: u64,
}

impl super::BlobReader for BucketBlob {
    fn read(self: Box<Self>, range: Range<u64>) -> ByteStream {
        self.bucket.read_blob(self.digest, self.size, range, None)
    }
}

#[async_trait]
impl super::Store for Bucket {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn blob_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        match self.store.head(&self.blob_key(d)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn open_blob(&self, d: &Digest) -> io::Result<Option<StoredBlob>> {
        let Some(size) = self.blob_size(d).await? else { return Ok(None) };
        Ok(Some(StoredBlob::new(size, Box::new(BucketBlob { bucket: self.clone(), digest: d.clone(), size }))))
    }

    async fn blob_url(&self, d: &Digest, ttl: Duration) -> Option<url::Url> {
        self.signed_blob_url(d, ttl).await
    }

    async fn begin_fill(&self, d: &Digest) -> io::Result<Fill> {
        let (dir, d) = (self.staging.clone(), d.clone());
        tokio::task::spawn_blocking(move || Fill::create_blocking(&dir, &d))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// The marker first, so the blob is never visible with the wrong one; the staging file is
    /// removed when the fill is dropped.
    async fn commit_fill(&self, fill: Fill, private: bool) -> io::Result<()> {
        self.commit_fill_from(&fill, private).await
    }

    /// Nothing to evict in a bucket (its lifecycle rules bound it); the staging directory only
    /// holds fills in progress.
    async fn make_room(&self, _need: u64) {}

    async fn manifest(&self, d: &Digest) -> io::Result<Option<StoredManifest>> {
        let Some(raw) = self.get(&layout::content(ContentKind::Manifest, d)).await? else { return Ok(None) };
        let parsed = layout::parse_manifest_file(d, raw);
        match parsed {
            Ok(m) if d.matches(&m.bytes) => Ok(Some(m)),
            _ => {
                self.found_corrupt(ContentKind::Manifest, d);
                Ok(None)
            }
        }
    }

    async fn put_manifest(&self, m: &StoredManifest, private: bool) -> io::Result<()> {
        if !layout::valid_media_type(&m.media_type) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe media type"));
        }
        self.set_private(ContentKind::Manifest, &m.digest, private).await?;
        let content = layout::manifest_file_content(&m.media_type, &m.bytes);
        self.put_create(&layout::content(ContentKind::Manifest, &m.digest), content.into()).await
    }

    /// An unreachable bucket counts as private: fail closed.
    async fn is_private(&self, kind: ContentKind, d: &Digest) -> bool {
        self.private_marker(kind, d).await.unwrap_or(true)
    }

    async fn set_private(&self, kind: ContentKind, d: &Digest, private: bool) -> io::Result<()> {
        self.marks.invalidate(&(kind, d.clone()));
        let key = self.key(&layout::private_marker(kind, d));
        if private {
            self.store.put(&key, PutPayload::from_static(b"")).await.map(|_| ()).map_err(err)
        } else {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(err(e)),
            }
        }
    }

    async fn tag_entries(&self, registry: &RegistryName, repo: &Repository, tag: &Tag) -> io::Result<Vec<TagEntry>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.key(&layout::tag_dir(registry, repo, tag))))
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        for meta in listed.objects {
            // An unreadable entry is a miss, not an error: it is rewritten on the next fetch.
            if let Ok(got) = self.store.get(&meta.location).await {
                if let Ok(e) =
                    got.bytes().await.map_err(err).and_then(|b| serde_json::from_slice(&b).map_err(io::Error::other))
                {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Always written: a bucket keeps no copy in memory to compare with (the tiered store writes
    /// here only when its disk tier wrote).
    async fn put_tag(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        tag: &Tag,
        entry: &TagEntry,
        _refresh_every: Option<Duration>,
    ) -> io::Result<bool> {
        if !layout::valid_media_type(&entry.media_type) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe media type"));
        }
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        self.put(&layout::tag_entry(registry, repo, tag, &entry.media_type), json.into()).await?;
        Ok(true)
    }

    async fn referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
    ) -> io::Result<Option<Vec<u8>>> {
        Ok(self.get(&layout::referrers(registry, repo, subject)).await?.map(|b| b.to_vec()))
    }

    async fn put_referrers(
        &self,
        registry: &RegistryName,
        repo: &Repository,
        subject: &Digest,
        json: Vec<u8>,
    ) -> io::Result<()> {
        self.put(&layout::referrers(registry, repo, subject), json.into()).await
    }

    fn start_eviction(&self, _policy: super::eviction::EvictionPolicy, _metrics: Arc<crate::metrics::Metrics>) {
        tracing::debug!(bucket = %self.url, "no eviction in object storage: bound it with the bucket's lifecycle rules");
    }

    async fn healthy(&self) -> bool {
        true
    }

    async fn claim_fill(&self, d: &Digest, owner: &str, private: bool) -> io::Result<super::FillClaim> {
        super::lease::claim(self.store.clone(), self.key(&layout::lease(d)), owner, private).await
    }

    async fn take_over_fill(
        &self,
        d: &Digest,
        failed: &str,
        owner: &str,
        private: bool,
    ) -> io::Result<super::FillClaim> {
        super::lease::take_over(self.store.clone(), self.key(&layout::lease(d)), failed, owner, private).await
    }

    async fn shutdown(&self) {
        let b = self.clone();
        let _ = tokio::task::spawn_blocking(move || b.remove_own_staging_files()).await;
    }
}
