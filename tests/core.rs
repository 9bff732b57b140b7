//! Core behaviour through a real upstream registry (Debian's docker-registry) and real clients
//! (skopeo, raw HTTP): routing, verified caching, policy, auth pass-through and bad input.

mod support;

use std::path::Path;

use support::*;

const ACCEPT_OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// Builds a three-layer image and pushes it to `registry` as `repo:tag`.
fn push_image(registry: &Registry, repo: &str, tag: &str, seed: u64) -> (tempfile::TempDir, BuiltImage) {
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![
        LayerSpec::file("etc/hostname", format!("image {seed}\n")),
        LayerSpec::file("data/random.bin", random_bytes(300_000, seed)),
        LayerSpec::file("bin/tool", random_bytes(50_000, seed + 1)),
    ];
    let img = build_image(dir.path(), tag, "amd64", &layers);
    push(&img.layout, tag, &format!("{}/{repo}:{tag}", registry.addr()), Format::Oci, None);
    (dir, img)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What skopeo wrote into a `dir:` destination, checked against the built image.
fn assert_same_image(dest: &Path, img: &BuiltImage) {
    assert_eq!(read(&dest.join("manifest.json")), img.manifest, "manifest bytes differ");
    for (digest, blob) in img.layer_digests.iter().zip(&img.layer_blobs) {
        let hex = digest.strip_prefix("sha256:").unwrap();
        assert_eq!(&read(&dest.join(hex)), blob, "layer {digest} differs");
    }
}

fn path_routed_pull_is_identical_and_second_pull_makes_no_upstream_request() {
    let upstream = Registry::start();
    let (_d, img) = push_image(&upstream, "test/img", "1", 1);
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url())]);
    let src = format!("docker://{}/one.test/test/img:1", cache.addr());

    let first = tempfile::tempdir().unwrap();
    assert_success(&skopeo_copy_to_dir(&src, first.path(), &[]), "first pull");
    assert_same_image(first.path(), &img);
    assert!(upstream.count("GET", "/blobs/") >= 3, "the first pull fetched from upstream");
    // Requests to the origin never carry the routing parameter.
    assert!(upstream.requests().iter().all(|r| !r.path.contains("ns=")));

    let mark = upstream.mark();
    let second = tempfile::tempdir().unwrap();
    assert_success(&skopeo_copy_to_dir(&src, second.path(), &[]), "second pull");
    assert_same_image(second.path(), &img);
    let after = upstream.requests_since(mark);
    assert!(after.is_empty(), "second pull reached upstream: {after:?}");
    assert!(cache.metric("containerd_cache_total{result=\"hit\"}") >= 4.0);
}

#[test]
fn ns_query_routing_returns_registry_headers_for_get_and_head() {
    let upstream = Registry::start();
    let (_d, img) = push_image(&upstream, "test/img", "1", 2);
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url())]);
    let addr = cache.addr();

    let path = "/v2/test/img/manifests/1?ns=one.test";
    let get = http_request(&addr, "GET", path, &[("Accept", ACCEPT_OCI)]);
    assert_eq!(get.status, 200, "{}", String::from_utf8_lossy(&get.body));
    assert_eq!(get.body, img.manifest);
    assert_eq!(get.header("docker-content-digest"), Some(img.manifest_digest.as_str()));
    assert_eq!(get.header("content-type"), Some(ACCEPT_OCI));
    assert_eq!(get.header("content-length"), Some(img.manifest.len().to_string().as_str()));

    let head = http_request(&addr, "HEAD", path, &[("Accept", ACCEPT_OCI)]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("docker-content-digest"), Some(img.manifest_digest.as_str()));
    assert_eq!(head.header("content-length"), get.header("content-length"));

    // By digest, and each blob, through ns routing.
    let by_digest =
        http_request(&addr, "GET", &format!("/v2/test/img/manifests/{}?ns=one.test", img.manifest_digest), &[]);
    assert_eq!(by_digest.body, img.manifest);
    for (digest, blob) in img.layer_digests.iter().zip(&img.layer_blobs) {
        let r = http_request(&addr, "GET", &format!("/v2/test/img/blobs/{digest}?ns=one.test"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(&r.body, blob);
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        let h = http_request(&addr, "HEAD", &format!("/v2/test/img/blobs/{digest}?ns=one.test"), &[]);
        assert_eq!(h.header("content-length"), Some(blob.len().to_string().as_str()));
    }

    let base = http_request(&addr, "GET", "/v2/", &[]);
    assert_eq!(base.status, 200);
    assert_eq!(base.header("docker-distribution-api-version"), Some("registry/2.0"));

    let tags = http_request(&addr, "GET", "/v2/test/img/tags/list?ns=one.test", &[]);
    assert_eq!(tags.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["1"]));
}

