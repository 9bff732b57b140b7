//! Credentials per endpoint: a registry served by several endpoints (a private mirror in front of the
//! public registry) sends each endpoint the credentials named for its own `host[:port]`, from any
//! source (creds file, docker config `auths`, a `[registries."host:port"]` helper), before the
//! registry's own, and never another endpoint's.

mod support;

use std::path::Path;

use support::*;

/// Both registries know both users, so a credential sent to the wrong endpoint would be accepted and
/// show up in that registry's access log under the wrong name.
const USERS: &[(&str, &str)] = &[("first", "pw1"), ("second", "pw2")];

struct TwoEndpoints {
    first: Registry,
    second: Registry,
    a: BuiltImage,
    b: BuiltImage,
    _dir: tempfile::TempDir,
}

/// Two htpasswd registries holding the same two images.
fn two_endpoints() -> TwoEndpoints {
    let first = Registry::start_with_htpasswd(USERS);
    let second = Registry::start_with_htpasswd(USERS);
    let dir = tempfile::tempdir().unwrap();
    let a = build_image(dir.path(), "a", "amd64", &[LayerSpec::file("a", random_bytes(20_000, 71))]);
    let b = build_image(dir.path(), "b", "amd64", &[LayerSpec::file("b", random_bytes(20_000, 72))]);
    for (reg, (user, pass)) in [(&first, USERS[0]), (&second, USERS[1])] {
        push(&a.layout, "a", &format!("{}/team/a:1", reg.addr()), Format::Oci, Some((user, pass)));
        push(&b.layout, "b", &format!("{}/team/b:1", reg.addr()), Format::Oci, Some((user, pass)));
    }
    TwoEndpoints { first, second, a, b, _dir: dir }
}

fn pull(cache: &Cache, image: &str, img: &BuiltImage) {
    let dest = tempfile::tempdir().unwrap();
    let src = format!("docker://{}/one.test/{image}", cache.addr());
    assert_success(&skopeo_copy_to_dir(&src, dest.path(), &[]), &format!("skopeo pull of {image}"));
    assert_eq!(std::fs::read(dest.path().join("manifest.json")).unwrap(), img.manifest);
}

/// The users a registry authenticated in requests it answered with an error, since byte `from` of its
/// application log. (distribution 2.8 writes `-` for the user in its access log, and names the user
/// only on `response completed with error` lines: a request for a missing tag makes one.)
fn users_in_errors_since(reg: &Registry, from: usize) -> Vec<String> {
    let log = reg.app_log();
    let mut users: Vec<String> = log[from..]
        .split_whitespace()
        .filter_map(|field| field.strip_prefix("auth.user.name="))
        .map(|u| u.trim_matches('"').to_owned())
        .collect();
    users.sort();
    users.dedup();
    users
}

/// Asks the cache for a tag that does not exist, so the endpoint answering logs whose credentials
/// it got.
fn ask_for_missing_tag(cache: &Cache) {
    let r = http_request(&cache.addr(), "GET", "/v2/one.test/team/a/manifests/missing", &[]);
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
}

/// Pulls `a` through `cache` from the first endpoint, stops it, pulls `b` from the second; each
/// endpoint must have authenticated its own user and only that.
fn each_endpoint_sees_its_own_user(mut t: TwoEndpoints, cache: &Cache) {
    let (log1, log2) = (t.first.app_log().len(), t.second.app_log().len());
    let mark2 = t.second.mark();
    pull(cache, "team/a:1", &t.a);
    ask_for_missing_tag(cache);
    assert_eq!(users_in_errors_since(&t.first, log1), ["first"]);
    assert!(t.second.requests_since(mark2).is_empty(), "the second endpoint was asked while the first answered");

    t.first.stop();
    pull(cache, "team/b:1", &t.b);
    ask_for_missing_tag(cache);
    assert_eq!(users_in_errors_since(&t.second, log2), ["second"]);
}

#[test]
fn each_endpoint_of_a_registry_gets_the_creds_file_entry_for_its_host_and_port() {
    let t = two_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds.yaml");
    std::fs::write(
        &creds,
        format!(
            "{}:\n  username: first\n  password: pw1\n{}:\n  username: second\n  password: pw2\n",
            t.first.addr(),
            t.second.addr()
        ),
    )
    .unwrap();
    let upstream = format!("one.test={},{}", t.first.url(), t.second.url());
    let cache = Cache::start(&["--upstream", &upstream, "--creds-file", creds.to_str().unwrap()]);
    each_endpoint_sees_its_own_user(t, &cache);
}

/// Writes an executable credential helper at `path` answering with `user`/`pass`.
fn helper(path: &Path, user: &str, pass: &str) {
    use std::os::unix::fs::PermissionsExt;
    let body = format!("#!/bin/sh\nread server\nprintf '{{\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}'\n");
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn docker_config_auths_and_a_registries_table_helper_may_name_an_endpoint_before_the_registry() {
    let t = two_endpoints();
    let dir = tempfile::tempdir().unwrap();
    // The first endpoint from the docker config's `auths`; the registry's own entry there (a wrong
    // password) must lose to the endpoints' entries.
    let docker = dir.path().join("config.json");
    let docker_config = serde_json::json!({"auths": {
        format!("http://{}", t.first.addr()): {"username": "first", "password": "pw1"},
        "one.test": {"username": "first", "password": "wrong"},
    }});
    std::fs::write(&docker, docker_config.to_string()).unwrap();
    // The second endpoint from a helper configured in its own `[registries."host:port"]` table.
    let helper_path = dir.path().join("second-helper");
    helper(&helper_path, "second", "pw2");
    let config = dir.path().join("ocicache.toml");
    std::fs::write(
        &config,
        format!(
            "[registries.\"one.test\"]\nendpoints = [\"{}\", \"{}\"]\n\
             [registries.\"{}\"]\ncredential_helper = \"{}\"\n",
            t.first.url(),
            t.second.url(),
            t.second.addr(),
            helper_path.display()
        ),
    )
    .unwrap();
    let cache = Cache::start(&["-c", config.to_str().unwrap(), "--docker-config", docker.to_str().unwrap()]);
    each_endpoint_sees_its_own_user(t, &cache);
}
