//! `ocicache warm`: pulls listed images into the cache ahead of time (every platform of an index
//! unless `--platform`), with progress, so nodes boot from the cache even when origins are down.

use std::path::PathBuf;

use crate::Config;

#[derive(Debug, clap::Args)]
pub struct WarmArgs {
    /// Images to pull, e.g. docker.io/library/alpine:3.20 or ghcr.io/org/app@sha256:...
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Read images from a file, one per line (# comments allowed)
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only these platforms of multi-platform images, e.g. linux/amd64,linux/arm64
    #[arg(long, value_delimiter = ',', value_name = "OS/ARCH")]
    pub platform: Vec<String>,
    /// Images pulled at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrency: usize,
    /// Pull through this running cache (e.g. http://localhost:3000) instead of filling the
    /// configured cache directory directly
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// Returns whether every image was warmed.
pub async fn run(_args: WarmArgs, _config: Config) -> anyhow::Result<bool> {
    anyhow::bail!("ocicache warm is not implemented yet")
}
