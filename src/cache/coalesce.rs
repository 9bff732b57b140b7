//! Coalescing of identical in-flight requests: while one upstream request for a key runs, later
//! callers for the same key wait for its result instead of sending their own. The work runs in its own
//! task, so it completes (and fills the cache) even if the caller that started it goes away.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};

type SharedResult<V, E> = Shared<BoxFuture<'static, Result<V, Arc<E>>>>;

pub struct Coalesce<K, V, E> {
    inflight: Arc<Mutex<HashMap<K, SharedResult<V, E>>>>,
}

impl<K, V, E> Default for Coalesce<K, V, E> {
    fn default() -> Self {
        Coalesce { inflight: Arc::default() }
    }
}

impl<K, V, E> Coalesce<K, V, E>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Runs `work` for `key` unless a run is already in flight, and returns that run's result.
    pub async fn run<F>(&self, key: K, work: F) -> Result<V, Arc<E>>
    where
        F: Future<Output = Result<V, E>> + Send + 'static,
    {
        let shared = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = map.get(&key) {
                s.clone()
            } else {
                let inflight = self.inflight.clone();
                let k = key.clone();
                let task = tokio::spawn(async move {
                    let r = work.await.map_err(Arc::new);
                    inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                    r
                });
                let fut: BoxFuture<'static, Result<V, Arc<E>>> = async move {
                    match task.await {
                        Ok(r) => r,
                        Err(join) => std::panic::resume_unwind(join.into_panic()),
                    }
                }
                .boxed();
                let s = fut.shared();
                map.insert(key, s.clone());
                s
            }
        };
        shared.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let c: Arc<Coalesce<&'static str, u32, String>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (c, runs, rx) = (c.clone(), runs.clone(), rx.clone());
            handles.push(tokio::spawn(async move {
                c.run("k", async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if let Some(rx) = rx.lock().await.take() {
                        let _ = rx.await;
                    }
                    Ok(7)
                })
                .await
            }));
        }
        // Wait until all eight callers hold the one shared run (plus the map's own handle).
        loop {
            let count = c.inflight.lock().unwrap().get("k").and_then(|s| s.strong_count());
            if count == Some(9) {
                break;
            }
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // After it finished, a new call runs again.
        let r2 = c.run("k", async { Ok(8) }).await.unwrap();
        assert_eq!(r2, 8);
    }
}
