//! Object storage shared by replicas: a real S3-compatible server (moto) on loopback, real
//! docker-registry upstreams, the ocicache binary as separate replica processes.

mod support;

use support::*;

fn replica(moto: &Moto, bucket: &str, dir: &std::path::Path, upstream: &str) -> CacheProcess {
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = dir.to_str().unwrap();
    CacheProcess::spawn_env(&["-b", bucket, "-d", d, "--upstream", upstream], &env)
}

fn has_blob(keys: &[String], digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    keys.iter().any(|k| k.starts_with("blobs/sha256/") && k.ends_with(hex))
}

/// Pulls `one.test/<repo>` through the replica on `port` with skopeo and waits until every blob of
/// `img` is in `bucket`.
fn pull_into_bucket(moto: &Moto, bucket: &str, port: u16, repo: &str, img: &BuiltImage) {
    let out = tempfile::tempdir().unwrap();
    let src = format!("docker://127.0.0.1:{port}/one.test/{repo}");
    assert_success(&skopeo_copy_to_dir(&src, out.path(), &[]), &format!("pull {repo} via :{port}"));
    poll_until(DEFAULT_TIMEOUT, "the blobs to reach the bucket", || {
        let keys = moto.keys(bucket);
        img.blob_digests().iter().all(|d| has_blob(&keys, d))
    });
}

