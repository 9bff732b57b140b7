//! Property tests ("fuzzing" on stable Rust) for everything that parses client or origin input:
//! request paths, `ns`, ranges, challenges, Accept. Whatever the input: no panic, and anything
//! accepted is valid and maps to a file inside the store. `tests/corpus/paths.txt` holds inputs
//! that broke or nearly broke parsers; CI raises the case count with PROPTEST_CASES.

use std::path::{Component, Path};

use ocicache::oci::{route, RegistryName, Route, RouteKind};
use ocicache::store::FsStore;
use proptest::prelude::*;

fn default_registry() -> RegistryName {
    RegistryName::parse("docker.io").unwrap()
}

/// Every accepted route maps to store paths below the root, without `..` or odd components.
fn assert_safe(route: &Route, store: &FsStore) {
    let Route::Api { target, kind } = route else { return };
    let check = |p: &Path| {
        assert!(p.starts_with(store.root()), "{p:?} escapes the store");
        let rel = p.strip_prefix(store.root()).unwrap();
        assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{p:?}");
    };
    if let RouteKind::Blob(d) = kind {
        check(&store.blob_path(d));
    }
    if let RouteKind::Manifest(ocicache::oci::Reference::Tag(t)) = kind {
        check(&store.tag_dir(&target.registry, &target.repository, t));
    }
}

/// One store for all cases: the properties only compute paths, they never write.
fn shared_store() -> &'static FsStore {
    static STORE: std::sync::OnceLock<(tempfile::TempDir, FsStore)> = std::sync::OnceLock::new();
    let (_, store) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        (dir, store)
    });
    store
}

fn check_input(store: &FsStore, path: &str, ns: Option<&str>) {
    if let Ok(r) = route::parse(path, ns, &default_registry()) {
        assert_safe(&r, store);
    }
}

#[test]
fn corpus_inputs_never_panic_and_stay_inside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let corpus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/paths.txt")).unwrap();
    for line in corpus.lines().filter(|l| !l.is_empty()) {
        check_input(&store, line, None);
        check_input(&store, line, Some("docker.io"));
        check_input(&store, line, Some(line));
    }
}

proptest! {
    #[test]
    fn arbitrary_paths_never_panic(path in "\\PC{0,300}", ns in proptest::option::of("\\PC{0,80}")) {
        check_input(shared_store(), &path, ns.as_deref());
    }

    #[test]
    fn path_shaped_inputs_never_escape(
        segs in proptest::collection::vec("[a-z0-9._%:\\-]{0,12}|\\.\\.|%2[eEfF]|[A-Z]{1,3}", 1..8),
        kind in prop_oneof![Just("manifests"), Just("blobs"), Just("tags")],
        last in "[a-zA-Z0-9._:\\-]{0,70}|sha256:[0-9a-f]{64}|\\.\\.",
        ns in proptest::option::of("[a-z0-9.:\\[\\]\\-]{0,30}"),
    ) {
        let path = format!("/v2/{}/{kind}/{last}", segs.join("/"));
        check_input(shared_store(), &path, ns.as_deref());
    }

    #[test]
    fn registry_names_parse_or_refuse(s in "\\PC{0,80}") {
        if let Ok(n) = RegistryName::parse(&s) {
            prop_assert!(!n.as_str().contains('/'));
            prop_assert!(!n.as_str().contains(".."));
        }
    }

    #[test]
    fn challenges_and_accept_headers_never_panic(h in "\\PC{0,200}") {
        let _ = ocicache::upstream::auth::Challenge::parse(&h);
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&h) {
            headers.insert(http::header::ACCEPT, v);
        }
        let a = ocicache::oci::AcceptList::from_headers(&headers);
        let _ = a.accepts("application/vnd.oci.image.manifest.v1+json");
    }
}
