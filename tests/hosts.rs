//! `ocicache hosts`: the generated containerd files work with a real containerd (its pulls reach the
//! cache, by `_default` and by a per-registry file), and the docker / podman / containerd texts say
//! what they should.

mod support;

use std::path::PathBuf;

use ocicache::cmd::hosts::{render, HostsArgs, HostsFormat};
use support::*;

fn args(endpoint: &str, registries: &[&str], default: bool, format: HostsFormat) -> HostsArgs {
    HostsArgs {
        endpoint: endpoint.to_owned(),
        registries: registries.iter().map(|r| r.to_string()).collect(),
        default,
        dir: None,
        format,
        dial_timeout: std::time::Duration::from_secs(2),
    }
}

fn file<'a>(rendered: &'a ocicache::cmd::hosts::Rendered, path: &str) -> &'a str {
    rendered
        .files
        .iter()
        .find(|f| f.path == std::path::Path::new(path))
        .map(|f| f.contents.as_str())
        .unwrap_or_else(|| panic!("no {path} in {:?}", rendered.files))
}

#[test]
fn generated_hosts_files_send_containerd_pulls_through_the_cache() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("data.bin", random_bytes(50_000, 31))]);
    push(&img.layout, "1", &format!("{}/test/img:1", registry.addr()), Format::Oci, None);
    // The same registry under two names: `one.test` (per-registry file) and its own address
    // (`_default`; a fallback for it would stay on this machine).
    let by_addr = registry.addr();
    let cache = Cache::start(&[
        "--upstream",
        &format!("one.test={}", registry.url()),
        "--upstream",
        &format!("{by_addr}={}", registry.url()),
    ]);
    let ctrd = Containerd::start();
    let endpoint = format!("http://{}", cache.addr());

    let out = run_ok(
        ocicache_bin()
            .args(["hosts", "--endpoint", &endpoint, "--default", "--registry", "one.test", "--dir"])
            .arg(&ctrd.hosts_dir),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let default_path = ctrd.hosts_dir.join("_default/hosts.toml");
    let one_path = ctrd.hosts_dir.join("one.test/hosts.toml");
    for p in [&default_path, &one_path] {
        assert!(stderr.contains(&p.display().to_string()), "stderr does not name {}: {stderr}", p.display());
    }
    assert!(out.stdout.is_empty(), "with --dir nothing goes to stdout");
    let default_toml = std::fs::read_to_string(&default_path).unwrap();
    assert!(default_toml.contains(&format!("[host.\"{endpoint}\"]")), "{default_toml}");
    assert!(default_toml.contains("capabilities = [\"pull\", \"resolve\"]"), "{default_toml}");
    assert!(!default_toml.contains("server ="), "{default_toml}");
    // containerd 2.1+ reads it; the containerd here (1.6) must accept the file with it all the same,
    // which the pulls below prove.
    assert!(default_toml.contains("  dial_timeout = \"2000ms\"\n"), "{default_toml}");
    let one_toml = std::fs::read_to_string(&one_path).unwrap();
    assert!(one_toml.contains("server = \"https://one.test\"\n"), "{one_toml}");
    assert!(one_toml.contains(&format!("[host.\"{endpoint}\"]")), "{one_toml}");
    // one.test does not exist: point its fallback at a closed port, keep the generated mirror entry.
    let blocked =
        one_toml.replace("server = \"https://one.test\"", &format!("server = \"http://127.0.0.1:{}\"", closed_port()));
    std::fs::write(&one_path, blocked).unwrap();

    ctrd.pull_ok("one.test/test/img:1", &[]);
    assert!(ctrd.content().contains(&img.layer_digests[0]));
    let miss = |registry: &str| {
        cache.metric(&format!("ocicache_cache_requests_total{{registry=\"{registry}\",kind=\"blob\",result=\"miss\"}}"))
    };
    assert!(miss("one.test") >= 2.0, "one.test/hosts.toml did not route through the cache:\n{}", cache.metrics());

    // `_default` alone (no per-registry directory for this name).
    ctrd.clean();
    ctrd.pull_ok(&format!("{by_addr}/test/img:1"), &[]);
    assert!(ctrd.content().contains(&img.layer_digests[0]));
    let hits = cache
        .metric(&format!("ocicache_cache_requests_total{{registry=\"{by_addr}\",kind=\"manifest\",result=\"miss\"}}"));
    assert!(hits >= 1.0, "_default/hosts.toml did not route through the cache:\n{}", cache.metrics());
}

