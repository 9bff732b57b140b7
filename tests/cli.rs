//! The command line: containerd-registry-cache's flags with their meaning, clear start-up errors.

mod support;

use support::*;

fn run(args: &[&str]) -> std::process::Output {
    run_output(ocicache_bin().args(args))
}

#[test]
fn help_lists_every_flag() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-p, --port",
        "-d, --cache-dir",
        "-m, --cache-manifests",
        "-t, --skip-tags",
        "-f, --creds-file",
        "-l, --log-level",
        "--private-registry",
        "-b, --bucket",
        "-v, --version",
        "-c, --config",
        "--upstream",
        "--allow-registry",
        "--default-registry",
        "--listen",
        "--log-format",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn version_flag_prints_the_version() {
    let out = run(&["-v"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unreachable_bucket_fails_the_start_clearly() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let out = run_output(
        ocicache_bin()
            .env("AWS_ENDPOINT_URL_S3", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .args(["-b", "my-bucket", "-d", dir.path().to_str().unwrap(), "-p", "0", "--listen", "127.0.0.1"]),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot list the bucket"), "{err}");
}

#[test]
fn invalid_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocicache.toml");
    std::fs::write(&path, "port = 3001\ncache_dri = \"/x\"\n").unwrap();
    let out = run(&["-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache_dri"), "{err}");
    let out = run(&["--skip-tags", "(unclosed"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--skip-tags"));
}

#[test]
fn binary_serves_the_api_with_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocicache.toml");
    std::fs::write(&path, format!("cache_dir = \"{}\"\nlog_format = \"json\"\n", dir.path().join("c").display()))
        .unwrap();
    let p = CacheProcess::spawn(&["-c", path.to_str().unwrap()]);
    let r = http_request(&format!("127.0.0.1:{}", p.port), "GET", "/v2/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{}");
    assert!(dir.path().join("c/blobs").is_dir(), "cache dir from the file was not used");
    let h = http_request(&format!("127.0.0.1:{}", p.port), "GET", "/healthz", &[]);
    assert_eq!(h.status, 200);
}

#[test]
fn check_config_prints_the_effective_settings_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds.yaml");
    std::fs::write(&creds, "registry.corp.example:\n  username: puller\n  password: s3cret-in-the-file\n").unwrap();
    let cache_dir = dir.path().join("cache");
    let path = dir.path().join("ocicache.toml");
    std::fs::write(
        &path,
        format!(
            "port = 4000\ncache_dir = \"{}\"\ncreds_file = \"{}\"\ntag_ttl = \"10m\"\ncache_manifests = true\n\
             [registries.\"m.test\"]\nendpoints = [\"http://127.0.0.1:1\"]\n",
            cache_dir.display(),
            creds.display()
        ),
    )
    .unwrap();
    let out = run(&["check-config", "-c", path.to_str().unwrap(), "-p", "4001", "--cache-manifests=false"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let printed: toml::Table = toml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    assert_eq!(printed["port"].as_integer(), Some(4001), "the flag wins over the file:\n{stdout}");
    assert_eq!(printed["cache_manifests"].as_bool(), Some(false), "{stdout}");
    assert_eq!(printed["tag_ttl"].as_str(), Some("10m"), "from the file:\n{stdout}");
    assert_eq!(printed["cache_dir"].as_str(), cache_dir.to_str());
    assert_eq!(printed["skip_tags"].as_str(), Some("latest"), "a default:\n{stdout}");
    assert_eq!(printed["registries"]["m.test"]["endpoints"][0].as_str(), Some("http://127.0.0.1:1"));
    assert_eq!(printed["creds_file"].as_str(), creds.to_str());
    assert!(!stdout.contains("s3cret"), "a secret was printed:\n{stdout}");
    assert!(!cache_dir.exists(), "check-config must not open the cache");

    // What it prints is a config file that gives the same settings.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &stdout).unwrap();
    let out = run(&["check-config", "-c", again.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = |s: &str| s.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&String::from_utf8_lossy(&out.stdout)), body(&stdout));
}

#[test]
fn check_config_fails_naming_the_bad_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocicache.toml");
    let p = path.to_str().unwrap();
    for (file, flags, named) in [
        ("tag_ttl = \"soon\"\n", &[][..], "tag_ttl"),
        ("cache_dri = \"/x\"\n", &[], "cache_dri"),
        ("skip_tags = \"(\"\n", &[], "skip_tags in "),
        ("skip_tags = \"ok\"\n", &["--skip-tags", "("], "--skip-tags"),
        ("max_upstream_concurrency = 0\n", &[], "max_upstream_concurrency"),
        ("", &["--default-registry", "nowhere.test"], "--default-registry"),
        ("", &["--tag-ttl", "soon"], "--tag-ttl"),
    ] {
        std::fs::write(&path, file).unwrap();
        let mut args = vec!["check-config", "-c", p];
        args.extend_from_slice(flags);
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file} {flags:?}: {err}");
        assert!(err.contains(named), "{file} {flags:?}: the error does not name {named}: {err}");
        assert!(out.stdout.is_empty(), "{file} {flags:?}: printed settings although they are bad");
    }
}
