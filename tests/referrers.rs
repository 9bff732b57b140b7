//! The OCI 1.1 referrers API through the cache (signatures, SBOMs, attestations of an image), which
//! admission controllers ask before a pod starts: answered from the referrers tag schema of a real
//! registry that has no referrers API, from an origin's API with pagination, filtered by
//! `artifactType`, and served stale when the origin is down.

mod support;

use serde_json::{json, Value};
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";

fn listed(r: &HttpResponse) -> Vec<(String, String)> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let mut out: Vec<(String, String)> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["digest"].as_str().unwrap().to_owned(), d["artifactType"].as_str().unwrap_or("").to_owned()))
        .collect();
    out.sort();
    out
}

/// Pushes an artifact manifest (artifactType, an empty config, one layer) whose subject is
/// `subject`; returns its descriptor as a referrers list carries it.
fn push_artifact(addr: &str, repo: &str, subject: (&str, usize), artifact_type: &str, payload: &[u8]) -> Value {
    push_artifact_at(addr, repo, None, subject, artifact_type, payload)
}

/// [`push_artifact`], also tagged `tag` when given (cosign's `sha256-<hex>.sig` scheme). The
/// descriptor carries the layer's digest under `"layer"` for the test to fetch.
fn push_artifact_at(
    addr: &str,
    repo: &str,
    tag: Option<&str>,
    subject: (&str, usize),
    artifact_type: &str,
    payload: &[u8],
) -> Value {
    let config = push_blob_raw(addr, repo, b"{}");
    let layer = push_blob_raw(addr, repo, payload);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    push_manifest_raw(addr, repo, tag.unwrap_or(&digest), OCI_MANIFEST, &manifest);
    json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(), "artifactType": artifact_type,
        "layer": layer})
}

#[test]
fn referrers_come_from_the_tag_schema_of_a_registry_without_the_api_and_survive_its_outage() {
    let mut upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("etc/id", "referrers\n")]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let (subject, _, subject_bytes) = manifest_digest_at(&upstream.addr(), "test/img", "1", OCI_MANIFEST);

    // What cosign and oras do against a registry without the referrers API: push the artifacts,
    // then the index of them under the tag `sha256-<hex>`.
    let sig = push_artifact(&upstream.addr(), "test/img", (&subject, subject_bytes.len()), SIG, b"signature");
    let sbom = push_artifact(&upstream.addr(), "test/img", (&subject, subject_bytes.len()), SBOM, b"{\"spdx\":1}");
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sig, sbom]})).unwrap();
    let schema_tag = subject.replace(':', "-");
    push_manifest_raw(&upstream.addr(), "test/img", &schema_tag, OCI_INDEX, &index);
    let direct = http_request(&upstream.addr(), "GET", &format!("/v2/test/img/referrers/{subject}"), &[]);
    assert_eq!(direct.status, 404, "this registry has no referrers API, so the fallback is what is tested");

    // TTL 0: every request asks the origin, so only stale-if-error can answer once it is down.
    let cache = Cache::start(&["--upstream", &format!("one.test={}", upstream.url()), "--tag-ttl", "0"]);
    let path = format!("/v2/one.test/test/img/referrers/{subject}");
    let both = {
        let mut v = vec![
            (sig["digest"].as_str().unwrap().to_owned(), SIG.to_owned()),
            (sbom["digest"].as_str().unwrap().to_owned(), SBOM.to_owned()),
        ];
        v.sort();
        v
    };
    let r = http_request(&cache.addr(), "GET", &path, &[]);
    assert_eq!(listed(&r), both);
    assert_eq!(r.header("oci-filters-applied"), None);

    let r = http_request(&cache.addr(), "GET", &format!("{path}?artifactType=application%2Fspdx%2Bjson"), &[]);
    assert_eq!(listed(&r), vec![(sbom["digest"].as_str().unwrap().to_owned(), SBOM.to_owned())]);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));

    // containerd's routing by `?ns=` reaches the same list.
    let r = http_request(&cache.addr(), "GET", &format!("/v2/test/img/referrers/{subject}?ns=one.test"), &[]);
    assert_eq!(listed(&r), both);

    // A subject nothing refers to: an empty list, not an error.
    let lonely = sha256_digest(b"nothing refers to this");
    let r = http_request(&cache.addr(), "GET", &format!("/v2/one.test/test/img/referrers/{lonely}"), &[]);
    assert!(listed(&r).is_empty());

    // The signature manifest the list names is ordinary content, pulled through the cache too.
    let sig_digest = sig["digest"].as_str().unwrap();
    let m = http_request(
        &cache.addr(),
        "GET",
        &format!("/v2/one.test/test/img/manifests/{sig_digest}"),
        &[("Accept", OCI_MANIFEST)],
    );
    assert_eq!(m.status, 200);

    upstream.stop();
    let r = http_request(&cache.addr(), "GET", &path, &[]);
    assert_eq!(listed(&r), both, "served from the cache while the origin is down");
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")), "{:?}", r.headers);
    let m = http_request(
        &cache.addr(),
        "GET",
        &format!("/v2/one.test/test/img/manifests/{sig_digest}"),
        &[("Accept", OCI_MANIFEST)],
    );
    assert_eq!(m.status, 200, "the signature itself is served from the cache too");
    // Nothing was listed for this subject before the outage: the failure is passed on.
    let never = sha256_digest(b"never asked");
    let r = http_request(&cache.addr(), "GET", &format!("/v2/one.test/test/img/referrers/{never}"), &[]);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
}

/// A descriptor as a referrers index lists it (without the test's own `"layer"` note).
fn descriptor_of(artifact: &Value) -> Value {
    let mut d = artifact.clone();
    d.as_object_mut().unwrap().remove("layer");
    d
}

