//! The shared tier in object storage (S3 and S3-compatible servers, GCS, Azure Blob, or a shared
//! directory), for any number of replicas:
//! blobs, manifests, tag entries and private markers live in the bucket under the same relative keys
//! as on local disk, so a new replica serves everything the others cached. The local directory stays
//! the staging area (fills are verified there first) and a small local copy of manifests and tags.
//! Credentials, region and endpoint come from the standard AWS environment
//! (`AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
//! web identity), so the seed's examples work unchanged.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::TagEntry;
use crate::oci::Digest;

/// Multipart parts of this size (S3's minimum) stream a blob to the bucket; with at most two parts
/// in flight an upload holds about 15 MiB.
const PART: usize = 5 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("object storage: {0}")]
pub struct ObjectError(String);

fn err(e: object_store::Error) -> ObjectError {
    ObjectError(e.to_string())
}

pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
}

impl std::fmt::Debug for ObjectTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectTier({})", self.url)
    }
}

impl ObjectTier {
    /// Connects to `s3://bucket[/prefix]` and checks, once, that the bucket can be listed: a missing
    /// bucket or bad credentials fail the start with the store's own message.
    pub async fn connect(url: &str) -> Result<ObjectTier, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("--storage {url}: not a URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() && scheme != "file" {
            return Err(format!("--storage {url}: no bucket name"));
        }
        let built = |e: object_store::Error| format!("--storage {url}: {e}");
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = match scheme {
            "s3" => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL")).ok();
                if let Some(e) = endpoint.filter(|e| !e.is_empty()) {
                    builder = builder.with_allow_http(e.starts_with("http://")).with_endpoint(e);
                }
                (Arc::new(builder.build().map_err(built)?), prefix)
            }
            "gs" => {
                let builder = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
                (Arc::new(builder.build().map_err(built)?), prefix)
            }
            "az" | "azure" => {
                let builder = object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(bucket);
                (Arc::new(builder.build().map_err(built)?), prefix)
            }
            // A directory shared by replicas (an NFS mount, say): the whole path is the root.
            "file" => {
                let dir = std::path::Path::new(rest);
                if !dir.is_absolute() {
                    return Err(format!("--storage {url}: use file:///absolute/path"));
                }
                std::fs::create_dir_all(dir).map_err(|e| format!("--storage {url}: {e}"))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(built)?;
                (Arc::new(local), "")
            }
            _ => {
                return Err(format!("--storage {url}: use s3://, gs://, az:// or file:// (local disk is the default)"))
            }
        };
        let tier = ObjectTier { store, prefix: prefix.trim_matches('/').to_owned(), url: url.to_owned() };
        tier.store.list_with_delimiter(Some(&tier.key("blobs"))).await.map_err(|e| {
            format!(
                "--storage {url}: cannot list the bucket ({e}); check the bucket name, the credentials and the \
                 endpoint (AWS_ENDPOINT_URL_S3/AWS_REGION for S3, GOOGLE_* for GCS, AZURE_* for Azure)"
            )
        })?;
        Ok(tier)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object key for a path relative to the store root (the same layout as on disk).
    fn key(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn content_key(kind: &str, d: &Digest) -> String {
        format!("{kind}/{}/{}/{}", d.algorithm().as_str(), &d.hex()[..2], d.hex())
    }

    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>, ObjectError> {
        match self.store.head(&self.key(&Self::content_key("blobs", d))).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Bytes `range` of a blob, streamed from the bucket.
    pub async fn read_blob(
        &self,
        d: &Digest,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, ObjectError> {
        let opts = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let got = self.store.get_opts(&self.key(&Self::content_key("blobs", d)), opts).await.map_err(err)?;
        Ok(got.into_stream().map_err(std::io::Error::other).boxed())
    }

    /// Uploads a verified blob from its local file with a multipart upload (aborted on failure, so no
    /// parts are left behind); skipped when another replica already stored it.
    pub async fn put_blob_file(&self, d: &Digest, file: &FsPath) -> Result<(), ObjectError> {
        if self.blob_size(d).await?.is_some() {
            return Ok(());
        }
        let key = self.key(&Self::content_key("blobs", d));
        let upload = self.store.put_multipart(&key).await.map_err(err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let result: Result<(), ObjectError> = async {
            let mut f = tokio::fs::File::open(file).await.map_err(|e| ObjectError(e.to_string()))?;
            let mut buf = vec![0u8; PART];
            loop {
                let n = f.read(&mut buf).await.map_err(|e| ObjectError(e.to_string()))?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(2).await.map_err(err)?;
                writer.write(&buf[..n]);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => writer.finish().await.map(|_| ()).map_err(err),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// A manifest file's content (media type line + bytes), if stored.
    pub async fn get_manifest(&self, d: &Digest) -> Result<Option<Bytes>, ObjectError> {
        self.get(&Self::content_key("manifests", d)).await
    }

    pub async fn put_manifest(&self, d: &Digest, content: Bytes) -> Result<(), ObjectError> {
        self.put_create(&Self::content_key("manifests", d), content).await
    }

    /// Tag entries under a tag directory (relative to the store root).
    pub async fn tag_entries(&self, dir: &str) -> Result<Vec<TagEntry>, ObjectError> {
        let listed = self.store.list_with_delimiter(Some(&self.key(dir))).await.map_err(err)?;
        let mut out = Vec::new();
        for meta in listed.objects {
            if let Ok(got) = self.store.get(&meta.location).await {
                if let Ok(e) = got
                    .bytes()
                    .await
                    .map_err(err)
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| ObjectError(e.to_string())))
                {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    pub async fn put_tag(&self, rel: &str, json: Bytes) -> Result<(), ObjectError> {
        self.store.put(&self.key(rel), PutPayload::from(json)).await.map(|_| ()).map_err(err)
    }

    pub async fn is_private(&self, kind: &str, d: &Digest) -> Result<bool, ObjectError> {
        match self.store.head(&self.key(&format!("private/{kind}/{}/{}", d.algorithm().as_str(), d.hex()))).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    pub async fn mark_private(&self, kind: &str, d: &Digest) -> Result<(), ObjectError> {
        let key = self.key(&format!("private/{kind}/{}/{}", d.algorithm().as_str(), d.hex()));
        self.store.put(&key, PutPayload::from_static(b"")).await.map(|_| ()).map_err(err)
    }

    pub async fn mark_public(&self, kind: &str, d: &Digest) -> Result<(), ObjectError> {
        let key = self.key(&format!("private/{kind}/{}/{}", d.algorithm().as_str(), d.hex()));
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn get(&self, rel: &str) -> Result<Option<Bytes>, ObjectError> {
        match self.store.get(&self.key(rel)).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Content-addressed objects are written once: if another replica won the race, its copy (the
    /// same verified bytes) stays.
    async fn put_create(&self, rel: &str, content: Bytes) -> Result<(), ObjectError> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.key(rel), PutPayload::from(content.clone()), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(())
            }
            // Some S3-compatible servers do not implement conditional writes: write plainly.
            Err(object_store::Error::NotImplemented) | Err(object_store::Error::NotSupported { .. }) => {
                self.store.put(&self.key(rel), PutPayload::from(content)).await.map(|_| ()).map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }
}
