//! Private and cloud registries as origins: credential helpers, docker config files that rotate,
//! a default registry, and per-origin TLS.

mod support;

use std::path::Path;

use support::*;

const ACCEPT_OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn private_upstream() -> (Registry, tempfile::TempDir, BuiltImage) {
    let upstream = Registry::start_with_htpasswd(&[("alice", "pw")]);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(30_000, 9))]);
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));
    (upstream, dir, img)
}

/// Writes an executable `docker-credential-<name>` into `dir`.
fn helper(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn spawn_with_path(bin_dir: &Path, args: &[&str]) -> CacheProcess {
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    CacheProcess::spawn_env(args, &[("PATH", &path)])
}

#[test]
fn a_credential_helper_supplies_credentials_once_per_ttl() {
    let (upstream, dir, img) = private_upstream();
    let calls = dir.path().join("calls");
    helper(
        dir.path(),
        "testhelper",
        &format!(
            "read server; echo \"$server\" >> {}; printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"pw\"}}' \"$server\"",
            calls.display()
        ),
    );
    helper(dir.path(), "broken", "echo 'boom: no credentials for this server' >&2; exit 3");
    let config = dir.path().join("ocicache.toml");
    std::fs::write(
        &config,
        format!(
            "[registries.\"auth.test\"]\nendpoints = [\"{u}\"]\ncredential_helper = \"testhelper\"\n\
             [registries.\"broken.test\"]\nendpoints = [\"{u}\"]\ncredential_helper = \"broken\"\n",
            u = upstream.url()
        ),
    )
    .unwrap();
    let cache_dir = dir.path().join("cache");
    let p = spawn_with_path(dir.path(), &["-c", config.to_str().unwrap(), "-d", cache_dir.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{}", p.port);

    let m = http_request(&addr, "GET", "/v2/auth.test/priv/img/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    assert_eq!(m.body, img.manifest);
    for d in img.blob_digests() {
        assert_eq!(http_request(&addr, "GET", &format!("/v2/auth.test/priv/img/blobs/{d}"), &[]).status, 200);
    }
    let calls_made = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(calls_made.lines().count(), 1, "helper called per request: {calls_made:?}");
    assert_eq!(calls_made.trim(), "auth.test");

    // The helper is asked again as its answers age (--credential-ttl), and no request fails meanwhile.
    let short = spawn_with_path(
        dir.path(),
        &["-c", config.to_str().unwrap(), "-d", dir.path().join("cache2").to_str().unwrap(), "--credential-ttl", "1s"],
    );
    let short_addr = format!("127.0.0.1:{}", short.port);
    let before = std::fs::read_to_string(&calls).unwrap().lines().count();
    poll_until(DEFAULT_TIMEOUT, "the helper to be asked again", || {
        // Tag lists always go to the origin, so each needs credentials.
        let r = http_request(&short_addr, "GET", "/v2/auth.test/priv/img/tags/list", &[]);
        assert_eq!(r.status, 200, "a request failed while credentials were refreshed");
        std::fs::read_to_string(&calls).unwrap().lines().count() >= before + 2
    });

    let r = http_request(&addr, "GET", "/v2/broken.test/priv/img/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.status, 401);
    let msg = String::from_utf8_lossy(&r.body);
    assert!(msg.contains("docker-credential-broken") && msg.contains("boom"), "{msg}");
    assert!(!msg.contains("pw"));
}

#[test]
fn a_docker_config_is_used_and_a_rotated_password_is_picked_up() {
    let (upstream, dir, img) = private_upstream();
    let docker = dir.path().join("config.json");
    let write = |pass: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pass}"));
        std::fs::write(&docker, format!("{{\"auths\":{{\"auth.test\":{{\"auth\":\"{auth}\"}}}}}}")).unwrap();
    };
    write("stale-password");
    let cache = Cache::start(&[
        "--upstream",
        &format!("auth.test={}", upstream.url()),
        "--docker-config",
        docker.to_str().unwrap(),
    ]);
    let path = "/v2/auth.test/priv/img/manifests/1";
    let r = http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("--docker-config"), "{}", String::from_utf8_lossy(&r.body));

    // The secret rotates: the file is re-read, no restart.
    write("pw");
    poll_until(DEFAULT_TIMEOUT, "the rotated password to be used", || {
        http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI)]).status == 200
    });
    let r = http_request(&cache.addr(), "GET", path, &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.body, img.manifest);
}

#[test]
fn requests_with_neither_ns_nor_a_registry_go_to_the_default_registry() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", "default")]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let cache =
        Cache::start(&["--upstream", &format!("gar.test={}", upstream.url()), "--default-registry", "gar.test"]);
    let r = http_request(&cache.addr(), "GET", "/v2/test/img/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, img.manifest);
    assert_eq!(upstream.count("GET", "/v2/test/img/manifests/1"), 1, "no library/ prefix outside Docker Hub");
    // Seed 004's "swap the upstream domain for localhost:<port>" with skopeo.
    let d = tempfile::tempdir().unwrap();
    assert_success(&skopeo_copy_to_dir(&format!("docker://{}/test/img:1", cache.addr()), d.path(), &[]), "skopeo");
}

#[test]
fn an_https_origin_with_a_private_ca_works_only_with_that_ca_configured() {
    let dir = tempfile::tempdir().unwrap();
    let certs = ca_and_server_cert(dir.path());
    let (cert, key, ca) = (certs.cert, certs.key, certs.ca);
    let upstream = Registry::start_with_tls(&cert, &key);
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", "over tls")]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let https = format!("https://{}", upstream.addr());

    let without = Cache::start(&["--upstream", &format!("tls.test={https}")]);
    let r = http_request(&without.addr(), "GET", "/v2/tls.test/test/img/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.status, 502, "an untrusted certificate must fail");

    let config = dir.path().join("ocicache.toml");
    std::fs::write(
        &config,
        format!("[registries.\"tls.test\"]\nendpoints = [\"{https}\"]\nca = \"{}\"\n", ca.display()),
    )
    .unwrap();
    let with = Cache::start(&["-c", config.to_str().unwrap()]);
    let r = http_request(&with.addr(), "GET", "/v2/tls.test/test/img/manifests/1", &[("Accept", ACCEPT_OCI)]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, img.manifest);
}
