//! `--redirect-blobs`: warm blob GETs answered with `307` to a signed URL of the object store, which
//! then sends the bytes. Real components on loopback: moto as the store (behind a recording relay, so
//! the test sees what clients fetched from it), docker-registry as the origin, containerd and skopeo
//! as clients, the ocicache binary as the replica.

mod support;

use support::*;

/// alice:pw
const ALICE: &str = "Basic YWxpY2U6cHc=";
/// mallory:guess
const MALLORY: &str = "Basic bWFsbG9yeTpndWVzcw==";

/// moto behind a relay that records what each connection sent: signed URLs point at the relay, so a
/// request carrying `X-Amz-Signature` in its query came from a client that followed a redirect
/// (ocicache itself signs its own requests in the `Authorization` header).
struct Store {
    moto: Moto,
    relay: Relay,
}

impl Store {
    fn start(bucket: &str) -> Store {
        let moto = Moto::start();
        moto.create_bucket(bucket);
        let relay = Relay::start(moto.addr().parse().unwrap());
        Store { moto, relay }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.moto.env();
        for (k, v) in env.iter_mut() {
            if *k == "AWS_ENDPOINT_URL_S3" {
                *v = format!("http://127.0.0.1:{}", self.relay.port);
            }
        }
        env
    }

    /// Requests that fetched blob `digest` through a signed URL.
    fn signed_fetches(&self, digest: &str) -> usize {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.relay
            .sent()
            .iter()
            .flat_map(|conn| {
                conn.split("\r\n").filter(|l| l.starts_with("get ")).map(str::to_owned).collect::<Vec<_>>()
            })
            .filter(|line| line.contains(hex) && line.contains("x-amz-signature="))
            .count()
    }

    fn has_blob(&self, bucket: &str, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.moto.keys(bucket).iter().any(|k| k.starts_with("blobs/sha256/") && k.ends_with(hex))
    }
}

fn replica(store: &Store, bucket: &str, dir: &std::path::Path, args: &[&str]) -> CacheProcess {
    let env = store.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = vec!["-b", bucket, "-d", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    CacheProcess::spawn_env(&all, &env)
}

fn metric(port: u16, sample: &str) -> f64 {
    let r = http_request(&format!("127.0.0.1:{port}"), "GET", "/metrics", &[]);
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn redirects(port: u16) -> f64 {
    metric(port, "ocicache_blob_redirects_total")
}

/// Follows a `Location` on loopback with the raw client, sending only `headers` (no credentials).
fn follow(location: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let url = url::Url::parse(location).unwrap();
    assert_eq!(url.host_str(), Some("127.0.0.1"), "{location}");
    let addr = format!("127.0.0.1:{}", url.port().unwrap());
    let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    http_request(&addr, "GET", &path, headers)
}

/// containerd and skopeo pull an image the cache holds in the bucket: every blob GET is a `307`,
/// each client fetches the blobs from the store itself (signed URLs seen at the store), and gets
/// the right bytes. A cold pull before that is streamed as usual (nothing to redirect to yet).
#[test]
fn containerd_and_skopeo_pull_warm_blobs_from_the_store_through_redirects() {
    let store = Store::start("cache");
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        dir.path(),
        "1",
        "amd64",
        &[LayerSpec::file("etc/a", "a\n"), LayerSpec::file("data/b.bin", random_bytes(3 << 20, 31))],
    );
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let cache_dir = tempfile::tempdir().unwrap();
    let r = replica(
        &store,
        "cache",
        cache_dir.path(),
        &["--upstream", &format!("one.test={}", upstream.url()), "--redirect-blobs"],
    );
    let src = format!("docker://127.0.0.1:{}/one.test/test/img:1", r.port);

    // Cold: fetched from the origin and streamed, not redirected.
    let cold = tempfile::tempdir().unwrap();
    assert_success(&skopeo_copy_to_dir(&src, cold.path(), &[]), "cold pull");
    assert_eq!(redirects(r.port), 0.0, "a cold pull was redirected");
    poll_until(DEFAULT_TIMEOUT, "the blobs to reach the bucket", || {
        img.blob_digests().iter().all(|d| store.has_blob("cache", d))
    });

    // skopeo, warm: every blob from the store.
    let mark = upstream.mark();
    let warm = tempfile::tempdir().unwrap();
    assert_success(&skopeo_copy_to_dir(&src, warm.path(), &[]), "warm pull with skopeo");
    for (d, bytes) in img.layer_digests.iter().zip(&img.layer_blobs) {
        assert_eq!(&std::fs::read(warm.path().join(d.strip_prefix("sha256:").unwrap())).unwrap(), bytes);
    }
    let blobs = img.blob_digests().len() as f64;
    assert_eq!(redirects(r.port), blobs, "skopeo's blob GETs were not all redirected");
    for d in img.blob_digests() {
        assert_eq!(store.signed_fetches(&d), 1, "skopeo did not fetch {d} from the store");
    }

    // containerd, warm: the same.
    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&format!("127.0.0.1:{}", r.port));
    ctrd.block_fallback("one.test");
    ctrd.pull_ok("one.test/test/img:1", &[]);
    assert_eq!(redirects(r.port), 2.0 * blobs, "containerd's blob GETs were not all redirected");
    for d in img.blob_digests() {
        assert_eq!(store.signed_fetches(&d), 2, "containerd did not fetch {d} from the store");
    }
    let big = &img.layer_digests[1];
    let got = run_output(ctrd.ctr().args(["content", "get", big]));
    assert_success(&got, "ctr content get");
    assert!(got.stdout == img.layer_blobs[1], "containerd stored other bytes for {big}");
    let asked = upstream.requests_since(mark);
    assert!(!asked.iter().any(|r| r.path.contains("/blobs/")), "warm pulls reached the origin: {asked:?}");
}

