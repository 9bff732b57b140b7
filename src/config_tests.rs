use super::*;

fn cfg(args: &[&str]) -> Result<Config, ConfigError> {
    let mut all = vec!["ocicache"];
    all.extend_from_slice(args);
    Config::from_args(all)
}

#[test]
fn defaults_match_containerd_registry_cache() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.listen.port(), 3000);
    assert_eq!(c.cache_dir, PathBuf::from("/tmp/data"));
    assert!(c.policy.cache_manifests);
    assert_eq!(c.policy.skip_tags.as_ref().unwrap().as_str(), "latest");
    assert_eq!(c.default_registry.as_str(), "docker.io");
}

#[test]
fn seed_flags_keep_their_meaning() {
    let c = cfg(&[
        "-p",
        "5001",
        "-d",
        "/x",
        "--cache-manifests=false",
        "-t",
        "^dev-",
        "--private-registry",
        "r.corp.example",
    ])
    .unwrap();
    assert_eq!(c.listen.port(), 5001);
    assert_eq!(c.cache_dir, PathBuf::from("/x"));
    assert!(!c.policy.cache_manifests);
    assert!(c.policy.skip_tags.as_ref().unwrap().is_match("dev-1"));
    assert!(c.registries.is_allowed(&RegistryName::parse("r.corp.example").unwrap()));
    assert!(!cfg(&["--cache-manifests=no"]).unwrap().policy.cache_manifests);
    assert!(cfg(&["-m"]).unwrap().policy.cache_manifests);
    assert!(cfg(&["--skip-tags", ""]).unwrap().policy.skip_tags.is_none());
}

#[test]
fn bucket_and_storage_name_the_shared_tier() {
    assert_eq!(cfg(&["-b", "my-bucket"]).unwrap().storage.as_deref(), Some("s3://my-bucket"));
    assert_eq!(cfg(&["--storage", "s3://b/p"]).unwrap().storage.as_deref(), Some("s3://b/p"));
    assert!(cfg(&["--storage", "gs://b/p"]).is_ok());
    let e = cfg(&["--storage", "ftp://b"]).unwrap_err().to_string();
    assert!(e.contains("use s3://"), "{e}");
    assert!(cfg(&["-b", "a", "--storage", "s3://b"]).is_err());
}

#[test]
fn upstream_flag_sets_endpoints_and_allows_the_name() {
    let c = cfg(&["--upstream", "myreg.test=http://127.0.0.1:5000,http://127.0.0.1:5001"]).unwrap();
    let eps = c.registries.endpoints(&RegistryName::parse("myreg.test").unwrap()).unwrap();
    assert_eq!(eps.len(), 2);
    assert!(cfg(&["--upstream", "nourl"]).is_err());
    assert!(cfg(&["--upstream", "a.test=ftp://x"]).is_err());
    assert!(cfg(&["--skip-tags", "("]).is_err());
}

#[test]
fn file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "port = 4000\ncache_dir = \"/file\"\nskip_tags = \"^edge$\"\n[registries.\"a.test\"]\nendpoints = [\"http://127.0.0.1:1\"]\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = cfg(&["-c", p, "-p", "4001"]).unwrap();
    assert_eq!(c.listen.port(), 4001);
    assert_eq!(c.cache_dir, PathBuf::from("/file"));
    assert!(c.policy.skip_tags.as_ref().unwrap().is_match("edge"));
    assert!(c.registries.is_allowed(&RegistryName::parse("a.test").unwrap()));
}

#[test]
fn unknown_file_key_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "prot = 4000\n").unwrap();
    let e = cfg(&["-c", path.to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("prot"), "{e}");
}

/// Parses flags (the file, if any, given as `-c`) into the layered settings.
fn layered(args: &[&str]) -> Layered {
    let mut all = vec!["ocicache"];
    all.extend_from_slice(args);
    Layered::from_cli(&Cli::try_parse_from(all).unwrap()).unwrap()
}

fn file_with(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocicache.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_owned();
    (dir, p)
}

