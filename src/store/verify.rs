//! Verifying a blob while it is streamed: every byte is hashed, the final byte of the response is
//! held back until the digest matched, and a mismatch (or a short or long body) ends the stream with
//! an error, so a client can see a cut response but never a complete one with wrong bytes. Used for
//! every read that could meet bytes ocicache did not verify itself in this process: a bucket object
//! (other replicas and people with bucket access write there) and a disk file from before a restart.

use std::io;
use std::ops::Range;

use bytes::Bytes;
use futures_util::stream::StreamExt;

use super::ByteStream;
use crate::oci::{Digest, DigestHasher};

/// What a verified read found, reported once when it ends (not when the client left early).
pub type Verdict = Box<dyn FnOnce(bool) + Send>;

/// Streams `range` of a blob of `size` bytes, reading `whole` (the blob from byte 0) and checking it
/// against `digest`. `range` must end at `size` (a range that ends earlier cannot be verified and
/// needs no verification: it is sent as the origin would). Bytes before `range.start` are hashed and
/// not sent. `verdict` learns whether the blob matched.
pub fn verified(whole: ByteStream, digest: Digest, size: u64, range: Range<u64>, verdict: Verdict) -> ByteStream {
    struct State {
        whole: ByteStream,
        hasher: DigestHasher,
        pos: u64,
        held: Option<Bytes>,
        verdict: Option<Verdict>,
    }
    impl State {
        fn judge(&mut self, ok: bool) {
            if let Some(v) = self.verdict.take() {
                v(ok);
            }
        }
    }
    let state =
        State { whole, hasher: DigestHasher::new(digest.algorithm()), pos: 0, held: None, verdict: Some(verdict) };
    futures_util::stream::unfold(Some(state), move |state| {
        let digest = digest.clone();
        let range = range.clone();
        async move {
            let mut s = state?;
            loop {
                match s.whole.next().await {
                    Some(Ok(chunk)) => {
                        let (from, to) = (s.pos, s.pos + chunk.len() as u64);
                        s.pos = to;
                        if to > size {
                            s.judge(false);
                            return Some((
                                Err(io::Error::other(format!("blob {digest} is longer than {size} bytes"))),
                                None,
                            ));
                        }
                        s.hasher.update(&chunk);
                        // The part of this chunk inside the range, plus the byte held from before.
                        let lo = range.start.clamp(from, to);
                        let mut out = match s.held.take() {
                            Some(h) => {
                                let mut v = Vec::with_capacity(h.len() + (to - lo) as usize);
                                v.extend_from_slice(&h);
                                v.extend_from_slice(&chunk[(lo - from) as usize..]);
                                Bytes::from(v)
                            }
                            None => chunk.slice((lo - from) as usize..),
                        };
                        if out.is_empty() {
                            continue;
                        }
                        s.held = Some(out.split_off(out.len() - 1));
                        if out.is_empty() {
                            continue;
                        }
                        return Some((Ok(out), Some(s)));
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => {
                        let actual = std::mem::replace(&mut s.hasher, DigestHasher::new(digest.algorithm())).finish();
                        if s.pos == size && actual == digest {
                            s.judge(true);
                            return s.held.take().map(|h| (Ok(h), None));
                        }
                        s.judge(false);
                        let why = if s.pos != size {
                            format!("blob {digest} has {} bytes, not {size}", s.pos)
                        } else {
                            format!("blob {digest} does not match its digest (stored bytes hash to {actual})")
                        };
                        return Some((Err(io::Error::new(io::ErrorKind::InvalidData, why)), None));
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn chunks(data: &[u8], n: usize) -> ByteStream {
        let parts: Vec<io::Result<Bytes>> = data.chunks(n).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures_util::stream::iter(parts).boxed()
    }

    async fn run(data: &[u8], claimed: &[u8], range: Range<u64>) -> (Vec<u8>, bool, Option<bool>) {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let d = Digest::sha256_of(claimed);
        let mut out = Vec::new();
        let mut ok = true;
        let mut st =
            verified(chunks(data, 3), d, claimed.len() as u64, range, Box::new(move |v| *s.lock().unwrap() = Some(v)));
        while let Some(item) = st.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => ok = false,
            }
        }
        let verdict = *seen.lock().unwrap();
        (out, ok, verdict)
    }

    #[tokio::test]
    async fn matching_blob_is_sent_whole_and_ranges_from_inside() {
        let data = b"0123456789abcdef";
        assert_eq!(run(data, data, 0..16).await, (data.to_vec(), true, Some(true)));
        assert_eq!(run(data, data, 5..16).await, (data[5..].to_vec(), true, Some(true)));
        assert_eq!(run(data, data, 15..16).await, (b"f".to_vec(), true, Some(true)));
    }

    #[tokio::test]
    async fn a_mismatch_withholds_the_final_byte() {
        let data = b"0123456789abcdef";
        let mut bad = *data;
        bad[2] = b'X';
        let (out, ok, verdict) = run(&bad, data, 0..16).await;
        assert!(!ok);
        assert_eq!(verdict, Some(false));
        assert_eq!(out.len(), 15, "everything but the final byte");
        let (out, ok, _) = run(&bad, data, 10..16).await;
        assert!(!ok);
        assert_eq!(out, b"abcde");
    }

    #[tokio::test]
    async fn short_and_long_bodies_fail() {
        let data = b"0123456789abcdef";
        let (out, ok, v) = run(&data[..10], data, 0..16).await;
        assert!(!ok && v == Some(false) && out.len() == 9);
        let mut long = data.to_vec();
        long.push(b'!');
        let (_, ok, v) = run(&long, data, 0..16).await;
        assert!(!ok && v == Some(false));
    }

    #[tokio::test]
    async fn empty_blob_verifies() {
        assert_eq!(run(b"", b"", 0..0).await, (vec![], true, Some(true)));
    }
}
