//! Warming what the cluster runs: which images a Kubernetes cluster's workloads reference, on which
//! platforms its nodes run, and whether the cache holds each of them — so an origin outage does not
//! stop a node from starting a pod the cluster already runs.
//!
//! `images` and `platforms` are pure (objects in, references out); `source` lists a cluster once or
//! reads `kubectl get -o json|yaml` output (`ocicache warm --kubernetes|--from-file`); `watch` keeps
//! the set of images in use up to date from list+watch (`--warm-from-cluster`); `warmer` warms that
//! set in the background of a serving cache; `status` tells, from the store alone, what is cached.

pub mod images;
pub mod platforms;
pub mod source;
pub mod status;
pub mod warmer;
pub mod watch;

pub use watch::ImagesInUse;

/// Distinct images tracked in serve mode. A cluster's operators choose its images, not its clients,
/// but a runaway CI namespace can still create endless unique tags: past this, new images are
/// logged and counted, not tracked.
pub const MAX_IMAGES: usize = 10_000;

/// Builds a Kubernetes client: from `kubeconfig` when given, else as kubectl would (in-cluster
/// service account, `$KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes configuration (not in a pod, no $KUBECONFIG or ~/.kube/config): {e}")
        })?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}
