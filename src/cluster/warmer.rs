//! `serve --warm-from-cluster`: warms every image the cluster uses, in the background of a serving
//! cache, as the watchers report them — a few at a time, failed ones again with backoff, cached
//! ones again hourly so their tags stay fresh — and keeps the "not cached" gauge from the store.
//!
//! Warming is the `warm` pipeline, pointed at a second listener on an ephemeral 127.0.0.1 port
//! that serves the same cache. That listener takes neither TLS nor the operator's `--htpasswd`
//! users: it checks a random per-process password instead and drops it before the request reaches
//! the cache, so it is never forwarded to an origin and other processes on the host (or sidecars
//! in the pod) cannot use the port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::status::{self, ImageStatus, InvalidRow, Report};
use super::ImagesInUse;
use crate::cmd::warm::BackgroundWarmer;
use crate::server::AppState;

/// Images warmed at once: the cluster's images arrive in bursts (a new node pool, a cluster
/// start) and must not crowd out the pulls the cache serves meanwhile.
const CONCURRENCY: usize = 2;
/// First retry of a failed warm; doubles per failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How often the store is checked for images that went missing (eviction, a wiped disk).
const RECHECK_EVERY: Duration = Duration::from_secs(60);
/// A cached image is warmed again after this, so its tag is confirmed with the origin while the
/// origin is up and an outage finds it recent.
const REWARM_EVERY: Duration = Duration::from_secs(3600);
/// Earliest re-warm of an image found missing after it was warmed.
const REWARM_UNCACHED: Duration = Duration::from_secs(600);
/// Images with their own `last warm` series; past this only the totals are exported.
const MAX_IMAGE_SERIES: usize = 1000;

/// What the warmer knows of one image in use.
#[derive(Debug, Default, Clone)]
struct WarmState {
    running: bool,
    /// The last store check found it whole, or the last warm succeeded.
    cached: bool,
    failures: u32,
    next_try: Option<Instant>,
    /// When the last warm succeeded.
    warmed_at: Option<Instant>,
    last: Option<String>,
    series: bool,
}

/// The cluster side of a serving cache: the images in use and what warming did with each.
pub struct ClusterWarm {
    pub images: Arc<ImagesInUse>,
    state: Arc<AppState>,
    warms: Mutex<HashMap<String, WarmState>>,
    series: Mutex<usize>,
}

/// Stops the background tasks when the server stops.
pub struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Connects to the cluster, starts the watchers, the loopback listener and the warm loop.
pub async fn start(
    state: Arc<AppState>,
    kubeconfig: Option<&std::path::Path>,
) -> Result<(Arc<ClusterWarm>, Running), String> {
    let client = super::client(kubeconfig).await?;
    let images = ImagesInUse::new(state.metrics.clone());
    let mut tasks = super::watch::spawn(client, images.clone());

    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1 for cluster warming: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let password = format!("{:032x}", rand::random::<u128>());
    let app = crate::server::loopback_router(state.clone(), "ocicache-warm".into(), password.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "cluster warming listener stopped");
        }
    }));
    let warmer = BackgroundWarmer::new(format!("http://127.0.0.1:{port}"), "ocicache-warm".into(), password)
        .map_err(|e| format!("{e:#}"))?;
    let cluster = Arc::new(ClusterWarm { images, state, warms: Mutex::default(), series: Mutex::new(0) });
    tasks.push(tokio::spawn(cluster.clone().run(Arc::new(warmer))));
    tracing::info!("warming the images the cluster runs");
    Ok((cluster, Running(tasks)))
}

