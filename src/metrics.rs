//! Every Prometheus metric ocicache exports, registered in one place. Keeps the seed's
//! `containerd_cache_total{result="hit|miss|skip"}` so existing dashboards keep working.
//!
//! Every label takes values from a bounded set, since each value is a series kept for the life of the
//! process: methods are `GET`, `HEAD` or `other`; `registry` and `endpoint` values come from
//! `Registries::label` / `Registries::endpoint_label` (a configured name, or the `*.domain` pattern
//! that allowed an invented one), never from a name as the client sent it.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// How a request was answered, for `containerd_cache_total` and the per-registry counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache.
    Hit,
    /// Fetched from the origin and saved.
    Miss,
    /// Fetched from the origin and not saved (skip-tags, --cache-manifests=false, private content).
    Skip,
    /// Served from the cache because the origin failed (stale-if-error).
    Stale,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Skip => "skip",
            CacheResult::Stale => "stale",
        }
    }
}

/// Why a download did not (or no longer) read another replica's download, for
/// `ocicache_peer_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFallback {
    /// The owner could not be connected to, or did not answer in time.
    Unreachable,
    /// The owner's bytes stopped arriving.
    Stalled,
    /// The lease had expired: its owner stopped renewing it (taken over).
    Expired,
    /// The owner answered with an error, or its body broke off.
    Error,
}

