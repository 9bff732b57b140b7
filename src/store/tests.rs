use super::*;
use crate::oci::{Digest, RegistryName, Repository, Tag};

#[test]
fn blob_commit_makes_the_temp_file_visible_under_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let d = Digest::sha256_of(b"hello");
    assert!(store.blob_size_blocking(&d).is_none());
    let mut t = store.temp_file_blocking().unwrap();
    std::io::Write::write_all(&mut t.file, b"hello").unwrap();
    store.commit_blob_blocking(&t.path, &d).unwrap();
    assert_eq!(store.blob_size_blocking(&d), Some(5));
    assert!(!t.path.exists());
    assert!(store.blob_path(&d).starts_with(dir.path()));
}

#[test]
fn manifests_keep_bytes_and_media_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let body = b"{\"schemaVersion\":2}\n\nx";
    let d = Digest::sha256_of(body);
    store.put_manifest_blocking(&d, "application/vnd.oci.image.manifest.v1+json", body).unwrap();
    let m = store.manifest_blocking(&d).unwrap().unwrap();
    assert_eq!(&m.bytes[..], body);
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert!(store.put_manifest_blocking(&d, "../../x", body).is_err());
}

#[test]
fn tags_have_one_entry_per_media_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let (r, repo, tag) =
        (RegistryName::parse("127.0.0.1:5000").unwrap(), Repository::parse("a/b").unwrap(), Tag::parse("1").unwrap());
    assert!(store.tag_entries_blocking(&r, &repo, &tag).unwrap().is_empty());
    let e1 = TagEntry {
        digest: "sha256:aa".into(),
        media_type: "application/x.a+json".into(),
        size: 1,
        fetched_at: 1,
        private: false,
    };
    let e2 = TagEntry {
        digest: "sha256:bb".into(),
        media_type: "application/x.b+json".into(),
        size: 2,
        fetched_at: 2,
        private: true,
    };
    store.put_tag_blocking(&r, &repo, &tag, &e1, None).unwrap();
    store.put_tag_blocking(&r, &repo, &tag, &e2, None).unwrap();
    let e1b = TagEntry { digest: "sha256:cc".into(), ..e1.clone() };
    store.put_tag_blocking(&r, &repo, &tag, &e1b, None).unwrap();
    let mut got = store.tag_entries_blocking(&r, &repo, &tag).unwrap();
    got.sort_by(|a, b| a.media_type.cmp(&b.media_type));
    assert_eq!(got, vec![e1b, e2]);
    // A repository named like the tag directory of another cannot collide with it.
    let repo2 = Repository::parse("a/b/1").unwrap();
    assert!(store.tag_entries_blocking(&r, &repo2, &tag).unwrap().is_empty());
}

#[test]
fn stale_temp_files_are_removed_at_open_but_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let fresh = store.temp_file_blocking().unwrap();
    let old = store.temp_file_blocking().unwrap();
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    old.file.set_modified(past).unwrap();
    Disk::open(dir.path()).unwrap();
    assert!(fresh.path.exists());
    assert!(!old.path.exists());
}

fn committed_blob(store: &Disk, data: &[u8]) -> Digest {
    let d = Digest::sha256_of(data);
    let mut t = store.temp_file_blocking().unwrap();
    std::io::Write::write_all(&mut t.file, data).unwrap();
    store.commit_blob_blocking(&t.path, &d).unwrap();
    d
}

fn set_mtime(store: &Disk, d: &Digest, secs_ago: u64) {
    let f = std::fs::File::open(store.blob_path(d)).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago)).unwrap();
}

/// Issue #12: a re-use seconds after the previous one must count for eviction (the mtime used to
/// be written at most once a minute, so it did not).
#[test]
fn every_hit_counts_for_eviction_even_within_a_minute() {
    use super::eviction::{plan, scan, EvictionPolicy};
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let first = committed_blob(&store, &[1u8; 100]);
    let second = committed_blob(&store, &[2u8; 100]);
    // Pulled 20 s ago, then the second 10 s ago; now the first again.
    set_mtime(&store, &first, 20);
    set_mtime(&store, &second, 10);
    assert!(store.open_blob_blocking(&first).unwrap().is_some());
    assert!(store.recorded_use(ContentKind::Blob, &first).is_some());
    // Nothing on disk yet: the use is in memory until a pass (or shutdown) writes it.
    let policy = EvictionPolicy { max_size: Some(150), max_age: None };
    assert_eq!(plan(scan(&store), &policy, None, std::time::SystemTime::now())[0].path, store.blob_path(&first));
    assert_eq!(store.flush_recency_blocking(), 1);
    assert!(store.recorded_use(ContentKind::Blob, &first).is_none());
    let victims = plan(scan(&store), &policy, None, std::time::SystemTime::now());
    assert_eq!(victims.len(), 1, "no more than the bound requires");
    assert_eq!(victims[0].path, store.blob_path(&second), "the most recently used blob was chosen");
    // Manifests too, including hits answered from memory.
    let body = b"{}";
    let md = Digest::sha256_of(body);
    store.put_manifest_blocking(&md, "application/vnd.oci.image.manifest.v1+json", body).unwrap();
    store.manifest_blocking(&md).unwrap().unwrap();
    assert!(store.recorded_use(ContentKind::Manifest, &md).is_some());
    // A use of content evicted meanwhile is dropped at the flush, not resurrected.
    std::fs::remove_file(store.blob_path(&second)).unwrap();
    store.open_blob_blocking(&first).unwrap();
    store.flush_recency_blocking();
    assert!(!store.blob_path(&second).exists());
}

