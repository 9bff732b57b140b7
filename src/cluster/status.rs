//! What an operator reads before an outage: for each image in use, whether the cache could serve a
//! node pulling it with every origin down — its tag (and how long ago the origin last confirmed
//! it), its manifest, the manifests of the cluster's platforms when it is an index, and every blob.
//! Read from the store alone (local disk, then the shared tier when configured); no origin is asked.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cmd::warm::{Descriptor, ImageRef, ManifestDoc, Platform};
use crate::oci::accept::is_index;
use crate::oci::{Digest, Reference};
use crate::store::{Store, StoredManifest, TagEntry};

/// Index nesting followed, as `warm` does.
const MAX_DEPTH: usize = 2;

/// One image's row of the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageStatus {
    pub image: String,
    /// A node could pull it from the cache alone.
    pub cached: bool,
    /// The manifest the reference names (through its tag) is stored.
    pub manifest: bool,
    /// Blobs the stored manifests name, and how many of them are stored.
    pub blobs: usize,
    pub blobs_cached: usize,
    /// Seconds since the origin last confirmed the tag; absent for digest references and uncached tags.
    pub tag_age_seconds: Option<u64>,
    /// Why it is not cached (the first thing missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// Result of the last background warm (serve mode only): `ok` or the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_warm: Option<String>,
}

/// The whole report, as `/status?format=json` serves it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Node platforms the images were checked for (empty: every platform of an index).
    pub platforms: Vec<String>,
    /// Every workload kind has been listed at least once; before that the list is partial.
    pub complete: bool,
    pub images: Vec<ImageStatus>,
    /// Image fields of the cluster that are not valid references (`object`, `reference`, `reason`).
    pub invalid: Vec<InvalidRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvalidRow {
    pub object: String,
    pub reference: String,
    pub reason: String,
}

impl Report {
    pub fn not_cached(&self) -> usize {
        self.images.iter().filter(|i| !i.cached).count()
    }

    /// The table `ocicache status` prints.
    pub fn text(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .images
            .iter()
            .map(|i| {
                [
                    i.image.clone(),
                    if i.cached { "yes".into() } else { "NO".into() },
                    if i.manifest { "yes".into() } else { "no".into() },
                    format!("{}/{}", i.blobs_cached, i.blobs),
                    i.tag_age_seconds
                        .map_or("-".into(), |s| humantime::format_duration(Duration::from_secs(s)).to_string()),
                ]
            })
            .collect();
        let suffixes: Vec<String> = self
            .images
            .iter()
            .map(|status| {
                let mut note = String::new();
                if let Some(m) = &status.missing {
                    let _ = write!(note, "  ({m})");
                }
                if let Some(w) = status.last_warm.as_ref().filter(|w| *w != "ok") {
                    let _ = write!(note, "  last warm: {w}");
                }
                note
            })
            .collect();
        use crate::cmd::table::{render, Align::*};
        let mut out = render(
            ["IMAGE", "CACHED", "MANIFEST", "BLOBS", "TAG AGE"],
            [Left, Left, Left, Right, Left],
            &rows,
            &suffixes,
        );
        let platforms = if self.platforms.is_empty() { "all".to_owned() } else { self.platforms.join(", ") };
        let _ = writeln!(
            out,
            "{} image(s) in use, {} not cached; platforms: {platforms}{}",
            self.images.len(),
            self.not_cached(),
            if self.complete { "" } else { "; the cluster is still being listed" }
        );
        for i in &self.invalid {
            let _ = writeln!(out, "invalid image in {}: {:?}: {}", i.object, i.reference, i.reason);
        }
        out
    }
}

/// Checks each image against the store.
pub async fn check_all(store: &dyn Store, images: &[ImageRef], platforms: &[Platform]) -> Vec<ImageStatus> {
    let mut out = Vec::with_capacity(images.len());
    for image in images {
        out.push(check(store, image, platforms).await);
    }
    out
}

