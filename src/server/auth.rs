//! Client authentication for the cache itself (`--htpasswd`): Basic credentials checked against
//! bcrypt entries as `htpasswd -B` writes them. The file is re-read when it changes, so users can be
//! added or rotated without a restart. bcrypt is deliberately slow, so a verified (user, password)
//! pair is remembered (as a SHA-256, never the password) until the file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use http::HeaderValue;

use crate::oci::Digest;

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// Verified (user, password) fingerprints kept at most. Only pairs that passed bcrypt get in, but
/// bcrypt reads just the first 72 bytes of a password, so one user can make any number of passing
/// passwords; a fingerprint forgotten costs one bcrypt check.
#[cfg(not(test))]
const MAX_VERIFIED: u64 = 10_000;
/// Small in tests, which pay one (slow) bcrypt check per fingerprint to fill the set.
#[cfg(test)]
const MAX_VERIFIED: u64 = 200;
/// A fingerprint not used for this long is forgotten.
const VERIFIED_IDLE: Duration = Duration::from_secs(3600);

pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
    users: HashMap<String, String>,
    verified: moka::sync::Cache<String, ()>,
}

impl Default for Loaded {
    fn default() -> Self {
        Loaded {
            stamp: None,
            checked: None,
            users: HashMap::new(),
            verified: crate::bounded::idle_expiring(MAX_VERIFIED, VERIFIED_IDLE),
        }
    }
}

impl Htpasswd {
    /// Loads the file; a missing or unreadable file is a start-up error.
    pub fn open(path: &Path) -> Result<Arc<Self>, String> {
        let h = Htpasswd { path: path.to_path_buf(), state: Mutex::default() };
        let mut state = h.state.lock().unwrap_or_else(|p| p.into_inner());
        h.reload(&mut state).map_err(|e| format!("--htpasswd {}: {e}", path.display()))?;
        drop(state);
        Ok(Arc::new(h))
    }

    fn reload(&self, state: &mut Loaded) -> std::io::Result<()> {
        let meta = std::fs::metadata(&self.path)?;
        let stamp = (meta.modified()?, meta.len());
        state.checked = Some(Instant::now());
        if state.stamp == Some(stamp) {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)?;
        let users = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .filter(|(_, hash)| hash.starts_with("$2"))
            .map(|(u, h)| (u.to_owned(), h.to_owned()))
            .collect::<HashMap<_, _>>();
        if stamp.1 > 0 && users.is_empty() {
            tracing::warn!(path = %self.path.display(), "htpasswd file has no bcrypt entries (use htpasswd -B)");
        }
        tracing::info!(path = %self.path.display(), users = users.len(), "loaded htpasswd");
        *state = Loaded { stamp: Some(stamp), checked: state.checked, users, ..Loaded::default() };
        Ok(())
    }

    /// Whether `authorization` carries Basic credentials of a user in the file.
    pub async fn verify(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let fingerprint = Digest::sha256_of(format!("{user}\0{password}").as_bytes()).to_string();
        let hash = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.checked.is_none_or(|t| t.elapsed() >= RECHECK) {
                if let Err(e) = self.reload(&mut state) {
                    // Keep the last good users: a file being rewritten must not lock everyone out.
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot re-read htpasswd");
                }
            }
            if state.verified.contains_key(&fingerprint) {
                return true;
            }
            match state.users.get(&user) {
                Some(h) => h.clone(),
                None => return false,
            }
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).verified.insert(fingerprint, ());
        }
        ok
    }
}

fn parse_basic(v: &HeaderValue) -> Option<(String, String)> {
    let s = v.to_str().ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> HeaderValue {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        HeaderValue::from_str(&format!("Basic {enc}")).unwrap()
    }

    #[tokio::test]
    async fn verifies_bcrypt_entries_and_picks_up_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\nplain:nothashed\n")).unwrap();
        let h = Htpasswd::open(&path).unwrap();
        assert!(h.verify(Some(&basic("alice", "pw"))).await);
        assert!(h.verify(Some(&basic("alice", "pw"))).await, "cached");
        assert!(!h.verify(Some(&basic("alice", "nope"))).await);
        assert!(!h.verify(Some(&basic("plain", "nothashed"))).await, "only bcrypt entries count");
        assert!(!h.verify(None).await);
        assert!(!h.verify(Some(&HeaderValue::from_static("Bearer x"))).await);

        // Rotate: bob replaces alice. The change is seen without a restart.
        let bob = bcrypt::hash("pw2", 4).unwrap();
        std::fs::write(&path, format!("bob:{bob}\n")).unwrap();
        h.state.lock().unwrap().checked = None;
        assert!(h.verify(Some(&basic("bob", "pw2"))).await);
        assert!(!h.verify(Some(&basic("alice", "pw"))).await);
    }

    #[tokio::test]
    async fn passwords_past_bcrypts_72_bytes_do_not_grow_the_verified_set_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let long = "p".repeat(72);
        std::fs::write(&path, format!("alice:{}\n", bcrypt::hash(&long, 4).unwrap())).unwrap();
        let h = Htpasswd::open(&path).unwrap();
        // bcrypt ignores everything after byte 72: each of these passes and is a new fingerprint.
        for i in 0..(MAX_VERIFIED + 100) {
            assert!(h.verify(Some(&basic("alice", &format!("{long}{i}")))).await);
        }
        let verified = h.state.lock().unwrap().verified.clone();
        verified.run_pending_tasks();
        assert!(verified.entry_count() <= MAX_VERIFIED, "{} fingerprints", verified.entry_count());
    }
}
