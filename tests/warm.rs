//! `ocicache warm`: the binary fills a cache directory so that a real containerd later pulls every
//! warmed image (every platform) without one request to the origin; failures are named and make the
//! exit code 1; `--server` fills a running cache.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Instant;

use ocicache::cmd::warm::{ImageRef, Platform};
use support::*;

/// One upstream with `test/img:1` (single platform, two layers) and `test/multi:1` (amd64 + arm64 index).
struct Fixture {
    registry: Registry,
    img: BuiltImage,
    multi: BuiltIndex,
    _layouts: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let registry = Registry::start();
        let layouts = tempfile::tempdir().unwrap();
        let img = build_image(
            layouts.path(),
            "1",
            "amd64",
            &[LayerSpec::file("etc/img", "img\n"), LayerSpec::file("data/img.bin", random_bytes(300_000, 41))],
        );
        push(&img.layout, "1", &format!("{}/test/img:1", registry.addr()), Format::Oci, None);
        let multi = build_index(
            layouts.path(),
            "multi",
            &[
                ("amd64", vec![LayerSpec::file("m", random_bytes(120_000, 42))]),
                ("arm64", vec![LayerSpec::file("m", random_bytes(120_000, 43))]),
            ],
        );
        push_index(&multi.layout, "multi", &format!("{}/test/multi:1", registry.addr()), None);
        Fixture { registry, img, multi, _layouts: layouts }
    }

    fn upstream(&self) -> String {
        format!("one.test={}", self.registry.url())
    }

    fn arch(&self, arch: &str) -> &BuiltImage {
        self.multi.manifests.iter().find(|m| m.arch == arch).unwrap()
    }
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The summary row of `image` on stdout.
fn row<'a>(stdout: &'a str, image: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(image))
        .unwrap_or_else(|| panic!("no summary row for {image} in:\n{stdout}"))
}

fn stored_hexes(blobs: &[std::path::PathBuf]) -> Vec<String> {
    blobs.iter().filter_map(|p| p.file_name()).map(|n| format!("sha256:{}", n.to_string_lossy())).collect()
}

fn run_warm(cache_dir: &Path, upstream: &str, extra: &[&str]) -> Output {
    let mut cmd = ocicache_bin();
    cmd.envs(backend_env()).arg("--cache-dir").arg(cache_dir).args(backend_flags());
    cmd.args(["--upstream", upstream, "warm"]).args(extra);
    run_output(&mut cmd)
}

