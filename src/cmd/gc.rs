//! `ocicache gc`: applies the eviction policy (`--max-size`, `--max-age`) to a cache directory
//! offline and prints what it frees.

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Print what would be removed without removing it
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(_args: GcArgs, _config: crate::Config) -> anyhow::Result<()> {
    anyhow::bail!("ocicache gc is not implemented yet")
}
