use std::collections::BTreeMap;

use super::auth::{realm_trusted, Challenge};
use super::*;
use crate::oci::{RegistryName, Repository};

fn name(s: &str) -> RegistryName {
    RegistryName::parse(s).unwrap()
}

#[test]
fn parses_bearer_and_basic_challenges() {
    let c = Challenge::parse(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
    );
    assert_eq!(
        c,
        Challenge::Bearer {
            realm: "https://auth.docker.io/token".into(),
            service: Some("registry.docker.io".into()),
            scope: Some("repository:library/alpine:pull,push".into()),
        }
    );
    assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Challenge::Basic);
    assert_eq!(Challenge::parse("Bearer"), Challenge::Other);
    assert_eq!(Challenge::parse("Negotiate x"), Challenge::Other);
}

#[test]
fn credentials_only_go_to_the_registrys_own_domain() {
    let u = |s: &str| url::Url::parse(s).unwrap();
    assert!(realm_trusted(&u("https://auth.docker.io/token"), &u("https://registry-1.docker.io")));
    assert!(realm_trusted(&u("https://ghcr.io/token"), &u("https://ghcr.io")));
    assert!(realm_trusted(&u("http://127.0.0.1:5001/t"), &u("http://127.0.0.1:5000")));
    assert!(!realm_trusted(&u("https://evil.example/token"), &u("https://ghcr.io")));
    assert!(!realm_trusted(&u("http://127.0.0.2/t"), &u("http://127.0.0.1:5000")));
}

#[test]
fn allow_list_defaults_patterns_and_explicit_upstreams() {
    let mut ups = BTreeMap::new();
    ups.insert(name("myreg.test"), vec![url::Url::parse("http://127.0.0.1:5000").unwrap()]);
    let r = Registries::new(ups, &["*.corp.example".into(), "10.1.2.3:5000".into()]).unwrap();
    for ok in [
        "docker.io",
        "ghcr.io",
        "k8s.gcr.io",
        "us-docker.pkg.dev",
        "x.azurecr.io",
        "a.b.corp.example",
        "myreg.test",
        "10.1.2.3:5000",
    ] {
        assert!(r.is_allowed(&name(ok)), "{ok}");
    }
    for bad in [
        "127.0.0.1:22",
        "169.254.169.254",
        "10.0.0.1",
        "pkg.dev",
        "evil.example",
        "corp.example",
        "ghcr.io:8443",
        "localhost",
    ] {
        assert!(!r.is_allowed(&name(bad)), "{bad}");
        assert!(r.endpoints(&name(bad)).is_none());
    }
    assert_eq!(r.endpoints(&name("docker.io")).unwrap()[0].as_str(), "https://registry-1.docker.io/");
    assert_eq!(r.endpoints(&name("quay.io")).unwrap()[0].as_str(), "https://quay.io/");
    assert_eq!(r.endpoints(&name("myreg.test")).unwrap()[0].as_str(), "http://127.0.0.1:5000/");
}

#[test]
fn creds_file_longest_prefix_wins() {
    let c = Credentials::parse(
        "registry-1.docker.io:\n  username: hub\n  password: p1\n\
         ghcr.io:\n  username: all\n  password: p2\n\
         ghcr.io/org:\n  username: org\n  password: p3\n\
         ghcr.io/org/team:\n  username: team\n  password: p4\n",
    )
    .unwrap();
    let user = |reg: &str, repo: &str| {
        c.lookup(&name(reg), &Repository::parse(repo).unwrap()).map(|c| c.username().to_owned())
    };
    assert_eq!(user("docker.io", "library/alpine").as_deref(), Some("hub"));
    assert_eq!(user("ghcr.io", "other/x").as_deref(), Some("all"));
    assert_eq!(user("ghcr.io", "org/x").as_deref(), Some("org"));
    assert_eq!(user("ghcr.io", "org/team/x").as_deref(), Some("team"));
    assert_eq!(user("ghcr.io", "organic/x").as_deref(), Some("all"));
    assert_eq!(user("quay.io", "x"), None);
    assert!(!format!("{:?}", c).contains("p2"), "secrets must not be printed");
    assert!(Credentials::parse("ghcr.io:\n  user: x\n").is_err());
}