fn warmed_images_are_pulled_by_containerd_without_reaching_the_origin() {
    let fx = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");

    let started = Instant::now();
    let out = run_warm(&cache_dir, &fx.upstream(), &["one.test/test/img:1", "one.test/test/multi:1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "warm failed ({}):\n{stdout}\n{stderr}", out.status);
    eprintln!("warm of 2 images took {:?}\n{stdout}", started.elapsed());
    let header = stdout.lines().next().unwrap_or_default();
    for col in ["IMAGE", "PLATFORMS", "BLOBS", "BYTES", "RESULT"] {
        assert!(header.contains(col), "summary header {header:?}");
    }
    let img_row = row(&stdout, "one.test/test/img:1");
    assert!(img_row.ends_with(" ok") && img_row.contains("linux/amd64") && img_row.contains(" 3 "), "{img_row}");
    let multi_row = row(&stdout, "one.test/test/multi:1");
    assert!(multi_row.ends_with(" ok") && multi_row.contains("linux/amd64, linux/arm64"), "{multi_row}");
    assert!(multi_row.contains(" 4 "), "2 configs + 2 layers: {multi_row}");
    // Not a terminal: plain progress lines instead of bars.
    assert!(stderr.contains("one.test/test/multi:1: ok"), "{stderr}");

    // The directory alone now serves everything: a fresh cache process on it, a real containerd.
    let mark = fx.registry.mark();
    let cache = Cache::start_in(&cache_dir, &["--upstream", &fx.upstream()]);
    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&cache.addr());
    ctrd.block_fallback("one.test");
    ctrd.pull_ok("one.test/test/img:1", &[]);
    ctrd.pull_ok("one.test/test/multi:1", &["--platform", "linux/arm64"]);
    ctrd.pull_ok("one.test/test/multi:1", &["--platform", "linux/amd64"]);
    let content = ctrd.content();
    for digest in
        fx.img.layer_digests.iter().chain(&fx.arch("arm64").layer_digests).chain(&fx.arch("amd64").layer_digests)
    {
        assert!(content.contains(digest), "{digest} missing from containerd: {content:?}");
    }
    let upstream = fx.registry.requests_since(mark);
    assert!(upstream.is_empty(), "pulls after warm reached the origin: {upstream:?}");
    assert!(cache.metric("ocicache_cache_requests_total{registry=\"one.test\",kind=\"blob\",result=\"hit\"}") >= 7.0);
}

#[test]
fn a_missing_image_fails_the_run_and_is_named_while_the_others_are_warmed() {
    let fx = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("images.txt");
    std::fs::write(&list, "# images for the nodes\none.test/test/img:1\n\none.test/test/missing:1   # never pushed\n")
        .unwrap();
    let cache_dir = tmp.path().join("cache");
    let out = run_warm(&cache_dir, &fx.upstream(), &["--file", list.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{stdout}\n{stderr}");
    assert!(row(&stdout, "one.test/test/img:1").ends_with(" ok"), "{stdout}");
    let missing = row(&stdout, "one.test/test/missing:1");
    assert!(missing.contains("error:") && missing.contains("404"), "{missing}");
    assert!(stderr.contains("failed: one.test/test/missing:1"), "{stderr}");
    // The good image is in the directory all the same.
    let stored = stored_hexes(&files_under(&cache_dir.join("blobs")));
    for d in fx.img.blob_digests() {
        assert!(stored.contains(&d), "{d} not stored: {stored:?}");
    }
}

fn server_mode_fills_a_running_cache_with_only_the_chosen_platform() {
    let fx = Fixture::new();
    let cache = Cache::start(&["--upstream", &fx.upstream()]);
    let tmp = tempfile::tempdir().unwrap();
    // The directory of the warm process itself must stay untouched in --server mode.
    let own_dir = tmp.path().join("unused");
    let server = format!("http://{}", cache.addr());
    let out = run_warm(
        &own_dir,
        &fx.upstream(),
        &[
            "--server",
            &server,
            "--platform",
            "linux/arm64",
            "--concurrency",
            "1",
            "one.test/test/multi:1",
            "denied.test/test/img:1",
        ],
    );
    let (stdout, stderr) = text(&out);
    // A registry the cache may not dial: refused (never dialled), a per-image failure.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let multi = row(&stdout, "one.test/test/multi:1");
    assert!(multi.ends_with(" ok") && multi.contains("linux/arm64") && !multi.contains("amd64"), "{multi}");
    assert!(row(&stdout, "denied.test/test/img:1").contains("DENIED"), "{stdout}");
    assert!(!own_dir.exists(), "--server mode wrote to its own --cache-dir");

    let stored = stored_hexes(&cache.stored_blobs());
    for d in fx.arch("arm64").blob_digests() {
        assert!(stored.contains(&d), "{d} (arm64) not in the cache: {stored:?}");
    }
    for d in &fx.arch("amd64").layer_digests {
        assert!(!stored.contains(d), "{d} (amd64) was fetched despite --platform linux/arm64");
    }
    assert!(cache.metric("ocicache_cache_requests_total{registry=\"one.test\",kind=\"blob\",result=\"miss\"}") >= 2.0);
}

#[test]
fn bad_input_is_refused_before_anything_is_pulled() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["Alpine:3"], "lowercase"),
        (&["one.test/test/img:bad tag"], "invalid"),
        (&["one.test/test/img@sha256:abc"], "invalid digest"),
        (&["--platform", "linux", "one.test/x/y:1"], "os/arch"),
        (&["--concurrency", "0", "one.test/x/y:1"], "--concurrency"),
        (&[], "no images"),
        (&["--server", "ftp://x", "one.test/x/y:1"], "http"),
    ];
    for (extra, expected) in cases {
        let out = run_warm(&tmp.path().join("c"), "one.test=http://127.0.0.1:1", extra);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{extra:?} should fail:\n{stdout}\n{stderr}");
        assert!(stderr.contains(expected), "{extra:?}: expected {expected:?} in:\n{stderr}");
    }
}

#[test]
fn image_references_are_normalised_like_docker() {
    let d = "sha256:".to_owned() + &"a".repeat(64);
    let cases = [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("org/app:1", "docker.io/org/app:1"),
        ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("ghcr.io/org/app:1.0", "ghcr.io/org/app:1.0"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost/app:2", "localhost/app:2"),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000/a/b/c:v1"),
        ("quay.io/org/app", "quay.io/org/app:latest"),
    ];
    for (input, want) in cases {
        assert_eq!(ImageRef::parse(input).unwrap().to_string(), want, "{input}");
    }
    assert_eq!(ImageRef::parse(&format!("ghcr.io/org/app@{d}")).unwrap().to_string(), format!("ghcr.io/org/app@{d}"));
    // With both, the digest decides (as docker does).
    assert_eq!(ImageRef::parse(&format!("app:1@{d}")).unwrap().to_string(), format!("docker.io/library/app@{d}"));
    for bad in ["", "https://ghcr.io/org/app", "ghcr.io/Org/app", "app:", "app@sha256:12", "a//b", "ghcr.io/org/app:-x"]
    {
        assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
    }

    let p = Platform::parse("linux/arm/v7").unwrap();
    assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()), ("linux", "arm", Some("v7")));
    assert_eq!(Platform::parse("Linux/AMD64").unwrap().to_string(), "linux/amd64");
    for bad in ["linux", "linux/", "/amd64", "linux/arm/v7/x", "linux/am d64"] {
        assert!(Platform::parse(bad).is_err(), "{bad:?} should be refused");
    }
}

// Each runs on the local disk and on the tiered store (disk tier + S3 bucket): `disk::<name>`, `tiered_s3::<name>`.
crate::on_every_backend!(
    warmed_images_are_pulled_by_containerd_without_reaching_the_origin,
    server_mode_fills_a_running_cache_with_only_the_chosen_platform,
);
