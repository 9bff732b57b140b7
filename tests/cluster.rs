//! Warming what the cluster runs. `serve --warm-from-cluster` lists and watches the workloads of a
//! cluster and keeps every image they use cached; `warm --kubernetes` does one pass; `warm
//! --from-file` reads `kubectl get pods -A -o json` output; `status` and `/status` say what is cached.
//!
//! No Kubernetes API server can be installed here, so the watcher talks to an in-process fake API
//! server (`FakeApi` below) that serves list responses written in the shape of the real API's
//! (tests/corpus/kubernetes/) and the `?watch=1` stream of newline-delimited events. Everything
//! else is real: docker-registry as the origin, skopeo to push, containerd to pull.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ocicache::cluster::status::Report;
use support::*;

const WARM_TIMEOUT: Duration = Duration::from_secs(60);

/// The images the fixtures reference and the registry holds (`missing:1` is referenced, not pushed).
const PUSHED: [&str; 8] = ["pod-app", "pod-init", "pod-debug", "deploy", "multi", "sts", "job", "cron"];

struct Origin {
    registry: Registry,
    multi: BuiltIndex,
    _layouts: tempfile::TempDir,
}

impl Origin {
    /// A real docker-registry with every image of the fixtures (and `late:1`, which only a watch
    /// event brings in); `multi:1` is an amd64 + arm64 + s390x index.
    fn start(names: &[&str]) -> Origin {
        let registry = Registry::start();
        let layouts = tempfile::tempdir().unwrap();
        for (i, name) in names.iter().filter(|n| **n != "multi").enumerate() {
            let dir = layouts.path().join(name);
            let img = build_image(&dir, "1", "amd64", &[LayerSpec::file(name, random_bytes(20_000, 100 + i as u64))]);
            push(&img.layout, "1", &format!("{}/test/{name}:1", registry.addr()), Format::Oci, None);
        }
        let multi = build_index(
            &layouts.path().join("multi"),
            "multi",
            &[
                ("amd64", vec![LayerSpec::file("m", random_bytes(30_000, 1))]),
                ("arm64", vec![LayerSpec::file("m", random_bytes(30_000, 2))]),
                ("s390x", vec![LayerSpec::file("m", random_bytes(30_000, 3))]),
            ],
        );
        push_index(&multi.layout, "multi", &format!("{}/test/multi:1", registry.addr()), None);
        Origin { registry, multi, _layouts: layouts }
    }

    fn upstream(&self) -> String {
        format!("one.test={}", self.registry.url())
    }

    fn arch_layer(&self, arch: &str) -> String {
        self.multi.manifests.iter().find(|m| m.arch == arch).unwrap().layer_digests[0].clone()
    }
}