#[test]
fn defaults_then_file_then_flags() {
    let (_dir, file) = file_with(
        "port = 4000\ncache_manifests = false\noffline = true\ntag_ttl = \"10m\"\nmax_size = \"5GiB\"\n\
         private_registries = [\"a.test\"]\nallow_registries = [\"*.corp.example\"]\n\
         [registries.\"m.test\"]\nendpoints = [\"http://127.0.0.1:1\"]\ninsecure = true\n",
    );
    let d = Settings::default();
    let only_file = layered(&["-c", &file]).settings;
    assert_eq!(only_file.port, 4000);
    assert!(!only_file.cache_manifests);
    assert_eq!(only_file.tag_ttl.0, Duration::from_secs(600));
    assert_eq!(only_file.max_size, Some(ByteSize(5 << 30)));
    assert_eq!(only_file.connect_timeout, d.connect_timeout, "a key the file lacks keeps its default");
    assert_eq!(only_file.cache_dir, d.cache_dir);

    let s = layered(&[
        "-c",
        &file,
        "-p",
        "4001",
        "--cache-manifests=true",
        "--offline=false",
        "--tag-ttl",
        "90",
        "--max-size",
        "1GB",
        "--private-registry",
        "b.test",
        "--allow-registry",
        "c.test",
        "--upstream",
        "m.test=http://127.0.0.1:2",
    ])
    .settings;
    assert_eq!(s.port, 4001);
    assert!(s.cache_manifests, "--cache-manifests=true overrides the file's false");
    assert!(!s.offline, "--offline=false overrides the file's true");
    assert_eq!(s.tag_ttl.0, Duration::from_secs(90));
    assert_eq!(s.max_size, Some(ByteSize(1_000_000_000)));
    assert_eq!(s.private_registries, ["b.test"], "a list flag replaces the file's list");
    assert_eq!(s.allow_registries, ["*.corp.example", "c.test"], "--allow-registry adds to the file's list");
    let m = &s.registries["m.test"];
    assert_eq!(m.endpoints, ["http://127.0.0.1:2"], "--upstream replaces the file's endpoints");
    assert!(m.insecure, "and keeps the registry's other settings");

    // A flag set to the default still beats the file; a flag not given leaves it alone.
    let s = layered(&["-c", &file, "--cache-manifests=false", "-p", "3000"]).settings;
    assert!(!s.cache_manifests);
    assert_eq!(s.port, 3000);
    let c = cfg(&["-c", &file, "--cache-manifests=no"]).unwrap();
    assert!(!c.policy.cache_manifests);
    assert_eq!(c.policy.tag_ttl, Duration::from_secs(600));
    assert_eq!(c.eviction.max_size, Some(5 << 30));
}

#[test]
fn flags_alone_override_the_defaults() {
    let s = layered(&["-m=false", "--connect-timeout", "1h30m", "--max-age", "30d"]).settings;
    assert!(!s.cache_manifests);
    assert_eq!(s.connect_timeout.0, Duration::from_secs(5400));
    assert_eq!(s.max_age.map(|d| d.0), Some(Duration::from_secs(30 * 86400)));
    assert_eq!(s.port, 3000);
    let c = cfg(&["--connect-timeout", "1h30m", "--offline"]).unwrap();
    assert_eq!(c.origin.connect_timeout, Duration::from_secs(5400));
    assert!(c.origin.offline);
    assert_eq!(c.origin.first_byte_timeout, Duration::from_secs(30));
}

#[test]
fn file_durations_and_sizes_are_text_or_numbers() {
    let (_dir, file) = file_with("tag_ttl = 120\nmax_size = 1048576\nshutdown_delay = \"5s\"\n");
    let s = layered(&["-c", &file]).settings;
    assert_eq!(s.tag_ttl.0, Duration::from_secs(120));
    assert_eq!(s.max_size, Some(ByteSize(1 << 20)));
    assert_eq!(s.shutdown_delay.0, Duration::from_secs(5));
    for bad in ["tag_ttl = -1", "tag_ttl = \"soon\"", "max_size = 0", "max_size = \"5 apples\"", "port = \"x\""] {
        let (_dir, file) = file_with(bad);
        let key = bad.split(' ').next().unwrap();
        let e = cfg(&["-c", &file]).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("ocicache.toml"), "{bad}: {e}");
    }
}

