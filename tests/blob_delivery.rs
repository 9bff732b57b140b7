//! Blob delivery: one upstream download per blob streamed to every waiting client, verification,
//! resume after a drop, ranges. The origin here is the in-process fake (`support::fake`), because
//! each test needs a fault a real registry cannot produce on demand: a download held mid-way so
//! clients overlap, wrong bytes, a dropped connection.

mod support;

use futures_util::StreamExt;
use support::*;

const CLIENTS: usize = 8;

fn blob_url(cache: &Cache, digest: &str) -> String {
    format!("http://{}/v2/fake.test/some/repo/blobs/{digest}", cache.addr())
}

/// Reads a response body to the end; Err if the stream broke or ended short.
async fn read_all(resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let expected = resp.content_length();
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
    }
    match expected {
        Some(n) if n as usize != out.len() => Err(format!("short body: {} of {n}", out.len())),
        _ => Ok(out),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_share_one_upstream_download_and_stream_before_it_ends() {
    let origin = FakeOrigin::start();
    let data = random_bytes(4 << 20, 1);
    // Fault: the origin sends half the blob, then holds until released.
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(2 << 20));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();

    // The first client starts the download and receives the first half while the origin holds.
    let mut streams = Vec::new();
    for i in 0..CLIENTS {
        // Different repository names: the blob is the same whichever name a client uses.
        let url = format!("http://{}/v2/fake.test/repo{i}/blobs/{digest}", cache.addr());
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.content_length(), Some(data.len() as u64));
        let mut s = resp.bytes_stream();
        let mut got = Vec::new();
        // Every client, late joiners included, gets bytes while the download is still held.
        while got.len() < (1 << 20) {
            got.extend_from_slice(&s.next().await.expect("bytes before the download ends").unwrap());
        }
        streams.push((got, s));
    }
    // HEAD while in flight is answered from the flight, not the origin.
    let head = client.head(blob_url(&cache, &digest)).send().await.unwrap();
    assert_eq!(head.headers()["content-length"], data.len().to_string().as_str());

    origin.release();
    for (mut got, mut s) in streams {
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, data);
    }
    assert_eq!(origin.count("GET", "/blobs/"), 1, "{:?}", origin.requests());
    assert_eq!(origin.count("HEAD", "/blobs/"), 0);
    // Committed: the next client is served from disk.
    let again = read_all(client.get(blob_url(&cache, &digest)).send().await.unwrap()).await.unwrap();
    assert_eq!(again, data);
    assert_eq!(origin.count("GET", "/blobs/"), 1);
    assert_eq!(cache.stored_blobs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bytes_are_never_completed_nor_cached() {
    let origin = FakeOrigin::start();
    let data = random_bytes(1 << 20, 2);
    // Fault: the origin sends different bytes of the right length for this digest.
    let digest = origin.add_blob(data, Fault::WrongBytes);
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), blob_url(&cache, &digest));
        tasks.push(tokio::spawn(async move {
            let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
            if resp.status() != 200 {
                return Err(format!("status {}", resp.status()));
            }
            read_all(resp).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.is_err(), "a client received a complete body with wrong bytes");
    }
    assert!(cache.stored_blobs().is_empty());
    // The next request starts afresh (and fails again, still storing nothing).
    let before = origin.count("GET", "/blobs/");
    let r = client.get(blob_url(&cache, &digest)).send().await.unwrap();
    assert!(read_all(r).await.is_err());
    assert!(origin.count("GET", "/blobs/") > before);
    assert!(cache.stored_blobs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_download_resumes_with_a_range_request() {
    let origin = FakeOrigin::start();
    let data = random_bytes(2 << 20, 3);
    // Fault: the first GET breaks the connection halfway.
    let digest = origin.add_blob(data.clone(), Fault::DropOnceAt(1 << 20));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();
    let body = read_all(client.get(blob_url(&cache, &digest)).send().await.unwrap()).await.unwrap();
    assert_eq!(body, data);
    let gets: Vec<_> = origin.requests().into_iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    // Resumed from the byte reached (bytes in transit when the connection broke are fetched again).
    let start: usize =
        gets[1].range.as_deref().unwrap().strip_prefix("bytes=").unwrap().trim_end_matches('-').parse().unwrap();
    assert!(start > 0 && start <= 1 << 20, "resumed at {start}");
    let stored = cache.stored_blobs();
    assert_eq!(stored.len(), 1);
    assert_eq!(std::fs::read(&stored[0]).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_on_stored_and_in_flight_blobs() {
    let origin = FakeOrigin::start();
    let data = random_bytes(1 << 20, 4);
    let held = random_bytes(1 << 20, 5);
    let digest = origin.add_blob(data.clone(), Fault::None);
    // Fault: held mid-way, to ask for a range while the download runs.
    let held_digest = origin.add_blob(held.clone(), Fault::HoldAt(512 * 1024));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();

    let full = read_all(client.get(blob_url(&cache, &digest)).send().await.unwrap()).await.unwrap();
    assert_eq!(full, data);
    let r = client.get(blob_url(&cache, &digest)).header("Range", "bytes=10-19").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 10-19/{}", data.len()).as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(read_all(r).await.unwrap(), &data[10..20]);
    let tail = client.get(blob_url(&cache, &digest)).header("Range", "bytes=-5").send().await.unwrap();
    assert_eq!(read_all(tail).await.unwrap(), &data[data.len() - 5..]);
    let past =
        client.get(blob_url(&cache, &digest)).header("Range", format!("bytes={}-", data.len())).send().await.unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(past.headers()["content-range"], format!("bytes */{}", data.len()).as_str());

    // In flight: the range answer starts while the origin holds, and completes once verified.
    let r = client.get(blob_url(&cache, &held_digest)).header("Range", "bytes=1000-200000").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 1000-200000/{}", held.len()).as_str());
    let mut s = r.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    origin.release();
    let mut got = first.to_vec();
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, &held[1000..200001]);
    assert_eq!(origin.count("GET", &held_digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_errors_become_oci_errors() {
    let origin = FakeOrigin::start();
    let missing = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    // Fault: the origin rate-limits this blob.
    let limited = origin.add_blob(random_bytes(1000, 6), Fault::Status(429, vec![("Retry-After".into(), "30".into())]));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();
    let r = client.get(blob_url(&cache, missing)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
    let r = client.get(blob_url(&cache, &limited)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_finishes_when_the_client_that_started_it_leaves() {
    let origin = FakeOrigin::start();
    let data = random_bytes(2 << 20, 7);
    // Fault: held mid-way so the client can leave before the end.
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(1 << 20));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();
    let resp = client.get(blob_url(&cache, &digest)).send().await.unwrap();
    let mut s = resp.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s);
    origin.release();
    poll_until(DEFAULT_TIMEOUT, "the abandoned download to be committed", || !cache.stored_blobs().is_empty());
    assert_eq!(std::fs::read(&cache.stored_blobs()[0]).unwrap(), data);
    assert_eq!(origin.count("GET", "/blobs/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_manifest_requests_share_one_upstream_request() {
    let origin = FakeOrigin::start();
    let manifest =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    // Fault: the origin holds its answer so every client's request overlaps the first.
    origin.add_manifest("1.0", manifest, "application/vnd.oci.image.manifest.v1+json", Fault::HoldAt(0));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v2/fake.test/app/manifests/1.0", cache.addr());
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r =
                client.get(url).header("Accept", "application/vnd.oci.image.manifest.v1+json").send().await.unwrap();
            (r.status(), r.bytes().await.unwrap())
        }));
    }
    let c = &cache;
    poll_until(DEFAULT_TIMEOUT, "all clients waiting in the cache", || {
        c.metric("ocicache_requests_in_progress") == CLIENTS as f64
    });
    origin.release();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], &manifest[..]);
    }
    assert_eq!(origin.count("GET", "/manifests/1.0"), 1, "{:?}", origin.requests());
}

/// Issue #12: `bytes=5-18446744073709551615` is legal (a last-byte-pos past the end means "to the
/// end") and used to answer with a wrapped Content-Length and a cut connection. Asked of a blob whose
/// download is still running, through a raw HTTP client that checks every header against the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_past_the_end_and_at_the_edges_of_an_in_flight_blob() {
    let origin = FakeOrigin::start();
    let data = random_bytes(1 << 20, 8);
    let n = data.len();
    // Fault: held mid-way, so every range below is answered from the running download.
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(256 * 1024));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let path = format!("/v2/fake.test/some/repo/blobs/{digest}");
    // Start the download and see its first bytes: the flight is running and its length is known.
    let starter = reqwest::get(format!("http://{}{path}", cache.addr())).await.unwrap();
    let mut starter = starter.bytes_stream();
    starter.next().await.unwrap().unwrap();

    let (addr, p) = (cache.addr(), path.clone());
    let ask = move |range: &str| {
        let (addr, p, range) = (addr.clone(), p.clone(), range.to_owned());
        std::thread::spawn(move || http_begin(&addr, "GET", &p, &[("Range", &range)]).finish())
    };
    // Unsatisfiable ranges are refused at once, without waiting for the download.
    for range in ["bytes=-0".to_owned(), format!("bytes={n}-")] {
        let r = ask(&range).join().unwrap();
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{n}").as_str()), "{range}");
    }
    let (a, p) = (cache.addr(), path.clone());
    let begin = move |range: &'static str| {
        let (a, p) = (a.clone(), p.clone());
        tokio::task::spawn_blocking(move || http_begin(&a, "GET", &p, &[("Range", range)]))
    };
    let pending = [
        begin("bytes=5-18446744073709551615").await.unwrap(),
        begin("bytes=0-0").await.unwrap(),
        begin("bytes=-1").await.unwrap(),
        begin("bytes=5-99999999999999999999999999").await.unwrap(),
    ];
    // Every answer's head arrived while the origin still holds: each joined the running download.
    assert!(pending.iter().all(|p| p.status() == 206));
    assert_eq!(origin.count("GET", &digest), 1);
    origin.release();
    let got: Vec<HttpResponse> =
        tokio::task::spawn_blocking(move || pending.map(HttpPending::finish).into()).await.unwrap();
    let expect = [(5, n), (0, 1), (n - 1, n), (5, n)];
    for (r, (start, end)) in got.iter().zip(expect) {
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{}/{n}", end - 1).as_str()));
        assert_eq!(r.header("content-length"), Some((end - start).to_string().as_str()));
        assert!(r.body == data[start..end], "body of bytes {start}-{} differs", end - 1);
    }
    while let Some(c) = starter.next().await {
        c.unwrap();
    }
    assert_eq!(origin.count("GET", &digest), 1);
}

