//! `ocicache status`: the report an operator reads before an outage — each image the cluster uses,
//! whether the cache holds its manifest and every blob, and how long ago its tag was confirmed.
//! From a running cache (`--server`, which serves `/status` with `--warm-from-cluster`), or from
//! the configured cache directory for the images of the cluster, a file, or the command line.
//! Exits 1 when an image is not cached, so a pre-maintenance script can stop on it.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};

use crate::cluster::status::{self, InvalidRow, Report};
use crate::cmd::warm::{ImageRef, Platform};
use crate::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Ask this running cache (started with --warm-from-cluster), e.g. http://localhost:3000;
    /// credentials for a cache behind --htpasswd go in the URL (http://USER:PASSWORD@HOST:PORT)
    #[arg(long, value_name = "URL", conflicts_with_all = ["kubernetes", "from_file", "images"])]
    pub server: Option<String>,
    /// Check the images the cluster runs (listed once) against the cache directory
    #[arg(long)]
    pub kubernetes: bool,
    /// Check the images of the Kubernetes objects in this file (kubectl get -o json|yaml)
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Check these images
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Platforms to check in multi-platform images (default: the nodes' platforms, else all)
    #[arg(long, value_delimiter = ',', value_name = "OS/ARCH")]
    pub platform: Vec<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Prints the report; returns whether every image is cached.
pub async fn run(args: StatusArgs, config: Config) -> anyhow::Result<bool> {
    let report = match &args.server {
        Some(server) => fetch(server).await?,
        None => local(&args, &config).await?,
    };
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(report.not_cached() == 0)
}

/// `GET <server>/status` as JSON.
async fn fetch(server: &str) -> anyhow::Result<Report> {
    let mut url = url::Url::parse(server.trim()).map_err(|e| anyhow!("--server {server:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--server {server:?} must be an http:// or https:// URL, e.g. http://localhost:3000");
    }
    let user = (!url.username().is_empty()).then(|| url.username().to_owned());
    let pass = url.password().map(str::to_owned);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let target = format!("{}/status", url.as_str().trim_end_matches('/'));
    let client = reqwest::Client::builder().no_proxy().build().context("cannot build the HTTP client")?;
    let mut req = client.get(&target).header(reqwest::header::ACCEPT, "application/json");
    if let Some(user) = user {
        let decode =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        req = req.basic_auth(decode(&user).unwrap_or(user), pass.as_deref().and_then(decode));
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {target}"))?;
    let status = resp.status();
    let body = resp.text().await.with_context(|| format!("reading {target}"))?;
    if !status.is_success() {
        bail!("{target}: {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{target} did not answer a status report"))
}

/// Checks images from the cluster, a file or the command line against the cache directory.
async fn local(args: &StatusArgs, config: &Config) -> anyhow::Result<Report> {
    let cluster =
        crate::cluster::source::load(args.kubernetes, args.from_file.as_deref(), config.kubeconfig.as_deref())
            .await
            .map_err(anyhow::Error::msg)?;
    let mut images: Vec<ImageRef> = Vec::new();
    for s in &args.images {
        let image = ImageRef::parse(s).with_context(|| format!("{s:?}"))?;
        if !images.contains(&image) {
            images.push(image);
        }
    }
    let mut platforms: Vec<Platform> =
        args.platform.iter().filter(|p| !p.trim().is_empty()).map(|p| Platform::parse(p)).collect::<Result<_, _>>()?;
    let mut invalid = Vec::new();
    if let Some(w) = cluster {
        for image in w.images {
            if !images.contains(&image) {
                images.push(image);
            }
        }
        if platforms.is_empty() {
            platforms = w.platforms;
        }
        invalid = w
            .invalid
            .into_iter()
            .map(|i| InvalidRow { object: i.object, reference: i.reference, reason: i.reason })
            .collect();
    }
    if images.is_empty() {
        bail!("no images to check: name them, or use --kubernetes, --from-file or --server");
    }
    images.sort_by_key(ToString::to_string);
    let metrics = crate::metrics::Metrics::new();
    let store =
        crate::store::open(&config.cache_dir, config.storage.as_deref(), &metrics).await.map_err(anyhow::Error::msg)?;
    let rows = status::check_all(&*store, &images, &platforms).await;
    Ok(Report { platforms: platforms.iter().map(ToString::to_string).collect(), complete: true, images: rows, invalid })
}
