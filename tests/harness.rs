//! Self-tests of the integration-test harness against the real tools (no ocicache involved).

mod support;

use serde_json::Value;
use std::fs;
use support::*;

fn three_layers() -> Vec<LayerSpec> {
    vec![
        LayerSpec::new(&[("etc/hello.txt", b"hello\n"), ("etc/motd", b"hi\n")]),
        LayerSpec::file("data/random.bin", random_bytes(300_000, 1)),
        LayerSpec::new(&[("usr/share/doc/x/README", b"readme"), ("top", b"t")]),
    ]
}

#[test]
fn layers_are_reproducible_and_valid() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let img_a = build_image(a.path(), "v1", "amd64", &three_layers());
    let img_b = build_image(b.path(), "v1", "amd64", &three_layers());
    assert_eq!(img_a.manifest_digest, img_b.manifest_digest);
    assert_eq!(img_a.layer_digests, img_b.layer_digests);
    assert_eq!(img_a.layer_digests.len(), 3);
    assert_ne!(random_bytes(64, 1), random_bytes(64, 2));
    assert_eq!(random_bytes(64, 7), random_bytes(64, 7));

    // The tar is readable and contains parent directories, sorted, with zeroed metadata.
    let gz = flate2::read::GzDecoder::new(&img_a.layer_blobs[2][..]);
    let mut archive = tar::Archive::new(gz);
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(e.header().mtime().unwrap(), 0);
        assert_eq!(e.header().uid().unwrap(), 0);
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(names, ["top", "usr/", "usr/share/", "usr/share/doc/", "usr/share/doc/x/", "usr/share/doc/x/README"]);

    // Two tags in one layout.
    build_image(a.path(), "v2", "arm64", &three_layers()[..1]);
    let index: Value = serde_json::from_slice(&fs::read(a.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
}

/// (1) push 3 layers, copy back with skopeo, compare bytes, count blob GETs.
#[test]
fn push_and_copy_back() {
    let reg = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    let img = build_image(layout.path(), "v1", "amd64", &three_layers());
    push(layout.path(), "v1", &format!("{}/test/three:v1", reg.addr()), Format::Oci, None);
    assert_eq!(reg.count("GET", "/blobs/"), 0, "{:#?}", reg.requests());
    assert!(reg.count("PUT", "/manifests/v1") == 1, "{:#?}", reg.requests());

    let out_dir = tempfile::tempdir().unwrap();
    let out = skopeo_copy_to_dir(&format!("docker://{}/test/three:v1", reg.addr()), out_dir.path(), &[]);
    assert_success(&out, "skopeo copy to dir");
    for (digest, blob) in img.layer_digests.iter().zip(&img.layer_blobs) {
        let hex = digest.strip_prefix("sha256:").unwrap();
        assert_eq!(&fs::read(out_dir.path().join(hex)).unwrap(), blob, "layer {digest}");
    }
    assert_eq!(fs::read(out_dir.path().join("manifest.json")).unwrap(), img.manifest);

    let reqs = reg.requests();
    // config + 3 layers, each fetched exactly once.
    assert_eq!(reg.count("GET", "/blobs/sha256:"), 4, "{reqs:#?}");
    for d in img.blob_digests() {
        assert_eq!(reg.count("GET", &format!("/v2/test/three/blobs/{d}")), 1, "{d}");
    }
    assert!(reqs.iter().all(|r| !r.path.contains("__harness_sentinel")));
    assert!(reqs.iter().any(|r| r.method == "GET" && r.path == "/v2/test/three/manifests/v1" && r.status == 200));

    let (digest, ct, body) = manifest_digest_at(&reg.addr(), "test/three", "v1", MT_OCI_MANIFEST);
    assert_eq!(digest, img.manifest_digest);
    assert_eq!(ct, MT_OCI_MANIFEST);
    assert_eq!(body, img.manifest);
}

/// (2) v2s2 push stores a different (Docker schema 2) manifest.
#[test]
fn push_v2s2() {
    let reg = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    let img = build_image(layout.path(), "v1", "amd64", &three_layers()[..2]);
    push(layout.path(), "v1", &format!("{}/test/docker:v1", reg.addr()), Format::V2s2, None);
    let (digest, ct, body) = manifest_digest_at(&reg.addr(), "test/docker", "v1", ACCEPT_ALL_MANIFESTS);
    assert_eq!(ct, MT_DOCKER_MANIFEST);
    assert_ne!(digest, img.manifest_digest);
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["config"]["mediaType"], MT_DOCKER_CONFIG);
    assert_eq!(m["config"]["digest"], img.config_digest.as_str());
    for (l, d) in m["layers"].as_array().unwrap().iter().zip(&img.layer_digests) {
        assert_eq!(l["mediaType"], MT_DOCKER_LAYER_GZIP);
        assert_eq!(l["digest"], d.as_str());
    }
    // By digest, too.
    let (d2, _, _) = manifest_digest_at(&reg.addr(), "test/docker", &digest, MT_DOCKER_MANIFEST);
    assert_eq!(d2, digest);
}