/// Checks one image against the store.
pub async fn check(store: &dyn Store, image: &ImageRef, platforms: &[Platform]) -> ImageStatus {
    let lookup = Lookup { store };
    let mut status = ImageStatus {
        image: image.to_string(),
        cached: false,
        manifest: false,
        blobs: 0,
        blobs_cached: 0,
        tag_age_seconds: None,
        missing: None,
        last_warm: None,
    };
    let candidates: Vec<(Digest, Option<u64>)> = match &image.reference {
        Reference::Digest(d) => vec![(d.clone(), None)],
        Reference::Tag(tag) => {
            let mut entries = lookup.tag_entries(image, tag).await;
            // The newest confirmation first; an index before a single manifest of the same age,
            // since containerd accepts both and a registry prefers the index.
            entries.sort_by_key(|e| (std::cmp::Reverse(e.fetched_at), !is_index(&e.media_type)));
            entries.into_iter().filter_map(|e| Some((e.digest.parse().ok()?, Some(e.fetched_at)))).collect()
        }
    };
    if candidates.is_empty() {
        status.missing = Some("tag not cached".into());
        return status;
    }
    // The first entry whose whole tree is stored decides; else the newest one's report stands.
    let mut first: Option<ImageStatus> = None;
    for (digest, fetched_at) in candidates {
        let mut s = status.clone();
        s.tag_age_seconds = fetched_at.map(|f| crate::store::disk::now_secs().saturating_sub(f));
        tree(&lookup, &digest, platforms, 0, &mut s).await;
        s.cached = s.manifest && s.missing.is_none() && s.blobs == s.blobs_cached;
        if s.cached {
            return s;
        }
        first.get_or_insert(s);
    }
    first.unwrap_or(status)
}

/// Walks a manifest (and an index's children for `platforms`), counting blobs and noting the first
/// thing missing.
async fn tree(lookup: &Lookup<'_>, digest: &Digest, platforms: &[Platform], depth: usize, s: &mut ImageStatus) {
    let Some(m) = lookup.manifest(digest).await else {
        s.missing.get_or_insert_with(|| format!("manifest {digest} not cached"));
        return;
    };
    if depth == 0 {
        s.manifest = true;
    }
    let Ok(doc) = serde_json::from_slice::<ManifestDoc>(&m.bytes) else {
        s.missing.get_or_insert_with(|| format!("manifest {digest} is not JSON"));
        return;
    };
    if is_index(&m.media_type) || (doc.manifests.is_some() && doc.config.is_none()) {
        if depth >= MAX_DEPTH {
            return;
        }
        let entries: Vec<&Descriptor> = doc.manifests.iter().flatten().filter(|d| !d.is_attestation()).collect();
        let chosen: Vec<&Descriptor> = if platforms.is_empty() {
            entries
        } else {
            entries
                .into_iter()
                .filter(|d| d.platform.as_ref().is_some_and(|p| platforms.iter().any(|f| f.matches(p))))
                .collect()
        };
        if chosen.is_empty() {
            s.missing.get_or_insert_with(|| "the index has no manifest for the nodes' platforms".into());
        }
        for child in chosen {
            match child.digest.parse::<Digest>() {
                Ok(d) => Box::pin(tree(lookup, &d, platforms, depth + 1, s)).await,
                Err(_) => {
                    s.missing.get_or_insert_with(|| format!("index entry {:?} is not a digest", child.digest));
                }
            }
        }
        return;
    }
    for desc in doc.config.iter().chain(doc.layers.iter()) {
        if desc.is_foreign() {
            continue; // foreign layers live outside any registry, and warm skips them too
        }
        s.blobs += 1;
        match desc.digest.parse::<Digest>() {
            Ok(d) if lookup.blob(&d).await => s.blobs_cached += 1,
            _ => {
                s.missing.get_or_insert_with(|| format!("blob {} not cached", desc.digest));
            }
        }
    }
}

/// Store reads, from whichever tier has the content.
struct Lookup<'a> {
    store: &'a dyn Store,
}

impl Lookup<'_> {
    async fn tag_entries(&self, image: &ImageRef, tag: &crate::oci::Tag) -> Vec<TagEntry> {
        self.store.tag_entries(&image.registry, &image.repository, tag).await.unwrap_or_default()
    }

    async fn manifest(&self, d: &Digest) -> Option<StoredManifest> {
        self.store.manifest(d).await.ok().flatten()
    }

    async fn blob(&self, d: &Digest) -> bool {
        matches!(self.store.blob_size(d).await, Ok(Some(_)))
    }
}