#[test]
fn errors_name_the_flag_or_the_file_key_that_set_the_value() {
    let (_dir, file) = file_with("skip_tags = \"(\"\nmax_upstream_concurrency = 0\n");
    match cfg(&["-c", &file, "--max-upstream-concurrency", "4"]).unwrap_err() {
        ConfigError::Setting { setting, .. } => assert_eq!(setting, format!("skip_tags in {file}")),
        e => panic!("{e}"),
    }
    match cfg(&["-c", &file, "--skip-tags", "[", "--max-upstream-concurrency", "4"]).unwrap_err() {
        ConfigError::Setting { setting, .. } => assert_eq!(setting, "--skip-tags"),
        e => panic!("{e}"),
    }
    let e = cfg(&["-c", &file, "-t", "x"]).unwrap_err().to_string();
    assert!(e.starts_with("max_upstream_concurrency in ") && e.contains("at least 1"), "{e}");
    let e = cfg(&["--default-registry", "nowhere.test"]).unwrap_err().to_string();
    assert!(e.starts_with("--default-registry: \"nowhere.test\" is not allowed"), "{e}");
    let e = cfg(&["--private-registry", "bad name"]).unwrap_err().to_string();
    assert!(e.starts_with("--private-registry: "), "{e}");
    let e = cfg(&["--htpasswd", "/nonexistent/htpasswd"]).unwrap_err().to_string();
    assert!(e.contains("--htpasswd /nonexistent/htpasswd"), "a missing htpasswd file fails the check: {e}");
    let (_dir, file) = file_with("tls_cert = \"/c.pem\"\n");
    let e = cfg(&["-c", &file]).unwrap_err().to_string();
    assert!(e.starts_with("tls_cert in ") && e.contains("tls_key"), "{e}");
}

#[test]
fn printed_settings_read_back_as_the_same_settings() {
    let (_dir, file) = file_with(
        "max_size = \"1536MiB\"\nmax_age = \"36h\"\nimmutable_tags = \"^v[0-9]\"\n\
         [registries.\"m.test\"]\nendpoints = [\"http://127.0.0.1:1\"]\n",
    );
    let l = layered(&["-c", &file, "--tag-ttl", "1h30m", "--storage", "s3://b/p", "--listen", "::1"]);
    let printed = l.to_toml().unwrap();
    assert!(printed.contains("max_size = \"1536MiB\""), "{printed}");
    assert!(printed.contains("tag_ttl = \"90m\""), "{printed}");
    assert!(printed.contains("max_age = \"36h\""), "{printed}");
    for (d, text) in [(0, "0s"), (1, "1ms"), (1500, "1500ms"), (60_000, "1m"), (86_400_000 * 30, "30d")] {
        let d = HumanDuration(Duration::from_millis(d));
        assert_eq!(d.to_string(), text);
        assert_eq!(text.parse::<HumanDuration>(), Ok(d));
    }
    let odd = HumanDuration(Duration::from_nanos(1_500));
    assert_eq!(odd.to_string().parse::<HumanDuration>(), Ok(odd));
    let (_dir2, again) = file_with(&printed);
    assert_eq!(layered(&["-c", &again]).settings, l.settings);
    let defaults = Layered::from_cli(&Cli::try_parse_from(["ocicache"]).unwrap()).unwrap();
    let (_dir3, again) = file_with(&defaults.to_toml().unwrap());
    assert_eq!(layered(&["-c", &again]).settings, Settings::default());
}