/// (3) a two-platform index, pushed with --all.
#[test]
fn push_index_and_inspect() {
    let reg = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    let idx = build_index(
        layout.path(),
        "multi",
        &[("amd64", vec![LayerSpec::file("arch", "amd64")]), ("arm64", vec![LayerSpec::file("arch", "arm64")])],
    );
    push_index(layout.path(), "multi", &format!("{}/test/multi:multi", reg.addr()), None);
    let out = skopeo_inspect_raw(&format!("docker://{}/test/multi:multi", reg.addr()), &[]);
    assert_success(&out, "skopeo inspect --raw");
    assert_eq!(out.stdout, idx.index);
    let (digest, ct, _) = manifest_digest_at(&reg.addr(), "test/multi", "multi", ACCEPT_ALL_MANIFESTS);
    assert_eq!(digest, idx.index_digest);
    assert_eq!(ct, MT_OCI_INDEX);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let archs: Vec<&str> =
        v["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    for m in &idx.manifests {
        let (d, ct, _) = manifest_digest_at(&reg.addr(), "test/multi", &m.manifest_digest, MT_OCI_MANIFEST);
        assert_eq!(d, m.manifest_digest);
        assert_eq!(ct, MT_OCI_MANIFEST);
    }
}

/// (4) htpasswd registry rejects anonymous pulls and accepts credentials.
#[test]
fn htpasswd_registry() {
    let reg = Registry::start_with_htpasswd(&[("alice", "s3cret"), ("bob", "hunter2")]);
    let layout = tempfile::tempdir().unwrap();
    build_image(layout.path(), "v1", "amd64", &three_layers()[..1]);
    let dest = format!("{}/private/img:v1", reg.addr());
    push(layout.path(), "v1", &dest, Format::Oci, Some(("alice", "s3cret")));

    let src = format!("docker://{dest}");
    let anon = skopeo_inspect_raw(&src, &[]);
    assert!(!anon.status.success(), "anonymous inspect should fail");
    let wrong = skopeo_inspect_raw(&src, &["--creds=bob:wrong"]);
    assert!(!wrong.status.success(), "wrong password should fail");
    let ok = skopeo_inspect_raw(&src, &["--creds=bob:hunter2"]);
    assert_success(&ok, "inspect with creds");

    let dir = tempfile::tempdir().unwrap();
    assert!(!skopeo_copy_to_dir(&src, dir.path(), &[]).status.success());
    assert_success(&skopeo_copy_to_dir(&src, dir.path(), &["--src-creds=alice:s3cret"]), "copy with creds");

    let resp = http_request(&reg.addr(), "GET", "/v2/", &[]);
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("www-authenticate"), Some("Basic realm=\"test-realm\""));
    assert!(reg.count("GET", "/manifests/v1") >= 3);
    assert!(reg.requests().iter().any(|r| r.status == 401));
}

#[test]
fn registry_restart_keeps_storage_and_port() {
    let mut reg = Registry::start();
    let port = reg.port;
    let layout = tempfile::tempdir().unwrap();
    let img = build_image(layout.path(), "v1", "amd64", &three_layers()[..1]);
    push(layout.path(), "v1", &format!("{}/r/img:v1", reg.addr()), Format::Oci, None);
    reg.stop();
    assert!(!port_is_open(port));
    reg.restart();
    assert_eq!(reg.port, port);
    let (d, _, _) = manifest_digest_at(&reg.addr(), "r/img", "v1", MT_OCI_MANIFEST);
    assert_eq!(d, img.manifest_digest);
    assert_eq!(reg.count("GET", "/v2/r/img/manifests/v1"), 1);
    assert!(!port_is_open(closed_port()));
}

