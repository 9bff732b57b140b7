//! `ocicache hosts`: writes the containerd `hosts.toml` files (or docker / podman configuration) that
//! send a node's pulls through a cache.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostsFormat {
    Containerd,
    Docker,
    Podman,
}

#[derive(Debug, clap::Args)]
pub struct HostsArgs {
    /// URL of the cache as the node reaches it, e.g. http://localhost:30123
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// Registry to configure (repeatable); without it, the `_default` mirror for every registry
    #[arg(long = "registry", value_name = "NAME")]
    pub registries: Vec<String>,
    /// Write the `_default` mirror (also the default when no --registry is given)
    #[arg(long = "default")]
    pub default: bool,
    /// Directory to write into (containerd: /etc/containerd/certs.d); prints to stdout when absent
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// What to generate
    #[arg(long, value_enum, default_value = "containerd")]
    pub format: HostsFormat,
}

pub fn run(_args: HostsArgs) -> anyhow::Result<()> {
    anyhow::bail!("ocicache hosts is not implemented yet")
}