fn one_cache_serves_two_registries_and_stores_a_shared_blob_once() {
    let (a, b) = (Registry::start(), Registry::start());
    let dir = tempfile::tempdir().unwrap();
    let shared = LayerSpec::file("shared/base.bin", random_bytes(200_000, 99));
    let img_a = build_image(dir.path(), "a", "amd64", &[shared.clone(), LayerSpec::file("a", "a")]);
    let img_b = build_image(dir.path(), "b", "amd64", &[shared, LayerSpec::file("b", "b")]);
    push(&img_a.layout, "a", &format!("{}/team/app:1", a.addr()), Format::Oci, None);
    push(&img_b.layout, "b", &format!("{}/other/app:2", b.addr()), Format::Oci, None);
    assert_eq!(img_a.layer_digests[0], img_b.layer_digests[0]);
    let shared_digest = img_a.layer_digests[0].clone();

    let cache =
        Cache::start(&["--upstream", &format!("a.test={}", a.url()), "--upstream", &format!("b.test={}", b.url())]);
    let d1 = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/a.test/team/app:1", cache.addr()), d1.path(), &[]),
        "pull a",
    );
    assert_same_image(d1.path(), &img_a);
    let mark_b = b.mark();
    let d2 = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/b.test/other/app:2", cache.addr()), d2.path(), &[]),
        "pull b",
    );
    assert_same_image(d2.path(), &img_b);

    let fetched_from_b: Vec<_> =
        b.requests_since(mark_b).into_iter().filter(|r| r.method == "GET" && r.path.contains("/blobs/")).collect();
    assert!(
        fetched_from_b.iter().all(|r| !r.path.contains(&shared_digest)),
        "shared blob fetched twice: {fetched_from_b:?}"
    );
    assert_eq!(fetched_from_b.len(), 2, "config and own layer of b: {fetched_from_b:?}");
    let hex = shared_digest.strip_prefix("sha256:").unwrap();
    let copies = cache.stored_blobs().iter().filter(|p| p.file_name().unwrap() == hex).count();
    assert_eq!(copies, 1);
}

/// Requests for a tag that reached the origin (GET or HEAD).
fn asks(upstream: &Registry, tag: &str) -> usize {
    let path = format!("/manifests/{tag}");
    upstream.count("GET", &path) + upstream.count("HEAD", &path)
}

#[test]
fn skipped_tags_and_uncached_manifests_ask_the_origin_every_time() {
    let upstream = Registry::start();
    let (_d, _img) = push_image(&upstream, "test/img", "latest", 3);
    let (_d2, _img2) = push_image(&upstream, "test/img", "1", 4);
    let up = format!("one.test={}", upstream.url());
    let get = |cache: &Cache, tag: &str| {
        let r = http_request(
            &cache.addr(),
            "GET",
            &format!("/v2/one.test/test/img/manifests/{tag}"),
            &[("Accept", ACCEPT_OCI)],
        );
        assert_eq!(r.status, 200);
    };

    let cache = Cache::start(&["--upstream", &up]);
    for n in 1..=3 {
        get(&cache, "latest");
        assert_eq!(asks(&upstream, "latest"), n, "skip-tags default `latest`: every request asks the origin");
    }
    // After the first GET the origin is asked with HEADs (Docker Hub counts GETs as pulls, not HEADs).
    assert_eq!(upstream.count("GET", "/manifests/latest"), 1);
    let h = http_request(&cache.addr(), "HEAD", "/v2/one.test/test/img/manifests/latest", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(h.status, 200);
    assert_eq!(asks(&upstream, "latest"), 4);
    assert_eq!(upstream.count("GET", "/manifests/latest"), 1, "a client HEAD never becomes an upstream GET");
    assert!(cache.metric("containerd_cache_total{result=\"skip\"}") >= 4.0);

    // A cacheable tag is fetched once and then served from the cache.
    get(&cache, "1");
    get(&cache, "1");
    assert_eq!(asks(&upstream, "1"), 1);

    let nocache = Cache::start(&["--upstream", &up, "--cache-manifests=false"]);
    get(&nocache, "1");
    get(&nocache, "1");
    assert_eq!(asks(&upstream, "1"), 3, "--cache-manifests=false must ask every time");
}

#[test]
fn disallowed_registries_are_denied_without_any_connection() {
    // A listener that would see any connection attempt.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let port = trap.local_addr().unwrap().port();
    let cache = Cache::start(&[]);
    let paths = [
        format!("/v2/x/manifests/1?ns=127.0.0.1:{port}"),
        format!("/v2/127.0.0.1:{port}/x/manifests/1"),
        "/v2/x/manifests/1?ns=169.254.169.254".to_owned(),
        "/v2/x/manifests/1?ns=10.0.0.1".to_owned(),
        "/v2/evil.example/x/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_owned(),
    ];
    for p in &paths {
        let r = http_request(&cache.addr(), "GET", p, &[]);
        assert_eq!(r.status, 403, "{p}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED", "{p}");
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("allow-list"));
    }
    assert!(trap.accept().is_err(), "a denied registry was dialled");
}

