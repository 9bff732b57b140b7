//! Keeping nodes pulling when an origin is down or rate-limiting: stale-if-error with real clients,
//! tag revalidation by HEAD, endpoint failover with a circuit breaker, Retry-After, offline mode.

mod support;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

const ACCEPT_OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn image(dir: &std::path::Path, tag: &str, seed: u64) -> BuiltImage {
    build_image(
        dir,
        tag,
        "amd64",
        &[LayerSpec::file("etc/id", format!("{seed}\n")), LayerSpec::file("data.bin", random_bytes(100_000, seed))],
    )
}

fn get_manifest(cache: &Cache, path: &str) -> HttpResponse {
    http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI)])
}

fn previously_pulled_tags_keep_pulling_through_skopeo_and_containerd_when_the_origin_stops() {
    let mut upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "1", 1);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    push(&img.layout, "1", &format!("{}/test/img:latest", upstream.addr()), Format::Oci, None);
    push(&img.layout, "1", &format!("{}/test/never:1", upstream.addr()), Format::Oci, None);
    // TTL 0: every tag request revalidates, so only stale-if-error can answer once the origin is gone.
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url()), "--tag-ttl", "0"]);
    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&cache.addr());
    ctrd.block_fallback("one.test");

    let src = |tag: &str| format!("docker://{}/one.test/test/img:{tag}", cache.addr());
    for tag in ["1", "latest"] {
        let d = tempfile::tempdir().unwrap();
        assert_success(&skopeo_copy_to_dir(&src(tag), d.path(), &[]), "warm pull");
        ctrd.pull_ok(&format!("one.test/test/img:{tag}"), &[]);
    }
    ctrd.clean();

    upstream.stop();
    for tag in ["1", "latest"] {
        let d = tempfile::tempdir().unwrap();
        assert_success(
            &skopeo_copy_to_dir(&src(tag), d.path(), &[]),
            &format!("skopeo pull of {tag} while the origin is down"),
        );
        assert_eq!(std::fs::read(d.path().join("manifest.json")).unwrap(), img.manifest);
        ctrd.pull_ok(&format!("one.test/test/img:{tag}"), &[]);
    }
    let r = get_manifest(&cache, "/v2/one.test/test/img/manifests/1");
    assert_eq!(r.status, 200);
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")), "{:?}", r.headers);
    assert!(
        cache.metric("ocicache_cache_requests_total{registry=\"one.test\",kind=\"manifest\",result=\"stale\"}") >= 4.0
    );

    // Never pulled: a clear error, so containerd moves on to its next host.
    let never = get_manifest(&cache, "/v2/one.test/test/never/manifests/1");
    assert!(never.status >= 500, "{}", never.status);
    let v: serde_json::Value = serde_json::from_slice(&never.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("one.test"), "{v}");
    let d = tempfile::tempdir().unwrap();
    assert!(!skopeo_copy_to_dir(&format!("docker://{}/one.test/test/never:1", cache.addr()), d.path(), &[])
        .status
        .success());
}

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;

/// A fake origin serving tag 1.0, already pulled once through a cache that revalidates every time.
fn origin_with_a_cached_tag() -> (FakeOrigin, Cache) {
    let origin = FakeOrigin::start();
    origin.add_manifest("1.0", MANIFEST, ACCEPT_OCI, Fault::None);
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url()), "--tag-ttl", "0"]);
    assert_eq!(get_manifest(&cache, "/v2/fake.test/app/manifests/1.0").status, 200);
    (origin, cache)
}

#[test]
fn rate_limited_origin_is_not_asked_again_before_retry_after_and_stale_is_served() {
    let (origin, cache) = origin_with_a_cached_tag();
    let manifest = MANIFEST;
    assert_eq!(cache.metric("ocicache_upstream_ratelimit_remaining{registry=\"fake.test\"}"), 76.0);

    // Fault: the origin now answers 429 with Retry-After.
    let limited = Fault::Status(429, vec![("Retry-After".into(), "120".into())]);
    origin.add_manifest("1.0", manifest, ACCEPT_OCI, limited.clone());
    origin.add_manifest("2.0", manifest, ACCEPT_OCI, limited);
    let stale = get_manifest(&cache, "/v2/fake.test/app/manifests/1.0");
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, manifest);
    assert!(stale.header("warning").is_some());
    let asked = origin.requests().len();

    // Within Retry-After: served stale without asking; a never-cached tag gets 429 + Retry-After.
    assert_eq!(get_manifest(&cache, "/v2/fake.test/app/manifests/1.0").status, 200);
    let r = get_manifest(&cache, "/v2/fake.test/app/manifests/2.0");
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 120);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
    assert_eq!(origin.requests().len(), asked, "the origin was asked again before Retry-After passed");
}