/// An in-process stand-in for the Kubernetes API server (the real one cannot run here): answers
/// list requests with the recorded responses and keeps watch requests open, streaming the events
/// the test sends for pods.
struct FakeApi {
    port: u16,
    pod_events: tokio::sync::broadcast::Sender<String>,
    seen: Arc<Mutex<Vec<String>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct ApiState {
    lists: Arc<HashMap<String, String>>,
    pod_events: tokio::sync::broadcast::Sender<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

fn corpus(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/kubernetes").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl FakeApi {
    fn start() -> FakeApi {
        let lists: HashMap<String, String> = [
            ("/api/v1/pods", "pods.json"),
            ("/api/v1/nodes", "nodes.json"),
            ("/apis/apps/v1/deployments", "deployments.json"),
            ("/apis/apps/v1/daemonsets", "daemonsets.json"),
            ("/apis/apps/v1/statefulsets", "statefulsets.json"),
            ("/apis/batch/v1/jobs", "jobs.json"),
            ("/apis/batch/v1/cronjobs", "cronjobs.json"),
        ]
        .into_iter()
        .map(|(path, file)| (path.to_owned(), corpus(file)))
        .collect();
        let (pod_events, _) = tokio::sync::broadcast::channel(16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = ApiState { lists: Arc::new(lists), pod_events: pod_events.clone(), seen: seen.clone() };
        let (port, tx) = serve_in_background(axum::Router::new().fallback(api).with_state(state));
        FakeApi { port, pod_events, seen, _shutdown: tx }
    }

    /// A kubeconfig pointing at this server, without credentials.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 users:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
                 current-context: fake\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    /// Sends a pod watch event once a watcher is connected.
    fn pod_event(&self, kind: &str, name: &str, image: &str, rv: u32) {
        poll_until(DEFAULT_TIMEOUT, "a pod watch to be open", || self.pod_events.receiver_count() > 0);
        let event = serde_json::json!({"type": kind, "object": {
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "resourceVersion": rv.to_string(),
                         "creationTimestamp": "2026-11-30T10:00:00Z"},
            "spec": {"containers": [{"name": "app", "image": image}]},
            "status": {"phase": "Pending"}
        }});
        self.pod_events.send(format!("{event}\n")).unwrap();
    }
}

async fn api(
    axum::extract::State(state): axum::extract::State<ApiState>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    state.seen.lock().unwrap().push(format!("{path}?{query}"));
    let Some(list) = state.lists.get(&path) else {
        return (
            http::StatusCode::NOT_FOUND,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"reason\":\"NotFound\",\"code\":404}",
        )
            .into_response();
    };
    let watch = url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "watch" && (v == "1" || v == "true"));
    if !watch {
        return ([(http::header::CONTENT_TYPE, "application/json")], list.clone()).into_response();
    }
    // A watch stays open; pods get the events the test sends, other kinds none.
    let rx = (path == "/api/v1/pods").then(|| state.pod_events.subscribe());
    let stream = futures_util::stream::unfold(rx, |rx| async move {
        match rx {
            Some(mut rx) => match rx.recv().await {
                Ok(line) => Some((Ok::<_, std::io::Error>(bytes::Bytes::from(line)), Some(rx))),
                Err(_) => None,
            },
            None => std::future::pending().await,
        }
    });
    ([(http::header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(stream)).into_response()
}

fn report(cache: &Cache) -> Report {
    let r = http_request(&cache.addr(), "GET", "/status?format=json", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap()
}

fn cached(report: &Report, image: &str) -> Option<bool> {
    report.images.iter().find(|i| i.image == image).map(|i| i.cached)
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_cluster_watcher_warms_every_image_in_use_and_follows_watch_events() {
    let mut names: Vec<&str> = PUSHED.to_vec();
    names.push("late");
    let origin = Origin::start(&names);
    let api = FakeApi::start();
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(tmp.path());
    let kubeconfig = kubeconfig.to_str().unwrap();
    let cache = Cache::start(&["--upstream", &origin.upstream(), "--warm-from-cluster", "--kubeconfig", kubeconfig]);

    // Every kind and every container list: pods (containers, init, ephemeral), deployments,
    // daemonsets, statefulsets, jobs, cronjobs. Warmed without any client asking.
    let all = poll_for(WARM_TIMEOUT, "every pushed image in use to be cached", || {
        let r = report(&cache);
        PUSHED.iter().all(|n| cached(&r, &format!("one.test/test/{n}:1")) == Some(true)).then_some(r)
    });
    assert!(all.complete, "every kind listed");
    assert_eq!(all.platforms, ["linux/amd64", "linux/arm64"], "from the Node objects");
    assert_eq!(cached(&all, "one.test/test/missing:1"), Some(false));
    assert_eq!(all.images.len(), 9, "{:?}", all.images);
    let invalid: Vec<&str> = all.invalid.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(invalid, ["One.Test/Bad Name:1"], "an invalid reference is reported, not fatal");
    let tagged = all.images.iter().find(|i| i.image == "one.test/test/deploy:1").unwrap();
    assert!(tagged.tag_age_seconds.is_some_and(|a| a < 600) && tagged.manifest && tagged.blobs == 2, "{tagged:?}");

    // Only the nodes' platforms of the index: no s390x layer.
    let stored: Vec<String> =
        cache.stored_blobs().iter().map(|p| format!("sha256:{}", p.file_name().unwrap().to_string_lossy())).collect();
    assert!(stored.contains(&origin.arch_layer("amd64")) && stored.contains(&origin.arch_layer("arm64")));
    assert!(!stored.contains(&origin.arch_layer("s390x")), "s390x runs on no node");

    assert_eq!(cache.metric("ocicache_cluster_images_in_use"), 9.0);
    poll_until(DEFAULT_TIMEOUT, "the not-cached gauge to count the missing image", || {
        cache.metric("ocicache_cluster_images_not_cached") == 1.0
    });
    let missing_line = "ocicache_cluster_image_warm_ok{image=\"one.test/test/missing:1\"}";
    poll_until(DEFAULT_TIMEOUT, "the missing image's failed warm", || {
        cache.metrics().contains(&format!("{missing_line} 0"))
    });
    assert_eq!(cache.metric("ocicache_cluster_image_warm_ok{image=\"one.test/test/sts:1\"}"), 1.0);

    // The text report and `ocicache status --server`.
    let page = http_request(&cache.addr(), "GET", "/status", &[]);
    let page = String::from_utf8_lossy(&page.body).into_owned();
    assert!(page.starts_with("IMAGE") && page.contains("9 image(s) in use, 1 not cached"), "{page}");
    let row = page.lines().find(|l| l.starts_with("one.test/test/missing:1")).unwrap();
    assert!(row.contains("NO") && row.contains("tag not cached"), "{row}");
    let out = run_output(ocicache_bin().args(["status", "--server", &format!("http://{}", cache.addr())]));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "one image is not cached:\n{stdout}\n{stderr}");
    assert!(stdout.contains("one.test/test/cron:1") && stdout.contains("1 not cached"), "{stdout}");

    // A pod created later: its image is warmed.
    api.pod_event("ADDED", "late-1", "one.test/test/late:1", 6000);
    poll_for(WARM_TIMEOUT, "the image of the new pod to be cached", || {
        (cached(&report(&cache), "one.test/test/late:1") == Some(true)).then_some(())
    });
    assert_eq!(cache.metric("ocicache_cluster_images_in_use"), 10.0);

    // Deleted: the image leaves the set, the gauge and the report.
    api.pod_event("DELETED", "late-1", "one.test/test/late:1", 6001);
    poll_until(DEFAULT_TIMEOUT, "the deleted pod's image to leave", || {
        cache.metric("ocicache_cluster_images_in_use") == 9.0
    });
    assert_eq!(cached(&report(&cache), "one.test/test/late:1"), None);

    // The watcher asked like kube's: list every kind, then watch from the list's version.
    let seen = api.seen.lock().unwrap().clone();
    for path in ["/apis/apps/v1/daemonsets?", "/apis/batch/v1/cronjobs?", "/api/v1/nodes?"] {
        assert!(
            seen.iter().any(|s| s.starts_with(path) && s.contains("watch=true") && s.contains("resourceVersion=5100")),
            "{path}: {seen:?}"
        );
    }
}

#[test]
fn warm_kubernetes_does_one_pass_for_the_nodes_platforms() {
    let origin = Origin::start(&PUSHED);
    let api = FakeApi::start();
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(tmp.path());
    let cache_dir = tmp.path().join("cache");
    let out = run_output(
        ocicache_bin()
            .arg("--cache-dir")
            .arg(&cache_dir)
            .args(["--upstream", &origin.upstream(), "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["warm", "--kubernetes"]),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "missing:1 fails the run:\n{stdout}\n{stderr}");
    assert!(stderr.contains("platforms of the cluster's nodes: linux/amd64, linux/arm64"), "{stderr}");
    assert!(stderr.contains("\"One.Test/Bad Name:1\" is not an image reference"), "{stderr}");
    for name in PUSHED {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("one.test/test/{name}:1 ")))
            .unwrap_or_else(|| panic!("{name}: {stdout}"));
        assert!(row.ends_with(" ok"), "{row}");
    }
    let multi = stdout.lines().find(|l| l.starts_with("one.test/test/multi:1")).unwrap();
    assert!(multi.contains("linux/amd64, linux/arm64") && !multi.contains("s390x"), "{multi}");
    // Nothing is watched in one pass: only list requests.
    assert!(api.seen.lock().unwrap().iter().all(|s| !s.contains("watch=")), "one pass only lists");
}

#[test]
fn warm_from_kubectl_output_then_containerd_pulls_every_image_with_the_origin_stopped() {
    let mut origin = Origin::start(&["pod-app", "pod-init", "pod-debug", "multi", "sts"]);
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let pods = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/kubernetes/kubectl-get-pods.json");
    let status =
        |dir: &Path| run_output(ocicache_bin().arg("--cache-dir").arg(dir).arg("status").arg("--from-file").arg(&pods));

    let before = status(&cache_dir);
    assert_eq!(before.status.code(), Some(1), "nothing cached yet: {}", text(&before).0);

    let out = run_output(
        ocicache_bin()
            .arg("--cache-dir")
            .arg(&cache_dir)
            .args(["--upstream", &origin.upstream(), "warm", "--from-file"])
            .arg(&pods),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "warm --from-file failed:\n{stdout}\n{stderr}");
    let images: Vec<&str> = stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(
        images,
        [
            "one.test/test/pod-app:1",
            "one.test/test/pod-init:1",
            "one.test/test/pod-debug:1",
            "one.test/test/multi:1",
            "one.test/test/sts:1"
        ],
        "containers, init and ephemeral containers of every pod, each once:\n{stdout}"
    );

    let after = status(&cache_dir);
    let (report, _) = text(&after);
    assert!(after.status.success(), "everything cached:\n{report}");
    assert!(report.contains("5 image(s) in use, 0 not cached"), "{report}");

    origin.registry.stop();
    let cache = Cache::start_in(&cache_dir, &["--upstream", &origin.upstream()]);
    // Without --warm-from-cluster there is no list of images in use to report.
    let page = http_request(&cache.addr(), "GET", "/status", &[]);
    assert_eq!(page.status, 404);
    assert!(String::from_utf8_lossy(&page.body).contains("--warm-from-cluster"));
    let ctrd = Containerd::start();
    ctrd.mirror_all_to(&cache.addr());
    ctrd.block_fallback("one.test");
    for image in
        ["one.test/test/pod-app:1", "one.test/test/pod-init:1", "one.test/test/pod-debug:1", "one.test/test/sts:1"]
    {
        ctrd.pull_ok(image, &[]);
    }
    for platform in ["linux/amd64", "linux/arm64", "linux/s390x"] {
        ctrd.pull_ok("one.test/test/multi:1", &["--platform", platform]);
    }
    let content = ctrd.content();
    for arch in ["amd64", "arm64", "s390x"] {
        assert!(content.contains(&origin.arch_layer(arch)), "{arch} layer missing from containerd");
    }
}

#[test]
fn with_htpasswd_warming_needs_no_user_and_status_needs_one() {
    let origin = Origin::start(&PUSHED);
    let api = FakeApi::start();
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(tmp.path());
    let out = run_ok(std::process::Command::new("htpasswd").args(["-Bbn", "alice", "pw"]));
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let cache = Cache::start(&[
        "--upstream",
        &origin.upstream(),
        "--htpasswd",
        htpasswd.to_str().unwrap(),
        "--warm-from-cluster",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    const ALICE: &str = "Basic YWxpY2U6cHc=";

    // The list of images in use is as private as the content: /status asks for a user.
    let anonymous = http_request(&cache.addr(), "GET", "/status", &[]);
    assert_eq!(anonymous.status, 401);
    // Warming itself goes through the cache's loopback listener with its own secret.
    poll_for(WARM_TIMEOUT, "every pushed image to be cached behind --htpasswd", || {
        let r =
            http_request(&cache.addr(), "GET", "/status", &[("Authorization", ALICE), ("Accept", "application/json")]);
        assert_eq!(r.status, 200);
        let report: Report = serde_json::from_slice(&r.body).unwrap();
        PUSHED.iter().all(|n| cached(&report, &format!("one.test/test/{n}:1")) == Some(true)).then_some(())
    });
    let out = run_output(ocicache_bin().args(["status", "--server", &format!("http://alice:pw@{}", cache.addr())]));
    assert!(text(&out).0.contains("9 image(s) in use, 1 not cached"), "{:?}", text(&out));
    let out = run_output(ocicache_bin().args(["status", "--server", &format!("http://{}", cache.addr())]));
    assert!(!out.status.success() && text(&out).1.contains("401"), "{:?}", text(&out));
}
