//! `ocicache warm`: pulls listed images into the cache ahead of time (every platform of an index
//! unless `--platform`), with progress, so nodes boot from the cache even when origins are down.
//!
//! Warming is an ordinary client of the cache: it asks for each manifest and blob through the HTTP
//! API with path routing (`/v2/<registry>/<repository>/...`), exactly as a node would, so whatever
//! the cache stores is what nodes will later be served — tag entries per media type, manifests by
//! digest, verified blobs. Without `--server` it starts the cache in-process on a loopback port with
//! the given configuration, which fills the configured cache directory directly.

use std::collections::HashSet;
use std::fmt;
use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use url::Url;

use crate::oci::accept::{is_index, ALL_MANIFEST_TYPES};
use crate::oci::name::looks_like_registry;
use crate::oci::{Digest, DigestHasher, Reference, RegistryName, Repository, Tag};
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
    /// Also warm each image's signatures, SBOMs and attestations: what the referrers API lists for
    /// every manifest, and cosign's `sha256-<hex>.sig/.att/.sbom` tags, so admission controllers
    /// that verify them keep working while the origin is down
    #[arg(long)]
    pub with_referrers: bool,
    /// Warm every image the cluster runs: pods and the pod templates of deployments, daemonsets,
    /// statefulsets, jobs and cronjobs, for the platforms of its nodes (unless --platform);
    /// in-cluster credentials, $KUBECONFIG, ~/.kube/config or --kubeconfig
    #[arg(long)]
    pub kubernetes: bool,
    /// Warm the images of Kubernetes objects in this file, as `kubectl get pods,nodes -A -o json`
    /// (or -o yaml) prints them; Node objects in it give the platforms
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
}