#[test]
fn bad_input_gets_oci_errors_and_never_escapes_the_cache_dir() {
    let cache = Cache::start(&[]);
    let cases = [
        ("/v2/../../etc/manifests/passwd", 400, "NAME_INVALID"),
        ("/v2/a%2F..%2Fb/manifests/1", 400, "NAME_INVALID"),
        ("/v2/a/%2e%2e/manifests/1", 400, "NAME_INVALID"),
        ("/v2/a/blobs/sha256:../../x", 400, "NAME_INVALID"),
        ("/v2/a/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/a/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        ("/v2/a/manifests/..", 400, "NAME_INVALID"),
        ("/v2/a/manifests/-x", 400, "TAG_INVALID"),
        ("/v2/a/blobs/uploads/", 405, "UNSUPPORTED"),
    ];
    for (path, status, code) in cases {
        let r = http_request(&cache.addr(), "GET", path, &[]);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{path}: not JSON"));
        assert_eq!(v["errors"][0]["code"], code, "{path}");
    }
    let long = format!("/v2/{}/manifests/1", "a".repeat(300));
    assert_eq!(http_request(&cache.addr(), "GET", &long, &[]).status, 400);
    let huge = format!("/v2/a/manifests/1?x={}", "a".repeat(10_000));
    let r = http_request(&cache.addr(), "GET", &huge, &[]);
    assert_eq!(r.status, 414);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_ok());
    let big_header = "x".repeat(70_000);
    let r = http_request(&cache.addr(), "GET", "/v2/a/manifests/1", &[("X-Big", &big_header)]);
    assert_eq!(r.status, 431);
    let nul = http_request(&cache.addr(), "GET", "/v2/a/manifests/%00", &[]);
    assert_eq!(nul.status, 400);
    // Still serving after all of that.
    assert_eq!(http_request(&cache.addr(), "GET", "/v2/", &[]).status, 200);
    let put = http_request(&cache.addr(), "PUT", "/v2/a/manifests/1", &[("Content-Length", "0")]);
    assert_eq!(put.status, 405);
    // Nothing was written outside the store's own directories.
    let parent = cache.dir.parent().unwrap();
    let entries: Vec<_> = std::fs::read_dir(parent).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("cache")]);
}

#[test]
fn creds_file_authenticates_and_wrong_credentials_give_a_clear_401() {
    let upstream = Registry::start_with_htpasswd(&[("puller", "s3cret")]);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(10_000, 5))]);
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("puller", "s3cret")));
    let up = format!("auth.test={}", upstream.url());

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "auth.test:\n  username: puller\n  password: s3cret\n").unwrap();
    let cache = Cache::start(&["--upstream", &up, "--creds-file", good.to_str().unwrap()]);
    let dest = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/auth.test/priv/img:1", cache.addr()), dest.path(), &[]),
        "pull with creds file",
    );
    assert_same_image(dest.path(), &img);

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "auth.test:\n  username: puller\n  password: wrong\n").unwrap();
    let cache = Cache::start(&["--upstream", &up, "--creds-file", bad.to_str().unwrap()]);
    let r = http_request(&cache.addr(), "GET", "/v2/auth.test/priv/img/manifests/1", &[]);
    assert_eq!(r.status, 401);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("credentials configured for auth.test"), "{v}");
    assert!(r.header("www-authenticate").is_some_and(|c| c.starts_with("Basic")));
}

