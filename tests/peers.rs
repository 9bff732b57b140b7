//! Cluster-wide single flight: replicas sharing one bucket download each blob from the origin once
//! between them, and stream it to each other while it arrives.
//!
//! Real components on loopback: the ocicache binary as separate replica processes on distinct
//! ports, each with `--advertise-url http://127.0.0.1:<its port>` and one `--peer-secret-file`, on
//! one bucket of a real S3 server (moto, which honours `If-None-Match: *` and `If-Match` on
//! PutObject). The origin is the in-process `FakeOrigin` where a fault is needed — `HoldAt` keeps a
//! download running mid-blob, so clients overlap with it and its owner can be killed or stopped in
//! the middle — and the real docker-registry with htpasswd for private content, held mid-blob by a
//! `HoldingRelay` in front of it. `OCICACHE_LEASE_TTL` (hidden; 20s by default) is shortened only
//! in the tests that wait for a lease to expire or a peer to stall.

mod support;

use std::collections::HashSet;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use ocicache::cache::peer::PeerKey;
use support::*;

const SECRET: &str = "correct horse battery staple 42";
const BUCKET: &str = "cache";

struct Cluster {
    moto: Moto,
    secret: tempfile::NamedTempFile,
    /// `Some`: the replicas share this directory (`--storage file://`) instead of the bucket.
    shared_dir: Option<tempfile::TempDir>,
}

struct Replica {
    proc: CacheProcess,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let moto = Moto::start();
        moto.create_bucket(BUCKET);
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), format!("{SECRET}\n")).unwrap();
        Cluster { moto, secret, shared_dir: None }
    }

    /// Replicas on a shared directory (object_store's local file system: create-if-absent by hard
    /// link, no conditional update).
    fn start_on_a_directory() -> Cluster {
        Cluster { shared_dir: Some(tempfile::tempdir().unwrap()), ..Cluster::start() }
    }

    fn spawn(&self, upstream: &str, peering: bool, env: &[(&str, &str)]) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = match &self.shared_dir {
            Some(d) => format!("file://{}", d.path().display()),
            None => format!("s3://{BUCKET}"),
        };
        let advertise = format!("http://127.0.0.1:{port}");
        let d = dir.path().to_str().unwrap();
        let mut args = vec!["--storage", &storage, "-d", d, "--upstream", upstream];
        let secret = self.secret.path().to_str().unwrap();
        if peering {
            args.extend(["--advertise-url", &advertise, "--peer-secret-file", secret]);
        }
        let moto_env = self.moto.env();
        let mut all: Vec<(&str, &str)> = moto_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(env);
        Replica { proc: CacheProcess::spawn_env_on(port, &args, &all), _dir: dir }
    }

    /// A replica that takes part in coordinated fills.
    fn replica(&self, upstream: &str, env: &[(&str, &str)]) -> Replica {
        self.spawn(upstream, true, env)
    }

    fn lease_key(digest: &str) -> String {
        format!("leases/sha256/{}", digest.strip_prefix("sha256:").unwrap())
    }

    /// The lease of `digest` as JSON, if there is one.
    fn lease(&self, digest: &str) -> Option<serde_json::Value> {
        let body = self.moto.get_object(BUCKET, &Self::lease_key(digest))?;
        Some(serde_json::from_slice(&body).unwrap())
    }

    /// Writes a lease as a replica would (what a dead replica leaves behind).
    fn put_lease(&self, digest: &str, owner: &str, expires: SystemTime) {
        let ms = expires.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let json = serde_json::json!({ "owner": owner, "expires_unix_ms": ms, "private": false }).to_string();
        let key = format!("/{BUCKET}/{}", Self::lease_key(digest));
        let r = http_send(&self.moto.addr(), "PUT", &key, &[], Some(json.as_bytes()));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    fn keys(&self) -> Vec<String> {
        self.moto.keys(BUCKET)
    }

    fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.keys().iter().any(|k| k.starts_with("blobs/sha256/") && k.ends_with(hex))
    }
}