/// Lazy-pulling snapshotters (stargz, SOCI, nydus) read ranges of cold layers and verify chunks
/// themselves: a range that ends before the blob's end is answered in full as soon as its bytes have
/// arrived, not after the whole download. One that ends at the blob's end still holds its last byte
/// until the digest matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_below_the_download_front_completes_while_the_rest_is_still_downloading() {
    let origin = FakeOrigin::start();
    let data = random_bytes(1 << 20, 9);
    // Fault: the origin holds after 512 KiB and sends the rest only on release().
    let digest = origin.add_blob(data.clone(), Fault::HoldAt(512 * 1024));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();
    let url = blob_url(&cache, &digest);
    let first_mib = client.get(&url).header("Range", "bytes=0-65535").send().await.unwrap();
    assert_eq!(first_mib.status(), 206);
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), read_all(first_mib))
        .await
        .expect("the range completes while the origin still holds the rest")
        .unwrap();
    assert_eq!(body, &data[..65536]);
    let edge = client.get(&url).header("Range", "bytes=400000-524287").send().await.unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), read_all(edge)).await.unwrap().unwrap();
    assert_eq!(body, &data[400000..524288], "up to the last byte that has arrived");

    // The tail range waits for the verification: it is not complete before the origin sends the rest.
    let tail = client.get(&url).header("Range", "bytes=1000-").send().await.unwrap();
    let mut tail = tail.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 512 * 1024 - 1000 - 1 {
        got.extend_from_slice(&tail.next().await.unwrap().unwrap());
    }
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), tail.next()).await;
    assert!(early.is_err(), "the tail's bytes past the download front cannot have arrived");
    origin.release();
    while let Some(c) = tail.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, &data[1000..]);
    assert_eq!(origin.count("GET", &digest), 1, "one download served every range");
}

