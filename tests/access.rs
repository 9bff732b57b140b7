//! Access control: clients authenticate to the cache (`--htpasswd`), and private content —
//! fetched with a client's own credentials — is only ever served to clients the origin confirms.

mod support;

use support::*;

const ACCEPT_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
/// alice:pw
const ALICE: &str = "Basic YWxpY2U6cHc=";
/// mallory:guess
const MALLORY: &str = "Basic bWFsbG9yeTpndWVzcw==";

fn htpasswd_file(dir: &std::path::Path, user: &str, pass: &str) -> std::path::PathBuf {
    let out = run_ok(std::process::Command::new("htpasswd").args(["-Bbn", user, pass]));
    let path = dir.join("htpasswd");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn htpasswd_requires_credentials_from_every_client() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(30_000, 1))]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let file = htpasswd_file(dir.path(), "alice", "pw");
    let cache =
        Cache::start(&["--upstream", &format!("one.test={}", upstream.url()), "--htpasswd", file.to_str().unwrap()]);

    for auth in [None, Some(MALLORY), Some("Basic !!notbase64"), Some("Bearer abc")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        for path in ["/v2/", "/v2/one.test/test/img/manifests/1"] {
            let r = http_request(&cache.addr(), "GET", path, &headers);
            assert_eq!(r.status, 401, "{path} with {auth:?}");
            assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"ocicache\""));
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
        }
    }
    assert_eq!(upstream.count("GET", "/manifests/"), 0, "unauthenticated requests reached the origin");
    assert_eq!(http_request(&cache.addr(), "GET", "/v2/", &[("Authorization", ALICE)]).status, 200);
    assert_eq!(http_request(&cache.addr(), "GET", "/metrics", &[]).status, 200);
    assert_eq!(http_request(&cache.addr(), "GET", "/healthz", &[]).status, 200);

    let d = tempfile::tempdir().unwrap();
    let src = format!("docker://{}/one.test/test/img:1", cache.addr());
    assert!(!skopeo_copy_to_dir(&src, d.path(), &[]).status.success());
    assert_success(&skopeo_copy_to_dir(&src, d.path(), &["--src-creds", "alice:pw"]), "skopeo with credentials");

    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&cache.addr());
    ctrd.block_fallback("one.test");
    assert!(!ctrd.pull("one.test/test/img:1", &[]).status.success());
    ctrd.pull_ok("one.test/test/img:1", &["--user", "alice:pw"]);

    let locked = Cache::start(&["--htpasswd", file.to_str().unwrap(), "--metrics-auth"]);
    assert_eq!(http_request(&locked.addr(), "GET", "/metrics", &[]).status, 401);
    assert_eq!(http_request(&locked.addr(), "GET", "/metrics", &[("Authorization", ALICE)]).status, 200);
}

fn private_content_is_served_only_to_clients_the_origin_confirms() {
    let private = Registry::start_with_htpasswd(&[("alice", "pw")]);
    let public = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = LayerSpec::file("base/os.bin", random_bytes(50_000, 7));
    let secret = LayerSpec::file("app/secret.bin", random_bytes(40_000, 8));
    let priv_img = build_image(dir.path(), "p", "amd64", &[shared.clone(), secret]);
    let pub_img = build_image(dir.path(), "q", "amd64", &[shared, LayerSpec::file("app/pub", "public")]);
    push(&priv_img.layout, "p", &format!("{}/priv/img:1", private.addr()), Format::Oci, Some(("alice", "pw")));
    push(&pub_img.layout, "q", &format!("{}/pub/img:1", public.addr()), Format::Oci, None);
    let cache = Cache::start(&[
        "--upstream",
        &format!("auth.test={}", private.url()),
        "--upstream",
        &format!("pub.test={}", public.url()),
    ]);
    let get = |path: &str, auth: Option<&str>| {
        let mut h = vec![("Accept", ACCEPT_OCI)];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        http_request(&cache.addr(), "GET", path, &h)
    };
    let blob = |repo: &str, d: &str| format!("/v2/{repo}/blobs/{d}");
    let (shared_d, secret_d) = (priv_img.layer_digests[0].clone(), priv_img.layer_digests[1].clone());

    // Alice pulls the private image with her own credentials.
    assert_eq!(get("/v2/auth.test/priv/img/manifests/1", Some(ALICE)).body, priv_img.manifest);
    for d in priv_img.blob_digests() {
        assert_eq!(get(&blob("auth.test/priv/img", &d), Some(ALICE)).status, 200);
    }
    let fetched = private.count("GET", "/blobs/");

    // Nobody else gets anything, even knowing every digest.
    let by_digest = format!("/v2/auth.test/priv/img/manifests/{}", priv_img.manifest_digest);
    for auth in [None, Some(MALLORY)] {
        assert_eq!(get("/v2/auth.test/priv/img/manifests/1", auth).status, 401, "{auth:?}");
        assert_eq!(get(&by_digest, auth).status, 401, "{auth:?}");
        for d in priv_img.blob_digests() {
            let r = get(&blob("auth.test/priv/img", &d), auth);
            assert_eq!(r.status, 401, "{d} {auth:?}");
            assert!(!r.body.windows(16).any(|w| priv_img.layer_blobs[1].windows(16).next() == Some(w)));
            let h = http_request(&cache.addr(), "HEAD", &blob("auth.test/priv/img", &d), &[]);
            assert_eq!(h.status, 401);
        }
        // Through a public repository name: the origin does not know the secret there.
        let r = get(&blob("pub.test/pub/img", &secret_d), auth);
        assert_eq!(r.status, 404, "private blob via a public name: {auth:?}");
    }

    // Alice again: served from the cache, confirmed by HEADs only.
    assert_eq!(get("/v2/auth.test/priv/img/manifests/1", Some(ALICE)).body, priv_img.manifest);
    for (d, bytes) in priv_img.layer_digests.iter().zip(&priv_img.layer_blobs) {
        assert_eq!(&get(&blob("auth.test/priv/img", d), Some(ALICE)).body, bytes);
    }
    assert_eq!(private.count("GET", "/blobs/"), fetched, "alice's second pull refetched blobs");

    // A public image sharing a layer: anyone gets the shared layer (the public origin confirms it).
    let r = get(&blob("pub.test/pub/img", &shared_d), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, priv_img.layer_blobs[0]);
    assert_eq!(public.count("GET", &shared_d), 0, "the shared layer was stored once and not refetched");
}