/// Blobs of one image downloaded at once: enough to keep a link busy while one blob waits for its
/// origin, few enough that many images in parallel do not open hundreds of connections.
const BLOBS_PER_IMAGE: usize = 3;
/// Largest manifest accepted (distribution's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config read to learn a single-platform image's platform; larger ones are only counted.
const MAX_CONFIG_PEEK_BYTES: u64 = 1 << 20;
/// Indexes nested deeper than this are refused, so a malicious index cannot send warm in circles.
const MAX_INDEX_DEPTH: usize = 2;
/// Referrer manifests warmed per image: signatures and attestations are a handful; a list of
/// thousands is not something to mirror for an outage.
const MAX_REFERRERS: usize = 256;
/// The tags cosign stores signatures, attestations and SBOMs under, besides the referrers API.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Returns whether every image was warmed.
pub async fn run(args: WarmArgs, config: Config) -> anyhow::Result<bool> {
    let cluster =
        crate::cluster::source::load(args.kubernetes, args.from_file.as_deref(), config.kubeconfig.as_deref())
            .await
            .map_err(anyhow::Error::msg)?;
    let images = collect_images(&args, cluster.as_ref().map(|w| w.images.clone()))?;
    let mut platforms: Vec<Platform> =
        args.platform.iter().filter(|p| !p.trim().is_empty()).map(|p| Platform::parse(p)).collect::<Result<_, _>>()?;
    if let Some(w) = &cluster {
        for i in &w.invalid {
            eprintln!("warning: {}: {:?} is not an image reference, skipped: {}", i.object, i.reference, i.reason);
        }
        if platforms.is_empty() && !w.platforms.is_empty() {
            let names: Vec<String> = w.platforms.iter().map(ToString::to_string).collect();
            eprintln!("platforms of the cluster's nodes: {}", names.join(", "));
            platforms.clone_from(&w.platforms);
        }
    }
    let platforms: Arc<Vec<Platform>> = Arc::new(platforms);
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }

    let (local, puller) = match &args.server {
        Some(server) => {
            let puller = Puller::remote(server)?;
            // One clear error up front rather than the same one for every image.
            puller.send("/v2/", None).await.with_context(|| format!("--server {}", puller.base))?;
            (None, puller)
        }
        None => {
            let (server, puller) = LocalServer::start(&config).await?;
            (Some(server), puller)
        }
    };
    let puller = Arc::new(puller);
    let progress = Progress::new();
    match &local {
        Some(_) => progress.log(&format!("warming {} image(s) into {}", images.len(), config.cache_dir.display())),
        None => progress.log(&format!("warming {} image(s) through the cache at {}", images.len(), puller.base)),
    }

    let started = Instant::now();
    let mut outcomes: Vec<(usize, Outcome)> = futures_util::stream::iter(images.into_iter().enumerate())
        .map(|(i, image)| {
            let (puller, platforms, progress) = (puller.clone(), platforms.clone(), progress.clone());
            let name = image.to_string();
            let with_referrers = args.with_referrers;
            // Each image on its own task: hashing and I/O of several images use several workers.
            let task =
                tokio::spawn(async move { warm_image(&puller, image, &platforms, with_referrers, &progress).await });
            async move { (i, task.await.unwrap_or_else(|e| Outcome::failed(name, anyhow!("{e}")))) }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    outcomes.sort_by_key(|(i, _)| *i);
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    progress.finish();

    if let Some(server) = local {
        server.stop().await;
    }

    print_summary(&outcomes);
    let failed: Vec<&str> = outcomes.iter().filter(|o| o.error.is_some()).map(|o| o.image.as_str()).collect();
    let bytes: u64 = outcomes.iter().map(|o| o.bytes).sum();
    if failed.is_empty() {
        eprintln!(
            "warmed {} image(s), {} in {:.1}s",
            outcomes.len(),
            HumanBytes(bytes),
            started.elapsed().as_secs_f64()
        );
        Ok(true)
    } else {
        eprintln!(
            "warmed {} of {} image(s); failed: {}",
            outcomes.len() - failed.len(),
            outcomes.len(),
            failed.join(", ")
        );
        Ok(false)
    }
}

/// The images from the command line, `--file` and the cluster (`--kubernetes`, `--from-file`),
/// parsed, in order, duplicates dropped.
fn collect_images(args: &WarmArgs, cluster: Option<Vec<ImageRef>>) -> anyhow::Result<Vec<ImageRef>> {
    let mut raw: Vec<(String, String)> = args.images.iter().map(|s| (s.clone(), "command line".to_owned())).collect();
    if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("cannot read the image list from stdin")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("cannot read --file {}", path.display()))?
        };
        for (n, line) in text.lines().enumerate() {
            // Image references never contain '#', so everything after one is a comment.
            let line = line.split('#').next().unwrap_or_default().trim();
            if !line.is_empty() {
                raw.push((line.to_owned(), format!("{} line {}", path.display(), n + 1)));
            }
        }
    }
    let from_cluster = cluster.unwrap_or_default();
    if raw.is_empty() && from_cluster.is_empty() {
        bail!("no images to warm: name them as arguments, list them in --file, or use --kubernetes or --from-file");
    }
    let mut seen = HashSet::new();
    let mut images = Vec::new();
    for (s, origin) in raw {
        let image = ImageRef::parse(&s).with_context(|| format!("{origin}: {s:?}"))?;
        if seen.insert(image.to_string()) {
            images.push(image);
        }
    }
    for image in from_cluster {
        if seen.insert(image.to_string()) {
            images.push(image);
        }
    }
    Ok(images)
}

/// An image reference after docker's normalisation: `alpine` is `docker.io/library/alpine:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: RegistryName,
    pub repository: Repository,
    pub reference: Reference,
}

impl ImageRef {
    /// Parses `[registry/]repository[:tag][@digest]` the way docker does: the first path segment is a
    /// registry only when it has a `.` or `:` or is `localhost`; Docker Hub's one-segment names get
    /// `library/`; no tag means `latest`; with both a tag and a digest, the digest decides.
    pub fn parse(s: &str) -> anyhow::Result<ImageRef> {
        let s = s.trim();
        if s.is_empty() {
            bail!("empty image reference");
        }
        if s.contains("://") {
            bail!("give an image reference like ghcr.io/org/app:1.0, not a URL");
        }
        let (name, digest) = match s.split_once('@') {
            Some((name, d)) => {
                let digest: Digest = d.parse().map_err(|e: crate::oci::OciError| anyhow!("{}", e.message))?;
                (name, Some(digest))
            }
            None => (s, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => (first, rest),
            _ => ("docker.io", name),
        };
        let registry = RegistryName::parse(registry).map_err(|e| anyhow!("{}", e.message))?;
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            bail!("repository names must be lowercase: {repository:?}");
        }
        let mut repository = Repository::parse(repository).map_err(|e| anyhow!("{}", e.message))?;
        if registry.is_docker_hub() {
            repository = repository.with_library_prefix();
        }
        let tag = tag.map(|t| Tag::parse(t).map_err(|e| anyhow!("{}", e.message))).transpose()?;
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d),
            (None, Some(t)) => Reference::Tag(t),
            (None, None) => Reference::Tag(Tag::parse("latest").map_err(|e| anyhow!("{}", e.message))?),
        };
        Ok(ImageRef { registry, repository, reference })
    }

    fn path(&self, kind: &str, reference: &str) -> String {
        format!("/v2/{}/{}/{kind}/{reference}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repository),
            Reference::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repository),
        }
    }
}

