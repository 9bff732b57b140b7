//! Nothing a client invents grows the cache's metrics: invented HTTP methods, repository names and
//! registry names under a `*.domain` pattern all land in a few label values the operator can predict.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

/// An HTTPS proxy that refuses every tunnel, counting them. Registries under a `*.domain` pattern are
/// dialled at `https://<name>`; with this as `HTTPS_PROXY` nothing is resolved or dialled off the
/// machine and each origin "fails" (a 502 from the proxy). An in-process stand-in because no proxy
/// is installed here and the test needs the failure, not the forwarding.
fn refusing_proxy() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let count = tunnels.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let mut first = true;
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if first && line.starts_with("CONNECT ") {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    first = false;
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    (port, tunnels)
}

/// `(name, labels)` of every sample line.
fn samples(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            let labels = l[name_end..].strip_prefix('{').and_then(|r| r.split('}').next()).unwrap_or("");
            (&l[..name_end], labels)
        })
        .collect()
}

#[test]
fn invented_methods_repositories_and_registries_add_no_metric_series() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), "v1", "amd64", &[LayerSpec::file("a.txt", b"bounded".to_vec())]);
    push(&img.layout, &img.tag, &format!("{}/real/app:v1", upstream.addr()), Format::Oci, None);
    let (proxy_port, tunnels) = refusing_proxy();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CacheProcess::spawn_env(
        &[
            "--cache-dir",
            cache_dir.path().to_str().unwrap(),
            "--upstream",
            &format!("up.test={}", upstream.url()),
            "--allow-registry",
            "*.wild.test",
        ],
        &[("HTTPS_PROXY", &proxy), ("NO_PROXY", "127.0.0.1,localhost")],
    );
    let addr = format!("127.0.0.1:{}", cache.port);
    let manifest =
        |path: &str| http_request(&addr, "GET", path, &[("Accept", "application/vnd.oci.image.manifest.v1+json")]);

    // A configured registry's own name stays its label.
    assert_eq!(manifest("/v2/up.test/real/app/manifests/v1").status, 200);
    const N: usize = 300;
    for i in 0..N {
        // Invented methods: refused, and counted as "other".
        let r = http_request(&addr, &format!("FOO{i}"), "/v2/", &[]);
        assert!(r.status >= 400 && r.status < 500, "FOO{i}: {}", r.status);
        http_request(&addr, &format!("BAR{i}"), "/v2/up.test/real/app/manifests/v1", &[]);
        // Invented repositories on a configured registry: the origin's 404.
        assert_eq!(manifest(&format!("/v2/up.test/invented/r{i}/manifests/v1")).status, 404);
        // Invented registries under the pattern: their origin fails (502 from the proxy).
        let r = manifest(&format!("/v2/r{i}.wild.test/app/manifests/v1"));
        assert!(r.status >= 500, "r{i}.wild.test: {}", r.status);
        // Registries nobody allowed: refused before any dial.
        let r = manifest(&format!("/v2/r{i}.evil.example/app/manifests/v1"));
        assert!(r.status >= 400 && r.status < 500, "r{i}.evil.example: {}", r.status);
    }
    assert!(tunnels.load(Ordering::SeqCst) >= N, "the wildcard registries' origins were tried through the proxy");

    let text = String::from_utf8(http_request(&addr, "GET", "/metrics", &[]).body).unwrap();
    let all = samples(&text);
    assert!(all.len() < 150, "{} samples after {N} invented names of each kind:\n{text}", all.len());
    for (_, labels) in &all {
        assert!(!labels.contains(".wild.test\"") || labels.contains("*.wild.test"), "an invented name in {labels}");
        assert!(!labels.contains("evil"), "a refused name in {labels}");
        assert!(!labels.contains("FOO") && !labels.contains("BAR"), "an invented method in {labels}");
        if let Some(m) = labels.split("method=\"").nth(1) {
            let m = m.split('"').next().unwrap();
            assert!(["GET", "HEAD", "other"].contains(&m), "method label {m}");
        }
    }
    let failures = r#"ocicache_endpoint_failures_total{registry="*.wild.test",endpoint="*.wild.test"} "#;
    let line = text.lines().find(|l| l.starts_with(failures)).unwrap_or_else(|| panic!("no {failures}:\n{text}"));
    assert_eq!(line[failures.len()..].trim(), N.to_string());
    assert!(
        text.lines()
            .any(|l| l
                .starts_with(r#"ocicache_cache_requests_total{registry="up.test",kind="manifest",result="miss"} 1"#)),
        "{text}"
    );
    assert!(text.contains(r#"registry="up.test",status="404""#), "{text}");
    let other = r#"ocicache_http_requests_total{route="other",method="other",status="#;
    assert_eq!(text.lines().filter(|l| l.starts_with(other)).count(), 1, "{text}");
}
