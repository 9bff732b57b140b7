use super::*;

fn hub() -> RegistryName {
    RegistryName::parse("docker.io").unwrap()
}

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn digest_accepts_only_known_algorithms_and_exact_hex() {
    assert!(D.parse::<Digest>().is_ok());
    let sha512 = format!("sha512:{}", "a".repeat(128));
    assert_eq!(sha512.parse::<Digest>().unwrap().algorithm(), Algorithm::Sha512);
    for bad in [
        "sha256:abc",
        "md5:0123",
        "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
        "sha256:../../../../etc/passwd",
        "sha256",
        "",
    ] {
        let err = bad.parse::<Digest>().unwrap_err();
        assert_eq!(err.code, ErrorCode::DigestInvalid, "{bad}");
    }
}

#[test]
fn hasher_matches_known_sha256() {
    let d = Digest::sha256_of(b"");
    assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert!(d.matches(b""));
    assert!(!d.matches(b"x"));
}

#[test]
fn repository_grammar() {
    for ok in ["a", "library/alpine", "a-b/c__d/e.f", "x--y", "0/1/2"] {
        assert!(Repository::parse(ok).is_ok(), "{ok}");
    }
    for bad in ["", "..", "a/../b", "A", "a//b", "/a", "a/", "-a", "a_", "a___b", "a\0b", &"a".repeat(256)] {
        assert_eq!(Repository::parse(bad).unwrap_err().code, ErrorCode::NameInvalid, "{bad:?}");
    }
}

#[test]
fn tag_grammar() {
    assert!(Tag::parse("v1.2.3-rc_1").is_ok());
    assert!(Tag::parse("_x").is_ok());
    for bad in ["", ".", "..", "-a", "a/b", &"a".repeat(129)] {
        assert_eq!(Tag::parse(bad).unwrap_err().code, ErrorCode::TagInvalid, "{bad:?}");
    }
}

#[test]
fn registry_names_fold_docker_hub_aliases() {
    for alias in ["docker.io", "registry-1.docker.io", "index.docker.io", "Docker.IO"] {
        assert!(RegistryName::parse(alias).unwrap().is_docker_hub(), "{alias}");
    }
    assert_eq!(RegistryName::parse("127.0.0.1:5000").unwrap().host(), "127.0.0.1");
    assert_eq!(RegistryName::parse("[::1]:5000").unwrap().host(), "::1");
    assert!(RegistryName::parse("[::1]:5000").unwrap().ip().unwrap().is_loopback());
    for bad in ["", "a:b", "a:99999", "a..b", "-a.b", "a b", "a/b", "[zz]:1", "a:"] {
        assert!(RegistryName::parse(bad).is_err(), "{bad}");
    }
}

fn api(path: &str, ns: Option<&str>) -> (Target, RouteKind) {
    match route::parse(path, ns, &hub()).unwrap() {
        Route::Api { target, kind } => (target, kind),
        Route::Base => panic!("base"),
    }
}

#[test]
fn ns_query_names_the_registry_and_hub_gets_library() {
    let (t, k) = api("/v2/library/alpine/manifests/3.20", Some("docker.io"));
    assert_eq!(t.registry.as_str(), "docker.io");
    assert_eq!(t.repository.as_str(), "library/alpine");
    assert_eq!(k, RouteKind::Manifest(Reference::Tag(Tag::parse("3.20").unwrap())));
    let (t, _) = api("/v2/alpine/manifests/3.20", Some("registry-1.docker.io"));
    assert_eq!(t.repository.as_str(), "library/alpine");
    let (t, _) = api(&format!("/v2/org/app/blobs/{D}"), Some("ghcr.io"));
    assert_eq!((t.registry.as_str(), t.repository.as_str()), ("ghcr.io", "org/app"));
}

#[test]
fn path_routing_uses_a_host_like_first_segment() {
    let (t, k) = api("/v2/ghcr.io/org/app/manifests/1.0", None);
    assert_eq!((t.registry.as_str(), t.repository.as_str()), ("ghcr.io", "org/app"));
    assert!(matches!(k, RouteKind::Manifest(Reference::Tag(_))));
    let (t, _) = api("/v2/localhost:5000/x/tags/list", None);
    assert_eq!((t.registry.as_str(), t.repository.as_str()), ("localhost:5000", "x"));
    let (t, _) = api("/v2/localhost/x/tags/list", None);
    assert_eq!(t.registry.as_str(), "localhost");
    // Neither ns nor host: the default registry, with library/ for Docker Hub.
    let (t, _) = api("/v2/busybox/manifests/latest", None);
    assert_eq!((t.registry.as_str(), t.repository.as_str()), ("docker.io", "library/busybox"));
    let (t, _) = api("/v2/org/app/manifests/latest", None);
    assert_eq!(t.repository.as_str(), "org/app");
    // A single host-like segment is a repository name, not a registry.
    let (t, _) = api("/v2/my.app/manifests/1", None);
    assert_eq!(t.repository.as_str(), "library/my.app");
}

#[test]
fn digest_references_and_blobs() {
    let (_, k) = api(&format!("/v2/a/b/manifests/{D}"), Some("quay.io"));
    assert!(matches!(k, RouteKind::Manifest(Reference::Digest(_))));
    let (_, k) = api(&format!("/v2/a/b/blobs/{D}"), Some("quay.io"));
    assert!(matches!(k, RouteKind::Blob(_)));
}