#[test]
fn origin_challenge_is_passed_through_and_client_credentials_forwarded() {
    let upstream = Registry::start_with_htpasswd(&[("alice", "pw")]);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(10_000, 6))]);
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));
    let cache = Cache::start(&["--upstream", &format!("auth.test={}", upstream.url())]);
    let path = "/v2/priv/img/manifests/1?ns=auth.test";

    let anon = http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI)]);
    assert_eq!(anon.status, 401);
    assert!(anon.header("www-authenticate").unwrap().starts_with("Basic realm="));

    // "alice:pw"
    let auth = ("Authorization", "Basic YWxpY2U6cHc=");
    let ok = http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI), auth]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, img.manifest);
    let blob = http_request(
        &cache.addr(),
        "GET",
        &format!("/v2/priv/img/blobs/{}?ns=auth.test", img.layer_digests[0]),
        &[auth],
    );
    assert_eq!(blob.body, img.layer_blobs[0]);

    // Fetched with the client's own credentials: never served to anyone without them.
    let again = http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI)]);
    assert_eq!(again.status, 401);
    let blob_anon =
        http_request(&cache.addr(), "GET", &format!("/v2/priv/img/blobs/{}?ns=auth.test", img.layer_digests[0]), &[]);
    assert_eq!(blob_anon.status, 401);
}

fn docker_schema2_and_index_keep_bytes_and_media_types_per_accept() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let v2 = build_image(dir.path(), "v2", "amd64", &[LayerSpec::file("x", "docker")]);
    push(&v2.layout, "v2", &format!("{}/test/docker:1", upstream.addr()), Format::V2s2, None);
    let idx = build_index(
        dir.path(),
        "multi",
        &[("amd64", vec![LayerSpec::file("a", "amd")]), ("arm64", vec![LayerSpec::file("a", "arm")])],
    );
    push_index(&idx.layout, "multi", &format!("{}/test/multi:1", upstream.addr()), None);
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url())]);

    let (d, ct, body) = manifest_digest_at(&upstream.addr(), "test/docker", "1", MT_DOCKER_MANIFEST);
    let r =
        http_request(&cache.addr(), "GET", "/v2/one.test/test/docker/manifests/1", &[("Accept", MT_DOCKER_MANIFEST)]);
    assert_eq!((r.body.clone(), r.header("content-type").unwrap().to_owned()), (body, ct));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));

    let all = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
    for _ in 0..2 {
        let r = http_request(&cache.addr(), "GET", "/v2/one.test/test/multi/manifests/1", &[("Accept", all)]);
        assert_eq!(r.header("content-type"), Some(MT_OCI_INDEX));
        assert_eq!(r.header("docker-content-digest"), Some(idx.index_digest.as_str()));
        assert_eq!(r.body, idx.index);
    }
    // A client that accepts only single manifests is never handed the cached index.
    let r = http_request(&cache.addr(), "GET", "/v2/one.test/test/multi/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_ne!(r.header("content-type"), Some(MT_OCI_INDEX));
    // Each platform manifest by digest.
    for m in &idx.manifests {
        let r = http_request(
            &cache.addr(),
            "GET",
            &format!("/v2/one.test/test/multi/manifests/{}", m.manifest_digest),
            &[("Accept", ACCEPT_OCI)],
        );
        assert_eq!(r.body, m.manifest);
    }
}

/// Uploads `data` as a blob of `repo` with the distribution API's monolithic upload (POST, then PUT
/// with the digest), which is how a push client stores a blob no image build produces.
fn upload_blob(registry: &Registry, repo: &str, data: &[u8]) -> String {
    assert!(data.is_empty(), "this raw client sends no body");
    let digest = sha256_digest(data);
    let r = http_request(&registry.addr(), "POST", &format!("/v2/{repo}/blobs/uploads/"), &[("Content-Length", "0")]);
    assert_eq!(r.status, 202, "{r:?}");
    let location = r.header("location").unwrap();
    let location = location.split_once(&registry.addr()).map_or(location, |(_, p)| p);
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!("{location}{sep}digest={digest}");
    let r = http_request(&registry.addr(), "PUT", &put, &[("Content-Length", "0")]);
    assert_eq!(r.status, 201, "{r:?}");
    digest
}

