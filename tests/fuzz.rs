//! Property tests ("fuzzing" on stable Rust) for everything that parses client or origin input:
//! request paths, `ns`, ranges, challenges, Accept. Whatever the input: no panic, and anything
//! accepted is valid and maps to a file inside the store. `tests/corpus/paths.txt` and
//! `tests/corpus/ranges.txt` hold inputs that broke or nearly broke parsers; CI raises the case count
//! with PROPTEST_CASES.
//!
//! Path inputs are mostly `/v2/...`-shaped: uniformly random strings almost never get past the first
//! `strip_prefix("/v2")`, so they would leave the route parser itself untested.

use std::path::{Component, Path};

use ocicache::oci::range::{self, ByteRange, RangeRequest};
use ocicache::oci::{route, RegistryName, Route, RouteKind};
use ocicache::store::Disk;
use proptest::prelude::*;

fn default_registry() -> RegistryName {
    RegistryName::parse("docker.io").unwrap()
}

/// Every accepted route maps to store paths below the root, without `..` or odd components.
fn assert_safe(route: &Route, store: &Disk) {
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
fn shared_store() -> &'static Disk {
    static STORE: std::sync::OnceLock<(tempfile::TempDir, Disk)> = std::sync::OnceLock::new();
    let (_, store) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Disk::open(dir.path()).unwrap();
        (dir, store)
    });
    store
}

fn check_input(store: &Disk, path: &str, ns: Option<&str>) -> bool {
    match route::parse(path, ns, &default_registry()) {
        Ok(r) => {
            assert_safe(&r, store);
            matches!(r, Route::Api { .. })
        }
        Err(_) => false,
    }
}

/// One path segment as a client or an attacker might write it: names, dots, percent-escapes,
/// digests (whole or cut), hosts with ports, IPv6 literals, and anything printable.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9]{1,8}([._-][a-z0-9]{1,6}){0,2}",
        2 => Just(".".to_owned()),
        2 => Just("..".to_owned()),
        2 => Just(String::new()),
        2 => "%(2[eEfF]|00|5[cC]|[0-9a-fA-F]{2})",
        2 => "[a-z0-9.]{0,4}%2[eEfF][a-z0-9.]{0,4}",
        2 => "(localhost|[a-z]{1,8}\\.[a-z]{2,4}|127\\.0\\.0\\.[0-9]{1,3})(:[0-9]{1,6})?",
        1 => "\\[[0-9a-f:]{0,12}\\](:[0-9]{1,5})?",
        1 => "(sha256|sha512|md5|SHA256)?:[0-9a-fA-F.]{0,70}",
        1 => "[A-Z_~ ]{1,4}",
        1 => "\\PC{0,12}",
    ]
}

/// What follows the repository name: a reference, a digest, or a near miss of one.
fn route_tail() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}".prop_map(|t| format!("manifests/{t}")),
        3 => "[0-9a-f]{64}".prop_map(|h| format!("manifests/sha256:{h}")),
        3 => "[0-9a-f]{64}".prop_map(|h| format!("blobs/sha256:{h}")),
        1 => "[0-9a-f]{128}".prop_map(|h| format!("blobs/sha512:{h}")),
        2 => Just("tags/list".to_owned()),
        1 => Just("blobs/uploads/".to_owned()),
        3 => (prop_oneof![Just("manifests"), Just("blobs"), Just("tags")], segment())
            .prop_map(|(k, s)| format!("{k}/{s}")),
        1 => (segment(), segment()).prop_map(|(a, b)| format!("{a}/{b}")),
    ]
}

/// Mostly `/v2/<registry?>/<repository>/<tail>`: half with plausible names (so the tail is parsed),
/// half with random segments; sometimes anything at all.
fn request_path() -> impl Strategy<Value = String> {
    let name = "[a-z0-9]{1,8}([._-][a-z0-9]{1,6}){0,2}";
    let junk = prop_oneof![8 => Just(String::new()), 1 => "[?#/]{1,2}"];
    prop_oneof![
        5 => (proptest::option::of(segment()), proptest::collection::vec(name, 1..4), route_tail(), junk.clone())
            .prop_map(|(host, segs, tail, junk)| {
                let host = host.map(|h| format!("{h}/")).unwrap_or_default();
                format!("/v2/{host}{}/{tail}{junk}", segs.join("/"))
            }),
        4 => (proptest::collection::vec(segment(), 1..6), route_tail(), junk)
            .prop_map(|(segs, tail, junk)| format!("/v2/{}/{tail}{junk}", segs.join("/"))),
        1 => "\\PC{0,300}",
    ]
}