#[test]
fn base_and_bad_paths() {
    assert_eq!(route::parse("/v2/", None, &hub()).unwrap(), Route::Base);
    assert_eq!(route::parse("/v2", None, &hub()).unwrap(), Route::Base);
    let code = |p: &str, ns: Option<&str>| route::parse(p, ns, &hub()).unwrap_err().code;
    assert_eq!(code("/v2/../etc/manifests/x", None), ErrorCode::NameInvalid);
    assert_eq!(code("/v2/a%2Fb/manifests/x", None), ErrorCode::NameInvalid);
    assert_eq!(code("/v2/%2e%2e/manifests/x", None), ErrorCode::NameInvalid);
    assert_eq!(code("/v2/a/blobs/sha256:zz", None), ErrorCode::DigestInvalid);
    assert_eq!(code("/v2/a/manifests/sha256:zz", None), ErrorCode::DigestInvalid);
    assert_eq!(code("/v2/a/manifests/-bad", None), ErrorCode::TagInvalid);
    assert_eq!(code("/v2/a/blobs/uploads/", None), ErrorCode::Unsupported);
    assert_eq!(code("/v2/a/x/y", None), ErrorCode::Unsupported);
    assert_eq!(code("/v3/a/manifests/x", None), ErrorCode::Unsupported);
    assert_eq!(code("/v2/a/manifests/x", Some("bad host")), ErrorCode::NameInvalid);
    assert_eq!(code("/v2//a/manifests/x", None), ErrorCode::NameInvalid);
    assert_eq!(code("/v2/a/manifests/..", None), ErrorCode::NameInvalid);
}

#[test]
fn accept_list_matching() {
    let mut h = http::HeaderMap::new();
    assert!(AcceptList::from_headers(&h).accepts("anything"));
    h.append(http::header::ACCEPT, "application/vnd.oci.image.manifest.v1+json; q=0.5".parse().unwrap());
    h.append(http::header::ACCEPT, "application/vnd.docker.distribution.manifest.v2+json".parse().unwrap());
    let a = AcceptList::from_headers(&h);
    assert!(a.accepts(accept::OCI_MANIFEST));
    assert!(a.accepts(accept::DOCKER_MANIFEST));
    assert!(!a.accepts(accept::OCI_INDEX));
}

#[test]
fn error_body_is_oci_json() {
    let e = OciError::new(ErrorCode::Denied, "no \"way\"");
    let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
    assert_eq!(v["errors"][0]["code"], "DENIED");
    assert_eq!(v["errors"][0]["message"], "no \"way\"");
    assert_eq!(ErrorCode::Denied.status(), http::StatusCode::FORBIDDEN);
}

mod ranges {
    use crate::oci::range::{parse, ByteRange, RangeRequest};

    fn part(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn single_ranges_as_rfc_9110_defines_them() {
        assert_eq!(parse(None, 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=0-4"), 10), part(0, 5));
        assert_eq!(parse(Some("bytes=0-0"), 10), part(0, 1));
        assert_eq!(parse(Some("bytes=5-"), 10), part(5, 10));
        assert_eq!(parse(Some("bytes=5-100"), 10), part(5, 10));
        assert_eq!(parse(Some("bytes=9-9"), 10), part(9, 10));
        assert_eq!(parse(Some("bytes=-1"), 10), part(9, 10));
        assert_eq!(parse(Some("bytes=-3"), 10), part(7, 10));
        assert_eq!(parse(Some("bytes=-30"), 10), part(0, 10));
        assert_eq!(parse(Some("BYTES=1-2"), 10), part(1, 3));
        assert_eq!(parse(Some(" bytes=1-2 "), 10), part(1, 3));
        assert_eq!(parse(Some("bytes=10-"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=10-20"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), RangeRequest::Unsatisfiable);
    }

    #[test]
    fn positions_past_u64_are_clamped_not_wrapped() {
        // The header of issue #12: a last-byte-pos past the end means "to the end".
        assert_eq!(parse(Some("bytes=5-18446744073709551615"), 10), part(5, 10));
        assert_eq!(parse(Some("bytes=5-99999999999999999999999999"), 10), part(5, 10));
        assert_eq!(parse(Some("bytes=0-18446744073709551615"), u64::MAX), part(0, u64::MAX));
        assert_eq!(parse(Some("bytes=-18446744073709551615"), 10), part(0, 10));
        assert_eq!(parse(Some("bytes=-99999999999999999999999"), u64::MAX), part(0, u64::MAX));
        assert_eq!(parse(Some("bytes=18446744073709551615-"), u64::MAX), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=99999999999999999999999-"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=18446744073709551614-"), u64::MAX), part(u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn a_zero_length_blob_has_no_partial_answer() {
        assert_eq!(parse(Some("bytes=0-"), 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-0"), 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 0), RangeRequest::Unsatisfiable);
        // Satisfiable by the RFC, but there is no byte to name: the empty whole, with 200.
        assert_eq!(parse(Some("bytes=-1"), 0), RangeRequest::Full);
    }

    #[test]
    fn anything_else_is_ignored_and_the_whole_blob_sent() {
        for h in [
            "bytes=0-1,3-4",
            "bytes=0-1,",
            "bytes=4-2",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "bytes=1--2",
            "bytes=1-2-3",
            "bytes=0x1-2",
            "bytes=１-2",
            "bytes 0-1",
            "",
        ] {
            assert_eq!(parse(Some(h), 10), RangeRequest::Full, "{h:?}");
        }
    }

    #[test]
    fn content_range_names_the_last_byte() {
        let r = ByteRange { start: 5, end: 10 };
        assert_eq!(r.content_range(10), "bytes 5-9/10");
        assert_eq!(r.len(), 5);
        assert_eq!(
            ByteRange { start: 0, end: u64::MAX }.content_range(u64::MAX),
            format!("bytes 0-{}/{}", u64::MAX - 1, u64::MAX)
        );
    }
}
