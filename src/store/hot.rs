//! A small in-memory copy of the hottest metadata: manifests by digest and tag entries. Every pull
//! starts with a manifest request; answering it without touching the filesystem is what lets one
//! cache serve tens of thousands of them a second. The disk stays the source of truth: entries are
//! filled from it, replaced when it is written, and the whole table is dropped when it grows past
//! its budget (the next requests refill it from disk).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use super::{StoredManifest, TagEntry};
use crate::oci::Digest;

/// Bytes of manifests kept in memory.
const MANIFEST_BUDGET: usize = 32 << 20;
/// Tags kept in memory.
const TAG_BUDGET: usize = 20_000;

/// Manifests with the time their file's access was last recorded, and their total bytes.
type Manifests = (HashMap<Digest, (StoredManifest, Instant)>, usize);

#[derive(Debug, Default)]
pub struct HotCache {
    manifests: Mutex<Manifests>,
    tags: Mutex<HashMap<PathBuf, Vec<TagEntry>>>,
}

impl HotCache {
    /// The manifest, and when its file's access time was last recorded.
    pub fn manifest(&self, d: &Digest) -> Option<(StoredManifest, Instant)> {
        let m = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        m.0.get(d).cloned()
    }

    pub fn put_manifest(&self, m: StoredManifest, touched: Instant) {
        let mut guard = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        let (map, bytes) = &mut *guard;
        let size = m.bytes.len();
        if *bytes + size > MANIFEST_BUDGET {
            map.clear();
            *bytes = 0;
        }
        if let Some((old, _)) = map.insert(m.digest.clone(), (m, touched)) {
            *bytes -= old.bytes.len();
        }
        *bytes += size;
    }

    pub fn tag(&self, dir: &PathBuf) -> Option<Vec<TagEntry>> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner()).get(dir).cloned()
    }

    pub fn put_tag(&self, dir: PathBuf, entries: Vec<TagEntry>) {
        let mut map = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TAG_BUDGET {
            map.clear();
        }
        map.insert(dir, entries);
    }

    /// A tag directory was written: its entries are read from disk again next time.
    pub fn forget_tag(&self, dir: &PathBuf) {
        self.tags.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
    }
}