/// `--help` states defaults as text: each must be what `Settings::default()` holds, and each flag
/// with a default must state it. Giving a flag its stated default must change nothing.
#[test]
fn help_defaults_are_the_settings_defaults() {
    use clap::CommandFactory;
    let defaults = toml::Table::try_from(Settings::default()).unwrap();
    let cmd = Cli::command();
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(long), Some(help)) = (arg.get_long(), arg.get_help().map(|h| h.to_string())) else { continue };
        if matches!(id, "config" | "version") {
            continue;
        }
        let has_default = match defaults.get(id) {
            None => false,
            Some(toml::Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        let stated = help.split_once("[default: ").map(|(_, rest)| rest.trim_end_matches(']').to_owned());
        match stated {
            None => assert!(!has_default, "--{long} has a default ({:?}) that --help does not state", defaults[id]),
            Some(stated) => {
                assert!(has_default, "--{long} states a default but Settings::default() has none");
                let given = layered(&[&format!("--{long}={stated}")]).settings;
                assert_eq!(
                    given,
                    Settings::default(),
                    "--{long}: [default: {stated}] differs from Settings::default()"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} stated defaults found");
}

#[test]
fn the_default_tag_policy_is_the_default_settings() {
    let p = TagPolicy::default();
    let c = cfg(&[]).unwrap();
    assert_eq!(p.cache_manifests, c.policy.cache_manifests);
    assert_eq!(p.tag_ttl, c.policy.tag_ttl);
    assert_eq!(p.skip_tags.map(|r| r.to_string()), Some("latest".to_owned()));
    assert_eq!(c.origin.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.origin.endpoint_backoff, Duration::from_secs(30));
    assert_eq!(c.auth_cache_ttl, Duration::from_secs(60));
    assert_eq!(c.max_upstream_concurrency, 32);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.listen.ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

#[test]
fn redirect_blobs_is_off_a_bounded_ttl_or_the_bare_flags_five_minutes() {
    assert_eq!(cfg(&[]).unwrap().redirect_blobs, None);
    let on = |args: &[&str]| {
        let mut all = vec!["--storage", "s3://b/p"];
        all.extend_from_slice(args);
        cfg(&all)
    };
    assert_eq!(on(&["--redirect-blobs"]).unwrap().redirect_blobs, Some(Duration::from_secs(300)));
    assert_eq!(on(&["--redirect-blobs=90s"]).unwrap().redirect_blobs, Some(Duration::from_secs(90)));
    assert_eq!(on(&["--redirect-blobs=off"]).unwrap().redirect_blobs, None);
    assert_eq!(on(&["--redirect-blobs=1h"]).unwrap().redirect_blobs, Some(Duration::from_secs(3600)));
    for too_long in ["61m", "2h", "7d"] {
        let e = on(&[&format!("--redirect-blobs={too_long}")]).unwrap_err().to_string();
        assert!(e.starts_with("--redirect-blobs: ") && e.contains("10s to 1h"), "{too_long}: {e}");
    }
    assert!(on(&["--redirect-blobs=1s"]).unwrap_err().to_string().contains("10s to 1h"));
    assert!(on(&["--redirect-blobs=soon"]).is_err());
    // Only a store that can sign URLs has something to redirect to.
    let e = cfg(&["--redirect-blobs"]).unwrap_err().to_string();
    assert!(e.starts_with("--redirect-blobs: needs object storage"), "{e}");
    let e = cfg(&["--redirect-blobs", "--storage", "file:///shared"]).unwrap_err().to_string();
    assert!(e.contains("cannot sign URLs"), "{e}");
    assert!(cfg(&["--redirect-blobs", "--storage", "gs://b"]).is_ok());
    assert!(cfg(&["--redirect-blobs", "-b", "b"]).is_ok());
    // Clients that are served the bytes instead.
    let c = on(&["--redirect-blobs", "--redirect-blobs-skip-user-agent", "^old/"]).unwrap();
    assert!(c.redirect_blobs_skip_user_agent.unwrap().is_match("old/1.0"));
    let e = on(&["--redirect-blobs-skip-user-agent", "("]).unwrap_err().to_string();
    assert!(e.starts_with("--redirect-blobs-skip-user-agent: "), "{e}");
}

#[test]
fn redirect_blobs_in_the_file_and_printed_by_check_config() {
    for (text, want) in [
        ("redirect_blobs = \"2m\"", Some(120)),
        ("redirect_blobs = true", Some(300)),
        ("redirect_blobs = false", None),
        ("redirect_blobs = \"off\"", None),
        ("redirect_blobs = 600", Some(600)),
    ] {
        let (_dir, file) = file_with(&format!("storage = \"s3://b\"\n{text}\n"));
        let l = layered(&["-c", &file]);
        assert_eq!(l.validate().unwrap().redirect_blobs, want.map(Duration::from_secs), "{text}");
        let printed = l.to_toml().unwrap();
        let line = match want {
            None => "redirect_blobs = \"off\"".to_owned(),
            Some(s) => format!("redirect_blobs = \"{}\"", HumanDuration(Duration::from_secs(s))),
        };
        assert!(printed.contains(&line), "{text}: {printed}");
        let (_dir2, again) = file_with(&printed);
        assert_eq!(layered(&["-c", &again]).settings, l.settings);
    }
    // The file turns it on, a flag turns it off again; errors name the file's key.
    let (_dir, file) = file_with("storage = \"s3://b\"\nredirect_blobs = \"5m\"\n");
    assert_eq!(cfg(&["-c", &file, "--redirect-blobs=off"]).unwrap().redirect_blobs, None);
    let (_dir, file) = file_with("storage = \"s3://b\"\nredirect_blobs = \"2h\"\n");
    let e = cfg(&["-c", &file]).unwrap_err().to_string();
    assert!(e.starts_with("redirect_blobs in ") && e.contains("10s to 1h"), "{e}");
}

#[test]
fn advertise_url_needs_a_secret_and_shared_storage() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("peer-secret");
    std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
    let secret = secret.to_str().unwrap();
    let e = cfg(&["--advertise-url", "http://10.0.0.7:3000", "--storage", "s3://b"]).unwrap_err().to_string();
    assert!(e.starts_with("--advertise-url: needs peer_secret_file (--peer-secret-file)"), "{e}");
    let e = cfg(&["--advertise-url", "http://10.0.0.7:3000", "--peer-secret-file", secret]).unwrap_err().to_string();
    assert!(e.starts_with("--advertise-url: needs shared storage"), "{e}");
    for bad in ["ftp://10.0.0.7", "http://10.0.0.7:3000/cache", "10.0.0.7:3000", "http://u:p@10.0.0.7"] {
        let e = cfg(&["--advertise-url", bad, "--peer-secret-file", secret, "--storage", "s3://b"]).unwrap_err();
        assert!(e.to_string().starts_with("--advertise-url: "), "{bad}: {e}");
    }
    let c =
        cfg(&["--advertise-url", "http://10.0.0.7:3000", "--peer-secret-file", secret, "--storage", "s3://b"]).unwrap();
    assert_eq!(c.advertise_url.unwrap().as_str(), "http://10.0.0.7:3000/");
    assert_eq!(read_peer_secret(std::path::Path::new(secret)).unwrap(), b"0123456789abcdef0123");

    let short = dir.path().join("short");
    std::fs::write(&short, "tiny\n").unwrap();
    let e = cfg(&["--peer-secret-file", short.to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.starts_with("--peer-secret-file: ") && e.contains("at least 16"), "{e}");
    let e = cfg(&["--peer-secret-file", "/nonexistent/secret"]).unwrap_err().to_string();
    assert!(e.starts_with("--peer-secret-file: /nonexistent/secret"), "{e}");
    // In the file, as the other settings.
    let (_d, file) = file_with(&format!(
        "storage = \"s3://b\"\nadvertise_url = \"https://cache-0.cache:3000\"\npeer_secret_file = \"{secret}\"\n"
    ));
    assert!(cfg(&["-c", &file]).unwrap().advertise_url.is_some());
}