/// A listener that records whether anything connected to it.
fn trap() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    (port, hits)
}

#[test]
fn origins_cannot_steer_the_cache_to_cloud_metadata_or_unconfigured_registries() {
    let (port, hits) = trap();
    let origin = FakeOrigin::start();
    // Faults: a blob redirected to the cloud metadata service, and a token realm there. The origin
    // is named exactly (--upstream), so its other internal addresses are followed (tests/trust.rs);
    // link-local ones never are.
    let to_metadata =
        origin.add_blob(random_bytes(100, 2), Fault::Redirect("http://169.254.169.254/latest/meta-data".into()));
    let to_metadata_v6 =
        origin.add_blob(random_bytes(100, 3), Fault::Redirect("http://[fd00:ec2::254]/latest/meta-data".into()));
    let realm = "Bearer realm=\"http://169.254.169.254/token\",service=\"fake\"".to_owned();
    origin.add_manifest("1", b"{}", ACCEPT_OCI, Fault::Status(401, vec![("WWW-Authenticate".into(), realm)]));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);

    for d in [&to_metadata, &to_metadata_v6] {
        let r = http_request(&cache.addr(), "GET", &format!("/v2/fake.test/app/blobs/{d}"), &[]);
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains("redirect refused"), "{}", String::from_utf8_lossy(&r.body));
    }
    let r = http_request(&cache.addr(), "GET", "/v2/fake.test/app/manifests/1", &[]);
    assert_eq!(r.status, 502);
    assert!(String::from_utf8_lossy(&r.body).contains("token realm refused"));
    // Path routing and ns to internal hosts are refused before any dial.
    for p in [format!("/v2/127.0.0.1:{port}/x/manifests/1"), format!("/v2/x/manifests/1?ns=localhost:{port}")] {
        assert_eq!(http_request(&cache.addr(), "GET", &p, &[]).status, 403, "{p}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the cache connected to an internal address");
}

#[test]
fn tls_serves_https_to_real_clients() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(20_000, 3))]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let certs = ca_and_server_cert(dir.path());
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    // skopeo trusts the `*.crt` files of a certificate directory.
    let cert_dir = dir.path().join("trust");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(&certs.ca, cert_dir.join("ca.crt")).unwrap();
    let cache = Cache::start(&[
        "--upstream",
        &format!("one.test={}", upstream.url()),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let out = run_ok(std::process::Command::new("curl").args([
        "-sS",
        "--cacert",
        certs.ca.to_str().unwrap(),
        &format!("https://{}/v2/", cache.addr()),
    ]));
    assert_eq!(out.stdout, b"{}");
    let d = tempfile::tempdir().unwrap();
    let certs_dir = cert_dir.to_str().unwrap().to_owned();
    let out = run_output(std::process::Command::new("skopeo").args([
        "copy",
        "--src-cert-dir",
        &certs_dir,
        &format!("docker://{}/one.test/test/img:1", cache.addr()),
        &format!("dir:{}", d.path().display()),
    ]));
    assert_success(&out, "skopeo over https with the test CA");
    assert_eq!(std::fs::read(d.path().join("manifest.json")).unwrap(), img.manifest);
    // A client that does not trust the certificate is refused by TLS itself.
    let untrusted =
        run_output(std::process::Command::new("curl").args(["-sS", &format!("https://{}/v2/", cache.addr())]));
    assert!(!untrusted.status.success());
}

// Each runs on the local disk and on the tiered store (disk tier + S3 bucket): `disk::<name>`, `tiered_s3::<name>`.
crate::on_every_backend!(
    htpasswd_requires_credentials_from_every_client,
    private_content_is_served_only_to_clients_the_origin_confirms,
);