#[test]
fn a_second_replica_serves_what_the_first_cached_without_asking_the_origin() {
    let moto = Moto::start();
    moto.create_bucket("cache");
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        dir.path(),
        "1",
        "amd64",
        &[LayerSpec::file("a", random_bytes(200_000, 1)), LayerSpec::file("b", random_bytes(12_000_000, 2))],
    );
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let up = format!("one.test={}", upstream.url());

    let d1 = tempfile::tempdir().unwrap();
    let r1 = replica(&moto, "cache", d1.path(), &up);
    pull_into_bucket(&moto, "cache", r1.port, "test/img:1", &img);
    assert!(moto.keys("cache").iter().any(|k| k.starts_with("manifests/")), "manifests live in the bucket too");

    let mark = upstream.mark();
    let d2 = tempfile::tempdir().unwrap();
    let r2 = replica(&moto, "cache", d2.path(), &up);
    let out2 = tempfile::tempdir().unwrap();
    let src = format!("docker://127.0.0.1:{}/one.test/test/img:1", r2.port);
    assert_success(&skopeo_copy_to_dir(&src, out2.path(), &[]), "pull via replica 2");
    let layer = img.layer_digests[1].strip_prefix("sha256:").unwrap();
    assert_eq!(std::fs::read(out2.path().join(layer)).unwrap(), img.layer_blobs[1]);
    let asked = upstream.requests_since(mark);
    assert!(asked.is_empty(), "replica 2 asked the origin: {asked:?}");
    // Ranges are served from the bucket.
    let r = http_request(
        &format!("127.0.0.1:{}", r2.port),
        "GET",
        &format!("/v2/one.test/test/img/blobs/{}", img.layer_digests[1]),
        &[("Range", "bytes=100-199")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &img.layer_blobs[1][100..200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_fill_leaves_nothing_that_is_served_and_the_next_pull_works() {
    use futures_util::StreamExt;
    let moto = Moto::start();
    moto.create_bucket("cache");
    let origin = FakeOrigin::start();
    let data = random_bytes(8 << 20, 3);
    // Fault: the origin holds mid-blob, so the replica is killed while filling.
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(4 << 20));
    let up = format!("fake.test={}", origin.url());
    let d1 = tempfile::tempdir().unwrap();
    let mut r1 = replica(&moto, "cache", d1.path(), &up);
    let url = |port: u16| format!("http://127.0.0.1:{port}/v2/fake.test/app/blobs/{digest}");
    let resp = reqwest::get(url(r1.port)).await.unwrap();
    let mut body = resp.bytes_stream();
    let mut received = body.next().await.unwrap().unwrap().len();
    r1.child.kill().unwrap();
    r1.child.wait().unwrap();
    while let Some(Ok(c)) = body.next().await {
        received += c.len();
    }
    assert!(received < data.len(), "the client of the killed replica must not get a whole blob");
    assert!(!has_blob(&moto.keys("cache"), &digest), "a killed fill left an object");

    origin.release();
    let d2 = tempfile::tempdir().unwrap();
    let r2 = replica(&moto, "cache", d2.path(), &up);
    let got = reqwest::get(url(r2.port)).await.unwrap().bytes().await.unwrap();
    assert!(got == data, "wrong bytes after the restart");
    poll_until(DEFAULT_TIMEOUT, "the verified blob to reach the bucket", || has_blob(&moto.keys("cache"), &digest));
}

#[test]
fn a_missing_bucket_fails_the_start_with_a_clear_message() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = ocicache_bin();
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    let out = run_output(cmd.args([
        "-b",
        "no-such-bucket",
        "-d",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1",
        "-p",
        "0",
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot list the bucket") && err.contains("no-such-bucket"), "{err}");
}

#[test]
fn replicas_can_share_a_directory_as_their_store() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("a", random_bytes(300_000, 4))]);
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let shared = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", shared.path().display());
    let up = format!("one.test={}", upstream.url());
    let start = |d: &std::path::Path| {
        CacheProcess::spawn(&["--storage", &storage, "-d", d.to_str().unwrap(), "--upstream", &up])
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r1 = start(d1.path());
    let out = tempfile::tempdir().unwrap();
    let src = |port: u16| format!("docker://127.0.0.1:{port}/one.test/test/img:1");
    assert_success(&skopeo_copy_to_dir(&src(r1.port), out.path(), &[]), "pull via replica 1");
    let layer = img.layer_digests[0].strip_prefix("sha256:").unwrap().to_owned();
    poll_until(DEFAULT_TIMEOUT, "the layer in the shared store", || {
        files_under(&shared.path().join("blobs")).iter().any(|p| p.ends_with(&layer))
    });
    let mark = upstream.mark();
    let r2 = start(d2.path());
    let out2 = tempfile::tempdir().unwrap();
    let src = format!("docker://127.0.0.1:{}/one.test/test/img:1", r2.port);
    assert_success(&skopeo_copy_to_dir(&src, out2.path(), &[]), "pull via replica 2");
    assert!(upstream.requests_since(mark).is_empty());
}

/// The tiered store: a replica whose disk tier is empty serves the bucket's copy and keeps it on its
/// disk; bytes in the bucket that do not match their digest (another writer, a bad upload) are never
/// completed to a client: the response is cut, the object removed, the metric counted, and the next
/// request fetches the blob from the origin again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_hits_are_copied_to_disk_and_corrupt_objects_are_cut_removed_and_fetched_again() {
    let moto = Moto::start();
    moto.create_bucket("cache");
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(
        dir.path(),
        "1",
        "amd64",
        &[LayerSpec::file("good", random_bytes(3 << 20, 21)), LayerSpec::file("bad", random_bytes(3 << 20, 22))],
    );
    push(&img.layout, "1", &format!("{}/test/img:1", upstream.addr()), Format::Oci, None);
    let up = format!("one.test={}", upstream.url());
    let d1 = tempfile::tempdir().unwrap();
    let r1 = replica(&moto, "cache", d1.path(), &up);
    pull_into_bucket(&moto, "cache", r1.port, "test/img:1", &img);
    // Someone overwrites one layer in the bucket with other bytes of the same length.
    let (ok_digest, bad_digest) = (img.layer_digests[0].clone(), img.layer_digests[1].clone());
    let hex = bad_digest.strip_prefix("sha256:").unwrap();
    let key = format!("/cache/blobs/sha256/{}/{hex}", &hex[..2]);
    let mut forged = img.layer_blobs[1].clone();
    forged[1000] ^= 0xff;
    let put = http_send(&moto.addr(), "PUT", &key, &[], Some(&forged));
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));

    let d2 = tempfile::tempdir().unwrap();
    let r2 = replica(&moto, "cache", d2.path(), &up);
    let addr2 = format!("127.0.0.1:{}", r2.port);
    let url = |d: &str| format!("http://{addr2}/v2/one.test/test/img/blobs/{d}");
    let stored_on_r2 = |d: &str| {
        let hex = d.strip_prefix("sha256:").unwrap().to_owned();
        files_under(&d2.path().join("blobs")).iter().any(|p| p.ends_with(&hex))
    };

    // A good bucket object: served without the origin, then kept on the replica's disk.
    let mark = upstream.mark();
    let body = reqwest::get(url(&ok_digest)).await.unwrap().bytes().await.unwrap();
    assert!(body == img.layer_blobs[0], "bucket hit served wrong bytes");
    assert!(upstream.requests_since(mark).is_empty(), "a bucket hit asked the origin");
    poll_until(DEFAULT_TIMEOUT, "the bucket hit to be copied to the disk tier", || stored_on_r2(&ok_digest));

    // The forged object: the response is cut, never complete.
    let resp = reqwest::get(url(&bad_digest)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await;
    assert!(
        got.as_ref().map_or(true, |b| b.len() < forged.len()),
        "a client received a complete body whose bytes fail the digest"
    );
    poll_until(DEFAULT_TIMEOUT, "the corrupt object to be removed", || !has_blob(&moto.keys("cache"), &bad_digest));
    let metrics = http_request(&addr2, "GET", "/metrics", &[]);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("ocicache_store_corrupt_total{tier=\"bucket\"} 1"), "{text}");
    assert!(!stored_on_r2(&bad_digest), "corrupt bytes reached the disk tier");

    // The next request fetches it from the origin, verified, and stores it again.
    let mark = upstream.mark();
    let body = reqwest::get(url(&bad_digest)).await.unwrap().bytes().await.unwrap();
    assert!(body == img.layer_blobs[1], "wrong bytes after the corrupt object was removed");
    let asked = upstream.requests_since(mark);
    assert_eq!(asked.iter().filter(|r| r.method == "GET" && r.path.contains("/blobs/")).count(), 1, "{asked:?}");
    poll_until(DEFAULT_TIMEOUT, "the good copy in the bucket again", || has_blob(&moto.keys("cache"), &bad_digest));
}