#[test]
fn containerd_files_without_dir_go_to_stdout_with_their_paths() {
    let out = run_ok(ocicache_bin().args([
        "hosts",
        "--endpoint",
        "http://cache.local:3000",
        "--registry",
        "docker.io",
        "--registry",
        "registry.corp.example:5000",
    ]));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("# docker.io/hosts.toml\n"), "{stdout}");
    assert!(stdout.contains("# registry.corp.example:5000/hosts.toml\n"), "{stdout}");
    assert!(!stdout.contains("_default"), "no --default, registries given: no _default file\n{stdout}");
    assert!(stdout.contains("server = \"https://registry-1.docker.io\""), "{stdout}");
    assert!(stdout.contains("server = \"https://registry.corp.example:5000\""), "{stdout}");
}

#[test]
fn containerd_text_is_valid_toml_with_origin_fallback_and_tls_advice_only_in_comments() {
    let r = render(&args(
        "https://cache.example:8443/",
        &["Docker.io", "ghcr.io", "ghcr.io"],
        true,
        HostsFormat::Containerd,
    ))
    .unwrap();
    let paths: Vec<String> = r.files.iter().map(|f| f.path.display().to_string()).collect();
    assert_eq!(paths, ["_default/hosts.toml", "docker.io/hosts.toml", "ghcr.io/hosts.toml"]);
    for f in &r.files {
        let v: toml::Value =
            toml::from_str(&f.contents).unwrap_or_else(|e| panic!("{}: {e}\n{}", f.path.display(), f.contents));
        let host = &v["host"]["https://cache.example:8443"];
        assert_eq!(host["capabilities"], toml::Value::Array(vec!["pull".into(), "resolve".into()]));
        assert!(host.get("ca").is_none() && host.get("skip_verify").is_none(), "TLS settings must stay comments");
        assert!(f.contents.contains("# ca = ") && f.contents.contains("# skip_verify = true"), "{}", f.contents);
    }
    let docker: toml::Value = toml::from_str(file(&r, "docker.io/hosts.toml")).unwrap();
    assert_eq!(docker["server"].as_str(), Some("https://registry-1.docker.io"));
    let ghcr: toml::Value = toml::from_str(file(&r, "ghcr.io/hosts.toml")).unwrap();
    assert_eq!(ghcr["server"].as_str(), Some("https://ghcr.io"));
    assert!(toml::from_str::<toml::Value>(file(&r, "_default/hosts.toml")).unwrap().get("server").is_none());

    // Plain HTTP: no TLS advice at all.
    let r = render(&args("http://10.0.0.5:30123", &[], false, HostsFormat::Containerd)).unwrap();
    assert_eq!(r.files.len(), 1);
    let text = file(&r, "_default/hosts.toml");
    assert!(text.contains("[host.\"http://10.0.0.5:30123\"]\n  capabilities = [\"pull\", \"resolve\"]\n"), "{text}");
    assert!(!text.contains("skip_verify") && !text.contains("ca ="), "{text}");
}

#[test]
fn docker_output_is_a_registry_mirrors_snippet() {
    let r = render(&args("http://cache.local:3000", &[], false, HostsFormat::Docker)).unwrap();
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].path, PathBuf::from("daemon.json"));
    let v: serde_json::Value = serde_json::from_str(&r.files[0].contents).unwrap();
    assert_eq!(v, serde_json::json!({"registry-mirrors": ["http://cache.local:3000"]}));
    assert!(r.notes.iter().any(|n| n.contains("Docker Hub only")), "{:?}", r.notes);

    // The binary prints the JSON alone on stdout (pipeable) and the notes on stderr.
    let out = run_ok(ocicache_bin().args(["hosts", "--format", "docker", "--endpoint", "http://cache.local:3000"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["registry-mirrors"][0], "http://cache.local:3000");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Docker Hub only"));

    let tmp = tempfile::tempdir().unwrap();
    run_ok(
        ocicache_bin()
            .args(["hosts", "--format", "docker", "--endpoint", "https://cache.local"])
            .arg("--dir")
            .arg(tmp.path()),
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("daemon.json")).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"registry-mirrors": ["https://cache.local"]}));
}