/// A range far beyond the download front (a lazy puller reading the end of a cold layer whose fill
/// has just begun) is fetched from the origin with its own Range request instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_far_beyond_the_download_front_is_asked_of_the_origin_at_once() {
    let origin = FakeOrigin::start();
    let data = random_bytes(8 << 20, 10);
    // Fault: the fill (a GET without Range) holds after 256 KiB; ranged GETs are answered at once.
    let digest = origin.add_blob(data.clone(), Fault::HoldUnrangedAt(256 * 1024));
    let cache = Cache::start(&["--upstream", &format!("fake.test={}", origin.url())]);
    let client = reqwest::Client::new();
    let url = blob_url(&cache, &digest);
    let fill = client.get(&url).send().await.unwrap();
    let mut fill = fill.bytes_stream();
    let mut got = fill.next().await.unwrap().unwrap().len();

    let (start, end) = (6 << 20, (6 << 20) + 100_000);
    let r = client.get(&url).header("Range", format!("bytes={start}-{}", end - 1)).send().await.unwrap();
    assert_eq!(r.status(), 206);
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), read_all(r))
        .await
        .expect("answered without waiting for the fill")
        .unwrap();
    assert_eq!(body, &data[start..end]);
    let ranged: Vec<_> = origin.requests().into_iter().filter(|q| q.range.is_some()).collect();
    assert_eq!(ranged.len(), 1, "{ranged:?}");
    assert_eq!(ranged[0].range.as_deref(), Some(format!("bytes={start}-").as_str()));

    // The fill goes on and is stored whole, verified.
    origin.release();
    while let Some(c) = fill.next().await {
        got += c.unwrap().len();
    }
    assert_eq!(got, data.len());
    let stored = poll_for(DEFAULT_TIMEOUT, "the blob is stored", || {
        let blobs = cache.stored_blobs();
        (blobs.len() == 1).then_some(blobs)
    });
    assert_eq!(std::fs::read(&stored[0]).unwrap(), data);
}

