//! ocicache against its peers, side by side in one run, all on 127.0.0.1 (bench/README.md):
//! the origin (docker-registry), ocicache on disk and on S3 (moto), docker-registry in proxy mode,
//! and nginx serving the same bytes as static files. Each figure is the median over runs of the
//! ratio to its peer within the same run, printed with its target.
//!
//! `cargo bench --bench compare -- [--quick] [--only ...]` (bench/run.sh). A bench target rather than
//! an example so it can reuse tests/support as is (which names the binary via `CARGO_BIN_EXE_*`,
//! set only for tests and benches); `cargo test` does not build it, `cargo clippy --all-targets` does.

#[path = "../../tests/support/mod.rs"]
mod support;

mod client;
mod report;
mod servers;
mod throttle;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};

use client::Target;
use report::{Figure, PeerRow, Samples, Server};
use servers::{Nginx, Ocicache, StaticSite, Storage};
use support::{Moto, Registry, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST};

const MIB: u64 = 1024 * 1024;
/// The registry name ocicache is asked for (path routing) and sent to the upstream for.
const REGISTRY: &str = "bench.test";
const REPO: &str = "bench/big";
/// Not `latest`: ocicache's default `--skip-tags` never caches that one.
const TAG: &str = "v1";
/// Targets (see bench/README.md).
const RSS_TARGET_MIB: f64 = 32.0;
const RSS_S3_ALLOWANCE_MIB: f64 = 16.0;
const RANGE_TARGET_S: f64 = 0.1;
/// The Range figure asks for this much of the start of the blob.
const RANGE_LEN: u64 = MIB;
/// ... when this share of the blob has come from the (throttled) origin.
const RANGE_AT: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// cold blob, 1 client, against the upstream asked directly
    Cold,
    /// cold blob, N clients at once, against docker-registry's proxy mode
    ColdMany,
    /// warm blob MiB/s, 1 and N clients, against nginx
    Warm,
    /// cached manifest HEAD and GET req/s, against nginx
    Manifests,
    /// Range of the first MiB while the blob's download is at ~20% (slow origin)
    Range,
    /// also ocicache with --storage s3:// (moto) in the cold, warm and manifest parts, against disk mode
    S3,
    /// N cold clients spread over 3 replicas on one bucket (peers on) against one replica: origin
    /// GETs and bytes, wall time
    Replicas,
}

/// Benchmark of ocicache against its peers (bench/README.md). Progress goes to stderr, the report to stdout.
#[derive(Debug, Parser)]
#[command(name = "compare")]
struct Opts {
    /// Runs of every figure; the tables show medians [default: 3, with --quick 1]
    #[arg(short = 'n', long)]
    runs: Option<usize>,
    /// Size of the blob (random bytes): 200MiB, 1GiB, 500MB, or bytes [default: 200MiB, with --quick 16MiB]
    #[arg(long, value_parser = parse_size)]
    blob_size: Option<u64>,
    /// Only these parts (comma-separated or repeated); peak RSS is reported from whatever ran.
    /// `s3` alone means cold, cold-many, warm and manifests with the S3 instance beside the disk one
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Small sizes and short runs, to check the tool itself in about a minute
    #[arg(long)]
    quick: bool,
    /// Clients of the "N clients" figures
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Connections of the manifest-rate figures
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of each manifest-rate measurement [default: 5, with --quick 1]
    #[arg(long)]
    duration: Option<f64>,
    /// MiB moved at least by each warm-throughput measurement [default: 2048, with --quick 64]
    #[arg(long)]
    warm_mib: Option<u64>,
    /// Seconds the throttled origin takes for the whole blob in the Range figure [default: 10, with --quick 3]
    #[arg(long)]
    fill_secs: Option<f64>,
    /// Passed by `cargo bench`; without it (`cargo test --benches`) nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        u => return Err(format!("unknown unit {u:?} in {s:?}")),
    };
    Ok((n * mult) as u64)
}

/// The options with every default filled in.
struct Plan {
    runs: usize,
    blob_size: u64,
    parts: Vec<Part>,
    clients: usize,
    connections: usize,
    duration: Duration,
    warm_bytes: u64,
    fill: Duration,
}