/// Issue #12: every revalidation of an unchanged tag used to rewrite its file (two fsyncs).
#[test]
fn an_unchanged_tag_entry_is_not_rewritten_but_reads_fresh() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let (r, repo, tag) = (
        RegistryName::parse("127.0.0.1:5000").unwrap(),
        Repository::parse("a/b").unwrap(),
        Tag::parse("latest").unwrap(),
    );
    let e = TagEntry {
        digest: "sha256:aa".into(),
        media_type: "application/x.a+json".into(),
        size: 1,
        fetched_at: 1000,
        private: false,
    };
    let every = Some(std::time::Duration::from_secs(150));
    assert!(store.put_tag_blocking(&r, &repo, &tag, &e, every).unwrap());
    let file = store.tag_file(&r, &repo, &tag, &e.media_type);
    let ino = std::fs::metadata(&file).unwrap().ino();
    let on_disk = || serde_json::from_slice::<TagEntry>(&std::fs::read(&file).unwrap()).unwrap();
    // Revalidated 100 s later, unchanged: the file stays, the fresh time is what readers get.
    let later = TagEntry { fetched_at: 1100, ..e.clone() };
    assert!(!store.put_tag_blocking(&r, &repo, &tag, &later, every).unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), ino);
    assert_eq!(on_disk().fetched_at, 1000);
    assert_eq!(store.tag_entries_blocking(&r, &repo, &tag).unwrap(), vec![later]);
    // Once the file lags by `every`, it is brought up to date (a restart loses at most that).
    let much_later = TagEntry { fetched_at: 1150, ..e.clone() };
    assert!(store.put_tag_blocking(&r, &repo, &tag, &much_later, every).unwrap());
    assert_eq!(on_disk().fetched_at, 1150);
    // Without a TTL the time alone never causes a write; any other change always does.
    assert!(!store.put_tag_blocking(&r, &repo, &tag, &TagEntry { fetched_at: 9999, ..e.clone() }, None).unwrap());
    for changed in [
        TagEntry { digest: "sha256:bb".into(), ..much_later.clone() },
        TagEntry { size: 2, ..much_later.clone() },
        TagEntry { private: true, ..much_later.clone() },
    ] {
        assert!(store.put_tag_blocking(&r, &repo, &tag, &changed, None).unwrap(), "{changed:?}");
        assert_eq!(on_disk(), changed);
    }
}

/// Store I/O from async code runs on tokio's blocking pool: with one worker thread, every async
/// store method still works (debug builds panic on disk I/O from a worker, see the next test).
#[tokio::test(flavor = "current_thread")]
async fn async_store_methods_do_their_io_off_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let body = bytes::Bytes::from_static(b"{}");
    let md = Digest::sha256_of(&body);
    store.set_private(ContentKind::Manifest, &md, true).await.unwrap();
    assert!(store.is_private(ContentKind::Manifest, &md).await);
    store.set_private(ContentKind::Manifest, &md, false).await.unwrap();
    let m = StoredManifest {
        digest: md.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: body.clone(),
    };
    store.put_manifest(&m, false).await.unwrap();
    assert_eq!(store.manifest(&md).await.unwrap().unwrap().bytes, body);
    let t = store.begin_fill(&md).await.unwrap();
    let (r, repo, tag) =
        (RegistryName::parse("127.0.0.1:5000").unwrap(), Repository::parse("a/b").unwrap(), Tag::parse("1").unwrap());
    let e = TagEntry {
        digest: md.to_string(),
        media_type: "application/x.a+json".into(),
        size: 2,
        fetched_at: 1,
        private: false,
    };
    assert!(store.put_tag(&r, &repo, &tag, &e, None).await.unwrap());
    assert_eq!(store.tag_entries(&r, &repo, &tag).await.unwrap(), vec![e]);
    assert!(store.open_blob(&md).await.unwrap().is_none());
    assert!(store.blob_size(&md).await.unwrap().is_none());
    assert_eq!(store.flush_recency().await, 1);
    drop(t);
}

