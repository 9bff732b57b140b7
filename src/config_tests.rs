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