impl PeerFallback {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerFallback::Unreachable => "unreachable",
            PeerFallback::Stalled => "stalled",
            PeerFallback::Expired => "expired",
            PeerFallback::Error => "error",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    containerd_cache: Family<Labels, Counter>,
    cache_requests: Family<Labels, Counter>,
    http_requests: Family<Labels, Counter>,
    pub bytes_from_upstream: Counter,
    pub bytes_from_cache: Counter,
    pub sendfile_bytes: Counter,
    /// Blob GETs answered with a redirect to a signed URL of the object store (`--redirect-blobs`).
    pub blob_redirects: Counter,
    pub inflight_downloads: Gauge,
    pub requests_in_progress: Gauge,
    pub resumes: Counter,
    /// Blob downloads this replica read from another replica's running download (cluster-wide
    /// single flight) instead of the origin.
    pub peer_fills: Counter,
    /// Blob bytes read from other replicas' downloads.
    pub peer_bytes: Counter,
    peer_fallbacks: Family<Labels, Counter>,
    revalidations: Family<Labels, Counter>,
    endpoint_failures: Family<Labels, Counter>,
    circuit_open: Family<Labels, Gauge>,
    ratelimit_limit: Family<Labels, Gauge>,
    ratelimit_remaining: Family<Labels, Gauge>,
    upstream_latency: Family<Labels, Histogram>,
    store_bytes: Gauge,
    store_entries: Gauge,
    evictions: Counter,
    store_corrupt: Family<Labels, Counter>,
    evicted_bytes: Counter,
    /// Images the cluster's workloads reference (`--warm-from-cluster`).
    pub cluster_images_in_use: Gauge,
    /// Of those, images a node could not pull from the cache alone right now.
    pub cluster_images_not_cached: Gauge,
    /// 1 when the last background warm of an image succeeded, 0 when it failed; one series per
    /// image in use, capped by the warmer.
    cluster_image_warm_ok: Family<Labels, Gauge>,
    cluster_warms: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let containerd_cache = Family::<Labels, Counter>::default();
        registry.register(
            "containerd_cache",
            "Requests by cache result (hit, miss, skip), as containerd-registry-cache counts them",
            containerd_cache.clone(),
        );
        let cache_requests = Family::<Labels, Counter>::default();
        registry.register(
            "ocicache_cache_requests",
            "Manifest and blob requests by origin registry, kind and cache result",
            cache_requests.clone(),
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register("ocicache_http_requests", "HTTP requests by route, method and status", http_requests.clone());
        let bytes_from_upstream = Counter::default();
        registry.register("ocicache_upstream_bytes", "Blob bytes downloaded from origins", bytes_from_upstream.clone());
        let bytes_from_cache = Counter::default();
        registry.register("ocicache_cache_served_bytes", "Blob bytes served from the cache", bytes_from_cache.clone());
        let sendfile_bytes = Counter::default();
        registry.register(
            "ocicache_sendfile_bytes",
            "Blob bytes the kernel sent from stored files (sendfile), without passing through ocicache",
            sendfile_bytes.clone(),
        );
        let blob_redirects = Counter::default();
        registry.register(
            "ocicache_blob_redirects",
            "Blob GETs answered with a 307 to a signed URL of the object store, which then sends the bytes (--redirect-blobs)",
            blob_redirects.clone(),
        );
        let inflight_downloads = Gauge::default();
        registry.register("ocicache_inflight_downloads", "Blob downloads in progress", inflight_downloads.clone());
        let requests_in_progress = Gauge::default();
        registry.register(
            "ocicache_requests_in_progress",
            "/v2 requests being answered (including ones waiting for an origin)",
            requests_in_progress.clone(),
        );
        let resumes = Counter::default();
        registry.register(
            "ocicache_download_resumes",
            "Blob downloads resumed after the origin dropped",
            resumes.clone(),
        );
        let peer_fills = Counter::default();
        registry.register(
            "ocicache_peer_fills",
            "Blob downloads read whole from another replica's running download: origin downloads avoided",
            peer_fills.clone(),
        );
        let peer_bytes = Counter::default();
        registry.register(
            "ocicache_peer_bytes",
            "Blob bytes read from other replicas' running downloads (not counted in ocicache_upstream_bytes)",
            peer_bytes.clone(),
        );
        let peer_fallbacks = Family::<Labels, Counter>::default();
        registry.register(
            "ocicache_peer_fallbacks",
            "Blob downloads that went to the origin although another replica held the lease, by reason \
             (unreachable, stalled, expired, error)",
            peer_fallbacks.clone(),
        );
        let revalidations = Family::<Labels, Counter>::default();
        registry.register(
            "ocicache_revalidations",
            "Tag revalidations with the origin (HEAD) by registry and outcome (unchanged, changed)",
            revalidations.clone(),
        );
        let endpoint_failures = Family::<Labels, Counter>::default();
        registry.register(
            "ocicache_endpoint_failures",
            "Origin endpoint failures (unreachable, timeout, 5xx) by registry and endpoint",
            endpoint_failures.clone(),
        );
        let circuit_open = Family::<Labels, Gauge>::default();
        registry.register(
            "ocicache_endpoint_circuit_open",
            "1 while an origin endpoint is skipped after failing",
            circuit_open.clone(),
        );
        let ratelimit_limit = Family::<Labels, Gauge>::default();
        registry.register(
            "ocicache_upstream_ratelimit_limit",
            "Last ratelimit-limit an origin reported (Docker Hub pulls per window)",
            ratelimit_limit.clone(),
        );
        let ratelimit_remaining = Family::<Labels, Gauge>::default();
        registry.register(
            "ocicache_upstream_ratelimit_remaining",
            "Last ratelimit-remaining an origin reported",
            ratelimit_remaining.clone(),
        );
        let upstream_latency =
            Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "ocicache_upstream_request_duration_seconds",
            "Time to the origin's response headers by registry and status",
            upstream_latency.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register("ocicache_store_bytes", "Bytes of blobs and manifests in the store", store_bytes.clone());
        let store_entries = Gauge::default();
        registry.register("ocicache_store_entries", "Blob and manifest files in the store", store_entries.clone());
        let store_corrupt = Family::<Labels, Counter>::default();
        registry.register(
            "ocicache_store_corrupt",
            "Stored blobs and manifests found not to match their digest when read, by tier (disk, bucket); each was removed",
            store_corrupt.clone(),
        );
        let evictions = Counter::default();
        registry.register("ocicache_evictions", "Files evicted (--max-size, --max-age, disk full)", evictions.clone());
        let evicted_bytes = Counter::default();
        registry.register("ocicache_evicted_bytes", "Bytes evicted", evicted_bytes.clone());
        let cluster_images_in_use = Gauge::default();
        registry.register(
            "ocicache_cluster_images_in_use",
            "Images the cluster's pods and workload templates reference (--warm-from-cluster)",
            cluster_images_in_use.clone(),
        );
        let cluster_images_not_cached = Gauge::default();
        registry.register(
            "ocicache_cluster_images_not_cached",
            "Images in use whose manifest or blobs the cache does not hold",
            cluster_images_not_cached.clone(),
        );
        let cluster_image_warm_ok = Family::<Labels, Gauge>::default();
        registry.register(
            "ocicache_cluster_image_warm_ok",
            "1 if the last background warm of an image in use succeeded, 0 if it failed",
            cluster_image_warm_ok.clone(),
        );
        let cluster_warms = Family::<Labels, Counter>::default();
        registry.register(
            "ocicache_cluster_warms",
            "Background warms of images in use by result",
            cluster_warms.clone(),
        );
        Metrics {
            cluster_images_in_use,
            cluster_images_not_cached,
            cluster_image_warm_ok,
            cluster_warms,
            store_bytes,
            store_entries,
            evictions,
            store_corrupt,
            evicted_bytes,
            revalidations,
            endpoint_failures,
            circuit_open,
            ratelimit_limit,
            ratelimit_remaining,
            upstream_latency,
            registry,
            containerd_cache,
            cache_requests,
            http_requests,
            bytes_from_upstream,
            bytes_from_cache,
            sendfile_bytes,
            blob_redirects,
            inflight_downloads,
            requests_in_progress,
            resumes,
            peer_fills,
            peer_bytes,
            peer_fallbacks,
        }
    }