/// Issue #12: ranges on stored blobs as RFC 9110 defines them, through a raw HTTP client that sees
/// exactly what was sent: a last-byte-pos past the end (even past u64) is clamped, single bytes at
/// both ends, unsatisfiable ranges get 416 with `bytes */size`, a HEAD ignores Range, and a
/// zero-length blob never gets a partial answer.
fn ranges_on_stored_blobs_follow_rfc_9110_up_to_u64_max() {
    let upstream = Registry::start();
    let (_d, img) = push_image(&upstream, "test/ranges", "1", 90);
    let empty = upload_blob(&upstream, "test/ranges", b"");
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url())]);
    let blob = img.layer_blobs[1].clone();
    let n = blob.len();
    let path = format!("/v2/one.test/test/ranges/blobs/{}", img.layer_digests[1]);
    let r = http_request(&cache.addr(), "GET", &path, &[]);
    assert_eq!((r.status, &r.body), (200, &blob));
    assert_eq!(cache.stored_blobs().len(), 1);
    let asks = upstream.count("GET", "/blobs/");

    let partial = [
        ("bytes=5-18446744073709551615", 5, n),
        ("bytes=5-18446744073709551616", 5, n),
        ("bytes=0-18446744073709551615", 0, n),
        ("bytes=0-0", 0, 1),
        ("bytes=-1", n - 1, n),
        ("bytes=-18446744073709551615", 0, n),
        (&*format!("bytes={}-", n - 1), n - 1, n),
        (&*format!("bytes=0-{}", n - 1), 0, n),
    ];
    for (range, start, end) in partial {
        let r = http_request(&cache.addr(), "GET", &path, &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{}/{n}", end - 1).as_str()), "{range}");
        assert_eq!(r.header("content-length"), Some((end - start).to_string().as_str()), "{range}");
        assert!(r.body == blob[start..end], "{range}: body differs");
    }
    for range in ["bytes=-0".to_owned(), format!("bytes={n}-"), "bytes=18446744073709551615-".to_owned()] {
        let r = http_request(&cache.addr(), "GET", &path, &[("Range", &range)]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{n}").as_str()), "{range}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["errors"][0]["code"], "RANGE_INVALID", "{range}");
    }
    // Several ranges or bad syntax: the whole blob, as RFC 9110 allows.
    for range in ["bytes=0-1,5-6", "bytes=+1-2", "bytes=9-3", "pages=1-2"] {
        let r = http_request(&cache.addr(), "GET", &path, &[("Range", range)]);
        assert_eq!((r.status, r.header("content-range")), (200, None), "{range}");
        assert!(r.body == blob, "{range}: body differs");
    }
    // Range is defined for GET only: a HEAD describes the whole blob.
    let r = http_request(&cache.addr(), "HEAD", &path, &[("Range", "bytes=5-9")]);
    assert_eq!((r.status, r.header("content-length"), r.header("content-range")), (200, Some(&*n.to_string()), None));

    // A zero-length blob, from the origin and then stored.
    let path = format!("/v2/one.test/test/ranges/blobs/{empty}");
    for _ in 0..2 {
        let r = http_request(&cache.addr(), "GET", &path, &[]);
        assert_eq!((r.status, r.header("content-length"), r.body.len()), (200, Some("0"), 0));
        for (range, status) in [("bytes=0-", 416), ("bytes=0-0", 416), ("bytes=-0", 416), ("bytes=-1", 200)] {
            let r = http_request(&cache.addr(), "GET", &path, &[("Range", range)]);
            assert_eq!(r.status, status, "{range}");
            if status == 416 {
                assert_eq!(r.header("content-range"), Some("bytes */0"));
            } else {
                assert_eq!((r.header("content-length"), r.header("content-range")), (Some("0"), None));
                assert!(r.body.is_empty());
            }
        }
        assert_eq!(cache.stored_blobs().len(), 2);
    }
    assert_eq!(upstream.count("GET", "/blobs/"), asks + 1, "only the empty blob was fetched");
}

