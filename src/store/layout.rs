//! Where each piece of content lives, as a `/`-separated key relative to the store's root: one
//! layout for the disk tier (a path under `--cache-dir`) and the bucket (an object key under the
//! prefix), so a bucket written by one replica reads like a cache directory and the other way round.
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>
//! manifests/<alg>/<hex[0..2]>/<hex>            media type, newline, raw bytes
//! tags/<registry>/<repository>/_tags/<tag>/<hex(media type)>.json
//! tags/<registry>/<repository>/_referrers/<alg>-<hex>.json
//! private/<blobs|manifests>/<alg>/<hex>        marker: content only served after an access check
//! tmp/                                          fills in progress (disk only)
//! leases/<alg>/<hex>                            JSON: which replica fills a blob now (bucket only)
//! ```
//! `_tags` and `_referrers` cannot collide with a repository component (those start with `[a-z0-9]`);
//! every part comes from a parsed, validated name or digest, so no key leaves its directory.

use super::ContentKind;
use crate::oci::{Digest, RegistryName, Repository, Tag};

pub fn content(kind: ContentKind, d: &Digest) -> String {
    format!("{}/{}/{}/{}", kind.dir(), d.algorithm().as_str(), &d.hex()[..2], d.hex())
}

pub fn private_marker(kind: ContentKind, d: &Digest) -> String {
    format!("private/{}/{}/{}", kind.dir(), d.algorithm().as_str(), d.hex())
}

/// The lease of a fill in progress (`super::lease`): one object per blob, so replicas agree on one
/// filler with a create-if-absent write.
pub fn lease(d: &Digest) -> String {
    format!("leases/{}/{}", d.algorithm().as_str(), d.hex())
}

pub fn tag_dir(registry: &RegistryName, repo: &Repository, tag: &Tag) -> String {
    format!("tags/{}/{}/_tags/{}", registry.as_str(), repo.as_str(), tag.as_str())
}

pub fn tag_entry(registry: &RegistryName, repo: &Repository, tag: &Tag, media_type: &str) -> String {
    format!("{}/{}.json", tag_dir(registry, repo, tag), hex::encode(media_type))
}

pub fn referrers(registry: &RegistryName, repo: &Repository, subject: &Digest) -> String {
    format!(
        "tags/{}/{}/_referrers/{}-{}.json",
        registry.as_str(),
        repo.as_str(),
        subject.algorithm().as_str(),
        subject.hex()
    )
}

/// The stored form of a manifest: media type, newline, bytes.
pub fn manifest_file_content(media_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(media_type.len() + 1 + bytes.len());
    content.extend_from_slice(media_type.as_bytes());
    content.push(b'\n');
    content.extend_from_slice(bytes);
    content
}

/// Parses the stored form of a manifest.
pub fn parse_manifest_file(d: &Digest, raw: bytes::Bytes) -> std::io::Result<super::StoredManifest> {
    let Some(nl) = raw.iter().position(|&b| b == b'\n') else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("manifest {d} has no media type line"),
        ));
    };
    let media_type = String::from_utf8_lossy(&raw[..nl]).into_owned();
    Ok(super::StoredManifest { digest: d.clone(), media_type, bytes: raw.slice(nl + 1..) })
}

/// Media types become part of stored files; only the characters RFC 6838 names allow are accepted.
pub fn valid_media_type(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 255
        && m.bytes().all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b))
        && m.bytes().filter(|&b| b == b'/').count() == 1
}
