//! When each stored file was last used, at request granularity. Eviction is least-recently-used, so
//! a re-pull seconds after the first must count: writing the file's mtime on every hit would put a
//! metadata write (and a syscall on the request path) on every pull, so hits are recorded here in
//! memory and written to the files' mtimes lazily — before every eviction pass, every few minutes,
//! and at shutdown — which is what lets the order survive a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::disk::ContentKind;
use crate::oci::Digest;

/// Most uses kept between two flushes. Only hits on content that exists are recorded, so the table
/// never holds more than the store's own files; this caps even a store of millions of files (a use
/// beyond it is not lost for long: the flush it triggers records it on disk).
const MAX_RECORDED: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Recency {
    used: Mutex<HashMap<(ContentKind, Digest), SystemTime>>,
    full: AtomicBool,
}

impl Recency {
    /// Records a use of stored content. Returns false when the table is full and a flush is due.
    pub fn record(&self, kind: ContentKind, d: &Digest, at: SystemTime) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = used.get_mut(&(kind, d.clone())) {
            *t = (*t).max(at);
            return true;
        }
        if used.len() >= MAX_RECORDED {
            self.full.store(true, Ordering::Relaxed);
            return false;
        }
        used.insert((kind, d.clone()), at);
        true
    }

    /// The last recorded use, if any since the last flush.
    pub fn last_use(&self, kind: ContentKind, d: &Digest) -> Option<SystemTime> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).get(&(kind, d.clone())).copied()
    }

    /// Every use recorded since the last call, emptying the table.
    pub fn take(&self) -> HashMap<(ContentKind, Digest), SystemTime> {
        self.full.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether uses were dropped since the last flush (the table was full).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