/// Range headers: mostly `bytes=` specs around edge numbers, sometimes anything printable.
fn range_header() -> impl Strategy<Value = String> {
    let num = prop_oneof![
        3 => (0u64..64).prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just(u64::MAX.to_string()),
        1 => Just((u64::MAX - 1).to_string()),
        1 => Just("99999999999999999999999".to_owned()),
        1 => Just(String::new()),
        1 => "[+ -]?[0-9]{1,3}",
    ];
    prop_oneof![
        8 => (prop_oneof![Just("bytes="), Just("BYTES="), Just("bytes ="), Just("items=")], num.clone(), num, proptest::option::of(",[0-9]{0,2}-[0-9]{0,2}"))
            .prop_map(|(unit, a, b, more)| format!("{unit}{a}-{b}{}", more.unwrap_or_default())),
        2 => "\\PC{0,60}",
    ]
}

/// Blob lengths: tiny, random, and the u64 edges.
fn blob_size() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..64, 2 => any::<u64>(), 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1), 1 => Just(0u64)]
}

/// The answer to `Range: header` on a `size`-byte blob is self-consistent: a 206 names a non-empty
/// range inside the blob, its `Content-Range` ends at `end - 1` and its `Content-Length` is the
/// range's length; and for a plain `bytes=a-b` / `bytes=a-` / `bytes=-n` it is the RFC's answer.
fn check_range(header: &str, size: u64) {
    let answer = range::parse(Some(header), size);
    if let RangeRequest::Partial(r) = answer {
        assert!(r.start < r.end && r.end <= size, "{header:?} on {size} bytes gave {r:?}");
        assert_eq!(r.content_range(size), format!("bytes {}-{}/{size}", r.start, r.end - 1));
        assert_eq!(r.len(), r.end - r.start);
    }
    // An independent reading of the simple forms, in u128 so nothing can wrap.
    let Some(spec) = header.strip_prefix("bytes=") else { return };
    let Some((a, b)) = spec.split_once('-') else { return };
    let num = |s: &str| -> Option<u128> {
        (!s.is_empty() && s.len() <= 30 && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let size = u128::from(size);
    let expected = match (num(a), num(b), a.is_empty(), b.is_empty()) {
        (None, Some(0), true, false) => RangeRequest::Unsatisfiable,
        (None, Some(_), true, false) if size == 0 => RangeRequest::Full,
        (None, Some(n), true, false) => part(size.saturating_sub(n), size),
        (Some(first), _, false, true) if first >= size => RangeRequest::Unsatisfiable,
        (Some(first), _, false, true) => part(first, size),
        (Some(first), Some(last), _, _) if last < first => RangeRequest::Full,
        (Some(first), Some(_), _, _) if first >= size => RangeRequest::Unsatisfiable,
        (Some(first), Some(last), _, _) => part(first, (last + 1).min(size)),
        _ => return,
    };
    assert_eq!(answer, expected, "{header:?} on {size} bytes");
}

fn part(start: u128, end: u128) -> RangeRequest {
    RangeRequest::Partial(ByteRange { start: start as u64, end: end as u64 })
}

#[test]
fn corpus_inputs_never_panic_and_stay_inside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Disk::open(dir.path()).unwrap();
    let corpus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/paths.txt")).unwrap();
    for line in corpus.lines().filter(|l| !l.is_empty()) {
        check_input(&store, line, None);
        check_input(&store, line, Some("docker.io"));
        check_input(&store, line, Some(line));
    }
}

#[test]
fn corpus_ranges_answer_consistently_for_every_edge_size() {
    let corpus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/ranges.txt")).unwrap();
    for line in corpus.lines().filter(|l| !l.is_empty()) {
        for size in [0, 1, 5, 6, 10, 1 << 20, u64::MAX - 1, u64::MAX] {
            check_range(line, size);
        }
    }
}

/// The path generator reaches the route parser: a good share of its inputs parse into an API route
/// (a generator that only produced garbage would leave the interesting code unexercised).
#[test]
fn generated_paths_mostly_reach_the_route_parser() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut v2, mut accepted) = (0, 0);
    for _ in 0..2000 {
        let path = request_path().new_tree(&mut runner).unwrap().current();
        v2 += usize::from(path.starts_with("/v2/"));
        accepted += usize::from(check_input(shared_store(), &path, None));
    }
    assert!(v2 >= 1600, "only {v2} of 2000 generated paths start with /v2/");
    assert!(accepted >= 200, "only {accepted} of 2000 generated paths parse into a route");
}

proptest! {
    #[test]
    fn arbitrary_paths_never_panic(path in request_path(), ns in proptest::option::of("\\PC{0,80}")) {
        check_input(shared_store(), &path, ns.as_deref());
    }

    #[test]
    fn range_answers_agree_with_the_blob_size(header in range_header(), size in blob_size()) {
        check_range(&header, size);
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