#[tokio::test(flavor = "current_thread")]
#[should_panic(expected = "store I/O on an async worker thread")]
async fn blocking_store_io_on_an_async_worker_is_caught_in_debug_builds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    store.blob_size_blocking(&Digest::sha256_of(b"x"));
}

#[test]
fn a_manifest_file_that_no_longer_matches_its_digest_is_a_miss_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let body = b"{\"schemaVersion\":2}";
    let d = Digest::sha256_of(body);
    Disk::open(dir.path())
        .unwrap()
        .put_manifest_blocking(&d, "application/vnd.oci.image.manifest.v1+json", body)
        .unwrap();
    let path = dir.path().join(layout::content(ContentKind::Manifest, &d));
    std::fs::write(&path, b"application/vnd.oci.image.manifest.v1+json\n{\"schemaVersion\":3}").unwrap();
    // A new process: nothing in memory, the file is all there is.
    let store = Disk::open(dir.path()).unwrap();
    assert!(store.manifest_blocking(&d).unwrap().is_none());
    assert!(!path.exists(), "the damaged file is removed so the next pull fetches it again");
}

/// Signs by writing the key and the lifetime into a URL, as a real signer's query would carry them.
#[derive(Debug)]
struct TestSigner;

#[async_trait::async_trait]
impl object_store::signer::Signer for TestSigner {
    async fn signed_url(
        &self,
        method: http::Method,
        path: &object_store::path::Path,
        expires_in: Duration,
    ) -> object_store::Result<url::Url> {
        Ok(url::Url::parse(&format!("https://signed.test/{path}?method={method}&expires={}", expires_in.as_secs()))
            .unwrap())
    }
}

/// `--redirect-blobs` hands out an object's URL only once this process saw the object's bytes match
/// the digest, and only while the object is unchanged: never for a digest that is not there, never
/// for bytes someone else put there unchecked.
#[tokio::test]
async fn bucket_urls_are_signed_only_for_verified_unchanged_objects() {
    use futures_util::StreamExt;
    let staging = tempfile::tempdir().unwrap();
    let memory = Arc::new(object_store::memory::InMemory::new());
    let bucket =
        Bucket::new(memory.clone(), "pre", "mem://b/pre", staging.path()).unwrap().with_signer(Arc::new(TestSigner));
    let ttl = Duration::from_secs(300);
    let data = b"layer bytes".to_vec();
    let d = Digest::sha256_of(&data);
    assert!(bucket.blob_url(&d, ttl).await.is_none(), "not in the bucket");

    // Put there by another writer: not verified by this process yet.
    let key = object_store::path::Path::from(format!("pre/{}", layout::content(ContentKind::Blob, &d)));
    object_store::ObjectStore::put(memory.as_ref(), &key, data.clone().into()).await.unwrap();
    assert!(bucket.blob_url(&d, ttl).await.is_none(), "an object nobody here verified");

    // Read whole, and it matched: now it may be handed out.
    let blob = bucket.open_blob(&d).await.unwrap().unwrap();
    let body: Vec<_> = blob.read(0..data.len() as u64).collect().await;
    assert!(body.iter().all(Result::is_ok));
    let url = bucket.blob_url(&d, ttl).await.expect("a verified object is signed");
    assert_eq!(url.path(), format!("/{key}"));
    assert!(url.query().unwrap().contains("method=GET") && url.query().unwrap().contains("expires=300"), "{url}");

    // Replaced by other bytes: no URL; the next read verifies, fails, and removes it.
    let mut forged = data.clone();
    forged[0] ^= 1;
    object_store::ObjectStore::put(memory.as_ref(), &key, forged.into()).await.unwrap();
    assert!(bucket.blob_url(&d, ttl).await.is_none(), "a replaced object must not be handed out");
    let blob = bucket.open_blob(&d).await.unwrap().unwrap();
    let body: Vec<_> = blob.read(0..data.len() as u64).collect().await;
    assert!(body.iter().any(Result::is_err), "the forged read must be cut");
    assert!(bucket.blob_url(&d, ttl).await.is_none());

    // Without a signer (a shared directory) or on local disk: never.
    let unsigned = Bucket::new(memory, "pre", "mem://b/pre", staging.path()).unwrap();
    assert!(unsigned.blob_url(&d, ttl).await.is_none());
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::open(dir.path()).unwrap();
    let on_disk = disk::blocking_section(|| committed_blob(&disk, &data));
    assert!(disk.blob_url(&on_disk, ttl).await.is_none());
}