#[test]
fn an_origin_answering_503_is_served_stale_and_its_error_passed_on_otherwise() {
    let (origin, cache) = origin_with_a_cached_tag();
    let manifest = MANIFEST;
    // Fault: the origin fails with 503.
    origin.add_manifest("1.0", manifest, ACCEPT_OCI, Fault::Status(503, vec![]));
    let r = get_manifest(&cache, "/v2/fake.test/app/manifests/1.0");
    assert_eq!((r.status, r.body.as_slice()), (200, manifest));
    assert!(r.header("warning").is_some());
    // Never cached, and the origin still failing: its failure (the origin's 503, or, while the
    // circuit is open and a probe is not due, a fresh 502 naming the last failure) is passed on.
    origin.add_manifest("9.9", manifest, ACCEPT_OCI, Fault::Status(503, vec![]));
    let never = get_manifest(&cache, "/v2/fake.test/app/manifests/9.9");
    assert!(matches!(never.status, 502 | 503), "{}", never.status);
    let v: serde_json::Value = serde_json::from_slice(&never.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
}

#[test]
fn a_moved_tag_is_seen_after_the_ttl_not_before_and_revalidation_is_a_head() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (image(dir.path(), "a", 10), image(dir.path(), "b", 11), image(dir.path(), "c", 12));
    push(&a.layout, "a", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let up = format!("one.test={}", upstream.url());
    let cache_dir = tempfile::tempdir().unwrap();
    let path = "/v2/one.test/test/img/manifests/1";

    let mut long = Cache::start_in(cache_dir.path(), &["--upstream", &up, "--tag-ttl", "1h"]);
    assert_eq!(get_manifest(&long, path).body, a.manifest);
    push(&b.layout, "b", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    assert_eq!(get_manifest(&long, path).body, a.manifest, "moved tag served before its TTL passed");
    long.stop();

    // The same cache with the TTL passed (0): a HEAD finds the new digest, fetched by digest once.
    let mark = upstream.mark();
    let mut expired = Cache::start_in(cache_dir.path(), &["--upstream", &up, "--tag-ttl", "0"]);
    assert_eq!(get_manifest(&expired, path).body, b.manifest);
    assert_eq!(get_manifest(&expired, path).body, b.manifest);
    let since = upstream.requests_since(mark);
    let by_tag: Vec<_> = since.iter().filter(|r| r.path.ends_with("/manifests/1")).collect();
    assert!(by_tag.iter().all(|r| r.method == "HEAD"), "revalidation must be a HEAD: {by_tag:?}");
    assert_eq!(by_tag.len(), 2);
    assert_eq!(since.iter().filter(|r| r.method == "GET" && r.path.contains(&b.manifest_digest)).count(), 1);
    assert!(expired.metric("ocicache_revalidations_total{registry=\"one.test\",outcome=\"changed\"}") == 1.0);
    assert!(expired.metric("ocicache_revalidations_total{registry=\"one.test\",outcome=\"unchanged\"}") == 1.0);
    expired.stop();

    // Immutable tags are never revalidated.
    push(&c.layout, "c", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let mark = upstream.mark();
    let pinned = Cache::start_in(cache_dir.path(), &["--upstream", &up, "--tag-ttl", "0", "--immutable-tags", "^1$"]);
    assert_eq!(get_manifest(&pinned, path).body, b.manifest);
    assert!(upstream.requests_since(mark).is_empty());
}

/// A listener that accepts and immediately closes connections, counting them: a broken mirror.
fn broken_endpoint() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let a = accepts.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            a.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (port, accepts)
}

#[test]
fn a_dead_endpoint_fails_over_and_is_not_dialled_again_within_the_backoff() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (image(dir.path(), "a", 20), image(dir.path(), "b", 21));
    push(&a.layout, "a", &format!("{}/test/a:1", upstream.addr()), Format::Oci, None);
    push(&b.layout, "b", &format!("{}/test/b:1", upstream.addr()), Format::Oci, None);
    let (dead, accepts) = broken_endpoint();
    let cache = Cache::start(&["--upstream", &format!("two.test=http://127.0.0.1:{dead},{}", upstream.url())]);

    let d = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/two.test/test/a:1", cache.addr()), d.path(), &[]),
        "pull a",
    );
    let dialled = accepts.load(Ordering::SeqCst);
    assert!(dialled >= 1, "the first endpoint was never tried");
    let d = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/two.test/test/b:1", cache.addr()), d.path(), &[]),
        "pull b",
    );
    assert_eq!(accepts.load(Ordering::SeqCst), dialled, "the dead endpoint was dialled again within its backoff");
    let ep = format!("ocicache_endpoint_circuit_open{{registry=\"two.test\",endpoint=\"http://127.0.0.1:{dead}/\"}}");
    assert_eq!(cache.metric(&ep), 1.0);
}