#[test]
fn warm_with_referrers_keeps_signatures_and_cosign_tags_for_an_outage() {
    let mut upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("etc/id", "signed\n")]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let (subject, _, subject_bytes) = manifest_digest_at(&upstream.addr(), "test/img", "1", OCI_MANIFEST);
    let subject_ref = (subject.as_str(), subject_bytes.len());
    let sig = push_artifact(&upstream.addr(), "test/img", subject_ref, SIG, b"referrers-signature");
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor_of(&sig)]}))
            .unwrap();
    push_manifest_raw(&upstream.addr(), "test/img", &subject.replace(':', "-"), OCI_INDEX, &index);
    // cosign's own scheme: the signature under the tag `sha256-<hex>.sig`.
    let cosign_tag = format!("{}.sig", subject.replace(':', "-"));
    let cosign =
        push_artifact_at(&upstream.addr(), "test/img", Some(&cosign_tag), subject_ref, SIG, b"cosign-signature");

    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let one = format!("one.test={}", upstream.url());
    let out = run_output(ocicache_bin().arg("--cache-dir").arg(&cache_dir).args([
        "--upstream",
        &one,
        "warm",
        "--with-referrers",
        "one.test/test/img:1",
    ]));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "warm failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("2 referrer(s)"), "{stderr}");

    upstream.stop();
    let cache = Cache::start_in(&cache_dir, &["--upstream", &one, "--tag-ttl", "0"]);
    let r = http_request(&cache.addr(), "GET", &format!("/v2/one.test/test/img/referrers/{subject}"), &[]);
    assert_eq!(listed(&r), vec![(sig["digest"].as_str().unwrap().to_owned(), SIG.to_owned())]);
    let get = |path: String, accept: &str| http_request(&cache.addr(), "GET", &path, &[("Accept", accept)]);
    for artifact in [&sig, &cosign] {
        let digest = artifact["digest"].as_str().unwrap();
        let m = get(format!("/v2/one.test/test/img/manifests/{digest}"), OCI_MANIFEST);
        assert_eq!(m.status, 200, "signature manifest {digest} while the origin is down");
        let layer = artifact["layer"].as_str().unwrap();
        let b = get(format!("/v2/one.test/test/img/blobs/{layer}"), "*/*");
        assert_eq!(b.status, 200, "signature blob {layer} while the origin is down");
        assert_eq!(sha256_digest(&b.body), layer);
    }
    let t = get(format!("/v2/one.test/test/img/manifests/{cosign_tag}"), OCI_MANIFEST);
    assert_eq!(t.status, 200, "cosign's tag while the origin is down");
    assert_eq!(sha256_digest(&t.body), cosign["digest"].as_str().unwrap());
}

fn descriptor(n: u8, artifact_type: &str) -> Value {
    json!({"mediaType": OCI_MANIFEST, "digest": sha256_digest(&[n]), "size": 100 + n as u64, "artifactType": artifact_type})
}

#[test]
fn referrers_api_pages_are_merged_cached_for_the_tag_ttl_and_served_stale() {
    // The in-process fake origin stands in for a registry with the referrers API (distribution 2.x,
    // the registry installable here, has none) and answers 503 on demand.
    let origin = FakeOrigin::start();
    let subject = sha256_digest(b"subject manifest");
    let pages = vec![vec![descriptor(1, SIG), descriptor(2, SBOM)], vec![descriptor(3, SIG)]];
    origin.set_referrers(&subject, pages, Fault::None);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let mut cache = Cache::start_in(&dir, &["--upstream", &format!("f.test={}", origin.url()), "--tag-ttl", "300"]);
    let path = format!("/v2/f.test/app/referrers/{subject}");

    let r = http_request(&cache.addr(), "GET", &path, &[]);
    let all = listed(&r);
    assert_eq!(all.len(), 3, "both pages, merged: {all:?}");
    assert_eq!(origin.count("GET", "/referrers/"), 2, "one request per page");

    let r = http_request(&cache.addr(), "GET", &format!("{path}?artifactType={}", SIG.replace('+', "%2B")), &[]);
    let sigs = listed(&r);
    assert_eq!(sigs.len(), 2);
    assert!(sigs.iter().all(|(_, t)| t == SIG));
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(origin.count("GET", "/referrers/"), 2, "within the tag TTL the origin is not asked again");

    // Past the TTL (a second cache on the same directory with TTL 0) the origin is asked; when it
    // fails, the list it gave last is served, marked stale.
    cache.stop();
    // A tiny endpoint backoff: this test is about the list, not about how soon a failed origin is
    // asked again (tests/outage.rs covers that).
    let upstream = format!("f.test={}", origin.url());
    let cache = Cache::start_in(&dir, &["--upstream", &upstream, "--tag-ttl", "0", "--endpoint-backoff", "1ms"]);
    origin.set_referrers(&subject, Vec::new(), Fault::Status(503, Vec::new()));
    let r = http_request(&cache.addr(), "GET", &path, &[]);
    assert_eq!(listed(&r), all);
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));

    // The origin is back with a new list: it is used at once.
    origin.set_referrers(&subject, vec![vec![descriptor(4, SIG)]], Fault::None);
    let r = http_request(&cache.addr(), "GET", &path, &[]);
    assert_eq!(listed(&r).len(), 1);
    assert_eq!(r.header("warning"), None);
}

#[test]
fn a_bad_subject_digest_is_refused_with_an_oci_error() {
    let cache = Cache::start(&["--upstream", "f.test=http://127.0.0.1:9"]);
    let r = http_request(&cache.addr(), "GET", "/v2/f.test/app/referrers/sha256:nothex", &[]);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("DIGEST_INVALID"));
}