#[test]
fn proxy_registry_pulls_through() {
    let upstream = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    let img = build_image(layout.path(), "v1", "amd64", &three_layers()[..2]);
    push(layout.path(), "v1", &format!("{}/library/p:v1", upstream.addr()), Format::Oci, None);
    let proxy = Registry::start_proxy(&upstream.url());
    let dir = tempfile::tempdir().unwrap();
    assert_success(
        &skopeo_copy_to_dir(&format!("docker://{}/library/p:v1", proxy.addr()), dir.path(), &[]),
        "copy through proxy",
    );
    // distribution's proxy GETs each missing blob from upstream twice (one stream to the client,
    // one to its own storage), after a HEAD.
    for d in &img.layer_digests {
        let n = upstream.count("GET", &format!("/blobs/{d}"));
        assert!((1..=2).contains(&n), "{d}: {n} GETs: {:#?}", upstream.requests());
    }
}

/// (5) containerd pulls straight from a registry over plain HTTP; clean() empties the store.
#[test]
fn containerd_pulls_directly() {
    let reg = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    let idx = build_index(
        layout.path(),
        "v1",
        &[("amd64", three_layers()), ("arm64", vec![LayerSpec::file("arch", "arm64")])],
    );
    push_index(layout.path(), "v1", &format!("{}/ctr/img:v1", reg.addr()), None);

    let ctrd = Containerd::start();
    ctrd.direct_to(&reg.addr());
    let image = format!("{}/ctr/img:v1", reg.addr());
    let out = ctrd.pull_ok(&image, &["--platform", "linux/amd64"]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ctrd.images(), vec![image.clone()]);
    let content = ctrd.content();
    for d in idx.manifests[0].blob_digests() {
        assert!(content.contains(&d), "{d} missing from {content:?}");
        assert_eq!(reg.count("GET", &format!("/blobs/{d}")), 1);
    }
    // `server` requests carry no ?ns=.
    assert!(reg.requests().iter().all(|r| !r.path.contains("ns=")));

    ctrd.clean();
    assert!(ctrd.images().is_empty());
    assert!(ctrd.content().is_empty());
    // A second pull after clean() fetches every blob again.
    ctrd.pull_ok(&image, &["--platform", "linux/amd64"]);
    for d in idx.manifests[0].blob_digests() {
        assert_eq!(reg.count("GET", &format!("/blobs/{d}")), 2);
    }
}

/// Mirror config: requests go to the mirror with ?ns=<registry>; the blocked registry sees none;
/// a per-registry hosts.toml shadows _default.
#[test]
fn containerd_mirror_and_fallback_blocking() {
    let mirror = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    let img = build_image(layout.path(), "v1", "amd64", &three_layers()[..1]);
    push(layout.path(), "v1", &format!("{}/m/img:v1", mirror.addr()), Format::Oci, None);
    let origin = Registry::start(); // empty: the "real" registry that must not be contacted

    let ctrd = Containerd::start();
    ctrd.block_fallback(&origin.addr()); // before mirror_all_to: rewritten by it
    ctrd.mirror_all_to(&mirror.addr());
    let image = format!("{}/m/img:v1", origin.addr());
    let pushed = mirror.mark();
    ctrd.pull_ok(&image, &[]);
    // containerd URL-encodes the ':' of the registry host in ?ns=.
    let ns = format!("ns={}", origin.addr().replace(':', "%3A"));
    let reqs = mirror.requests_since(pushed);
    assert!(reqs.len() >= 3, "{reqs:#?}");
    assert!(reqs.iter().filter(|r| r.path.starts_with("/v2/m/img/")).all(|r| r.path.contains(&ns)), "{reqs:#?}");
    assert_eq!(mirror.count("GET", &format!("/blobs/{}", img.layer_digests[0])), 1);
    assert!(origin.requests().is_empty(), "{:#?}", origin.requests());

    // An image the mirror lacks: the fallback goes to the closed port, not to `origin`.
    ctrd.clean();
    let out = ctrd.pull(&format!("{}/m/missing:v1", origin.addr()), &[]);
    assert!(!out.status.success());
    assert!(origin.requests().is_empty());

    // Per-registry dir without the mirror shadows _default: only origin is asked.
    let before = mirror.mark();
    ctrd.direct_to(&origin.addr());
    assert!(!ctrd.pull(&image, &[]).status.success());
    assert!(origin.count("HEAD", "/manifests/v1") + origin.count("GET", "/manifests/v1") >= 1);
    assert!(mirror.requests_since(before).is_empty());
}