fn offline_mode_serves_a_warm_cache_with_zero_upstream_requests() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "1", 30);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    push(&img.layout, "1", &format!("{}/test/cold:1", upstream.addr()), Format::Oci, None);
    let up = format!("one.test={}", upstream.url());
    let cache_dir = tempfile::tempdir().unwrap();
    let mut online = Cache::start_in(cache_dir.path(), &["--upstream", &up]);
    let d = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/one.test/test/img:1", online.addr()), d.path(), &[]),
        "warm",
    );
    online.stop();

    let mark = upstream.mark();
    let offline = Cache::start_in(cache_dir.path(), &["--upstream", &up, "--offline", "--tag-ttl", "0"]);
    let d = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/one.test/test/img:1", offline.addr()), d.path(), &[]),
        "offline pull",
    );
    let cold = get_manifest(&offline, "/v2/one.test/test/cold/manifests/1");
    assert!(cold.status >= 500);
    assert!(String::from_utf8_lossy(&cold.body).contains("offline"));
    assert!(upstream.requests_since(mark).is_empty(), "offline mode contacted the origin");
}

/// Sends requests (a cold manifest and cold blobs, several at once) until `until` has passed, as
/// nodes keep pulling through an outage; each must fail cleanly with a 5xx OCI error.
fn keep_asking_while_down(cache_addr: &str, paths: &[String], until: std::time::Instant) {
    std::thread::scope(|s| {
        for path in paths {
            s.spawn(move || {
                while std::time::Instant::now() < until {
                    let r = http_request(cache_addr, "GET", path, &[("Accept", ACCEPT_OCI)]);
                    assert!(r.status >= 500, "{path} answered {} while the origin is down", r.status);
                    // Pacing of the simulated traffic (a request per 100 ms per path), not synchronisation.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        }
    });
}

/// Polls `path` until it answers 200; returns how long that took from the first attempt.
fn time_until_served(cache_addr: &str, path: &str) -> std::time::Duration {
    let start = std::time::Instant::now();
    poll_until(std::time::Duration::from_secs(10), &format!("{path} to be served"), || {
        http_request(cache_addr, "GET", path, &[("Accept", ACCEPT_OCI)]).status == 200
    });
    start.elapsed()
}

#[test]
fn the_only_endpoint_back_after_45s_of_failing_requests_is_used_within_a_second() {
    let mut upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "1", 40);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    // The default --endpoint-backoff (30s): the behaviour users get.
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url())]);

    upstream.stop();
    let mut paths = vec!["/v2/one.test/test/img/manifests/1".to_owned()];
    paths.extend(img.blob_digests().iter().map(|d| format!("/v2/one.test/test/img/blobs/{d}")));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(45);
    keep_asking_while_down(&cache.addr(), &paths, until);
    let refused = get_manifest(&cache, &paths[0]);
    assert_eq!(refused.status, 502);
    let v: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");

    upstream.restart();
    let took = time_until_served(&cache.addr(), &paths[0]);
    assert!(took <= std::time::Duration::from_secs(1), "manifest served {took:?} after the origin came back");
    assert_eq!(get_manifest(&cache, &paths[0]).body, img.manifest);
    for path in &paths[1..] {
        let r = http_request(&cache.addr(), "GET", path, &[]);
        assert_eq!(r.status, 200, "{path} after the origin came back");
    }
    let ep = format!("ocicache_endpoint_circuit_open{{registry=\"one.test\",endpoint=\"{}/\"}}", upstream.url());
    assert_eq!(cache.metric(&ep), 0.0, "circuit still reported open");
}