impl Plan {
    fn from(o: &Opts) -> anyhow::Result<Plan> {
        let quick = o.quick;
        let mut parts = o.only.clone();
        if parts.is_empty() {
            parts =
                vec![Part::Cold, Part::ColdMany, Part::Warm, Part::Manifests, Part::Range, Part::S3, Part::Replicas];
        } else if parts == [Part::S3] {
            parts = vec![Part::Cold, Part::ColdMany, Part::Warm, Part::Manifests, Part::S3];
        }
        let plan = Plan {
            runs: o.runs.unwrap_or(if quick { 1 } else { 3 }),
            blob_size: o.blob_size.unwrap_or(if quick { 16 * MIB } else { 200 * MIB }),
            parts,
            clients: o.clients,
            connections: o.connections,
            duration: Duration::from_secs_f64(o.duration.unwrap_or(if quick { 1.0 } else { 5.0 })),
            warm_bytes: o.warm_mib.unwrap_or(if quick { 64 } else { 2048 }) * MIB,
            fill: Duration::from_secs_f64(o.fill_secs.unwrap_or(if quick { 3.0 } else { 10.0 })),
        };
        if plan.blob_size < 4 * MIB {
            bail!("--blob-size must be at least 4MiB (the Range figure reads its first MiB at 20%)");
        }
        if plan.runs == 0 || plan.clients == 0 || plan.connections == 0 {
            bail!("--runs, --clients and --connections must be at least 1");
        }
        Ok(plan)
    }

    fn has(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }
}

/// The blob and manifest every server serves.
struct Content {
    digest: String,
    hex: String,
    size: u64,
    /// The first `RANGE_LEN` bytes, to check the Range answer.
    head: Vec<u8>,
    manifest: Vec<u8>,
    manifest_type: String,
}

struct Bench {
    plan: Plan,
    rt: tokio::runtime::Runtime,
    started: Instant,
    bin: PathBuf,
    upstream: Registry,
    content: Content,
    nginx: Nginx,
    /// Directory nginx serves from (holds the blob file); dropped last.
    _site: tempfile::TempDir,
    moto: Option<Moto>,
    buckets: usize,
    /// The instances that served the last cold run with N clients: warm from then on.
    warm_disk: Option<Ocicache>,
    warm_s3: Option<Ocicache>,
    samples: Samples,
    rss_disk: Option<f64>,
    rss_s3: Option<f64>,
    /// Peak RSS of each retired ocicache process, by what it served.
    rss_each: Vec<(String, f64)>,
    notes: Vec<String>,
    problems: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    if !opts.bench {
        // `cargo test --benches`/`--all-targets` runs bench targets without `--bench`: that is not
        // a request to spend minutes benchmarking.
        eprintln!("compare: not run (no --bench); use `cargo bench --bench compare -- [options]` or bench/run.sh");
        return Ok(());
    }
    let plan = Plan::from(&opts)?;
    let load_start = load_average();
    let mut bench = Bench::setup(plan)?;
    bench.run();
    bench.print(&load_start);
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// moto for the S3 part: `OCICACHE_MOTO_SERVER`, `target/moto-venv` (as the tests look), else on PATH.
fn find_moto() -> bool {
    if std::env::var_os("OCICACHE_MOTO_SERVER").is_some()
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server").exists()
    {
        return true;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("moto_server"))
        .find(|p| p.exists());
    match on_path {
        Some(p) => {
            // Single-threaded still: nothing else reads the environment now.
            std::env::set_var("OCICACHE_MOTO_SERVER", p);
            true
        }
        None => false,
    }
}

impl Bench {
    fn setup(plan: Plan) -> anyhow::Result<Bench> {
        let started = Instant::now();
        let bin = std::env::var_os("OCICACHE_BIN").map_or(PathBuf::from(env!("CARGO_BIN_EXE_ocicache")), PathBuf::from);
        if !bin.exists() {
            bail!("no ocicache binary at {}", bin.display());
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let log = |msg: &str| eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());

        let upstream = Registry::start();
        log(&format!("upstream docker-registry on {}", upstream.addr()));
        let site = tempfile::Builder::new().prefix("ocicache-bench-site-").tempdir()?;
        let content = push_content(&upstream, site.path(), plan.blob_size)?;
        log(&format!("pushed {REPO}:{TAG}: blob {} ({} bytes)", content.digest, content.size));
        let nginx = Nginx::start(&StaticSite {
            root: site.path(),
            manifests: &format!("/v2/{REPO}/manifests/"),
            media_type: &content.manifest_type,
            manifest_digest: &support::sha256_digest(&content.manifest),
        });
        log(&format!("nginx {} on 127.0.0.1:{}", nginx.version, nginx.port));
        let mut problems = Vec::new();
        let moto = if !plan.has(Part::S3) {
            None
        } else if find_moto() {
            let m = Moto::start();
            log(&format!("moto on {}", m.endpoint()));
            Some(m)
        } else {
            problems
                .push("S3 figures not measured: no moto_server (OCICACHE_MOTO_SERVER, target/moto-venv, PATH)".into());
            None
        };
        Ok(Bench {
            plan,
            rt,
            started,
            bin,
            upstream,
            content,
            nginx,
            _site: site,
            moto,
            buckets: 0,
            warm_disk: None,
            warm_s3: None,
            samples: Samples::default(),
            rss_disk: None,
            rss_s3: None,
            rss_each: Vec::new(),
            notes: Vec::new(),
            problems,
        })
    }

