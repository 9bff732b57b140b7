//! Every Prometheus metric ocicache exports, registered in one place. Keeps the seed's
//! `containerd_cache_total{result="hit|miss|skip"}` so existing dashboards keep working.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Skip => "skip",
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
    pub inflight_downloads: Gauge,
    pub requests_in_progress: Gauge,
    pub resumes: Counter,
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
        registry.register(
            "ocicache_http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        let bytes_from_upstream = Counter::default();
        registry.register(
            "ocicache_upstream_bytes",
            "Blob bytes downloaded from origins",
            bytes_from_upstream.clone(),
        );
        let bytes_from_cache = Counter::default();
        registry.register(
            "ocicache_cache_served_bytes",
            "Blob bytes served from the cache",
            bytes_from_cache.clone(),
        );
        let inflight_downloads = Gauge::default();
        registry.register(
            "ocicache_inflight_downloads",
            "Blob downloads in progress",
            inflight_downloads.clone(),
        );
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
        Metrics {
            registry,
            containerd_cache,
            cache_requests,
            http_requests,
            bytes_from_upstream,
            bytes_from_cache,
            inflight_downloads,
            requests_in_progress,
            resumes,
        }
    }

    pub fn cache_result(&self, registry: &str, kind: &'static str, result: CacheResult) {
        self.containerd_cache
            .get_or_create(&vec![("result", result.as_str().to_owned())])
            .inc();
        self.cache_requests
            .get_or_create(&vec![
                ("registry", registry.to_owned()),
                ("kind", kind.to_owned()),
                ("result", result.as_str().to_owned()),
            ])
            .inc();
    }

    pub fn http_request(&self, route: &'static str, method: &str, status: u16) {
        self.http_requests
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
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