    pub fn cache_result(&self, registry: &str, kind: &'static str, result: CacheResult) {
        self.containerd_cache.get_or_create(&vec![("result", result.as_str().to_owned())]).inc();
        self.cache_requests
            .get_or_create(&vec![
                ("registry", registry.to_owned()),
                ("kind", kind.to_owned()),
                ("result", result.as_str().to_owned()),
            ])
            .inc();
    }

    /// `method` is any token a client sent; only `GET` and `HEAD` are served, every other method is
    /// counted as `other` so invented methods cannot add series.
    pub fn http_request(&self, route: &'static str, method: &http::Method, status: u16) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::HEAD => "HEAD",
            _ => "other",
        };
        self.http_requests
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// A download gave up on (or never tried) the replica holding its lease; `reason` is one of a
    /// fixed set.
    pub fn peer_fallback(&self, reason: PeerFallback) {
        self.peer_fallbacks.get_or_create(&vec![("reason", reason.as_str().to_owned())]).inc();
    }

    pub fn revalidation(&self, registry: &str, changed: bool) {
        let outcome = if changed { "changed" } else { "unchanged" };
        self.revalidations
            .get_or_create(&vec![("registry", registry.to_owned()), ("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn endpoint_failed(&self, registry: &str, endpoint: &str) {
        let labels = vec![("registry", registry.to_owned()), ("endpoint", endpoint.to_owned())];
        self.endpoint_failures.get_or_create(&labels).inc();
        self.circuit_open.get_or_create(&labels).set(1);
    }

    pub fn endpoint_recovered(&self, registry: &str, endpoint: &str) {
        let labels = vec![("registry", registry.to_owned()), ("endpoint", endpoint.to_owned())];
        self.circuit_open.get_or_create(&labels).set(0);
    }

    pub fn ratelimit(&self, registry: &str, limit: Option<i64>, remaining: Option<i64>) {
        let labels = vec![("registry", registry.to_owned())];
        if let Some(l) = limit {
            self.ratelimit_limit.get_or_create(&labels).set(l);
        }
        if let Some(r) = remaining {
            self.ratelimit_remaining.get_or_create(&labels).set(r);
        }
    }

    pub fn upstream_latency(&self, registry: &str, status: u16, seconds: f64) {
        self.upstream_latency
            .get_or_create(&vec![("registry", registry.to_owned()), ("status", status.to_string())])
            .observe(seconds);
    }

    pub fn store_usage(&self, bytes: u64, entries: u64) {
        self.store_bytes.set(bytes.min(i64::MAX as u64) as i64);
        self.store_entries.set(entries.min(i64::MAX as u64) as i64);
    }

    /// The counter of corrupt content found in one tier (`disk` or `bucket`), for the store to keep.
    pub fn store_corrupt(&self, tier: &'static str) -> Counter {
        self.store_corrupt.get_or_create(&vec![("tier", tier.to_owned())]).clone()
    }

    pub fn evicted(&self, files: u64, bytes: u64) {
        self.evictions.inc_by(files);
        self.evicted_bytes.inc_by(bytes);
    }

    /// A background warm of an image in use ended; `series` says whether the image has its own
    /// `ocicache_cluster_image_warm_ok` series (the warmer caps them).
    pub fn cluster_warm_result(&self, image: &str, ok: bool, series: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.cluster_warms.get_or_create(&vec![("result", result.to_owned())]).inc();
        if series {
            self.cluster_image_warm_ok.get_or_create(&vec![("image", image.to_owned())]).set(i64::from(ok));
        }
    }

    /// An image left the cluster: its series goes too.
    pub fn cluster_forget_image(&self, image: &str) {
        self.cluster_image_warm_ok.remove(&vec![("image", image.to_owned())]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// 5 ms to about 40 s: origin answers range from a loopback mirror to a struggling Docker Hub.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_series() {
        let m = Metrics::new();
        for i in 0..1_000 {
            let method = http::Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
            m.http_request("other", &method, 405);
        }
        m.http_request("manifest", &http::Method::GET, 200);
        m.http_request("manifest", &http::Method::HEAD, 200);
        let text = m.render();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("ocicache_http_requests_total")).collect();
        assert_eq!(series.len(), 3, "{series:#?}");
        assert!(text.contains(r#"method="other",status="405"} 1000"#), "{text}");
    }
}