/// A `Range` GET is redirected too and the signed URL serves exactly that range; a HEAD is answered
/// by the cache; the URL lives as long as configured; a digest the store does not hold, a client
/// that is skipped by User-Agent, and an object this replica has not verified yet get no redirect.
#[test]
fn ranges_follow_to_the_right_bytes_and_only_verified_blobs_in_the_store_are_redirected() {
    let store = Store::start("cache");
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("data.bin", random_bytes(2 << 20, 32))]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let up = format!("one.test={}", upstream.url());
    let args =
        ["--upstream", up.as_str(), "--redirect-blobs=2m", "--redirect-blobs-skip-user-agent", "^legacy-client/"];
    let d1 = tempfile::tempdir().unwrap();
    let r1 = replica(&store, "cache", d1.path(), &args);
    let addr1 = format!("127.0.0.1:{}", r1.port);
    let (layer, bytes) = (&img.layer_digests[0], &img.layer_blobs[0]);
    let path = format!("/v2/one.test/test/img/blobs/{layer}");

    let cold = http_request(&addr1, "GET", &path, &[]);
    assert_eq!((cold.status, &cold.body), (200, bytes));
    poll_until(DEFAULT_TIMEOUT, "the layer in the bucket", || store.has_blob("cache", layer));

    let r = http_request(&addr1, "GET", &path, &[("Range", "bytes=1000-1999")]);
    assert_eq!(r.status, 307, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("docker-content-digest"), Some(layer.as_str()));
    assert_eq!(r.header("content-length"), Some("0"));
    let location = r.header("location").expect("Location").to_owned();
    assert!(location.contains("X-Amz-Expires=120"), "the URL must live --redirect-blobs=2m: {location}");
    let part = follow(&location, &[("Range", "bytes=1000-1999")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &bytes[1000..2000]);
    let whole = follow(&location, &[]);
    assert_eq!((whole.status, &whole.body), (200, bytes));

    // HEAD: answered here, with the size, never a redirect.
    let head = http_request(&addr1, "HEAD", &path, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(bytes.len().to_string().as_str()));
    assert!(head.header("location").is_none());

    // A client that cannot follow redirects gets the bytes from ocicache.
    let legacy = http_request(&addr1, "GET", &path, &[("User-Agent", "legacy-client/1.0")]);
    assert_eq!((legacy.status, &legacy.body), (200, bytes));
    assert!(legacy.header("location").is_none());

    // Not in the store: the origin's answer, never a URL for it.
    let missing = format!("sha256:{}", "ab".repeat(32));
    let r = http_request(&addr1, "GET", &format!("/v2/one.test/test/img/blobs/{missing}"), &[]);
    assert_eq!(r.status, 404);
    assert!(r.header("location").is_none());
    assert_eq!(store.signed_fetches(&missing), 0);

    // A second replica has not seen the object's bytes: its first GET streams them (verifying the
    // bucket's copy), the next is redirected.
    let d2 = tempfile::tempdir().unwrap();
    let r2 = replica(&store, "cache", d2.path(), &args);
    let addr2 = format!("127.0.0.1:{}", r2.port);
    let mark = upstream.mark();
    let first = http_request(&addr2, "GET", &path, &[]);
    assert_eq!((first.status, &first.body), (200, bytes));
    let second = http_request(&addr2, "GET", &path, &[]);
    assert_eq!(second.status, 307);
    assert_eq!(follow(second.header("location").unwrap(), &[]).body, *bytes);
    assert!(upstream.requests_since(mark).is_empty(), "replica 2 asked the origin");
    assert_eq!(redirects(r1.port), 1.0);
    assert_eq!(redirects(r2.port), 1.0);
}

