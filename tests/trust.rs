//! Trust follows the operator's configuration: a registry the operator named exactly may send the
//! cache to its token service or object store on another internal address (a self-hosted GitLab's
//! `/jwt/auth`, a Harbor's in-cluster MinIO); credentials still go only to the registry's own
//! service. Registries allowed by the built-in list or a wildcard keep the full egress guard (unit
//! tests in src/upstream, since wildcard names need DNS).

mod support;

use std::net::{IpAddr, Ipv4Addr};

use support::*;

const ACCEPT_OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// Another host on loopback, where the token service lives.
const TOKEN_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

/// A token from the token service, fetched the way a client does (curl, Basic credentials).
fn token_via_curl(tokens: &TokenServer, user: &str, scope: &str) -> String {
    let url = format!("{}?service={}&scope={scope}", tokens.realm(), tokens.service);
    let out = run_ok(std::process::Command::new("curl").args(["-sSf", "-u", user, &url]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[test]
fn a_private_image_behind_a_token_service_on_another_address_is_pulled_by_its_owner_only() {
    let tokens = TokenServer::start(TOKEN_HOST, &[("alice", "pw"), ("bob", "pw2")], &[("alice", "priv/")]);
    let upstream = Registry::start_with_token_auth(&tokens);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(300_000, 41))]);
    // skopeo goes through the token flow itself: the setup is a working token-auth registry.
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));
    let anonymous = http_request(&upstream.addr(), "GET", "/v2/priv/img/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(anonymous.status, 401);

    let cache = Cache::start(&["--upstream", &format!("reg.test={}", upstream.url())]);
    let manifest = "/v2/reg.test/priv/img/manifests/1";

    // Anonymous: the cache asks the realm on 127.0.0.2 (before: "token realm refused", 502), gets a
    // token without access, and hands the client the origin's challenge so it can authenticate.
    let r = http_request(&cache.addr(), "GET", manifest, &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(&tokens.realm()), "the client is sent to the token service: {challenge}");
    assert!(
        tokens.requests().iter().any(|t| t.user_agent.starts_with("ocicache/") && t.status == 200),
        "the cache reached the token service: {:?}",
        tokens.requests()
    );

    // The owner pulls with containerd, which answers the passed-through challenge at the realm
    // (its OAuth2 POST form) and retries through the cache with the token.
    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&cache.addr());
    ctrd.block_fallback("reg.test");
    let anon = ctrd.pull("reg.test/priv/img:1", &[]);
    assert!(!anon.status.success(), "anonymous containerd pull of a private image must fail");
    ctrd.pull_ok("reg.test/priv/img:1", &["--user", "alice:pw"]);
    assert!(ctrd.content().contains(&img.layer_digests[0]));
    assert!(tokens.requests().iter().any(|t| t.method == "POST" && t.user.as_deref() == Some("alice")));

    // Her own token, got from the token service, opens the cached content over plain HTTP too.
    // (skopeo cannot show this: it authenticates only after a challenge on the cache's own /v2/,
    // which answers 200 without credentials.)
    let src = format!("docker://{}/reg.test/priv/img:1", cache.addr());
    let alice = format!("Bearer {}", token_via_curl(&tokens, "alice:pw", "repository:priv/img:pull"));
    let blob = format!("/v2/reg.test/priv/img/blobs/{}", img.layer_digests[0]);
    let as_alice =
        |path: &str| http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI), ("Authorization", &alice)]);
    assert_eq!(as_alice(manifest).body, img.manifest);
    assert_eq!(as_alice(&blob).body, img.layer_blobs[0]);

    // Cached private content is still refused to anonymous clients and to another user.
    assert_eq!(http_request(&cache.addr(), "GET", &blob, &[]).status, 401);
    let bob_token = token_via_curl(&tokens, "bob:pw2", "repository:priv/img:pull");
    let bob = format!("Bearer {bob_token}");
    for path in [manifest, blob.as_str()] {
        let r = http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI), ("Authorization", &bob)]);
        assert_eq!(r.status, 401, "bob on {path}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.body != img.layer_blobs[0] && r.body != img.manifest);
    }
    let denied = tempfile::tempdir().unwrap();
    assert!(!skopeo_copy_to_dir(&src, denied.path(), &[]).status.success(), "nor an anonymous skopeo");
    ctrd.clean();
    assert!(!ctrd.pull("reg.test/priv/img:1", &["--user", "bob:pw2"]).status.success(), "nor bob's containerd");

    // The owner's second pull is served by the cache: only checks reach the origin, no blob GET.
    ctrd.clean();
    let mark = upstream.mark();
    ctrd.pull_ok("reg.test/priv/img:1", &["--user", "alice:pw"]);
    let blob_gets: Vec<_> =
        upstream.requests_since(mark).into_iter().filter(|r| r.method == "GET" && r.path.contains("/blobs/")).collect();
    assert!(blob_gets.is_empty(), "blobs fetched again: {blob_gets:?}");
}