/// The object store goes down after the start and comes back (a fresh, empty server on the same
/// endpoint): meanwhile the disk tier serves what it has without the origin, a cold image comes from
/// the origin, the replica stays ready, and once the store is back it is used again at once, with no
/// restart. Each pull during the outage must finish well within the deadline: a bucket that refuses
/// connections is a miss, not a wait.
#[test]
fn a_bucket_outage_is_a_miss_and_the_bucket_is_used_again_as_soon_as_it_is_back() {
    let mut moto = Moto::start();
    moto.create_bucket("cache");
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let imgs: Vec<BuiltImage> = (0..3)
        .map(|i| {
            let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("a", random_bytes(300_000, 30 + i))]);
            push(&img.layout, "1", &format!("{}/test/o{i}:1", upstream.addr()), Format::Oci, None);
            img
        })
        .collect();
    let up = format!("one.test={}", upstream.url());
    let d1 = tempfile::tempdir().unwrap();
    let r1 = replica(&moto, "cache", d1.path(), &up);
    pull_into_bucket(&moto, "cache", r1.port, "test/o0:1", &imgs[0]);

    let port = moto.port;
    moto.stop();
    let pull = |repo: &str| {
        let out = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let src = format!("docker://127.0.0.1:{}/one.test/{repo}", r1.port);
        assert_success(&skopeo_copy_to_dir(&src, out.path(), &[]), &format!("pull {repo} with the bucket down"));
        eprintln!("pull of {repo} with the bucket down: {:?}", started.elapsed());
        started.elapsed()
    };
    let mark = upstream.mark();
    let took = pull("test/o0:1");
    let blob_gets = upstream.requests_since(mark).iter().filter(|r| r.path.contains("/blobs/")).count();
    assert_eq!(blob_gets, 0, "the disk tier served the cached image");
    assert!(took < std::time::Duration::from_secs(10), "a cached pull took {took:?} with the bucket down");
    let took = pull("test/o1:1");
    assert!(took < std::time::Duration::from_secs(10), "a cold pull took {took:?} with the bucket down");
    let ready = http_request(&format!("127.0.0.1:{}", r1.port), "GET", "/readyz", &[]);
    assert_eq!(ready.status, 200, "the disk tier still works: ready");

    let moto = Moto::start_on(port);
    moto.create_bucket("cache");
    pull_into_bucket(&moto, "cache", r1.port, "test/o2:1", &imgs[2]);
}
