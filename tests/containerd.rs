//! containerd end to end: a real daemon configured with one `_default/hosts.toml` mirror pulls images
//! of two different registries through ocicache, which routes them by containerd's `?ns=`.

mod support;

use support::*;

fn containerd_pulls_two_registries_through_one_mirror_and_repulls_from_cache() {
    let (a, b) = (Registry::start(), Registry::start());
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        dir.path(),
        "1",
        "amd64",
        &[LayerSpec::file("etc/a", "a\n"), LayerSpec::file("data/a.bin", random_bytes(500_000, 11))],
    );
    push(&img.layout, "1", &format!("{}/test/img:1", a.addr()), Format::Oci, None);
    let idx = build_index(
        dir.path(),
        "multi",
        &[
            ("amd64", vec![LayerSpec::file("b", random_bytes(100_000, 12))]),
            ("arm64", vec![LayerSpec::file("b", random_bytes(100_000, 13))]),
        ],
    );
    push_index(&idx.layout, "multi", &format!("{}/other/img:1", b.addr()), None);

    let cache =
        Cache::start(&["--upstream", &format!("one.test={}", a.url()), "--upstream", &format!("two.test={}", b.url())]);
    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&cache.addr());
    ctrd.block_fallback("one.test");
    ctrd.block_fallback("two.test");

    ctrd.pull_ok("one.test/test/img:1", &[]);
    ctrd.pull_ok("two.test/other/img:1", &["--platform", "linux/arm64"]);
    let content = ctrd.content();
    assert!(content.contains(&img.layer_digests[1]), "layer missing from containerd: {content:?}");
    let arm = idx.manifests.iter().find(|m| m.arch == "arm64").unwrap();
    assert!(content.contains(&arm.layer_digests[0]));

    // The cache routed by ?ns= (containerd cannot path-route) and stripped it before the origin.
    assert!(cache.metric("ocicache_cache_requests_total{registry=\"one.test\",kind=\"blob\",result=\"miss\"}") >= 2.0);
    assert!(
        cache.metric("ocicache_cache_requests_total{registry=\"two.test\",kind=\"manifest\",result=\"miss\"}") >= 1.0
    );
    for r in a.requests().iter().chain(b.requests().iter()) {
        assert!(!r.path.contains("ns="), "ns leaked upstream: {r:?}");
    }

    // After wiping containerd's store, a second pull is served entirely by the cache.
    ctrd.clean();
    let (ma, mb) = (a.mark(), b.mark());
    ctrd.pull_ok("one.test/test/img:1", &[]);
    ctrd.pull_ok("two.test/other/img:1", &["--platform", "linux/arm64"]);
    let (ra, rb) = (a.requests_since(ma), b.requests_since(mb));
    assert!(ra.is_empty() && rb.is_empty(), "repull reached upstream: {ra:?} {rb:?}");
}

#[test]
fn containerd_with_its_own_credentials_pulls_through_the_401_pass_through() {
    let upstream = Registry::start_with_htpasswd(&[("alice", "pw")]);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(20_000, 21))]);
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));
    let cache = Cache::start(&["--upstream", &format!("auth.test={}", upstream.url())]);
    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&cache.addr());
    ctrd.block_fallback("auth.test");

    let anon = ctrd.pull("auth.test/priv/img:1", &[]);
    assert!(!anon.status.success(), "anonymous pull of a private image must fail");
    ctrd.pull_ok("auth.test/priv/img:1", &["--user", "alice:pw"]);
    assert!(ctrd.content().contains(&img.layer_digests[0]));
}

// Each runs on the local disk and on the tiered store (disk tier + S3 bucket): `disk::<name>`, `tiered_s3::<name>`.
crate::on_every_backend!(containerd_pulls_two_registries_through_one_mirror_and_repulls_from_cache,);
