//! Which store an in-process cache (and a spawned `ocicache` process) uses: the local disk, or the
//! tiered store — a disk tier in front of a bucket on a real S3 server (moto). The integration tests
//! that pull through the cache run once per backend; `on_every_backend!` generates the tests as
//! `disk::<name>` and `tiered_s3::<name>`, so the backend shows in every test's name.
//!
//! The backend is per test thread: `Cache::start`/`start_in` and `CacheProcess::spawn` read it, so a
//! test body needs no change. A tiered test gets its own bucket (kept across restarts within the
//! test) on one moto server shared by the test binary; the S3 environment is set once for the
//! process, since ocicache reads it like the AWS SDKs do.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Disk,
    TieredS3,
}

thread_local! {
    static BACKEND: Cell<Backend> = const { Cell::new(Backend::Disk) };
    static BUCKET: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `test` with every cache it starts on `backend`. A tiered test must have put content in its
/// bucket (otherwise it did not exercise the tier it is named after).
pub fn with_backend(backend: Backend, test: impl FnOnce()) {
    BACKEND.with(|b| b.set(backend));
    BUCKET.with(|b| *b.borrow_mut() = None);
    test();
    if backend == Backend::TieredS3 {
        let bucket = BUCKET.with(|b| b.borrow().clone()).expect("a tiered test started no cache");
        let keys = shared_moto().keys(&bucket);
        assert!(
            keys.iter().any(|k| k.starts_with("blobs/") || k.starts_with("manifests/")),
            "nothing reached the bucket: {keys:?}"
        );
    }
}

pub fn current_backend() -> Backend {
    BACKEND.with(Cell::get)
}

/// The moto server shared by this test binary. Started from a thread that lives as long as the
/// process, with a parent-death signal, so the server goes when the test binary exits.
pub fn shared_moto() -> &'static super::Moto {
    static MOTO: OnceLock<super::Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let moto = super::Moto::start_tied_to_this_thread();
            for (k, v) in moto.env() {
                std::env::set_var(k, v);
            }
            tx.send(moto).expect("hand over moto");
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("moto started")
    })
}

/// Flags that put a cache on the current backend (for a tiered one: this test's bucket).
pub fn backend_flags() -> Vec<String> {
    match current_backend() {
        Backend::Disk => Vec::new(),
        Backend::TieredS3 => vec!["--storage".into(), format!("s3://{}", test_bucket())],
    }
}

/// Environment for a spawned `ocicache` on the current backend.
pub fn backend_env() -> Vec<(&'static str, String)> {
    match current_backend() {
        Backend::Disk => Vec::new(),
        Backend::TieredS3 => shared_moto().env(),
    }
}

/// This test's bucket on the shared moto server, created on first use.
pub fn test_bucket() -> String {
    BUCKET.with(|b| {
        b.borrow_mut()
            .get_or_insert_with(|| {
                let name = format!("test-{:016x}", rand_u64());
                shared_moto().create_bucket(&name);
                name
            })
            .clone()
    })
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// `on_every_backend!(name, ...)`: each `fn name()` (without `#[test]`) becomes the tests
/// `disk::name` and `tiered_s3::name`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod disk {
            $(#[test] fn $name() { $crate::support::with_backend($crate::support::Backend::Disk, super::$name) })*
        }
        mod tiered_s3 {
            $(#[test] fn $name() { $crate::support::with_backend($crate::support::Backend::TieredS3, super::$name) })*
        }
    };
}