impl Replica {
    fn port(&self) -> u16 {
        self.proc.port
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    fn blob_url(&self, registry_and_repo: &str, digest: &str) -> String {
        format!("{}/v2/{registry_and_repo}/blobs/{digest}", self.url())
    }

    /// The sum of every sample of a metric whose line starts with `prefix`.
    fn metric(&self, prefix: &str) -> f64 {
        let r = http_request(&self.addr(), "GET", "/metrics", &[]);
        String::from_utf8_lossy(&r.body)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: a signal to a child process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.proc.child.id() as libc::pid_t, sig) }, 0);
    }

    fn kill(&mut self) {
        self.proc.child.kill().unwrap();
        self.proc.child.wait().unwrap();
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A client's download, begun: the response head and its first bytes have arrived.
struct Download {
    body: Body,
    got: Vec<u8>,
}

async fn begin(url: &str, auth: Option<&str>) -> Download {
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let mut body: Body = Box::pin(resp.bytes_stream());
    let first = tokio::time::timeout(DEFAULT_TIMEOUT, body.next()).await.expect("first bytes in time");
    let got = first.expect("a body").expect("first bytes").to_vec();
    Download { body, got }
}

impl Download {
    /// The rest: `Ok(whole body)`, or `Err(what arrived)` when the body broke off.
    async fn rest(mut self) -> Result<Vec<u8>, Vec<u8>> {
        while let Some(chunk) = self.body.next().await {
            match chunk {
                Ok(c) => self.got.extend_from_slice(&c),
                Err(_) => return Err(self.got),
            }
        }
        Ok(self.got)
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Origin GETs of one blob, at the fake origin.
fn origin_gets(origin: &FakeOrigin, digest: &str) -> Vec<FakeRequest> {
    origin.requests().into_iter().filter(|r| r.method == "GET" && r.path.contains(digest)).collect()
}

fn leases_gone(cluster: &Cluster) -> bool {
    !cluster.keys().iter().any(|k| k.starts_with("leases/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_download_each_blob_once_and_stream_it_to_each_other_while_it_arrives() {
    let cluster = Cluster::start();
    let origin = FakeOrigin::start();
    // Fault: every download is held at 1 MiB until release(), so all clients overlap with it.
    let blobs: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let data = random_bytes(3 << 20, 100 + i);
            (origin.add_blob(data.clone(), Fault::HoldAt(1 << 20)), data)
        })
        .collect();
    let up = format!("fake.test={}", origin.url());
    let replicas: Vec<Replica> = (0..3).map(|_| cluster.replica(&up, &[])).collect();

    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for i in 0..24 {
        let url = replicas[i % 3].blob_url("fake.test/app", &blobs[i % 5].0);
        let tx = first_tx.clone();
        clients.push(tokio::spawn(async move {
            let d = begin(&url, None).await;
            tx.send(i).unwrap();
            d.rest().await
        }));
    }
    drop(first_tx);
    // Every client, on every replica, gets bytes while the downloads are still held at the origin.
    let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
    let mut started = HashSet::new();
    while started.len() < 24 {
        match tokio::time::timeout_at(deadline, first_rx.recv()).await {
            Ok(Some(i)) => {
                started.insert(i);
            }
            _ => panic!("only clients {started:?} of 24 got bytes while the downloads ran"),
        }
    }
    for (d, _) in &blobs {
        assert_eq!(origin_gets(&origin, d).len(), 1, "origin GETs of {d} while held");
    }
    origin.release();
    for (i, c) in clients.into_iter().enumerate() {
        let got = c.await.unwrap().unwrap_or_else(|got| panic!("client {i}: body cut after {} bytes", got.len()));
        assert!(got == blobs[i % 5].1, "client {i} got other bytes");
    }
    let mut total = 0;
    for (d, _) in &blobs {
        let gets = origin_gets(&origin, d);
        assert_eq!(gets.len(), 1, "exactly one origin GET of {d} for the cluster: {gets:?}");
        total += gets.len();
    }
    eprintln!("origin GETs for 5 blobs, 24 clients on 3 replicas: {total}");
    poll_until(DEFAULT_TIMEOUT, "every blob in the bucket and every lease released", || {
        blobs.iter().all(|(d, _)| cluster.has_blob(d)) && leases_gone(&cluster)
    });
    // Each blob was read whole from its owner by the two other replicas.
    poll_until(DEFAULT_TIMEOUT, "10 downloads read from a peer", || {
        replicas.iter().map(|r| r.metric("ocicache_peer_fills_total")).sum::<f64>() == 10.0
    });
    let fallbacks: f64 = replicas.iter().map(|r| r.metric("ocicache_peer_fallbacks_total")).sum();
    assert_eq!(fallbacks, 0.0);
    // Bytes: each blob once from the origin, twice between replicas.
    let sum = |m: &str| replicas.iter().map(|r| r.metric(m)).sum::<f64>();
    assert_eq!(sum("ocicache_upstream_bytes_total"), (5 * (3 << 20)) as f64);
    assert_eq!(sum("ocicache_peer_bytes_total"), (10 * (3 << 20)) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_is_killed_mid_blob_one_survivor_takes_over_the_others_read_from_it() {
    let cluster = Cluster::start();
    let origin = FakeOrigin::start();
    let data = random_bytes(4 << 20, 7);
    // Fault: the origin holds every GET at 1 MiB (ranged ones too) until release(), so the owner is
    // killed with its download running, and the takeover's own GET is still held while we look.
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(1 << 20));
    let up = format!("fake.test={}", origin.url());
    let mut r1 = cluster.replica(&up, &[]);
    let (r2, r3) = (cluster.replica(&up, &[]), cluster.replica(&up, &[]));

    let c1 = begin(&r1.blob_url("fake.test/app", &digest), None).await;
    let lease = cluster.lease(&digest).expect("the first replica holds a lease");
    assert_eq!(lease["owner"], r1.url());
    let c2 = begin(&r2.blob_url("fake.test/app", &digest), None).await;
    let c3 = begin(&r3.blob_url("fake.test/app", &digest), None).await;
    assert_eq!(origin_gets(&origin, &digest).len(), 1, "the others read the owner's download");

    r1.kill();
    let cut = c1.rest().await;
    assert!(cut.as_ref().map_or_else(|g| g.len(), |g| g.len()) < data.len(), "a killed replica completed a body");
    // Both survivors fall back at once; one takes the lease over and asks the origin for the rest,
    // the other streams from it.
    let survivors = [r2.url(), r3.url()];
    poll_until(DEFAULT_TIMEOUT, "a survivor's takeover of the lease", || {
        cluster.lease(&digest).is_some_and(|l| survivors.iter().any(|u| l["owner"] == *u.as_str()))
    });
    let owner = cluster.lease(&digest).expect("the new owner's lease")["owner"].as_str().unwrap().to_owned();
    poll_until(DEFAULT_TIMEOUT, "the new owner's ranged origin GET", || origin_gets(&origin, &digest).len() >= 2);
    origin.release();
    for (name, c) in [("r2", c2), ("r3", c3)] {
        let got = c.rest().await.unwrap_or_else(|g| panic!("{name}: body cut after {} bytes", g.len()));
        assert!(got == data, "{name} served other bytes");
    }
    let gets = origin_gets(&origin, &digest);
    assert_eq!(gets.len(), 2, "the owner's GET, then one ranged GET by the replica that took over: {gets:?}");
    let from: u64 =
        gets[1].range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()).unwrap_or(0);
    assert!(from > 0, "the new owner resumed from where it got to, not from byte 0: {:?}", gets[1]);
    for r in [&r2, &r3] {
        assert_eq!(r.metric("ocicache_peer_fallbacks_total"), 1.0, "{}", r.proc.log_text());
    }
    // The one that lost the takeover read the rest from the one that won.
    let (winner, loser) = if owner == r2.url() { (&r2, &r3) } else { (&r3, &r2) };
    assert!(winner.metric("ocicache_peer_bytes_total") < data.len() as f64, "{}", winner.proc.log_text());
    poll_until(DEFAULT_TIMEOUT, "the loser's download carried by peers", || {
        loser.metric("ocicache_peer_fills_total") == 1.0
    });
    poll_until(DEFAULT_TIMEOUT, "the verified blob in the bucket and the lease released", || {
        cluster.has_blob(&digest) && cluster.lease(&digest).is_none()
    });
    eprintln!("owner killed mid-blob: {} origin GETs for 2 surviving replicas (new owner {owner})", gets.len());

    let r4 = cluster.replica(&up, &[]);
    let got = reqwest::get(r4.blob_url("fake.test/app", &digest)).await.unwrap().bytes().await.unwrap();
    assert!(got == data, "the bucket's copy differs");
    assert_eq!(origin_gets(&origin, &digest).len(), 2, "the next pull asked the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_stops_sending_is_given_up_after_a_lease_lifetime() {
    const TTL: u64 = 5;
    let ttl = TTL.to_string();
    let env = [("OCICACHE_LEASE_TTL", ttl.as_str())];
    let cluster = Cluster::start();
    let origin = FakeOrigin::start();
    let data = random_bytes(4 << 20, 8);
    // Fault: held at 1 MiB; the owner is then stopped (SIGSTOP), alive but silent.
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(1 << 20));
    let up = format!("fake.test={}", origin.url());
    let (r1, r2) = (cluster.replica(&up, &env), cluster.replica(&up, &env));
    let c1 = begin(&r1.blob_url("fake.test/app", &digest), None).await;
    assert_eq!(cluster.lease(&digest).expect("a lease")["owner"], r1.url());
    let c2 = begin(&r2.blob_url("fake.test/app", &digest), None).await;
    assert_eq!(origin_gets(&origin, &digest).len(), 1);

    r1.signal(libc::SIGSTOP);
    origin.release();
    let released = Instant::now();
    let got = c2.rest().await.unwrap_or_else(|g| panic!("body cut after {} bytes", g.len()));
    let waited = released.elapsed();
    assert!(got == data);
    assert!(waited <= Duration::from_secs(TTL + 5), "waited {waited:?} for a silent owner (lease lifetime {TTL}s)");
    assert_eq!(r2.metric("ocicache_peer_fallbacks_total{reason=\"stalled\"}"), 1.0, "{}", r2.proc.log_text());

    // The stopped replica carries on when it is continued, and its client gets the whole blob.
    r1.signal(libc::SIGCONT);
    assert!(c1.rest().await.unwrap() == data);
    assert_eq!(origin_gets(&origin, &digest).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_delays_a_fill_no_longer_than_its_expiry() {
    const TTL: u64 = 4;
    let ttl = TTL.to_string();
    let env = [("OCICACHE_LEASE_TTL", ttl.as_str())];
    let cluster = Cluster::start();
    let origin = FakeOrigin::start();
    let up = format!("fake.test={}", origin.url());
    let r = cluster.replica(&up, &env);
    let fetch = |digest: String| {
        let url = r.blob_url("fake.test/app", &digest);
        async move {
            let started = Instant::now();
            let got = reqwest::get(url).await.unwrap().bytes().await.unwrap();
            (got, started.elapsed())
        }
    };

    // 1. Expired a moment ago, left by a replica that is gone: taken over at once.
    let data = random_bytes(500_000, 11);
    let digest = origin.add_blob(data.clone(), Fault::None);
    cluster.put_lease(
        &digest,
        &format!("http://127.0.0.1:{}", closed_port()),
        SystemTime::now() - Duration::from_secs(2),
    );
    let (got, waited_expired) = fetch(digest.clone()).await;
    assert!(got == data);
    assert!(waited_expired < Duration::from_secs(TTL), "an expired lease held the fill for {waited_expired:?}");
    assert_eq!(r.metric("ocicache_peer_fallbacks_total{reason=\"expired\"}"), 1.0);
    assert_eq!(origin_gets(&origin, &digest).len(), 1);
    poll_until(DEFAULT_TIMEOUT, "the lease taken over to be released", || cluster.lease(&digest).is_none());

    // 2. Live, of a replica killed before it could delete it: its address refuses, so at once.
    let held = FakeOrigin::start();
    let data = random_bytes(2 << 20, 12);
    // Fault: held so that the owner is killed mid-download.
    let digest = held.add_blob(data.clone(), Fault::HoldAt(1 << 20));
    let held_up = format!("fake.test={}", held.url());
    let mut owner = cluster.replica(&held_up, &[]);
    let r_held = cluster.replica(&held_up, &env);
    let _c = begin(&owner.blob_url("fake.test/app", &digest), None).await;
    owner.kill();
    held.release();
    let lease = cluster.lease(&digest).expect("the killed owner's lease is still there");
    let left = lease["expires_unix_ms"].as_u64().unwrap().saturating_sub(now_unix_ms());
    let started = Instant::now();
    let got = reqwest::get(r_held.blob_url("fake.test/app", &digest)).await.unwrap().bytes().await.unwrap();
    let waited_dead = started.elapsed();
    assert!(got == data);
    assert!(
        waited_dead < Duration::from_millis(left),
        "waited {waited_dead:?} on a dead owner whose lease had {left}ms left"
    );
    assert_eq!(r_held.metric("ocicache_peer_fallbacks_total{reason=\"unreachable\"}"), 1.0);

    // 3. Live, naming an address that accepts connections and never answers: given up after the
    //    lease lifetime, not later.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let data = random_bytes(500_000, 13);
    let digest = origin.add_blob(data.clone(), Fault::None);
    let expires = SystemTime::now() + Duration::from_secs(TTL);
    cluster.put_lease(&digest, &format!("http://{}", silent.local_addr().unwrap()), expires);
    let (got, waited) = fetch(digest.clone()).await;
    assert!(got == data);
    assert!(waited <= Duration::from_secs(TTL + 3), "a silent owner held the fill for {waited:?}");
    assert_eq!(r.metric("ocicache_peer_fallbacks_total{reason=\"stalled\"}"), 1.0);
    eprintln!("stale leases: expired one, waited {waited_expired:?}; dead owner's had {left}ms left, waited {waited_dead:?}; silent owner's {TTL}s, waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_endpoint_answers_only_requests_signed_with_the_secret() {
    let cluster = Cluster::start();
    let origin = FakeOrigin::start();
    let data = random_bytes(300_000, 21);
    let digest = origin.add_blob(data.clone(), Fault::None);
    let up = format!("fake.test={}", origin.url());
    let r = cluster.replica(&up, &[]);
    let plain = cluster.spawn(&up, false, &[]);
    let got = reqwest::get(r.blob_url("fake.test/app", &digest)).await.unwrap().bytes().await.unwrap();
    assert!(got == data);

    let path = format!("/_ocicache/peer/blobs/{digest}");
    let good = PeerKey::new(SECRET.as_bytes()).sign(&digest, now_unix());
    let wrong_key = PeerKey::new(b"some other secret, long enough").sign(&digest, now_unix());
    let other = format!("sha256:{}", "ab".repeat(32));
    let for_other_blob = PeerKey::new(SECRET.as_bytes()).sign(&other, now_unix());
    let stale = PeerKey::new(SECRET.as_bytes()).sign(&digest, now_unix() - 3600);
    let leaks = |body: &[u8]| body.windows(64).any(|w| w == &data[1000..1064]);
    let no_bytes = |status: u16, headers: &[(&str, &str)], on: &Replica| {
        let resp = http_request(&on.addr(), "GET", &path, headers);
        assert_eq!(resp.status, status, "{headers:?}");
        assert!(!leaks(&resp.body), "blob bytes in a refused answer");
    };
    no_bytes(401, &[], &r);
    no_bytes(401, &[("ocicache-peer-auth", &wrong_key)], &r);
    no_bytes(401, &[("ocicache-peer-auth", SECRET)], &r);
    no_bytes(401, &[("ocicache-peer-auth", &for_other_blob)], &r);
    no_bytes(401, &[("ocicache-peer-auth", &stale)], &r);
    // A replica without --peer-secret-file has no such endpoint, whatever the request carries.
    no_bytes(404, &[("ocicache-peer-auth", &good)], &plain);
    no_bytes(404, &[], &plain);

    let ok = http_request(&r.addr(), "GET", &path, &[("ocicache-peer-auth", &good)]);
    assert_eq!(ok.status, 200);
    assert!(ok.body == data);
    assert_eq!(ok.header("ocicache-private"), Some("false"));
    let signed_other = PeerKey::new(SECRET.as_bytes()).sign(&other, now_unix());
    let none = http_request(
        &r.addr(),
        "GET",
        &format!("/_ocicache/peer/blobs/{other}"),
        &[("ocicache-peer-auth", &signed_other)],
    );
    assert_eq!(none.status, 404, "neither a download nor the blob here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_lease_makes_the_asking_replica_check_its_client_with_the_origin() {
    let cluster = Cluster::start();
    let upstream = Registry::start_with_htpasswd(&[("alice", "pw")]);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "1", "amd64", &[LayerSpec::file("x", random_bytes(6 << 20, 31))]);
    push(&img.layout, "1", &format!("{}/priv/img:1", upstream.addr()), Format::Oci, Some(("alice", "pw")));
    let (digest, data) = (img.layer_digests[0].clone(), img.layer_blobs[0].clone());
    // The owner reaches the origin through a relay that holds each answer after 1 MiB, so its
    // download is still running while the other replica's clients ask.
    let relay = HoldingRelay::start(upstream.addr().parse().unwrap(), 1 << 20);
    let r1 = cluster.replica(&format!("auth.test={}", relay.url()), &[]);
    let r2 = cluster.replica(&format!("auth.test={}", upstream.url()), &[]);
    let alice = "Basic YWxpY2U6cHc=";
    let path = format!("/v2/auth.test/priv/img/blobs/{digest}");

    let c1 = begin(&format!("{}{path}", r1.url()), Some(alice)).await;
    poll_until(DEFAULT_TIMEOUT, "the owner's private lease", || {
        cluster.lease(&digest).is_some_and(|l| l["private"] == true && l["owner"] == r1.url())
    });

    // No credentials on the other replica: refused after asking the origin, never a byte.
    let anon = http_begin(&r2.addr(), "GET", &path, &[]);
    assert_eq!(anon.status(), 401, "a client without credentials was answered");
    let anon = anon.finish();
    assert!(!anon.body.windows(64).any(|w| w == &data[..64]));
    // Credentials the origin accepts: served, from the owner's running download.
    let c2 = begin(&format!("{}{path}", r2.url()), Some(alice)).await;
    relay.release();
    assert!(c1.rest().await.unwrap() == data);
    assert!(c2.rest().await.unwrap() == data);
    let gets: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|l| l.method == "GET" && l.path.contains(&digest) && l.status < 300)
        .collect();
    assert_eq!(gets.len(), 1, "one download of the blob from the origin for both replicas: {gets:?}");
    poll_until(DEFAULT_TIMEOUT, "the second replica's peer read counted", || {
        r2.metric("ocicache_peer_fills_total") == 1.0
    });
    // Stored as private by both.
    for r in [&r1, &r2] {
        assert_eq!(http_request(&r.addr(), "GET", &path, &[]).status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_directory_download_each_blob_once_too() {
    let cluster = Cluster::start_on_a_directory();
    let shared = cluster.shared_dir.as_ref().unwrap().path().to_path_buf();
    let origin = FakeOrigin::start();
    let data = random_bytes(3 << 20, 41);
    // Fault: held at 1 MiB, so the second replica asks while the first downloads.
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(1 << 20));
    let up = format!("fake.test={}", origin.url());
    let (r1, r2) = (cluster.replica(&up, &[]), cluster.replica(&up, &[]));
    let c1 = begin(&r1.blob_url("fake.test/app", &digest), None).await;
    let lease = shared.join("leases/sha256").join(digest.strip_prefix("sha256:").unwrap());
    assert!(lease.exists(), "no lease in the shared directory");
    let c2 = begin(&r2.blob_url("fake.test/app", &digest), None).await;
    origin.release();
    assert!(c1.rest().await.unwrap() == data);
    assert!(c2.rest().await.unwrap() == data);
    assert_eq!(origin_gets(&origin, &digest).len(), 1);
    poll_until(DEFAULT_TIMEOUT, "the lease released", || !lease.exists());
    poll_until(DEFAULT_TIMEOUT, "the peer read counted", || r2.metric("ocicache_peer_fills_total") == 1.0);
}
