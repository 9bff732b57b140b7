//! `ocicache gc`: applies the eviction policy (`--max-size`, `--max-age`) to a cache directory
//! offline and prints what it frees. Run it while ocicache is stopped, or alongside: removing a file
//! that is being served does not disturb its reader.

use std::time::SystemTime;

use crate::store::eviction::{evict, plan, scan};
use crate::store::Disk;

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Print what would be removed without removing it
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: GcArgs, config: crate::Config) -> anyhow::Result<()> {
    if !config.eviction.is_active() {
        anyhow::bail!("nothing to do: give --max-size and/or --max-age");
    }
    let store = Disk::open(&config.cache_dir)
        .map_err(|e| anyhow::anyhow!("cannot open cache directory {}: {e}", config.cache_dir.display()))?;
    let all = scan(&store);
    let total: u64 = all.iter().map(|c| c.size).sum();
    let count = all.len();
    let victims = plan(all, &config.eviction, None, SystemTime::now());
    let planned: u64 = victims.iter().map(|c| c.size).sum();
    if args.dry_run {
        for v in &victims {
            println!("would remove {} ({} bytes)", v.path.display(), v.size);
        }
        println!(
            "dry run: would free {} of {count} files, {planned} of {total} bytes ({})",
            victims.len(),
            config.cache_dir.display()
        );
        return Ok(());
    }
    let (files, bytes) = evict(&store, &victims);
    println!(
        "freed {files} of {count} files, {bytes} of {total} bytes; {} bytes remain ({})",
        total - bytes,
        config.cache_dir.display()
    );
    Ok(())
}