    fn log(&self, msg: &str) {
        eprintln!("[{:>6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }

    fn problem(&mut self, msg: String) {
        self.log(&format!("PROBLEM: {msg}"));
        self.problems.push(msg);
    }

    fn run(&mut self) {
        let runs = self.plan.runs;
        for part in [Part::Cold, Part::ColdMany] {
            if !self.plan.has(part) {
                continue;
            }
            for run in 0..runs {
                self.cold(part, run);
                if part == Part::Cold {
                    self.cold_link(run);
                }
            }
        }
        if self.plan.has(Part::Warm) {
            self.warm();
        }
        if self.plan.has(Part::Manifests) {
            self.manifests();
        }
        if self.plan.has(Part::Range) {
            for run in 0..runs {
                self.range(run);
            }
        }
        if self.plan.has(Part::Replicas) && self.moto.is_some() {
            for run in 0..runs {
                self.replicas(run);
            }
        }
        let (disk, s3) = (self.warm_disk.take(), self.warm_s3.take());
        if let Some(oci) = disk {
            self.retire(oci, "warm+manifests");
        }
        if let Some(oci) = s3 {
            self.retire(oci, "warm+manifests");
        }
    }

    // ---- servers ----

    fn blob_path(&self) -> String {
        format!("/v2/{REPO}/blobs/{}", self.content.digest)
    }

    fn oci_blob(&self, oci: &Ocicache) -> Target {
        Target::new(oci.port, format!("/v2/{REGISTRY}/{REPO}/blobs/{}", self.content.digest))
    }

    fn oci_manifest(oci: &Ocicache) -> Target {
        Target::new(oci.port, format!("/v2/{REGISTRY}/{REPO}/manifests/{TAG}"))
    }

    fn start_oci(&mut self, s3: bool, upstream: &str) -> Ocicache {
        let storage = match (&self.moto, s3) {
            (Some(moto), true) => {
                self.buckets += 1;
                let bucket = format!("bench-{}", self.buckets);
                moto.create_bucket(&bucket);
                Storage::S3(moto, bucket)
            }
            _ => Storage::Disk,
        };
        Ocicache::start(&self.bin, REGISTRY, upstream, storage)
    }

    /// Notes its peak RSS (`role`: what it served), stops it, and deletes its bucket.
    fn retire(&mut self, oci: Ocicache, role: &str) {
        let rss = oci.peak_rss_mib();
        let mode = if oci.bucket.is_some() { "ocicache-s3" } else { "ocicache" };
        if let Some(r) = rss {
            self.rss_each.push((format!("{mode} {role}"), r));
        }
        if role.starts_with("warm") {
            self.notes.push(format!("{mode} after the warm and manifest figures: {}", oci.rss_now()));
        }
        let slot = if oci.bucket.is_some() { &mut self.rss_s3 } else { &mut self.rss_disk };
        *slot = match (*slot, rss) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let warnings = oci.warnings();
        if !warnings.is_empty() {
            self.notes.push(format!(
                "ocicache :{} logged {} WARN/ERROR lines, first: {}",
                oci.port,
                warnings.len(),
                warnings[0].chars().take(240).collect::<String>()
            ));
        }
        let bucket = oci.bucket.clone();
        drop(oci);
        if let (Some(moto), Some(bucket)) = (&self.moto, bucket) {
            if let Err(e) = servers::delete_bucket(moto, &bucket) {
                self.notes.push(e);
            }
        }
    }

    fn blob_gets_since(&self, mark: usize) -> usize {
        let digest = &self.content.digest;
        self.upstream.requests_since(mark).iter().filter(|r| r.method == "GET" && r.path.contains(digest)).count()
    }

    fn record(&mut self, figure: Figure, server: Server, run: usize, r: Result<f64, client::ClientError>) {
        match r {
            Ok(v) => self.samples.record(figure, server, run, Some(v)),
            Err(e) => {
                self.samples.record(figure, server, run, None);
                self.problem(format!("{figure:?} {}: {e}", server.name()));
            }
        }
    }

    // ---- figures ----

    /// Cold pulls: an ocicache with an empty cache (and on S3 an empty bucket), `clients` GETs of the
    /// blob at once; wall time until the last has it all. The peer: the upstream itself (1 client)
    /// or a fresh docker-registry proxy (N clients).
    fn cold(&mut self, part: Part, run: usize) {
        let (figure, clients) = match part {
            Part::Cold => (Figure::Cold1, 1),
            _ => (Figure::ColdMany, self.plan.clients),
        };
        let size = self.content.size;
        let upstream_url = self.upstream.url();
        for s3 in [false, true] {
            if s3 && self.moto.is_none() {
                continue;
            }
            let server = if s3 { Server::OcicacheS3 } else { Server::Ocicache };
            let oci = self.start_oci(s3, &upstream_url);
            let mark = self.upstream.mark();
            let target = self.oci_blob(&oci);
            let started = Instant::now();
            let r = self.rt.block_on(client::downloads(&target, clients, 1, size));
            let wall = r.as_ref().map(Duration::as_secs_f64).ok();
            self.record(figure, server, run, r.map(|d| d.as_secs_f64()));
            match oci.wait_committed(self.moto.as_ref(), &self.content.hex, size) {
                Ok(()) if s3 => self.notes.push(format!(
                    "{figure:?} run {}: ocicache-s3 had the blob in its bucket {:.2} s after the pull started",
                    run + 1,
                    started.elapsed().as_secs_f64()
                )),
                Ok(()) => {}
                Err(e) => self.problem(e),
            }
            let gets = self.blob_gets_since(mark);
            self.log(&format!(
                "{figure:?} run {} {}: {} s, upstream blob GETs {gets}",
                run + 1,
                server.name(),
                wall.map_or("failed".into(), |w| format!("{w:.2}"))
            ));
            self.notes.push(format!("{figure:?} run {}: {} made {gets} upstream blob GETs", run + 1, server.name()));
            if figure == Figure::ColdMany {
                let previous = if s3 { self.warm_s3.replace(oci) } else { self.warm_disk.replace(oci) };
                if let Some(p) = previous {
                    self.retire(p, "cold-many");
                }
            } else {
                self.retire(oci, "cold");
            }
        }
        // The peer, after ocicache, in the same run.
        let mark = self.upstream.mark();
        let (peer, r) = if figure == Figure::Cold1 {
            let target = Target::new(self.upstream.port, self.blob_path());
            (Server::Upstream, self.rt.block_on(client::downloads(&target, 1, 1, size)))
        } else {
            let proxy = Registry::start_proxy(&upstream_url);
            let target = Target::new(proxy.port, self.blob_path());
            let r = self.rt.block_on(client::downloads(&target, clients, 1, size));
            // Let it finish storing before anything else is measured.
            if let Err(e) =
                servers::wait_file(&servers::registry_blob_path(&proxy.storage_dir, &self.content.hex), size)
            {
                self.problem(format!("proxy: {e}"));
            }
            (Server::Proxy, r)
        };
        let wall = r.as_ref().map(Duration::as_secs_f64).ok();
        self.record(figure, peer, run, r.map(|d| d.as_secs_f64()));
        let gets = self.blob_gets_since(mark);
        self.log(&format!(
            "{figure:?} run {} {}: {} s, upstream blob GETs {gets}",
            run + 1,
            peer.name(),
            wall.map_or("failed".into(), |w| format!("{w:.2}"))
        ));
        if peer == Server::Proxy {
            self.notes.push(format!("{figure:?} run {}: proxy made {gets} upstream blob GETs", run + 1));
        }
    }

    /// A cold pull as it happens outside a benchmark: the origin behind a link slower than memory
    /// (1 Gbit/s, a relay passing 125 MB/s). ocicache with an empty cache against the client asking
    /// the origin directly through the same relay. On loopback the origin delivers faster than
    /// SHA-256 runs, so `Cold1` measures hashing and copies; this measures what a user waits for.
    fn cold_link(&mut self, run: usize) {
        const LINK: u64 = 125_000_000;
        let size = self.content.size;
        let relay = throttle::SlowRelay::start(
            format!("127.0.0.1:{}", self.upstream.port).parse().expect("upstream address"),
            LINK,
        );
        let oci = self.start_oci(false, &format!("http://127.0.0.1:{}", relay.port));
        let target = self.oci_blob(&oci);
        let r = self.rt.block_on(client::downloads(&target, 1, 1, size));
        self.record(Figure::ColdLink, Server::Ocicache, run, r.map(|d| d.as_secs_f64()));
        if let Err(e) = oci.wait_committed(None, &self.content.hex, size) {
            self.problem(e);
        }
        self.retire(oci, "cold-link");
        let direct = Target::new(relay.port, self.blob_path());
        let r = self.rt.block_on(client::downloads(&direct, 1, 1, size));
        self.record(Figure::ColdLink, Server::Upstream, run, r.map(|d| d.as_secs_f64()));
        self.log(&format!("ColdLink run {}: done", run + 1));
    }

    /// Scale-out: N cold clients spread round-robin over 3 replicas sharing one bucket, with peers
    /// (`--advertise-url`, `--peer-secret-file`), against the same N clients on one replica of the
    /// same kind. Reports origin GETs of the blob, origin bytes as a multiple of the blob, and wall
    /// times (in the details; no peer program does this, so there is no ratio to a peer).
    fn replicas(&mut self, run: usize) {
        let Some(moto) = self.moto.as_ref() else { return };
        let (size, clients, upstream) = (self.content.size, self.plan.clients, self.upstream.url());
        let secret_dir = tempfile::tempdir().expect("temp dir");
        let secret = secret_dir.path().join("peer-secret");
        std::fs::write(&secret, format!("{:032x}", rand::random::<u128>())).expect("write secret");
        self.buckets += 1;
        let bucket = format!("bench-{}", self.buckets);
        moto.create_bucket(&bucket);
        let replicas: Vec<Ocicache> = (0..3)
            .map(|_| {
                let secret = secret.display().to_string();
                Ocicache::start_with(&self.bin, REGISTRY, &upstream, Storage::S3(moto, bucket.clone()), &|port| {
                    vec![
                        "--advertise-url".into(),
                        format!("http://127.0.0.1:{port}"),
                        "--peer-secret-file".into(),
                        secret.clone(),
                    ]
                })
            })
            .collect();
        let mark = self.upstream.mark();
        let targets: Vec<Target> = replicas.iter().map(|r| self.oci_blob(r)).collect();
        let started = Instant::now();
        let r: Result<(), client::ClientError> = self.rt.block_on(async {
            let mut all = tokio::task::JoinSet::new();
            for (i, t) in targets.iter().enumerate() {
                let n = clients / 3 + usize::from(i < clients % 3);
                let t = t.clone();
                all.spawn(async move { client::downloads(&t, n, 1, size).await });
            }
            while let Some(r) = all.join_next().await {
                r.unwrap_or_else(|e| panic!("replica clients: {e}"))?;
            }
            Ok(())
        });
        let spread = started.elapsed().as_secs_f64();
        if let Err(e) = r {
            self.problem(format!("Replicas run {}: {e}", run + 1));
        }
        let gets = self.blob_gets_since(mark);
        let from_origin: f64 = replicas.iter().map(|r| r.metric("ocicache_upstream_bytes_total")).sum();
        let from_peers: f64 = replicas.iter().map(|r| r.metric("ocicache_peer_bytes_total")).sum();
        for r in replicas {
            self.retire(r, "replica");
        }
        let one = self.start_oci(true, &upstream);
        let started = Instant::now();
        let r = self.rt.block_on(client::downloads(&self.oci_blob(&one), clients, 1, size));
        let single = started.elapsed().as_secs_f64();
        if let Err(e) = r {
            self.problem(format!("Replicas run {} (one replica): {e}", run + 1));
        }
        self.retire(one, "one-replica");
        let line = format!(
            "Replicas run {}: {clients} cold clients over 3 replicas: {spread:.2} s (one replica: {single:.2} s, {:.2}x); \
             origin blob GETs {gets}, origin bytes {:.2}x the blob, bytes between replicas {:.2}x",
            run + 1,
            spread / single,
            from_origin / size as f64,
            from_peers / size as f64
        );
        self.log(&line);
        self.notes.push(line);
    }

    /// An instance with the blob cached, if no cold run with N clients left one.
    fn ensure_warm(&mut self, s3: bool) -> bool {
        let have = if s3 { self.warm_s3.is_some() } else { self.warm_disk.is_some() };
        if have {
            return true;
        }
        let oci = self.start_oci(s3, &self.upstream.url());
        let r = self.rt.block_on(client::downloads(&self.oci_blob(&oci), 1, 1, self.content.size));
        if let Err(e) = r {
            self.problem(format!("filling ocicache{}: {e}", if s3 { "-s3" } else { "" }));
            self.retire(oci, "fill");
            return false;
        }
        if let Err(e) = oci.wait_committed(self.moto.as_ref(), &self.content.hex, self.content.size) {
            self.problem(e);
        }
        if s3 {
            self.warm_s3 = Some(oci);
        } else {
            self.warm_disk = Some(oci);
        }
        true
    }

    /// The servers of the warm figures with what each serves: ocicache, nginx, and ocicache on S3.
    fn warm_servers(&mut self, what: impl Fn(&Bench, Option<&Ocicache>, u16) -> Target) -> Vec<(Server, Target)> {
        let mut out = Vec::new();
        if self.ensure_warm(false) {
            out.push((Server::Ocicache, what(self, self.warm_disk.as_ref(), 0)));
        }
        out.push((Server::Nginx, what(self, None, self.nginx.port)));
        if self.moto.is_some() && self.ensure_warm(true) {
            out.push((Server::OcicacheS3, what(self, self.warm_s3.as_ref(), 0)));
        }
        out
    }

    /// Warm blob throughput: 1 client, then N at once, each fetching the blob over and over on one
    /// connection until at least `warm_bytes` moved in all; MiB/s.
    fn warm(&mut self) {
        let servers = self.warm_servers(|b, oci, port| match oci {
            Some(oci) => b.oci_blob(oci),
            None => Target::new(port, b.blob_path()),
        });
        let size = self.content.size;
        // Once per server, untimed: the bytes are the blob's (and in the page cache from now on).
        let mut checked = Vec::new();
        for (server, target) in servers {
            match self.rt.block_on(client::digest_of(&target, size)) {
                Ok(d) if d == self.content.digest => checked.push((server, target)),
                Ok(d) => self.problem(format!("warm {}: the blob's bytes hash to {d}", server.name())),
                Err(e) => self.problem(format!("warm {}: {e}", server.name())),
            }
        }
        let clients = self.plan.clients;
        let per = |c: usize| self.plan.warm_bytes.div_ceil(size * c as u64).max(1) as usize;
        let (times1, times_many) = (per(1), per(clients));
        for run in 0..self.plan.runs {
            for (server, target) in &checked {
                for (figure, c, times) in [(Figure::Warm1, 1, times1), (Figure::WarmMany, clients, times_many)] {
                    let r = self.rt.block_on(client::downloads(target, c, times, size));
                    let mib = (size * (c * times) as u64) as f64 / MIB as f64;
                    let r = r.map(|d| mib / d.as_secs_f64());
                    if let Ok(v) = &r {
                        self.log(&format!("{figure:?} run {} {}: {v:.0} MiB/s", run + 1, server.name()));
                    }
                    self.record(figure, *server, run, r);
                }
            }
        }
    }

    /// Cached manifest by tag, HEAD and GET, as fast as `connections` keep-alive connections can ask.
    fn manifests(&mut self) {
        let servers = self.warm_servers(|_, oci, port| match oci {
            Some(oci) => Self::oci_manifest(oci),
            None => Target::new(port, format!("/v2/{REPO}/manifests/{TAG}")),
        });
        let accept = [("Accept", MT_OCI_MANIFEST)];
        let len = self.content.manifest.len() as u64;
        // Once per server: the same bytes and content type as the origin's (this also caches the tag).
        let mut checked = Vec::new();
        for (server, target) in servers {
            let get = self.rt.block_on(client::fetch(&target, "GET", &accept));
            let head = self.rt.block_on(client::fetch(&target, "HEAD", &accept));
            match (get, head) {
                (Ok((g, body)), Ok((h, _)))
                    if g.status == 200
                        && body == self.content.manifest
                        && g.content_type.as_deref() == Some(self.content.manifest_type.as_str())
                        && h.status == 200
                        && h.content_length == Some(len) =>
                {
                    checked.push((server, target))
                }
                (Ok((g, body)), Ok((h, _))) => self.problem(format!(
                    "manifest through {}: GET {} {:?} ({} bytes, same as the origin's: {}), HEAD {} length {:?}",
                    server.name(),
                    g.status,
                    g.content_type,
                    body.len(),
                    body == self.content.manifest,
                    h.status,
                    h.content_length
                )),
                (Err(e), _) | (_, Err(e)) => self.problem(format!("manifest through {}: {e}", server.name())),
            }
        }
        let mark = self.upstream.mark();
        let (conns, duration) = (self.plan.connections, self.plan.duration);
        for run in 0..self.plan.runs {
            for (server, target) in &checked {
                for (figure, method) in [(Figure::Head, "HEAD"), (Figure::Get, "GET")] {
                    let r = self.rt.block_on(client::rate(target, method, &accept, conns, duration, len));
                    if let Ok(v) = &r {
                        self.log(&format!("{figure:?} run {} {}: {v:.0} req/s", run + 1, server.name()));
                    }
                    self.record(figure, *server, run, r);
                }
            }
        }
        let asked = self.upstream.requests_since(mark);
        self.notes.push(format!(
            "manifest figures: the upstream got {} requests meanwhile ({})",
            asked.len(),
            asked.iter().map(|r| format!("{} {}", r.method, r.path)).take(4).collect::<Vec<_>>().join(", ")
        ));
    }

    /// A Range of the first MiB while a cold download of the blob is at ~20%: the origin is behind a
    /// relay that passes it on at size/fill bytes a second; one client GETs the whole blob, and when
    /// 20% has come through, another asks for `bytes=0-1048575`: seconds to its last byte.
    fn range(&mut self, run: usize) {
        let size = self.content.size;
        let rate = (size as f64 / self.plan.fill.as_secs_f64()) as u64;
        let relay = throttle::SlowRelay::start(
            format!("127.0.0.1:{}", self.upstream.port).parse().expect("upstream address"),
            rate,
        );
        let oci = self.start_oci(false, &format!("http://127.0.0.1:{}", relay.port));
        let target = self.oci_blob(&oci);
        let mark = self.upstream.mark();
        let fill = {
            let target = target.clone();
            self.rt.spawn(async move { client::downloads(&target, 1, 1, size).await })
        };
        let at = (size as f64 * RANGE_AT) as u64;
        let deadline = Instant::now() + self.plan.fill * 3 + Duration::from_secs(20);
        while relay.relayed() < at && Instant::now() < deadline && !fill.is_finished() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let progress = relay.relayed() as f64 / size as f64;
        if relay.relayed() < at {
            self.problem(format!("Range run {}: the download never reached 20% ({:.1}%)", run + 1, progress * 100.0));
            self.samples.record(Figure::Range, Server::Ocicache, run, None);
        } else {
            let range = format!("bytes=0-{}", RANGE_LEN - 1);
            let started = Instant::now();
            let r = self.rt.block_on(client::fetch(&target, "GET", &[("Range", &range)]));
            let secs = started.elapsed().as_secs_f64();
            let after = relay.relayed() as f64 / size as f64;
            let r = match r {
                Ok((a, body)) if a.status == 206 && body == self.content.head => Ok(secs),
                Ok((a, body)) => Err(client::ClientError::Malformed(
                    format!(
                        "Range {range}: status {}, {} bytes, same as the blob's: {}",
                        a.status,
                        body.len(),
                        body == self.content.head
                    ),
                    "expected 206 with the blob's first MiB",
                )),
                Err(e) => Err(e),
            };
            // Completed upstream GETs of the blob: the fill is still running, so any is the Range's own.
            let gets = self.blob_gets_since(mark);
            self.log(&format!(
                "Range run {}: {} at {:.1}% of the fill (done then: {:.1}%), upstream blob GETs completed: {gets}",
                run + 1,
                r.as_ref().map_or("failed".into(), |s| format!("{s:.4} s")),
                progress * 100.0,
                after * 100.0
            ));
            self.notes.push(format!(
                "Range run {}: asked at {:.1}% of the fill, answered by {:.1}%; upstream blob GETs completed meanwhile: {gets} (0: served from the download in progress)",
                run + 1,
                progress * 100.0,
                after * 100.0
            ));
            self.record(Figure::Range, Server::Ocicache, run, r);
        }
        fill.abort();
        self.retire(oci, "range");
        drop(relay);
    }

    // ---- report ----

    fn print(&self, load_start: &str) {
        let c = &self.content;
        let registry_version = std::process::Command::new("docker-registry")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap_or("").to_owned())
            .unwrap_or_default();
        println!();
        println!(
            "ocicache benchmark: blob {} ({:.1} MiB), {} run(s), {} clients, {} connections x {:.0?} per rate, {} cores",
            c.digest,
            c.size as f64 / MIB as f64,
            self.plan.runs,
            self.plan.clients,
            self.plan.connections,
            self.plan.duration,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "ocicache = {}; upstream = docker-registry {registry_version}; proxy = the same in proxy mode; nginx {} (sendfile on, 2 workers)",
            self.bin.display(),
            self.nginx.version
        );
        println!("Values are medians; ratios are the median of each run's ocicache/peer ratio.");
        println!();
        let rows = [
            PeerRow { figure: Figure::Cold1, peer: Server::Upstream, target: 1.1 },
            PeerRow { figure: Figure::ColdLink, peer: Server::Upstream, target: 1.1 },
            PeerRow { figure: Figure::ColdMany, peer: Server::Proxy, target: 0.5 },
            PeerRow { figure: Figure::Warm1, peer: Server::Nginx, target: 1.0 },
            PeerRow { figure: Figure::WarmMany, peer: Server::Nginx, target: 1.0 },
            PeerRow { figure: Figure::Head, peer: Server::Nginx, target: 0.8 },
            PeerRow { figure: Figure::Get, peer: Server::Nginx, target: 0.8 },
        ];
        let cx = report::Context {
            clients: self.plan.clients,
            rss_disk: self.rss_disk,
            rss_s3: self.rss_s3,
            rss_target: RSS_TARGET_MIB,
            rss_s3_allowance: RSS_S3_ALLOWANCE_MIB,
            range_target: RANGE_TARGET_S,
            s3: self.moto.is_some(),
        };
        print!("{}", report::tables(&self.samples, &rows, &cx));
        println!();
        println!("Every run:");
        print!("{}", report::every_run(&self.samples, self.plan.clients));
        println!();
        println!("Details:");
        for n in &self.notes {
            println!("  {n}");
        }
        let mut roles: Vec<&str> = Vec::new();
        for (r, _) in &self.rss_each {
            if !roles.contains(&r.as_str()) {
                roles.push(r);
            }
        }
        for role in roles {
            let each: Vec<String> =
                self.rss_each.iter().filter(|(r, _)| r == role).map(|(_, v)| format!("{v:.1}")).collect();
            println!("  peak RSS (MiB) of each {role} process: {}", each.join(" "));
        }
        println!();
        if self.problems.is_empty() {
            println!("No problems: every answer had the expected status and length, checked contents matched.");
        } else {
            println!("PROBLEMS ({}):", self.problems.len());
            for p in &self.problems {
                println!("  {p}");
            }
        }
        println!();
        println!("Load average (1/5/15 min) at start: {load_start}; at the end: {}", load_average());
        println!("Total time: {:.0} s", self.started.elapsed().as_secs_f64());
    }
}

/// Pushes a blob of `size` random bytes and a manifest naming it to the upstream (the raw API, no
/// tar to build), and writes both where nginx serves them from at the same paths.
fn push_content(upstream: &Registry, site: &Path, size: u64) -> anyhow::Result<Content> {
    let blob = support::random_bytes(usize::try_from(size)?, 0x0c1c_ac4e);
    let digest = support::push_blob_raw(&upstream.addr(), REPO, &blob);
    let hex = digest.strip_prefix("sha256:").context("digest")?.to_owned();
    let blobs = site.join(format!("v2/{REPO}/blobs"));
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(blobs.join(&digest), &blob)?;
    let head = blob[..RANGE_LEN as usize].to_vec();
    drop(blob);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    }))?;
    let config_digest = support::push_blob_raw(&upstream.addr(), REPO, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": digest, "size": size}],
    }))?;
    support::push_manifest_raw(&upstream.addr(), REPO, TAG, MT_OCI_MANIFEST, &manifest);
    // What the origin serves is what every server must serve.
    let (_, manifest_type, manifest) = support::manifest_digest_at(&upstream.addr(), REPO, TAG, MT_OCI_MANIFEST);
    let manifests = site.join(format!("v2/{REPO}/manifests"));
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join(TAG), &manifest)?;
    Ok(Content { digest, hex, size, head, manifest, manifest_type })
}
