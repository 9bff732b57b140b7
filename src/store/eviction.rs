//! Keeping the store within `--max-size` and `--max-age`. ocicache records use itself, at request
//! granularity: every hit is noted in memory (`recency`) and written to the file's modification time
//! before each pass (and every few minutes, and at shutdown), so the order is exact — a re-pull a
//! second after the first counts — and survives restarts without relying on `atime` mount options.
//! A pass evicts everything older than `--max-age`, then the least recently used files until the
//! store fits `--max-size`, and not a byte more: what a user pulled is kept as long as the bound
//! allows. Blobs and manifests are evicted alike: an image pulled together is used together,
//! so its files age together and go together; a tag whose manifest was evicted is re-fetched by digest,
//! a manifest whose blobs were evicted has them re-fetched on the next pull. Files being written live
//! in `tmp/` and are never candidates; a file being read when it is unlinked stays readable to that
//! reader (and was touched when it was opened, so it is among the newest anyway).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::disk::Disk;
use crate::metrics::Metrics;

/// When a write runs out of disk space, a pass frees at least this fraction of the store (plus what
/// the write still needs), since the disk is smaller than `--max-size` (or there is none).
pub const LOW_WATERMARK: f64 = 0.9;
/// How often a pass runs even without growth (for `--max-age`).
const PERIOD: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictionPolicy {
    pub max_size: Option<u64>,
    pub max_age: Option<Duration>,
}

impl EvictionPolicy {
    pub fn is_active(&self) -> bool {
        self.max_size.is_some() || self.max_age.is_some()
    }
}

/// A committed file that may be evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub size: u64,
    pub accessed: SystemTime,
}

/// Every committed blob and manifest file, with size and last access.
pub fn scan(store: &Disk) -> Vec<Candidate> {
    let mut out = Vec::new();
    for dir in ["blobs", "manifests"] {
        walk(&store.root().join(dir), &mut out);
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<Candidate>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            walk(&entry.path(), out);
        } else if meta.is_file() {
            let accessed = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(Candidate { path: entry.path(), size: meta.len(), accessed });
        }
    }
}

/// What a pass removes: everything not accessed within `max_age`, then least recently used files
/// until the rest fits in `max_size` (and in `shrink_to`, when a write ran out of disk space), and
/// nothing more. Pure, so the rule is tested directly.
pub fn plan(
    mut candidates: Vec<Candidate>,
    policy: &EvictionPolicy,
    shrink_to: Option<u64>,
    now: SystemTime,
) -> Vec<Candidate> {
    candidates.sort_by_key(|c| c.accessed);
    let mut victims = Vec::new();
    let mut keep = Vec::new();
    for c in candidates {
        let age = now.duration_since(c.accessed).unwrap_or_default();
        if policy.max_age.is_some_and(|max| age > max) {
            victims.push(c);
        } else {
            keep.push(c);
        }
    }
    let mut total: u64 = keep.iter().map(|c| c.size).sum();
    let by_size = policy.max_size.filter(|max| total > *max);
    let target = match (by_size, shrink_to) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(target) = target {
        for c in keep {
            if total <= target {
                break;
            }
            total -= c.size;
            victims.push(c);
        }
    }
    victims
}

/// Removes the planned files; returns (files, bytes) actually removed.
pub fn evict(store: &Disk, victims: &[Candidate]) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for v in victims {
        match fs::remove_file(&v.path) {
            Ok(()) => {
                files += 1;
                bytes += v.size;
                store.forget_private_marker(&v.path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %v.path.display(), error = %e, "could not evict"),
        }
    }
    (files, bytes)
}