#[test]
fn exact_operator_names_may_resolve_internally_but_builtins_may_not() {
    let r = Registries::new(BTreeMap::new(), &["harbor.corp.example:8443".into(), "*.corp.example".into()]).unwrap();
    let p = r.egress_policy();
    let harbor = url::Url::parse("https://harbor.corp.example:8443/v2/").unwrap();
    assert!(p.allows_url(&harbor, egress::Trust::Guarded).is_ok());
    let debug = format!("{p:?}");
    assert!(debug.contains("harbor.corp.example"), "{debug}");
    assert!(!debug.contains("ghcr.io"), "built-in names must not be trusted with internal addresses: {debug}");
}

#[test]
fn only_registries_the_operator_named_exactly_are_trusted() {
    use egress::Trust::{Guarded, Named};
    let mut ups = BTreeMap::new();
    ups.insert(name("reg.test"), vec![url::Url::parse("http://10.0.0.5:5000").unwrap()]);
    let r = Registries::new(ups, &["registry.gitlab.corp".into(), "*.corp.example".into(), "ghcr.io".into()]).unwrap();
    assert_eq!(r.trust(&name("reg.test")), Named, "--upstream key");
    assert_eq!(r.trust(&name("registry.gitlab.corp")), Named, "exact --allow-registry");
    assert_eq!(r.trust(&name("ghcr.io")), Named, "a built-in name the operator also listed exactly");
    assert_eq!(r.trust(&name("a.corp.example")), Guarded, "wildcard: the client picked the name");
    assert_eq!(r.trust(&name("x.azurecr.io")), Guarded, "built-in wildcard");
    assert_eq!(r.trust(&name("docker.io")), Guarded, "built-in");
    assert_eq!(r.trust(&name("quay.io")), Guarded, "built-in");
}

#[test]
fn a_wildcard_registrys_internal_realm_is_still_refused() {
    // The GitLab case: the realm lives on another internal address than the registry.
    let realm = url::Url::parse("https://10.0.0.7/jwt/auth").unwrap();
    let r = Registries::new(BTreeMap::new(), &["registry.gitlab.corp".into(), "*.corp.example".into()]).unwrap();
    let p = r.egress_policy();
    assert!(p.allows_url(&realm, r.trust(&name("registry.gitlab.corp"))).is_ok());
    for wild in ["registry.a.corp.example", "myreg.azurecr.io", "ghcr.io"] {
        let why = p.allows_url(&realm, r.trust(&name(wild))).unwrap_err();
        assert!(why.contains("internal address that was not configured"), "{wild}: {why}");
    }
    // Cloud metadata stays out of reach even for a registry the operator named.
    let metadata = url::Url::parse("http://169.254.169.254/latest/meta-data/iam").unwrap();
    assert!(p.allows_url(&metadata, r.trust(&name("registry.gitlab.corp"))).is_err());
}

#[test]
fn metric_labels_name_configured_registries_and_the_pattern_for_invented_ones() {
    let mut ups = BTreeMap::new();
    ups.insert(name("myreg.test"), vec![url::Url::parse("http://127.0.0.1:5000").unwrap()]);
    let allowed = ["*.corp.example".into(), "*.b.corp.example".into(), "harbor.corp.example".into()];
    let r = Registries::new(ups, &allowed).unwrap();
    for (n, label) in [
        ("myreg.test", "myreg.test"),
        ("docker.io", "docker.io"),
        ("ghcr.io", "ghcr.io"),
        ("harbor.corp.example", "harbor.corp.example"),
        ("x.azurecr.io", "*.azurecr.io"),
        ("a.corp.example", "*.corp.example"),
        ("a.b.corp.example", "*.b.corp.example"),
        ("evil.example", "other"),
        ("127.0.0.1:22", "other"),
    ] {
        assert_eq!(r.label(&name(n)), label, "{n}");
    }
    let ep = |s: &str| url::Url::parse(s).unwrap();
    assert_eq!(r.endpoint_label(&name("myreg.test"), &ep("http://127.0.0.1:5000")), "http://127.0.0.1:5000/");
    assert_eq!(
        r.endpoint_label(&name("docker.io"), &ep("https://registry-1.docker.io")),
        "https://registry-1.docker.io/"
    );
    assert_eq!(r.endpoint_label(&name("r1.azurecr.io"), &ep("https://r1.azurecr.io")), "*.azurecr.io");

    // However many names clients invent, the label values are the few the operator wrote.
    let labels: std::collections::HashSet<String> =
        (0..100_000).map(|i| r.label(&name(&format!("r{i}.azurecr.io")))).collect();
    assert_eq!(labels.len(), 1);
}
