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
