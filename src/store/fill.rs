//! A blob being written: a staging file on local disk (in every backend: the bucket tier uploads it
//! only after the digest matched), readable while it grows so that every client waiting for the
//! blob reads the same bytes as they arrive. It becomes content only through `Store::commit_fill`;
//! dropped before that, its file is removed, so nothing partial ever looks like a blob — and a file
//! left by a crash is in `tmp/`, where the next start removes it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::oci::Digest;

pub struct Fill {
    digest: Digest,
    /// `None` once handed to a commit (the file now belongs to the store).
    path: Option<PathBuf>,
    file: Arc<File>,
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill").field("digest", &self.digest).field("path", &self.path).finish()
    }
}

/// Reads a fill's bytes as they are written (any number of readers, each at its own position).
#[derive(Clone)]
pub struct FillReader {
    file: Arc<File>,
}

impl Fill {
    /// Creates a uniquely named staging file in `dir` (blocking: call on the blocking pool).
    pub(crate) fn create_blocking(dir: &Path, digest: &Digest) -> io::Result<Fill> {
        let path = dir.join(format!("fill-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(Fill { digest: digest.clone(), path: Some(path), file: Arc::new(file) })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn reader(&self) -> FillReader {
        FillReader { file: self.file.clone() }
    }

    /// Writes a whole chunk at its offset, on the blocking pool (a write can wait on the disk).
    pub async fn write_at(&self, bytes: Bytes, offset: u64) -> io::Result<()> {
        self.write_parts_at(vec![bytes], offset).await
    }

    /// Writes consecutive pieces from `offset` in one trip to the blocking pool, without joining
    /// them into one buffer first.
    pub async fn write_parts_at(&self, parts: Vec<Bytes>, offset: u64) -> io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut at = offset;
            for p in &parts {
                file.write_all_at(p, at)?;
                at += p.len() as u64;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// The staging file, for the store's commit (blocking code only).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Takes the staging path out: the caller (a commit) now owns the file and its removal.
    pub(crate) fn take_path(&mut self) -> Option<PathBuf> {
        self.path.take()
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Off the async workers when there is a runtime; a leftover is removed at the next start.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || std::fs::remove_file(path));
                }
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl FillReader {
    /// Exactly `n` bytes at `pos` (which the writer has already written), on the blocking pool.
    pub async fn read_at(&self, pos: u64, n: usize) -> io::Result<Bytes> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || read_exact_at(&file, pos, n))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}

pub(crate) fn read_exact_at(file: &File, pos: u64, n: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, pos)?;
    Ok(Bytes::from(buf))
}