#[test]
fn podman_output_mirrors_each_registry_by_path() {
    let r = render(&args("http://cache.local:3000", &[], false, HostsFormat::Podman)).unwrap();
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].path, PathBuf::from("registries.conf"));
    let text = &r.files[0].contents;
    let v: toml::Value = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let registries = v["registry"].as_array().unwrap();
    let locations: Vec<&str> = registries.iter().map(|r| r["location"].as_str().unwrap()).collect();
    assert_eq!(locations, ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]);
    for reg in registries {
        let name = reg["location"].as_str().unwrap();
        let mirror = &reg["mirror"].as_array().unwrap()[0];
        assert_eq!(mirror["location"].as_str(), Some(format!("cache.local:3000/{name}").as_str()));
        assert_eq!(mirror["insecure"].as_bool(), Some(true), "plain HTTP endpoint needs insecure = true");
    }
    assert!(text.contains("[[registry]]\nlocation = \"ghcr.io\"\n\n[[registry.mirror]]\nlocation = \"cache.local:3000/ghcr.io\"\ninsecure = true\n"), "{text}");

    // Named registries only; HTTPS: no insecure.
    let r = render(&args("https://cache.local", &["registry.corp.example:5000"], false, HostsFormat::Podman)).unwrap();
    let v: toml::Value = toml::from_str(&r.files[0].contents).unwrap();
    let registries = v["registry"].as_array().unwrap();
    assert_eq!(registries.len(), 1);
    assert_eq!(registries[0]["location"].as_str(), Some("registry.corp.example:5000"));
    let mirror = &registries[0]["mirror"][0];
    assert_eq!(mirror["location"].as_str(), Some("cache.local/registry.corp.example:5000"));
    assert!(mirror.get("insecure").is_none());

    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(
        ocicache_bin()
            .args(["hosts", "--format", "podman", "--endpoint", "http://cache.local:3000", "--registry", "quay.io"])
            .arg("--dir")
            .arg(tmp.path()),
    );
    let written = std::fs::read_to_string(tmp.path().join("registries.conf")).unwrap();
    assert!(written.contains("location = \"cache.local:3000/quay.io\""), "{written}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("registries.conf"));
}

#[test]
fn dial_timeout_is_set_per_cache_entry_or_left_out() {
    let mut a = args("http://cache.local:3000", &["ghcr.io"], true, HostsFormat::Containerd);
    a.dial_timeout = std::time::Duration::from_millis(500);
    let r = render(&a).unwrap();
    for f in &r.files {
        let v: toml::Value = toml::from_str(&f.contents).unwrap();
        assert_eq!(v["host"]["http://cache.local:3000"]["dial_timeout"].as_str(), Some("500ms"), "{}", f.contents);
        assert!(v.get("dial_timeout").is_none(), "never on the origin fallback (`server`): {}", f.contents);
    }
    a.dial_timeout = std::time::Duration::ZERO;
    let r = render(&a).unwrap();
    assert!(r.files.iter().all(|f| !f.contents.contains("dial_timeout")), "{:?}", r.files);
    assert!(r.notes.iter().any(|n| n.contains("use_local_image_pull")), "{:?}", r.notes);
}

#[test]
fn ipv6_endpoints_and_registries_make_valid_hosts_files() {
    let r = render(&args("http://[fd00::1]:3000", &["[fd00::5]:5000"], true, HostsFormat::Containerd)).unwrap();
    let paths: Vec<String> = r.files.iter().map(|f| f.path.display().to_string()).collect();
    assert_eq!(paths, ["_default/hosts.toml", "[fd00::5]:5000/hosts.toml"]);
    for f in &r.files {
        let v: toml::Value = toml::from_str(&f.contents).unwrap_or_else(|e| panic!("{e}\n{}", f.contents));
        assert!(v["host"].get("http://[fd00::1]:3000").is_some(), "{}", f.contents);
    }
    let v: toml::Value = toml::from_str(file(&r, "[fd00::5]:5000/hosts.toml")).unwrap();
    assert_eq!(v["server"].as_str(), Some("https://[fd00::5]:5000"));
}

