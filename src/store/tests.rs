use super::*;
use crate::oci::{Digest, RegistryName, Repository, Tag};

#[test]
fn blob_commit_makes_the_temp_file_visible_under_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let d = Digest::sha256_of(b"hello");
    assert!(store.blob_size(&d).is_none());
    let mut t = store.temp_file().unwrap();
    std::io::Write::write_all(&mut t.file, b"hello").unwrap();
    store.commit_blob(&t.path, &d).unwrap();
    assert_eq!(store.blob_size(&d), Some(5));
    assert!(!t.path.exists());
    assert!(store.blob_path(&d).starts_with(dir.path()));
}

#[test]
fn manifests_keep_bytes_and_media_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let body = b"{\"schemaVersion\":2}\n\nx";
    let d = Digest::sha256_of(body);
    store.put_manifest(&d, "application/vnd.oci.image.manifest.v1+json", body).unwrap();
    let m = store.manifest(&d).unwrap().unwrap();
    assert_eq!(&m.bytes[..], body);
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert!(store.put_manifest(&d, "../../x", body).is_err());
}

#[test]
fn tags_have_one_entry_per_media_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let (r, repo, tag) =
        (RegistryName::parse("127.0.0.1:5000").unwrap(), Repository::parse("a/b").unwrap(), Tag::parse("1").unwrap());
    assert!(store.tag_entries(&r, &repo, &tag).unwrap().is_empty());
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
    store.put_tag(&r, &repo, &tag, &e1).unwrap();
    store.put_tag(&r, &repo, &tag, &e2).unwrap();
    let e1b = TagEntry { digest: "sha256:cc".into(), ..e1.clone() };
    store.put_tag(&r, &repo, &tag, &e1b).unwrap();
    let mut got = store.tag_entries(&r, &repo, &tag).unwrap();
    got.sort_by(|a, b| a.media_type.cmp(&b.media_type));
    assert_eq!(got, vec![e1b, e2]);
    // A repository named like the tag directory of another cannot collide with it.
    let repo2 = Repository::parse("a/b/1").unwrap();
    assert!(store.tag_entries(&r, &repo2, &tag).unwrap().is_empty());
}

#[test]
fn stale_temp_files_are_removed_at_open_but_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let fresh = store.temp_file().unwrap();
    let old = store.temp_file().unwrap();
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    old.file.set_modified(past).unwrap();
    FsStore::open(dir.path()).unwrap();
    assert!(fresh.path.exists());
    assert!(!old.path.exists());
}