/// Private content (fetched with a client's own credentials) is confirmed with the origin before a
/// URL is given: a client without access gets the origin's 401 and no Location; an allowed client
/// is redirected.
#[test]
fn private_blobs_are_refused_before_any_redirect() {
    let store = Store::start("cache");
    let origin = Registry::start_with_htpasswd(&[("alice", "pw")]);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("secret.bin", random_bytes(500_000, 33))]);
    push(&img.layout, "1", &format!("{}/priv/img:1", origin.addr()), Format::Oci, Some(("alice", "pw")));
    let cache_dir = tempfile::tempdir().unwrap();
    let r = replica(
        &store,
        "cache",
        cache_dir.path(),
        &["--upstream", &format!("auth.test={}", origin.url()), "--redirect-blobs"],
    );
    let addr = format!("127.0.0.1:{}", r.port);
    let blob = |d: &str| format!("/v2/auth.test/priv/img/blobs/{d}");

    // Alice fetches it once with her credentials: stored private, uploaded.
    for (d, bytes) in img.layer_digests.iter().zip(&img.layer_blobs) {
        let got = http_request(&addr, "GET", &blob(d), &[("Authorization", ALICE)]);
        assert_eq!((got.status, &got.body), (200, bytes));
    }
    poll_until(DEFAULT_TIMEOUT, "the private blob and its marker in the bucket", || {
        let keys = store.moto.keys("cache");
        store.has_blob("cache", &img.layer_digests[0]) && keys.iter().any(|k| k.starts_with("private/"))
    });

    let layer = &img.layer_digests[0];
    for auth in [None, Some(MALLORY)] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = http_request(&addr, "GET", &blob(layer), &headers);
        assert_eq!(r.status, 401, "{auth:?}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.header("location").is_none(), "{auth:?} got a URL of private content");
        let ranged = [headers.clone(), vec![("Range", "bytes=0-99")]].concat();
        let r = http_request(&addr, "GET", &blob(layer), &ranged);
        assert_eq!(r.status, 401, "{auth:?} with a Range");
        assert!(r.header("location").is_none());
    }
    assert_eq!(redirects(r.port), 0.0);
    assert_eq!(store.signed_fetches(layer), 0);

    let allowed = http_request(&addr, "GET", &blob(layer), &[("Authorization", ALICE)]);
    assert_eq!(allowed.status, 307);
    let got = follow(allowed.header("location").unwrap(), &[]);
    assert_eq!(got.body, img.layer_blobs[0]);
    assert_eq!(redirects(r.port), 1.0);
}
