//! ocicache: a pull-through cache for OCI container registries. One endpoint serves every origin
//! registry (containerd's `?ns=`, or the registry host in the path), fetches each piece of content
//! once, verifies it against its digest, and serves every later pull from local disk.
//!
//! `run` takes an already bound listener so tests (and embedders) choose the address, and a shutdown
//! future so they choose when it stops.

pub mod bounded;
pub mod cache;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod error;
pub mod metrics;
pub mod oci;
pub mod server;
pub mod store;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use error::Error;

/// Builds the application state from a validated config: opens the store, builds the origin client.
pub async fn build(config: &Config) -> Result<Arc<server::AppState>, String> {
    let metrics = Arc::new(metrics::Metrics::new());
    let store = store::open(&config.cache_dir, config.storage.as_deref(), &metrics).await?;
    let sources = upstream::sources::CredentialSources::new(
        config.credential_helpers.clone(),
        config.creds_file.as_deref(),
        config.docker_config.as_deref(),
        config.credential_ttl,
    )?;
    let origin = upstream::OriginClient::new(
        config.registries.clone(),
        sources,
        &config.origin_tls,
        config.origin.clone(),
        metrics.clone(),
    )?;
    let mut cache = cache::Cache::new(
        store,
        origin,
        config.policy.clone(),
        config.auth_cache_ttl,
        config.max_upstream_concurrency,
        metrics.clone(),
    );
    if let Some(file) = &config.peer_secret_file {
        let secret = config::read_peer_secret(file).map_err(|e| format!("--peer-secret-file {e}"))?;
        cache.enable_peering(&secret, config.advertise_url.as_ref())?;
        if let Some(url) = &config.advertise_url {
            tracing::info!(advertise = %url, "blob downloads coordinated with the replicas sharing the store");
        }
    }
    let htpasswd = config.htpasswd.as_deref().map(server::auth::Htpasswd::open).transpose()?;
    let sendfile = config.tls_cert.is_none().then(|| Arc::new(server::sendfile::Handoffs::new(&metrics)));
    Ok(Arc::new(server::AppState {
        cache,
        metrics,
        default_registry: config.default_registry.clone(),
        htpasswd,
        metrics_auth: config.metrics_auth,
        ready: std::sync::atomic::AtomicBool::new(true),
        cluster: std::sync::OnceLock::new(),
        sendfile,
        redirects: config.redirect_blobs.map(|ttl| server::redirect::Redirects {
            ttl,
            skip_user_agent: config.redirect_blobs_skip_user_agent.clone(),
        }),
    }))
}

/// Serves the cache on `listener` (with TLS when configured) until `shutdown` completes. Then:
/// `/readyz` turns unready, new connections stop after `--shutdown-delay`, in-flight responses and
/// downloads get up to `--shutdown-timeout` to finish, and no temp file of this process is left.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let state = build(&config).await?;
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| config.listen.to_string());
    tracing::info!(
        listen = %bound,
        store = %state.cache.store().describe(),
        version = env!("CARGO_PKG_VERSION"),
        "ocicache serving"
    );
    state.cache.store().start_eviction(config.eviction, state.metrics.clone());
    // Dropped once serving stops, which stops the watchers and the warm loop (no new downloads
    // while the running ones finish).
    let cluster_tasks = if config.warm_from_cluster {
        let (cluster, running) = cluster::warmer::start(state.clone(), config.kubeconfig.as_deref()).await?;
        let _ = state.cluster.set(cluster);
        Some(running)
    } else {
        None
    };
    let app = server::router(state.clone());
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let (signal_state, delay) = (state.clone(), config.shutdown_delay);
    let signal = async move {
        shutdown.await;
        signal_state.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(delay_s = delay.as_secs_f64(), "shutting down: unready, then finishing in-flight requests");
        tokio::time::sleep(delay).await;
        let _ = fired_tx.send(());
    };
    let serve = async {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = server::tls::server_config(cert, key)?;
                let listener = server::tls::TlsListener::new(listener, tls).map_err(|e| e.to_string())?;
                axum::serve(listener, app).with_graceful_shutdown(signal).await
            }
            _ => {
                let handoffs = state.sendfile.clone().unwrap_or_default();
                let listener = server::sendfile::SendfileListener::new(listener, handoffs);
                axum::serve(listener, app).with_graceful_shutdown(signal).await
            }
        }
        .map_err(|e| format!("server error: {e}"))
    };
    let timeout = config.shutdown_timeout;
    let deadline = async move {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(deadline);
    let result = tokio::select! {
        r = serve => r,
        _ = &mut deadline => {
            tracing::warn!(timeout_s = timeout.as_secs(), "shutdown timeout: closing the remaining connections");
            Ok(())
        }
    };
    drop(cluster_tasks);
    tokio::select! {
        _ = state.cache.downloads_finished() => {}
        _ = &mut deadline => tracing::warn!("shutdown timeout: abandoning running downloads"),
    }
    state.cache.store().shutdown().await;
    result
}