/// The answers a running cache sends for random Range headers agree with themselves and with the
/// blob: a 206's `Content-Range` and `Content-Length` describe exactly the bytes in its body, a 200
/// sends the whole blob, a 416 names the size. Bounded (a few hundred requests) so it takes seconds.
#[test]
fn random_range_headers_get_answers_whose_headers_match_their_bytes() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let upstream = Registry::start();
    let (_d, img) = push_image(&upstream, "test/ranges", "1", 91);
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url())]);
    let blob = img.layer_blobs[1].clone();
    let n = blob.len() as u64;
    let path = format!("/v2/one.test/test/ranges/blobs/{}", img.layer_digests[1]);
    assert_eq!(http_request(&cache.addr(), "GET", &path, &[]).body, blob);
    assert_eq!(cache.stored_blobs().len(), 1);

    let num = prop_oneof![
        3 => (0..n + 10).prop_map(|v| v.to_string()),
        2 => (n - 10..n + 10).prop_map(|v| v.to_string()),
        1 => any::<u64>().prop_map(|v| v.to_string()),
        1 => Just(u64::MAX.to_string()),
        1 => Just("99999999999999999999999".to_owned()),
        1 => Just(String::new()),
    ];
    let header = prop_oneof![
        8 => (num.clone(), num).prop_map(|(a, b)| format!("bytes={a}-{b}")),
        1 => "bytes=[0-9,-]{0,12}",
        1 => "[ -~]{0,30}",
    ];
    let mut runner = TestRunner::new(Config { cases: 300, ..Config::default() });
    let (partial, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&header, |h| {
            let r = http_request(&cache.addr(), "GET", &path, &[("Range", h.trim())]);
            let len: u64 = r.header("content-length").unwrap().parse().unwrap();
            prop_assert_eq!(len, r.body.len() as u64);
            match r.status {
                200 => prop_assert!(r.body == blob && r.header("content-range").is_none(), "{h:?}"),
                206 => {
                    partial.set(partial.get() + 1);
                    let cr = r.header("content-range").unwrap();
                    let (range, size) = cr.strip_prefix("bytes ").unwrap().split_once('/').unwrap();
                    let (a, b) = range.split_once('-').unwrap();
                    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                    prop_assert_eq!(size, n.to_string());
                    prop_assert!(a <= b && b < n, "{h:?}: {cr}");
                    prop_assert_eq!(len, b - a + 1);
                    prop_assert!(r.body == blob[a as usize..=b as usize], "{h:?}: body differs");
                }
                416 => {
                    refused.set(refused.get() + 1);
                    let expected = format!("bytes */{n}");
                    prop_assert_eq!(r.header("content-range"), Some(expected.as_str()));
                }
                s => prop_assert!(false, "{h:?}: status {s}"),
            }
            Ok(())
        })
        .unwrap();
    // The generator really exercised all three answers.
    let (partial, refused) = (partial.get(), refused.get());
    assert!(partial > 50 && refused > 10, "{partial} partial, {refused} refused");
}

/// Issue #12: every pull of an unchanged `:latest` (revalidated each time: `latest` is a skip-tag by
/// default) rewrote its tag file, two fsyncs on the request path. Now the file is left alone while
/// the tag does not move, and rewritten when it does.
#[test]
fn pulling_an_unchanged_latest_again_leaves_its_tag_file_alone() {
    use std::os::unix::fs::MetadataExt;
    let upstream = Registry::start();
    let (_d, _img) = push_image(&upstream, "test/app", "latest", 21);
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url())]);
    let pull = || {
        let d = tempfile::tempdir().unwrap();
        let src = format!("docker://{}/one.test/test/app:latest", cache.addr());
        assert_success(&skopeo_copy_to_dir(&src, d.path(), &[]), "pull");
        d
    };
    let tag_files = || {
        let mut v: Vec<_> = files_under(&cache.dir.join("tags"))
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap();
                (m.ino(), m.modified().unwrap(), std::fs::read(&p).unwrap(), p)
            })
            .collect();
        v.sort_by(|a, b| a.3.cmp(&b.3));
        v
    };
    pull();
    let first = tag_files();
    assert!(!first.is_empty());
    for n in 1..=3 {
        let heads = upstream.count("HEAD", "/manifests/latest");
        pull();
        assert!(upstream.count("HEAD", "/manifests/latest") > heads, "pull {n} did not revalidate");
        assert_eq!(tag_files(), first, "pull {n} rewrote an unchanged tag file");
    }
    // The tag moves upstream: the next pull gets the new image and the file says so.
    let (_d2, img2) = push_image(&upstream, "test/app", "latest", 22);
    let dest = pull();
    assert_same_image(dest.path(), &img2);
    let moved = tag_files();
    assert!(moved.iter().any(|(.., bytes, _)| String::from_utf8_lossy(bytes).contains(&img2.manifest_digest)));
}

// Each runs on the local disk and on the tiered store (disk tier + S3 bucket): `disk::<name>`, `tiered_s3::<name>`.
crate::on_every_backend!(
    path_routed_pull_is_identical_and_second_pull_makes_no_upstream_request,
    one_cache_serves_two_registries_and_stores_a_shared_blob_once,
    docker_schema2_and_index_keep_bytes_and_media_types_per_accept,
    ranges_on_stored_blobs_follow_rfc_9110_up_to_u64_max,
);