/// A `--platform` filter: `os/arch` or `os/arch/variant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> anyhow::Result<Platform> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let valid = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            bail!("--platform {s:?}: expected os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm/v7");
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }

    /// A filter without a variant takes every variant (`linux/arm64` matches `linux/arm64/v8`).
    pub(crate) fn matches(&self, p: &DescPlatform) -> bool {
        self.os.eq_ignore_ascii_case(&p.os)
            && self.architecture.eq_ignore_ascii_case(&p.architecture)
            && self.variant.as_ref().is_none_or(|v| p.variant.as_deref().is_some_and(|pv| v.eq_ignore_ascii_case(pv)))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The parts of a manifest or index that warming needs; everything else is ignored.
/// (Also what `ocicache status` reads stored manifests with, so both count the same blobs.)
#[derive(Debug, Deserialize)]
pub(crate) struct ManifestDoc {
    #[serde(rename = "mediaType")]
    pub(crate) media_type: Option<String>,
    pub(crate) manifests: Option<Vec<Descriptor>>,
    pub(crate) config: Option<Descriptor>,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: u64,
    pub(crate) platform: Option<DescPlatform>,
    #[serde(default)]
    pub(crate) urls: Vec<String>,
    #[serde(default)]
    pub(crate) annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DescPlatform {
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) architecture: String,
    pub(crate) variant: Option<String>,
}

impl DescPlatform {
    fn label(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

impl Descriptor {
    /// Build attestations (buildkit's provenance and SBOMs) sit in indexes as fake platforms;
    /// nodes never pull them, so neither does warming.
    pub(crate) fn is_attestation(&self) -> bool {
        self.annotations.get("vnd.docker.reference.type").is_some_and(|t| t == "attestation-manifest")
    }

    /// Foreign (Windows base) layers live outside the registry, so no cache can serve them.
    pub(crate) fn is_foreign(&self) -> bool {
        !self.urls.is_empty() && (self.media_type.contains("foreign") || self.media_type.contains("nondistributable"))
    }

    fn parsed_digest(&self) -> anyhow::Result<Digest> {
        self.digest.parse().map_err(|e: crate::oci::OciError| anyhow!("{}", e.message))
    }
}

/// One image's result, a row of the summary.
#[derive(Debug)]
struct Outcome {
    image: String,
    platforms: Vec<String>,
    blobs: usize,
    bytes: u64,
    /// Signature, attestation and SBOM manifests warmed with the image (`--with-referrers`).
    referrers: usize,
    error: Option<String>,
}

impl Outcome {
    fn failed(image: String, e: anyhow::Error) -> Outcome {
        Outcome { image, platforms: Vec::new(), blobs: 0, bytes: 0, referrers: 0, error: Some(format!("{e:#}")) }
    }
}

/// The warm pipeline without a terminal: what `serve --warm-from-cluster` warms each image in use
/// with, through the server's own loopback listener (see `cluster::warmer`).
pub struct BackgroundWarmer {
    puller: Puller,
    progress: Progress,
}

impl BackgroundWarmer {
    pub fn new(base: String, user: String, password: String) -> anyhow::Result<BackgroundWarmer> {
        Ok(BackgroundWarmer { puller: Puller::new(base, Some((user, Some(password))))?, progress: Progress::quiet() })
    }

    /// Warms one image (the children of an index for `platforms`, all when empty).
    pub async fn warm(&self, image: ImageRef, platforms: &[Platform]) -> Result<(), String> {
        let outcome = warm_image(&self.puller, image, platforms, false, &self.progress).await;
        outcome.error.map_or(Ok(()), Err)
    }
}

/// A blob to fetch; `peek` asks to keep the body (a single-platform image's config, to name its platform).
#[derive(Debug, Clone)]
struct BlobJob {
    digest: Digest,
    size: u64,
    peek: bool,
}

async fn warm_image(
    puller: &Puller,
    image: ImageRef,
    platforms: &[Platform],
    with_referrers: bool,
    progress: &Progress,
) -> Outcome {
    let name = image.to_string();
    let bar = progress.image_bar(&name);
    let mut outcome =
        Outcome { image: name.clone(), platforms: Vec::new(), blobs: 0, bytes: 0, referrers: 0, error: None };
    let started = Instant::now();
    match pull_image(puller, &image, platforms, with_referrers, progress, &bar, &mut outcome).await {
        Ok(()) => {
            bar.finish_with_message("ok");
            let referrers = if with_referrers { format!(", {} referrer(s)", outcome.referrers) } else { String::new() };
            progress.log(&format!(
                "{name}: ok ({}, {} blob(s){referrers}, {} in {:.1}s)",
                platform_list(&outcome.platforms),
                outcome.blobs,
                HumanBytes(outcome.bytes),
                started.elapsed().as_secs_f64()
            ));
        }
        Err(e) => {
            let message = format!("{e:#}");
            bar.set_style(text_style());
            bar.abandon_with_message(format!("failed: {message}"));
            progress.log(&format!("{name}: failed: {message}"));
            outcome.error = Some(message);
        }
    }
    progress.image_done();
    outcome
}

/// Fetches the manifest (and, for an index, the selected children), then every blob they name.
/// Fills `outcome` as it goes, so a failure still reports what was done.
async fn pull_image(
    puller: &Puller,
    image: &ImageRef,
    platforms: &[Platform],
    with_referrers: bool,
    progress: &Progress,
    bar: &ProgressBar,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let top = puller.manifest(image, &image.reference.to_string()).await?;
    // Every manifest of the image, whose signatures and attestations are warmed too when asked.
    let mut subjects: Vec<Digest> = vec![top.digest.clone()];
    let mut blobs: Vec<BlobJob> = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    // Configs of manifests no index entry names a platform for: read to name their platform.
    let mut peek: HashSet<Digest> = HashSet::new();
    // (manifest, platform label from its index entry, depth)
    let mut queue = vec![(top, None::<String>, 0usize)];
    while let Some((manifest, label, depth)) = queue.pop() {
        if manifest.is_index {
            if depth >= MAX_INDEX_DEPTH {
                bail!("indexes nested deeper than {MAX_INDEX_DEPTH} levels are not supported");
            }
            for child in select_children(&manifest.doc, platforms)? {
                let digest = child.parsed_digest().context("index entry")?;
                let fetched = puller.manifest(image, &digest.to_string()).await?;
                subjects.push(fetched.digest.clone());
                queue.push((fetched, child.platform.as_ref().map(DescPlatform::label), depth + 1));
            }
            continue;
        }
        let config = manifest.doc.config.as_ref().ok_or_else(|| {
            anyhow!("manifest {} ({}) has no config: not an image manifest", manifest.digest, manifest.media_type)
        })?;
        match label {
            Some(l) => outcome.platforms.push(l),
            None => {
                if config.size <= MAX_CONFIG_PEEK_BYTES {
                    peek.insert(config.parsed_digest()?);
                }
            }
        }
        for desc in std::iter::once(config).chain(manifest.doc.layers.iter()) {
            if desc.is_foreign() {
                continue;
            }
            let digest = desc.parsed_digest()?;
            if seen.insert(digest.clone()) {
                let peek = peek.contains(&digest);
                blobs.push(BlobJob { digest, size: desc.size, peek });
            }
        }
    }

    if with_referrers {
        for artifact in referrers_of(puller, image, &subjects).await? {
            outcome.referrers += 1;
            for desc in artifact.doc.config.iter().chain(artifact.doc.layers.iter()) {
                let digest = desc.parsed_digest()?;
                if !desc.is_foreign() && seen.insert(digest.clone()) {
                    blobs.push(BlobJob { digest, size: desc.size, peek: false });
                }
            }
        }
    }

    let total: u64 = blobs.iter().map(|b| b.size).sum();
    bar.set_length(total);
    bar.set_style(bar_style("{msg}"));
    bar.set_message("");
    progress.add_total(total);
    progress.log(&format!("{}: {} blob(s), {}", outcome.image, blobs.len(), HumanBytes(total)));

    let mut fetched = futures_util::stream::iter(blobs)
        .map(|job| async move {
            let (bytes, body) = puller.blob(image, &job, bar, progress).await?;
            anyhow::Ok((bytes, body))
        })
        .buffer_unordered(BLOBS_PER_IMAGE);
    // Counted as each blob completes, so a failure still reports what arrived; returning on the
    // first error drops (cancels) the other downloads of this image.
    while let Some(result) = fetched.next().await {
        let (bytes, body) = result?;
        outcome.blobs += 1;
        outcome.bytes += bytes;
        if let Some(body) = body {
            outcome.platforms.push(config_platform(&body));
        }
    }
    outcome.platforms.sort();
    Ok(())
}

/// The signature, attestation and SBOM manifests of `subjects`: what the referrers API lists for
/// each (through the cache, which answers from the referrers tag schema for origins without the
/// API), and cosign's `<alg>-<hex>.sig/.att/.sbom` tags where they exist. Fetching them through the
/// cache is what stores them; the caller fetches their blobs. An index among them (a multi-part
/// attestation) brings its children too.
async fn referrers_of(puller: &Puller, image: &ImageRef, subjects: &[Digest]) -> anyhow::Result<Vec<FetchedManifest>> {
    let mut found: Vec<FetchedManifest> = Vec::new();
    let mut seen: HashSet<Digest> = subjects.iter().cloned().collect();
    let mut pending: Vec<Digest> = Vec::new();
    for subject in subjects {
        for desc in puller.referrers(image, subject).await? {
            pending.push(desc.parsed_digest()?);
        }
        for suffix in COSIGN_SUFFIXES {
            let tag = format!("{}-{}.{suffix}", subject.algorithm().as_str(), subject.hex());
            if let Some(m) = puller.manifest_if_present(image, &tag).await? {
                if seen.insert(m.digest.clone()) {
                    pending.extend(m.doc.manifests.iter().flatten().filter_map(|d| d.parsed_digest().ok()));
                    found.push(m);
                }
            }
        }
    }
    while let Some(digest) = pending.pop() {
        if found.len() >= MAX_REFERRERS {
            bail!("more than {MAX_REFERRERS} signature and attestation manifests; not warming them all");
        }
        if !seen.insert(digest.clone()) {
            continue;
        }
        let m = puller.manifest(image, &digest.to_string()).await?;
        pending.extend(m.doc.manifests.iter().flatten().filter_map(|d| d.parsed_digest().ok()));
        found.push(m);
    }
    Ok(found)
}

/// The index entries to pull: all of them (but attestations) without `--platform`, else the ones
/// matching any filter; an error naming what the index has when none match.
fn select_children<'a>(index: &'a ManifestDoc, platforms: &[Platform]) -> anyhow::Result<Vec<&'a Descriptor>> {
    let entries: Vec<&Descriptor> = index.manifests.iter().flatten().filter(|d| !d.is_attestation()).collect();
    if platforms.is_empty() {
        if entries.is_empty() {
            bail!("the index lists no manifests");
        }
        return Ok(entries);
    }
    let chosen: Vec<&Descriptor> = entries
        .iter()
        .copied()
        .filter(|d| d.platform.as_ref().is_some_and(|p| platforms.iter().any(|f| f.matches(p))))
        .collect();
    if chosen.is_empty() {
        let has: Vec<String> = entries.iter().filter_map(|d| d.platform.as_ref().map(DescPlatform::label)).collect();
        let wanted: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        bail!("no manifest for {} in the index (it has {})", wanted.join(", "), platform_list(&has));
    }
    Ok(chosen)
}

/// `os/arch[/variant]` from an image config; `?` when it does not say.
fn config_platform(config: &[u8]) -> String {
    match serde_json::from_slice::<DescPlatform>(config) {
        Ok(p) if !p.os.is_empty() && !p.architecture.is_empty() => p.label(),
        _ => "?".to_owned(),
    }
}

fn platform_list(platforms: &[String]) -> String {
    if platforms.is_empty() {
        "-".to_owned()
    } else {
        platforms.join(", ")
    }
}

/// A manifest as the cache returned it.
struct FetchedManifest {
    digest: Digest,
    media_type: String,
    is_index: bool,
    doc: ManifestDoc,
}

/// A manifest or index body, whole, refused past `MAX_MANIFEST_BYTES`.
async fn read_bounded(resp: reqwest::Response, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow!("reading {what}: {}", error_chain(&e)))?;
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            bail!("{what} is larger than {} MiB", MAX_MANIFEST_BYTES >> 20);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// "manifest sha256:..." or "tag 1.0", for messages.
fn describe_reference(reference: &str) -> String {
    match reference.contains(':') {
        true => format!("manifest {reference}"),
        false => format!("tag {reference}"),
    }
}

/// An answer that may be a 404: the response, or the error that describes the 404.
enum Found {
    Yes(reqwest::Response),
    No(anyhow::Error),
}

/// The HTTP side: talks to one cache, with optional Basic credentials (for a cache behind
/// `--htpasswd`).
struct Puller {
    client: reqwest::Client,
    /// `scheme://host:port[/prefix]`, no trailing slash.
    base: String,
    credentials: Option<(String, Option<String>)>,
}

impl Puller {
    fn new(base: String, credentials: Option<(String, Option<String>)>) -> anyhow::Result<Puller> {
        let client = reqwest::Client::builder()
            // The cache is local or in-cluster; a proxy meant for the internet must not sit in between.
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            // The cache may itself wait up to its first-byte timeout for an origin before answering.
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("ocicache-warm/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Puller { client, base, credentials })
    }

    /// A client for a running cache given as `--server URL` (credentials may be in the URL).
    fn remote(server: &str) -> anyhow::Result<Puller> {
        let mut url = Url::parse(server.trim())
            .map_err(|e| anyhow!("--server {server:?} is not a URL ({e}); e.g. http://localhost:3000"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("--server {server:?} must be an http:// or https:// URL, e.g. http://localhost:3000");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("--server {server:?}: give only scheme, host, port (and a path prefix, if any)");
        }
        let credentials = if url.username().is_empty() {
            None
        } else {
            let user = percent_decode(url.username());
            let pass = url.password().map(percent_decode);
            Some((user, pass))
        };
        // Credentials travel in the Authorization header, never in the URL (they would end up in logs).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let base = url.as_str().trim_end_matches('/').to_owned();
        Puller::new(base, credentials)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.get(format!("{}{path}", self.base));
        match &self.credentials {
            Some((user, pass)) => req.basic_auth(user, pass.as_deref()),
            None => req,
        }
    }

    /// Sends a GET and turns anything but a 2xx into an error carrying the registry error message.
    async fn send(&self, path: &str, accept: Option<&str>) -> anyhow::Result<reqwest::Response> {
        match self.send_if_present(path, accept).await? {
            Found::Yes(resp) => Ok(resp),
            Found::No(why) => Err(why),
        }
    }

    /// `send`, with a 404 told apart from other failures (for things that may or may not exist).
    async fn send_if_present(&self, path: &str, accept: Option<&str>) -> anyhow::Result<Found> {
        let mut req = self.get(path);
        if let Some(accept) = accept {
            req = req.header(reqwest::header::ACCEPT, accept);
        }
        let resp =
            req.send().await.map_err(|e| anyhow!("cannot reach the cache at {}: {}", self.base, error_chain(&e)))?;
        if resp.status().is_success() {
            return Ok(Found::Yes(resp));
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let detail = oci_error_message(&body).unwrap_or_else(|| body.chars().take(200).collect());
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED && self.credentials.is_none() {
            " (if the cache requires credentials, give them as --server http://USER:PASSWORD@HOST:PORT)"
        } else {
            ""
        };
        let why = anyhow!("{status}: {}{hint}", detail.trim());
        match status {
            reqwest::StatusCode::NOT_FOUND => Ok(Found::No(why)),
            _ => Err(why),
        }
    }

    async fn manifest(&self, image: &ImageRef, reference: &str) -> anyhow::Result<FetchedManifest> {
        let what = || describe_reference(reference);
        let accept = ALL_MANIFEST_TYPES.join(", ");
        let resp = self.send(&image.path("manifests", reference), Some(&accept)).await.with_context(what)?;
        self.read_manifest(resp, reference).await
    }

    /// The manifest, or `None` when the cache answers 404 (e.g. an image without cosign signatures).
    async fn manifest_if_present(&self, image: &ImageRef, reference: &str) -> anyhow::Result<Option<FetchedManifest>> {
        let what = || describe_reference(reference);
        let accept = ALL_MANIFEST_TYPES.join(", ");
        match self.send_if_present(&image.path("manifests", reference), Some(&accept)).await.with_context(what)? {
            Found::Yes(resp) => self.read_manifest(resp, reference).await.map(Some),
            Found::No(_) => Ok(None),
        }
    }

    /// Reads a manifest answer whole (bounded) and checks it against the digest asked for and the
    /// digest the cache announced.
    async fn read_manifest(&self, resp: reqwest::Response, reference: &str) -> anyhow::Result<FetchedManifest> {
        let what = || describe_reference(reference);
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let header_digest =
            resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = read_bounded(resp, &what()).await?;
        let digest = Digest::sha256_of(&body);
        if let Ok(Reference::Digest(expected)) = Reference::parse(reference) {
            if expected != digest {
                bail!("{}: the cache returned content with digest {digest}", what());
            }
        }
        if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
            if h != digest.to_string() {
                bail!("{}: Docker-Content-Digest {h} does not match the content ({digest})", what());
            }
        }
        let doc: ManifestDoc =
            serde_json::from_slice(&body).with_context(|| format!("{} is not a JSON manifest", what()))?;
        let media_type = match (content_type.as_str(), &doc.media_type) {
            (ct, _) if ALL_MANIFEST_TYPES.contains(&ct) => ct.to_owned(),
            (_, Some(mt)) => mt.clone(),
            (ct, None) => ct.to_owned(),
        };
        let is_index = is_index(&media_type) || (doc.manifests.is_some() && doc.config.is_none());
        if !is_index && !ALL_MANIFEST_TYPES.contains(&media_type.as_str()) && doc.config.is_none() {
            bail!("{}: unsupported manifest type {media_type:?}", what());
        }
        Ok(FetchedManifest { digest, media_type, is_index, doc })
    }

    /// What the referrers API lists for `subject`.
    async fn referrers(&self, image: &ImageRef, subject: &Digest) -> anyhow::Result<Vec<Descriptor>> {
        let what = || format!("referrers of {subject}");
        let resp = self.send(&image.path("referrers", &subject.to_string()), None).await.with_context(what)?;
        let body = read_bounded(resp, &what()).await?;
        let doc: ManifestDoc = serde_json::from_slice(&body).with_context(|| format!("{} is not an index", what()))?;
        Ok(doc.manifests.unwrap_or_default())
    }

    /// Streams a blob to nowhere (the point is that the cache stores it), verifying its digest on
    /// the way. Returns the bytes received and, when `job.peek`, the body itself.
    async fn blob(
        &self,
        image: &ImageRef,
        job: &BlobJob,
        bar: &ProgressBar,
        progress: &Progress,
    ) -> anyhow::Result<(u64, Option<Vec<u8>>)> {
        let what = || format!("blob {}", job.digest);
        let resp = self.send(&image.path("blobs", &job.digest.to_string()), None).await.with_context(what)?;
        let mut hasher = DigestHasher::new(job.digest.algorithm());
        let mut received: u64 = 0;
        let mut kept = job.peek.then(Vec::new);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| anyhow!("reading {}: {}", what(), error_chain(&e)))?;
            hasher.update(&chunk);
            received += chunk.len() as u64;
            if let Some(buf) = kept.as_mut() {
                if received <= MAX_CONFIG_PEEK_BYTES {
                    buf.extend_from_slice(&chunk);
                }
            }
            bar.inc(chunk.len() as u64);
            progress.inc(chunk.len() as u64);
        }
        let actual = hasher.finish();
        if actual != job.digest {
            bail!("{}: received content hashes to {actual} ({received} bytes)", what());
        }
        if job.size != 0 && received != job.size {
            bail!("{}: received {received} bytes, the manifest says {}", what(), job.size);
        }
        Ok((received, kept.filter(|_| received <= MAX_CONFIG_PEEK_BYTES)))
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

/// reqwest's top-level message ("error sending request") hides the cause; show the whole chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// `CODE: message` from an OCI error body.
fn oci_error_message(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        code: String,
        #[serde(default)]
        message: String,
    }
    let parsed: Body = serde_json::from_str(body).ok()?;
    let items: Vec<String> = parsed
        .errors
        .into_iter()
        .map(|i| if i.message.starts_with(&i.code) { i.message } else { format!("{}: {}", i.code, i.message) })
        .collect();
    (!items.is_empty()).then(|| items.join("; "))
}

/// ocicache served in-process on a loopback port for the duration of the warm-up.
struct LocalServer {
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl LocalServer {
    /// Starts the cache on 127.0.0.1:0 and waits until it answers `/v2/`.
    async fn start(config: &Config) -> anyhow::Result<(LocalServer, Puller)> {
        let mut config = config.clone();
        // Only this process talks to it, over loopback: client authentication and TLS would only
        // stand in the way (and a certificate for the public name would not match 127.0.0.1).
        config.htpasswd = None;
        config.metrics_auth = false;
        config.tls_cert = None;
        config.tls_key = None;
        // No load balancer to drain: stop as soon as the work is done.
        config.shutdown_delay = Duration::ZERO;
        // Peers cannot reach this cache at the configured address: it takes no fill leases.
        config.advertise_url = None;
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot listen on 127.0.0.1 for the in-process cache")?;
        let port = listener.local_addr().context("in-process cache address")?.port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut task = tokio::spawn(crate::run(listener, config.clone(), async move {
            let _ = rx.await;
        }));
        let puller = Puller::new(format!("http://127.0.0.1:{port}"), None)?;
        // The listener is bound, so this request waits for the server; if it cannot start (an
        // unusable cache directory), the task ends first and its error is the one to show.
        tokio::select! {
            ended = &mut task => {
                let message = match ended {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => "it stopped at once".to_owned(),
                    Err(e) => e.to_string(),
                };
                bail!("cannot start the cache on {}: {message}", config.cache_dir.display());
            }
            answered = puller.send("/v2/", None) => {
                answered.context("the in-process cache does not answer")?;
            }
        }
        Ok((LocalServer { shutdown: tx, task }, puller))
    }

    /// Stops the server and waits for it: `run` returns only once every download is committed to
    /// disk (a client's body ends as soon as the digest is verified; the fsync and rename follow),
    /// so the process never exits with verified blobs not yet in the store. `run` bounds that wait
    /// by `--shutdown-timeout` itself.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: the in-process cache stopped with an error: {e}"),
            Err(e) => eprintln!("warning: the in-process cache failed: {e}"),
        }
    }
}

/// Progress display: bars on a terminal, plain log lines otherwise (indicatif draws nothing when
/// stderr is not a terminal, and CI logs need to show what happened).
#[derive(Clone)]
struct Progress {
    multi: Option<MultiProgress>,
    overall: ProgressBar,
    images_done: Arc<std::sync::atomic::AtomicUsize>,
    images_total: Arc<std::sync::atomic::AtomicUsize>,
    /// No output at all (the server logs through tracing instead).
    quiet: bool,
}

impl Progress {
    fn new() -> Progress {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            .filter(|m| !m.is_hidden());
        let overall = match &multi {
            Some(m) => m.add(ProgressBar::new(0).with_style(bar_style("{msg:>12} ")).with_prefix("total")),
            None => ProgressBar::hidden(),
        };
        Progress { multi, overall, images_done: Arc::default(), images_total: Arc::default(), quiet: false }
    }

    fn quiet() -> Progress {
        Progress {
            multi: None,
            overall: ProgressBar::hidden(),
            images_done: Arc::default(),
            images_total: Arc::default(),
            quiet: true,
        }
    }

    fn image_bar(&self, name: &str) -> ProgressBar {
        self.images_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.update_overall_message();
        match &self.multi {
            Some(m) => m.insert_before(
                &self.overall,
                ProgressBar::new(0)
                    .with_style(text_style())
                    .with_prefix(name.to_owned())
                    .with_message("reading manifests"),
            ),
            None => ProgressBar::hidden(),
        }
    }

    fn image_done(&self) {
        self.images_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.update_overall_message();
    }

    fn update_overall_message(&self) {
        let done = self.images_done.load(std::sync::atomic::Ordering::Relaxed);
        let total = self.images_total.load(std::sync::atomic::Ordering::Relaxed);
        self.overall.set_message(format!("{done}/{total} images"));
    }

    fn add_total(&self, bytes: u64) {
        self.overall.inc_length(bytes);
    }

    fn inc(&self, bytes: u64) {
        self.overall.inc(bytes);
    }

    /// A plain line on stderr when there are no bars; with bars, the bars say it.
    fn log(&self, line: &str) {
        if self.multi.is_none() && !self.quiet {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        self.overall.finish();
    }
}

/// An image's or the total's bytes. The templates are constants: the fallbacks never apply.
fn bar_style(suffix: &str) -> ProgressStyle {
    let template = format!("{{prefix:32!}} [{{wide_bar}}] {{bytes:>10}}/{{total_bytes:<10}} {suffix}");
    ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// An image whose size is not known yet, or that failed: its name and a message.
fn text_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:32!} {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The summary table on stdout: one row per image, in the order given.
fn print_summary(outcomes: &[Outcome]) {
    let rows: Vec<[String; 5]> = outcomes
        .iter()
        .map(|o| {
            [
                o.image.clone(),
                platform_list(&o.platforms),
                o.blobs.to_string(),
                HumanBytes(o.bytes).to_string(),
                match &o.error {
                    None => "ok".to_owned(),
                    Some(e) => format!("error: {e}"),
                },
            ]
        })
        .collect();
    use super::table::{render, Align::*};
    let out = render(["IMAGE", "PLATFORMS", "BLOBS", "BYTES", "RESULT"], [Left, Left, Right, Right, Left], &rows, &[]);
    print!("{out}");
}