fn cold_blobs_after_a_kill_9_and_restart_during_an_outage_are_served_within_a_second_of_recovery() {
    let mut upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let layers: Vec<LayerSpec> =
        (0..30).map(|i| LayerSpec::file(&format!("layer{i}.bin"), random_bytes(20_000, 500 + i))).collect();
    let img = build_image(dir.path(), "1", "amd64", &layers);
    push(&img.layout, "1", &format!("{}/test/big:1", upstream.addr()), Format::Oci, None);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache_dir = cache_dir.path().display().to_string();
    let args = ["--cache-dir", cache_dir.as_str(), "--upstream", &format!("one.test={}", upstream.url())];

    // A first process caches the manifest, then dies with SIGKILL (no clean shutdown).
    let first = CacheProcess::spawn(&args);
    let first_addr = format!("127.0.0.1:{}", first.port);
    assert_eq!(
        http_request(&first_addr, "GET", "/v2/one.test/test/big/manifests/1", &[("Accept", ACCEPT_OCI)]).status,
        200
    );
    upstream.stop();
    drop(first); // Child::kill sends SIGKILL

    // Restarted on the same directory while the origin is down; all 30 blobs are asked for at once.
    let second = CacheProcess::spawn(&args);
    let addr = format!("127.0.0.1:{}", second.port);
    let blobs: Vec<String> = img.blob_digests().iter().map(|d| format!("/v2/one.test/test/big/blobs/{d}")).collect();
    assert!(blobs.len() >= 30);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    keep_asking_while_down(&addr, &blobs, until);

    upstream.restart();
    let took = time_until_served(&addr, &blobs[0]);
    assert!(took <= std::time::Duration::from_secs(1), "first blob served {took:?} after the origin came back");
    std::thread::scope(|s| {
        for path in &blobs {
            let addr = &addr;
            s.spawn(move || {
                let r = http_request(addr, "GET", path, &[]);
                assert_eq!(r.status, 200, "{path} right after the origin answered again");
            });
        }
    });
}

#[test]
fn during_a_429_hold_uncached_content_gets_429_with_the_remaining_retry_after() {
    // Fault: the fake origin answers 429 with Retry-After for a manifest and a blob.
    let origin = FakeOrigin::start();
    let limited = Fault::Status(429, vec![("Retry-After".into(), "5".into())]);
    origin.add_manifest("1.0", MANIFEST, ACCEPT_OCI, limited.clone());
    let blob = origin.add_blob(random_bytes(1000, 7), limited);
    // A second endpoint that refuses connections: its failure must not hide the rate limit.
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let cache = Cache::start(&["--upstream", &format!("fake.test={},{dead}", origin.url())]);

    let check = |r: &HttpResponse, limit: u64| -> u64 {
        assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
        if !r.body.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
        }
        let secs: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!(secs >= 1 && secs <= limit, "Retry-After {secs}, expected at most {limit}");
        secs
    };
    // The origin's own 429 (the dead second endpoint was tried too).
    check(&get_manifest(&cache, "/v2/fake.test/app/manifests/1.0"), 5);
    let asked = origin.requests().len();
    // During the hold: neither a manifest nor a blob (GET or HEAD) is asked for, all get 429.
    let blob_path = format!("/v2/fake.test/app/blobs/{blob}");
    let first = check(&http_request(&cache.addr(), "GET", &blob_path, &[]), 5);
    let head = http_request(&cache.addr(), "HEAD", &blob_path, &[]);
    assert!(head.body.is_empty());
    check(&head, 5);
    // The remaining time counts down.
    poll_until(std::time::Duration::from_secs(4), "Retry-After to count down", || {
        check(&get_manifest(&cache, "/v2/fake.test/app/manifests/1.0"), first) < first
    });
    assert_eq!(origin.requests().len(), asked, "the origin was asked during its Retry-After");
}

#[test]
fn a_rate_limiting_mirror_does_not_stop_pulls_from_the_next_endpoint() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (image(dir.path(), "a", 41), image(dir.path(), "b", 42));
    push(&a.layout, "a", &format!("{}/test/a:1", upstream.addr()), Format::Oci, None);
    push(&b.layout, "b", &format!("{}/test/b:1", upstream.addr()), Format::Oci, None);
    // Fault: the first endpoint (a mirror) answers every manifest with 429 and a long Retry-After.
    let mirror = FakeOrigin::start();
    let limited = Fault::Status(429, vec![("Retry-After".into(), "600".into())]);
    mirror.add_manifest("1", MANIFEST, ACCEPT_OCI, limited);
    let cache = Cache::start(&["--upstream", &format!("two.test={},{}", mirror.url(), upstream.url())]);

    assert_eq!(get_manifest(&cache, "/v2/two.test/test/a/manifests/1").body, a.manifest);
    let asked = mirror.requests().len();
    // The mirror is on hold; the registry is not: the next endpoint serves.
    assert_eq!(get_manifest(&cache, "/v2/two.test/test/b/manifests/1").body, b.manifest);
    assert_eq!(mirror.requests().len(), asked, "the mirror was asked during its Retry-After");
}

// Each runs on the local disk and on the tiered store (disk tier + S3 bucket): `disk::<name>`, `tiered_s3::<name>`.
crate::on_every_backend!(
    previously_pulled_tags_keep_pulling_through_skopeo_and_containerd_when_the_origin_stops,
    offline_mode_serves_a_warm_cache_with_zero_upstream_requests,
    cold_blobs_after_a_kill_9_and_restart_during_an_outage_are_served_within_a_second_of_recovery,
);