/// containerd before 2.0 reads hosts.toml with a TOML parser that refuses `]` inside a quoted table
/// key, so a mirror at an IPv6 literal (`[host."http://[fd00::1]:3000"]`) makes it ignore the whole
/// file; 2.0+ reads it. `ocicache hosts` says so; this checks what the containerd installed here does.
#[test]
fn an_ipv6_cache_address_works_with_containerd_2_and_is_flagged_for_older_ones() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("data.bin", random_bytes(20_000, 61))]);
    push(&img.layout, "1", &format!("{}/test/img:1", registry.addr()), Format::Oci, None);
    let cache_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    // The registry is pulled under its own address (no name lookup anywhere), through the cache when
    // containerd reads the file; its fallback is rewritten to a closed port.
    let name = registry.addr();
    let mut child = ocicache_bin()
        .args(["--listen", "::1", "--port", &port.to_string(), "--upstream", &format!("{name}={}", registry.url())])
        .arg("--cache-dir")
        .arg(cache_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let addr = format!("[::1]:{port}");
    poll_until(DEFAULT_TIMEOUT, "the cache listens on [::1]", || std::net::TcpStream::connect(&addr).is_ok());

    let ctrd = Containerd::start();
    let out = run_ok(
        ocicache_bin()
            .args(["hosts", "--endpoint", &format!("http://{addr}"), "--registry", &name, "--dir"])
            .arg(&ctrd.hosts_dir),
    );
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(notes.contains("IPv6") && notes.contains("containerd before 2.0"), "{notes}");
    let path = ctrd.hosts_dir.join(&name).join("hosts.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let closed = text
        .replace(&format!("server = \"https://{name}\""), &format!("server = \"http://127.0.0.1:{}\"", closed_port()));
    assert_ne!(closed, text);
    std::fs::write(&path, closed).unwrap();

    let out = ctrd.pull(&format!("{name}/test/img:1"), &[]);
    let log_text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let version =
        String::from_utf8_lossy(&run_ok(std::process::Command::new("containerd").arg("--version")).stdout).into_owned();
    let major: u32 = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.trim_start_matches('v').split('.').next()?.parse().ok())
        .unwrap_or(0);
    if major >= 2 {
        assert_success(&out, &format!("ctr pull through http://{addr}; cache log:\n{log_text}"));
        assert!(ctrd.content().contains(&img.layer_digests[0]));
    } else {
        // The file is ignored whole: the pull goes to the registry itself (here reachable, being
        // its own address), never to the cache.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("failed to decode hosts.toml"), "containerd {version}: {stderr}");
        assert!(!log_text.contains("test/img"), "containerd {version} reached the cache after all: {log_text}");
    }
}

#[test]
fn a_config_path_with_several_directories_writes_the_first_and_names_what_it_shadows() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("containerd-certs.d"), tmp.path().join("docker-certs.d"));
    std::fs::create_dir_all(second.join("ghcr.io")).unwrap();
    std::fs::write(second.join("ghcr.io/hosts.toml"), "server = \"https://ghcr.io\"\n").unwrap();
    std::fs::create_dir_all(second.join("not-a-registry-dir")).unwrap();
    let config_path = format!("{}:{}", first.display(), second.display());
    let out = run_ok(ocicache_bin().args(["hosts", "--endpoint", "http://cache.local:3000", "--dir", &config_path]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.join("_default/hosts.toml").is_file(), "{stderr}");
    assert!(!second.join("_default").exists(), "only the first directory is written");
    assert!(stderr.contains("the files go into the first"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: this registry directory is no longer used for ghcr.io", second.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("not-a-registry-dir"), "{stderr}");
}

#[test]
fn bad_endpoints_and_registry_names_fail_with_clear_messages() {
    let cases: &[(&[&str], &str)] = &[
        (&["--endpoint", "ftp://cache.local"], "must be http or https"),
        (&["--endpoint", "cache.local:3000"], "http://"),
        (&["--endpoint", "http://cache.local:3000/v2/"], "scheme, host and port"),
        (&["--endpoint", "http://user:pw@cache.local:3000"], "credentials"),
        (&["--endpoint", "http://cache.local", "--registry", "library"], "does not look like a registry"),
        (&["--endpoint", "http://cache.local", "--registry", "https://ghcr.io"], "not a URL"),
        (&["--endpoint", "http://cache.local", "--registry", "bad_host.io"], "invalid registry name"),
        (&["--endpoint", "http://cache.local", "--registry", "_default"], "--default"),
    ];
    for (extra, expected) in cases {
        let out = run_output(ocicache_bin().arg("hosts").args(*extra));
        assert!(!out.status.success(), "{extra:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{extra:?}: expected {expected:?} in:\n{stderr}");
        assert!(out.stdout.is_empty(), "{extra:?}: nothing on stdout when the input is refused");
    }
}