/// Runs passes in the background: at start, when the store grows past `--max-size`, when a write
/// ran out of space (then a tenth of the store is freed even without a policy), and every few minutes
/// for `--max-age`.
pub fn spawn(store: Disk, policy: EvictionPolicy, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut forced = false;
        loop {
            let s = store.clone();
            let pass = tokio::task::spawn_blocking(move || {
                // Uses recorded in memory become mtimes first, so the plan sees every hit.
                super::disk::blocking_section(|| s.flush_recency_blocking());
                let all = scan(&s);
                let total: u64 = all.iter().map(|c| c.size).sum();
                let count = all.len() as u64;
                let need = s.usage().take_needed();
                let shrink_to = forced.then_some(((total as f64 * LOW_WATERMARK) as u64).saturating_sub(need));
                let victims = plan(all, &policy, shrink_to, SystemTime::now());
                let (files, bytes) = evict(&s, &victims);
                s.usage().reset(total.saturating_sub(bytes), count.saturating_sub(files));
                (files, bytes)
            })
            .await;
            if let Ok((files, bytes)) = pass {
                if files > 0 {
                    metrics.evicted(files, bytes);
                    tracing::info!(files, bytes, forced, "evicted least recently used content");
                }
            }
            metrics.store_usage(store.usage().bytes(), store.usage().entries());
            store.usage().passed();
            forced = loop {
                tokio::select! {
                    f = store.usage().wait_for_pressure() => {
                        metrics.store_usage(store.usage().bytes(), store.usage().entries());
                        if f || store.recency_full() || policy.max_size.is_some_and(|m| store.usage().bytes() > m) {
                            break f;
                        }
                    }
                    _ = tokio::time::sleep(PERIOD) => break false,
                }
            };
        }
    });
}

/// Parses sizes like `50GiB`, `500MB`, `1.5TiB` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a size like 50GiB or 500MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!("unknown size unit {other:?} in {s:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, size: u64, secs_ago: u64, now: SystemTime) -> Candidate {
        Candidate { path: PathBuf::from(name), size, accessed: now - Duration::from_secs(secs_ago) }
    }

    #[test]
    fn evicts_oldest_first_and_no_more_than_the_bound_requires() {
        let now = SystemTime::now();
        let all = vec![c("new", 40, 1, now), c("old", 30, 300, now), c("mid", 30, 100, now), c("hot", 10, 0, now)];
        let policy = EvictionPolicy { max_size: Some(100), max_age: None };
        // 110 bytes > 100: remove the oldest until <= 100.
        let v: Vec<_> = plan(all.clone(), &policy, None, now).into_iter().map(|c| c.path).collect();
        assert_eq!(v, vec![PathBuf::from("old")]);
        let tight = EvictionPolicy { max_size: Some(60), max_age: None };
        let v: Vec<_> = plan(all.clone(), &tight, None, now).into_iter().map(|c| c.path).collect();
        // 110 > 60: remove oldest until <= 60.
        assert_eq!(v, vec![PathBuf::from("old"), PathBuf::from("mid")]);
        // Exactly at the bound is within it: nothing goes.
        assert!(plan(all.clone(), &EvictionPolicy { max_size: Some(110), max_age: None }, None, now).is_empty());
        // 1 byte over: one file goes, the oldest, however small the excess (not down to a watermark).
        let v: Vec<_> = plan(all.clone(), &EvictionPolicy { max_size: Some(109), max_age: None }, None, now)
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(v, vec![PathBuf::from("old")]);
        // 80 after evicting "old" fits 81..=100, where a 90% watermark would have taken "mid" too.
        let v: Vec<_> = plan(all.clone(), &EvictionPolicy { max_size: Some(81), max_age: None }, None, now)
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(v, vec![PathBuf::from("old")]);
        assert!(plan(all.clone(), &EvictionPolicy { max_size: Some(1000), max_age: None }, None, now).is_empty());
        // Out of disk space without a policy: shrink to the given size, oldest first.
        let v: Vec<_> = plan(all, &EvictionPolicy::default(), Some(80), now).into_iter().map(|c| c.path).collect();
        assert_eq!(v, vec![PathBuf::from("old")]);
    }

    #[test]
    fn max_age_removes_everything_not_used_recently() {
        let now = SystemTime::now();
        let all = vec![c("a", 1, 10, now), c("b", 1, 4000, now), c("c", 1, 3601, now)];
        let policy = EvictionPolicy { max_size: None, max_age: Some(Duration::from_secs(3600)) };
        let mut v: Vec<_> = plan(all, &policy, None, now).into_iter().map(|c| c.path).collect();
        v.sort();
        assert_eq!(v, vec![PathBuf::from("b"), PathBuf::from("c")]);
    }

    #[test]
    fn sizes_in_human_units() {
        assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("0").is_err());
    }
}