/// One request on an open connection: the response's status, headers (lower-cased) and body (read
/// by its Content-Length, so the connection can carry the next request).
fn exchange(conn: &mut std::net::TcpStream, request: &str) -> (u16, String, Vec<u8>) {
    use std::io::{BufRead, Read, Write};
    conn.write_all(request.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "connection closed after {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head[9..12].parse().unwrap();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length: ")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
    let mut body = vec![0; if request.starts_with("HEAD") { 0 } else { len }];
    reader.read_exact(&mut body).unwrap();
    assert!(reader.buffer().is_empty(), "bytes beyond the announced length: {:?}", reader.buffer().len());
    (status, head, body)
}

/// Warm blobs leave through sendfile: whole, ranged and after HEADs on one keep-alive connection,
/// with exactly the announced bytes and the private handoff header never shown. A blob found on disk
/// after a restart is verified on its first read (streamed) and sent by the kernel from then on.
#[test]
fn warm_blobs_are_sent_by_the_kernel_on_keep_alive_connections_and_verified_first_after_a_restart() {
    let origin = FakeOrigin::start();
    let data = random_bytes(3 << 20, 41);
    let digest = origin.add_blob(data.clone(), Fault::None);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let up = format!("fake.test={}", origin.url());
    let mut cache = Cache::start_in(&dir, &["--upstream", &up]);
    let path = format!("/v2/fake.test/some/repo/blobs/{digest}");
    let get = |extra: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let mut conn = std::net::TcpStream::connect(cache.addr()).unwrap();
    let (status, _, body) = exchange(&mut conn, &get(""));
    assert!(status == 200 && body == data, "cold pull");
    cache.stored_blobs();
    let sent = |c: &Cache| c.metric("ocicache_sendfile_bytes_total");
    assert_eq!(sent(&cache), 0.0, "a download is streamed, not sent from a file");

    let (status, head, body) = exchange(&mut conn, &get(""));
    assert!(status == 200 && body == data, "warm pull: {head}");
    assert!(!head.contains("x-ocicache"), "the handoff header reached the client: {head}");
    let (status, head, body) = exchange(&mut conn, &get("Range: bytes=1000-1999\r\n"));
    assert_eq!((status, body.as_slice()), (206, &data[1000..2000]), "{head}");
    assert!(head.contains(&format!("content-range: bytes 1000-1999/{}", data.len())), "{head}");
    let (status, head, _) = exchange(&mut conn, &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(status == 200 && head.contains(&format!("content-length: {}", data.len())), "{head}");
    let tail = format!("Range: bytes=-{}\r\n", 10);
    let (status, _, body) = exchange(&mut conn, &get(&tail));
    assert_eq!((status, body.as_slice()), (206, &data[data.len() - 10..]));
    let (status, _, _) = exchange(&mut conn, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "the connection serves other requests after a file");
    assert_eq!(sent(&cache), (data.len() + 1000 + 10) as f64);

    cache.stop();
    let cache = Cache::start_in(&dir, &["--upstream", &up]);
    let mut conn = std::net::TcpStream::connect(cache.addr()).unwrap();
    let (status, _, body) = exchange(&mut conn, &get(""));
    assert!(status == 200 && body == data);
    assert_eq!(sent(&cache), 0.0, "the first read after a restart is verified while streamed");
    let (_, _, body) = exchange(&mut conn, &get(""));
    assert!(body == data);
    assert_eq!(sent(&cache), data.len() as f64);
    assert_eq!(origin.count("GET", "/blobs/"), 1, "the origin was asked once in all");
}