#[test]
fn the_caches_own_credentials_reach_a_token_service_on_another_port_of_the_registrys_host() {
    // The realm is the registry's own service (same host, another port, as GitLab's `/jwt/auth`
    // beside its registry): it is asked, with the operator's credentials.
    let tokens = TokenServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &[("alice", "pw")], &[("alice", "priv/")]);
    let upstream = Registry::start_with_token_auth(&tokens);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(50_000, 44))]);
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));
    let creds = dir.path().join("creds.yaml");
    std::fs::write(&creds, "reg.test:\n  username: alice\n  password: pw\n").unwrap();
    let cache = Cache::start(&["--upstream", &format!("reg.test={}", upstream.url()), "-f", creds.to_str().unwrap()]);

    let out = tempfile::tempdir().unwrap();
    let src = format!("docker://{}/reg.test/priv/img:1", cache.addr());
    assert_success(&skopeo_copy_to_dir(&src, out.path(), &[]), "skopeo pull with the cache's credentials");
    let layer = img.layer_digests[0].strip_prefix("sha256:").unwrap();
    assert_eq!(std::fs::read(out.path().join(layer)).unwrap(), img.layer_blobs[0]);
    let from_cache: Vec<_> = tokens.requests().into_iter().filter(|t| t.user_agent.starts_with("ocicache/")).collect();
    assert!(from_cache.iter().any(|t| t.user.as_deref() == Some("alice") && t.status == 200), "{from_cache:?}");
}

#[test]
fn the_caches_credentials_do_not_go_to_a_token_service_on_another_address() {
    // The realm is trusted enough to be asked (the operator named the registry), but it is not the
    // registry's own service (another IP), so the operator's credentials stay home.
    let tokens = TokenServer::start(TOKEN_HOST, &[("alice", "pw")], &[("alice", "priv/")]);
    let upstream = Registry::start_with_token_auth(&tokens);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", "private")]);
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));
    let creds = dir.path().join("creds.yaml");
    std::fs::write(&creds, "reg.test:\n  username: alice\n  password: pw\n").unwrap();
    let cache = Cache::start(&["--upstream", &format!("reg.test={}", upstream.url()), "-f", creds.to_str().unwrap()]);

    let r = http_request(&cache.addr(), "GET", "/v2/reg.test/priv/img/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let from_cache: Vec<_> = tokens.requests().into_iter().filter(|t| t.user_agent.starts_with("ocicache/")).collect();
    assert!(!from_cache.is_empty(), "the cache asked the realm anonymously");
    assert!(from_cache.iter().all(|t| !t.had_authorization && t.user.is_none()), "credentials leaked: {from_cache:?}");
}

#[test]
fn blobs_redirected_to_s3_on_an_internal_name_are_pulled_without_credentials_following() {
    let moto = Moto::start();
    moto.create_bucket("registry");
    // The relay records what reaches moto; it is addressed by a name that resolves to an internal
    // address (`localhost`, as `minio.internal` would in a cluster), which only a registry the
    // operator named may send the cache to.
    let relay = Relay::start(moto.addr().parse().unwrap());
    let s3 = format!("http://localhost:{}", relay.port);
    let upstream = Registry::start_with_s3(&s3, "registry", &[("alice", "pw")]);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        dir.path(),
        "1",
        "amd64",
        &[LayerSpec::file("a", random_bytes(3_000_000, 42)), LayerSpec::file("b", random_bytes(20_000, 43))],
    );
    push(&img.layout, "1", &format!("{}/apps/s3img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));

    // The registry answers a blob GET with a 307 to a presigned URL on the object store.
    let auth = basic("alice", "pw");
    let direct = format!("/v2/apps/s3img/blobs/{}", img.layer_digests[0]);
    let r = http_request(&upstream.addr(), "GET", &direct, &[("Authorization", &auth)]);
    assert_eq!(r.status, 307, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").unwrap_or_default();
    assert!(location.starts_with(&format!("{s3}/registry/")), "{location}");

    // The cache holds credentials for the registry (Basic, sent up front after the first challenge).
    let creds = dir.path().join("creds.yaml");
    std::fs::write(&creds, "s3reg.test:\n  username: alice\n  password: pw\n").unwrap();
    let cache = Cache::start(&["--upstream", &format!("s3reg.test={}", upstream.url()), "-f", creds.to_str().unwrap()]);
    let out = tempfile::tempdir().unwrap();
    let src = format!("docker://{}/s3reg.test/apps/s3img:1", cache.addr());
    assert_success(&skopeo_copy_to_dir(&src, out.path(), &[]), "skopeo pull through the cache");
    for (d, bytes) in img.layer_digests.iter().zip(&img.layer_blobs) {
        assert_eq!(&std::fs::read(out.path().join(d.strip_prefix("sha256:").unwrap())).unwrap(), bytes);
    }

    // The cache followed the presigned URLs, and its credentials did not follow them.
    let sent = relay.sent();
    let from_cache: Vec<&String> = sent.iter().filter(|c| c.contains("user-agent: ocicache/")).collect();
    assert!(
        from_cache.iter().any(|c| c.contains("x-amz-signature=")),
        "no presigned GET from the cache reached the object store"
    );
    assert!(from_cache.iter().all(|c| !c.contains("\r\nauthorization:")), "credentials followed a redirect");
    // The check can see an Authorization header: the registry's own S3 calls carry one.
    assert!(sent.iter().any(|c| c.contains("\r\nauthorization: aws4-hmac-sha256")));
    // Blobs served from the cache afterwards without another redirect.
    let r =
        http_request(&cache.addr(), "GET", &format!("/v2/s3reg.test/apps/s3img/blobs/{}", img.layer_digests[1]), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, img.layer_blobs[1]);
}