impl ClusterWarm {
    fn warms(&self) -> std::sync::MutexGuard<'_, HashMap<String, WarmState>> {
        self.warms.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>, warmer: Arc<BackgroundWarmer>) {
        let mut tasks: JoinSet<(String, Result<(), String>)> = JoinSet::new();
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = self.images.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = self.start_due(&mut tasks, &warmer);
            let sleep = tokio::time::sleep_until(wake.unwrap_or_else(|| Instant::now() + RECHECK_EVERY));
            tokio::select! {
                _ = &mut changed => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((image, result)) = done {
                        self.record(&image, result);
                    }
                }
                _ = recheck.tick() => self.recheck().await,
                _ = sleep => {}
            }
        }
    }

    /// Drops what left the set, starts warms that are due; returns the next retry time.
    fn start_due(
        &self,
        tasks: &mut JoinSet<(String, Result<(), String>)>,
        warmer: &Arc<BackgroundWarmer>,
    ) -> Option<Instant> {
        let in_use = self.images.images();
        let platforms = Arc::new(self.images.platforms());
        let now = Instant::now();
        let mut warms = self.warms();
        let keep: std::collections::HashSet<String> = in_use.iter().map(ToString::to_string).collect();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        warms.retain(|image, w| {
            let stays = keep.contains(image);
            if !stays && w.series {
                self.state.metrics.cluster_forget_image(image);
                *series -= 1;
            }
            stays
        });
        drop(series);
        let mut running = warms.values().filter(|w| w.running).count();
        let mut wake: Option<Instant> = None;
        for image in &in_use {
            warms.entry(image.to_string()).or_default();
        }
        let not_cached = warms.values().filter(|w| !w.cached).count();
        self.state.metrics.cluster_images_not_cached.set(not_cached as i64);
        for image in in_use {
            let name = image.to_string();
            let Some(w) = warms.get_mut(&name) else { continue };
            if w.running {
                continue;
            }
            if let Some(at) = w.next_try.filter(|at| *at > now) {
                wake = Some(wake.map_or(at, |x| x.min(at)));
                continue;
            }
            if running >= CONCURRENCY {
                break;
            }
            running += 1;
            w.running = true;
            let (warmer, platforms) = (warmer.clone(), platforms.clone());
            tasks.spawn(async move {
                let result = warmer.warm(image, &platforms).await;
                (name, result)
            });
        }
        wake
    }

    fn record(&self, image: &str, result: Result<(), String>) {
        let mut warms = self.warms();
        let Some(w) = warms.get_mut(image) else { return };
        w.running = false;
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                tracing::info!(image, "warmed an image the cluster uses");
                w.cached = true;
                w.failures = 0;
                w.warmed_at = Some(Instant::now());
                w.next_try = Some(Instant::now() + REWARM_EVERY);
                w.last = Some("ok".into());
            }
            Err(e) => {
                w.failures = w.failures.saturating_add(1);
                let backoff = FIRST_BACKOFF.saturating_mul(1 << w.failures.min(10).saturating_sub(1)).min(MAX_BACKOFF);
                tracing::warn!(image, error = %e, retry_in_s = backoff.as_secs(), "warming an image the cluster uses failed");
                w.next_try = Some(Instant::now() + backoff);
                w.last = Some(e);
            }
        }
        if !w.series {
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if *series < MAX_IMAGE_SERIES {
                *series += 1;
                w.series = true;
            }
        }
        self.state.metrics.cluster_warm_result(image, ok, w.series);
    }

    /// Checks every image in use against the store: one evicted meanwhile is warmed again now.
    async fn recheck(&self) {
        let images = self.images.images();
        let checked = status::check_all(&**self.state.cache.store(), &images, &self.images.platforms()).await;
        let mut warms = self.warms();
        for s in checked {
            if let Some(w) = warms.get_mut(&s.image) {
                if w.cached && !s.cached && !w.running {
                    // Evicted or lost since: warm again soon. Not at once: an image the cache
                    // never keeps (a tag matching --skip-tags) would otherwise be pulled every
                    // minute.
                    let soon = w.warmed_at.map_or_else(Instant::now, |at| at + REWARM_UNCACHED);
                    w.next_try = Some(w.next_try.map_or(soon, |t| t.min(soon)));
                }
                w.cached = s.cached;
            }
        }
    }

    /// The report `/status` serves: every image in use, checked against the store now.
    pub async fn report(&self) -> Report {
        let images = self.images.images();
        let platforms = self.images.platforms();
        let mut rows: Vec<ImageStatus> = status::check_all(&**self.state.cache.store(), &images, &platforms).await;
        let warms = self.warms();
        for row in &mut rows {
            row.last_warm = warms.get(&row.image).and_then(|w| w.last.clone());
        }
        drop(warms);
        Report {
            platforms: platforms.iter().map(ToString::to_string).collect(),
            complete: self.images.synced(),
            images: rows,
            invalid: self
                .images
                .invalid()
                .into_iter()
                .map(|i| InvalidRow { object: i.object, reference: i.reference, reason: i.reason })
                .collect(),
        }
    }
}
