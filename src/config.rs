//! Configuration: the flags of containerd-registry-cache (same names, same meaning) plus ocicache's
//! own, and an optional TOML file with the same settings. Flags override the file. Everything is
//! validated once here, so a bad setting fails at start with a message naming it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use regex::Regex;
use serde::Deserialize;
use url::Url;

use crate::cache::TagPolicy;
use crate::oci::RegistryName;
use crate::store::eviction::EvictionPolicy;
use crate::upstream::{Credentials, OriginOptions, Registries};

pub const DEFAULT_PORT: u16 = 3000;
pub const DEFAULT_CACHE_DIR: &str = "/tmp/data";
pub const DEFAULT_SKIP_TAGS: &str = "latest";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Command-line flags. Every value is optional so that a flag the user did not give leaves the
/// config file's value (or the default) in place.
#[derive(Debug, Parser)]
#[command(
    name = "ocicache",
    version,
    about = "A pull-through cache for OCI container registries: one endpoint for many registries",
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,

    /// TOML config file with the same settings as these flags (flags win)
    #[arg(global = true, short = 'c', long = "config", value_name = "FILE", env = "OCICACHE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Port to listen on [default: 3000]
    #[arg(global = true, short = 'p', long)]
    pub port: Option<u16>,

    /// Address to listen on [default: 0.0.0.0]
    #[arg(global = true, long, value_name = "IP")]
    pub listen: Option<IpAddr>,

    /// Cache directory [default: /tmp/data]
    #[arg(global = true, short = 'd', long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Cache manifests by tag (`--cache-manifests=false` asks the origin for every tag) [default: true]
    #[arg(global = true, short = 'm', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub cache_manifests: Option<bool>,

    /// Regex of tags never served from the cache (unanchored; empty disables) [default: latest]
    #[arg(global = true, short = 't', long, value_name = "REGEX")]
    pub skip_tags: Option<String>,

    /// Docker config.json (or a mounted .dockerconfigjson pull secret): auths, credHelpers, credsStore
    #[arg(global = true, long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,

    /// How long credentials from a credential helper are reused [default: 5m]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub credential_ttl: Option<Duration>,

    /// YAML credentials for origins: `<host>[/<path prefix>]: {username, password}`, longest prefix wins
    #[arg(global = true, short = 'f', long, value_name = "FILE")]
    pub creds_file: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace (or a tracing filter) [default: info]
    #[arg(global = true, short = 'l', long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format [default: text]
    #[arg(global = true, long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Registry whose content is private: cached, but served only to clients the origin confirms; repeatable
    #[arg(global = true, long = "private-registry", value_name = "HOST")]
    pub private_registry: Vec<String>,

    /// S3 bucket shared by every replica (same as --storage s3://NAME); AWS_* environment for credentials
    /// and endpoint
    #[arg(global = true, short = 'b', long, value_name = "NAME")]
    pub bucket: Option<String>,

    /// Shared storage for the cache: s3://bucket[/prefix], gs://, az://, file:///path; --cache-dir then only stages fills
    #[arg(global = true, long, value_name = "URL")]
    pub storage: Option<String>,

    /// Where registry NAME is fetched from, endpoints tried in order; repeatable.
    /// Example: --upstream myreg.test=http://127.0.0.1:5000
    #[arg(global = true, long, value_name = "NAME=URL[,URL...]")]
    pub upstream: Vec<String>,

    /// Extra registry that may be dialled (exact host[:port] or `*.domain`); repeatable
    #[arg(global = true, long = "allow-registry", value_name = "NAME")]
    pub allow_registry: Vec<String>,

    /// Registry for requests with neither `?ns=` nor a registry host in the path [default: docker.io]
    #[arg(global = true, long, value_name = "NAME")]
    pub default_registry: Option<String>,

    /// How long a cached tag is served before revalidating with a HEAD (0 = every time) [default: 5m]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub tag_ttl: Option<Duration>,

    /// Regex of tags that never move (e.g. '^v?[0-9]+(\.[0-9]+){2}$'): never revalidated
    #[arg(global = true, long, value_name = "REGEX")]
    pub immutable_tags: Option<String>,

    /// Serve only what is cached; never contact an origin
    #[arg(global = true, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub offline: Option<bool>,

    /// Time allowed to connect to an origin [default: 5s]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Time allowed for an origin's response headers [default: 30s]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub first_byte_timeout: Option<Duration>,

    /// Require Basic credentials from every client, checked against this htpasswd file (bcrypt, `htpasswd -B`)
    #[arg(global = true, long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,

    /// With --htpasswd, also require credentials for /metrics
    #[arg(global = true, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub metrics_auth: Option<bool>,

    /// Keep the store under this size, evicting least recently used content (e.g. 50GiB)
    #[arg(global = true, long, value_name = "SIZE", value_parser = crate::store::eviction::parse_size)]
    pub max_size: Option<u64>,

    /// Evict content not used for this long (e.g. 30d)
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_age: Option<Duration>,

    /// How long in-flight responses may take to finish after SIGTERM [default: 30s]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,

    /// After SIGTERM, how long /readyz reports unready before new connections stop [default: 0s]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_delay: Option<Duration>,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key)
    #[arg(global = true, long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert
    #[arg(global = true, long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Most blob downloads from origins at once; more wait their turn [default: 32]
    #[arg(global = true, long, value_name = "N")]
    pub max_upstream_concurrency: Option<usize>,

    /// How long a client's confirmed access to private content is remembered [default: 60s]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub auth_cache_ttl: Option<Duration>,

    /// How long a failed origin endpoint is skipped (doubles while it keeps failing, up to 8x) [default: 30s]
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_duration)]
    pub endpoint_backoff: Option<Duration>,

    /// Serve: list and watch the cluster's workloads and keep every image they use warm (needs
    /// list/watch on pods, nodes and the workload kinds) [default: false]
    #[arg(global = true, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub warm_from_cluster: Option<bool>,

    /// Kubeconfig for --warm-from-cluster, warm --kubernetes and status --kubernetes [default: in-cluster
    /// service account, $KUBECONFIG, ~/.kube/config]
    #[arg(global = true, long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `5m`, `30s`, `1h30m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 1h: {e}"))
}

fn deserialize_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
}

/// What to do; serving is the default.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the cache (the default when no command is given)
    Serve,
    /// Write containerd hosts.toml files (or docker/podman config) that send pulls through a cache
    Hosts(crate::cmd::hosts::HostsArgs),
    /// Pull images into the cache ahead of time, with progress
    Warm(crate::cmd::warm::WarmArgs),
    /// Apply the eviction policy (--max-size, --max-age) to a cache directory offline
    Gc(crate::cmd::gc::GcArgs),
    /// Report whether each image the cluster uses is cached (manifest, every blob, tag age)
    Status(crate::cmd::status::StatusArgs),
}

/// Go's flag package accepts these spellings; containerd-registry-cache's README uses `=no`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (use true or false)")),
    }
}

/// The TOML file. Unknown keys are errors, so a typo never silently does nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub port: Option<u16>,
    pub listen: Option<IpAddr>,
    pub cache_dir: Option<PathBuf>,
    pub cache_manifests: Option<bool>,
    pub skip_tags: Option<String>,
    pub creds_file: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub credential_ttl: Option<Duration>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub private_registries: Vec<String>,
    pub bucket: Option<String>,
    pub storage: Option<String>,
    #[serde(default)]
    pub allow_registries: Vec<String>,
    pub default_registry: Option<String>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub tag_ttl: Option<Duration>,
    pub immutable_tags: Option<String>,
    pub offline: Option<bool>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub first_byte_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub endpoint_backoff: Option<Duration>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub auth_cache_ttl: Option<Duration>,
    pub htpasswd: Option<PathBuf>,
    pub metrics_auth: Option<bool>,
    pub max_upstream_concurrency: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_size: Option<String>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub max_age: Option<Duration>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub shutdown_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub shutdown_delay: Option<Duration>,
    pub warm_from_cluster: Option<bool>,
    pub kubeconfig: Option<PathBuf>,
    /// Per-registry settings, keyed by registry name.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryFileConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFileConfig {
    /// Same as `--upstream NAME=URL,...`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Runs `docker-credential-<name> get` for this registry's credentials (or a path to a helper).
    pub credential_helper: Option<String>,
    /// Extra CA bundle (PEM) trusted for this origin only.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS with this origin; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Skip certificate verification for this origin (self-signed test setups). Defaults stay strict.
    #[serde(default)]
    pub insecure: bool,
}

/// TLS settings for one origin, beyond the system's trust store.
#[derive(Debug, Clone, Default)]
pub struct OriginTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub insecure: bool,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cache_dir: PathBuf,
    pub policy: TagPolicy,
    /// Files and helpers for origin credentials (read again when they change).
    pub creds_file: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
    pub credential_helpers: Vec<(RegistryName, String)>,
    pub credential_ttl: Duration,
    /// Per-origin TLS settings.
    pub origin_tls: BTreeMap<RegistryName, OriginTls>,
    pub registries: Registries,
    pub default_registry: RegistryName,
    pub log_level: String,
    pub log_format: LogFormat,
    pub origin: OriginOptions,
    /// How long a client's confirmed access to private content is remembered.
    pub auth_cache_ttl: Duration,
    pub htpasswd: Option<PathBuf>,
    pub metrics_auth: bool,
    pub max_upstream_concurrency: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub eviction: EvictionPolicy,
    /// Shared object storage (`s3://bucket[/prefix]`), if any.
    pub storage: Option<String>,
    pub shutdown_timeout: Duration,
    pub shutdown_delay: Duration,
    /// Watch the cluster and keep the images it uses warm (`--warm-from-cluster`).
    pub warm_from_cluster: bool,
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(s: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(s.into())
}

impl Config {
    /// Parses command-line arguments (including the program name) into a validated config.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(|e| invalid(e.to_string()))?;
        Config::from_cli(cli)
    }

    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?
            }
            None => FileConfig::default(),
        };
        Config::merge(cli, file)
    }

    fn merge(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let storage = match (cli.storage.or(file.storage), cli.bucket.or(file.bucket)) {
            (Some(_), Some(_)) => return Err(invalid("--storage and --bucket name the same thing; give one")),
            (Some(url), None) => Some(url),
            (None, Some(bucket)) => Some(format!("s3://{bucket}")),
            (None, None) => None,
        };
        if let Some(url) = &storage {
            if !["s3://", "gs://", "az://", "azure://", "file:///"].iter().any(|p| url.starts_with(p)) {
                return Err(invalid(format!(
                    "--storage {url}: use s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix] or \
                     file:///shared/path (local disk is the default)"
                )));
            }
        }
        let port = cli.port.or(file.port).unwrap_or(DEFAULT_PORT);
        let ip = cli.listen.or(file.listen).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let cache_dir = cli.cache_dir.or(file.cache_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
        let skip = cli.skip_tags.or(file.skip_tags).unwrap_or_else(|| DEFAULT_SKIP_TAGS.to_owned());
        let skip_tags = if skip.is_empty() {
            None
        } else {
            Some(Regex::new(&skip).map_err(|e| invalid(format!("--skip-tags {skip:?} is not a valid regex: {e}")))?)
        };

        let creds_file = cli.creds_file.or(file.creds_file);
        let credentials = match &creds_file {
            Some(p) => Credentials::load(p).map_err(invalid)?,
            None => Credentials::default(),
        };

        let mut endpoints: BTreeMap<RegistryName, Vec<Url>> = BTreeMap::new();
        let mut credential_helpers = Vec::new();
        let mut origin_tls = BTreeMap::new();
        for (name, reg) in &file.registries {
            let registry = parse_name(name, &format!("registries.\"{name}\""))?;
            if !reg.endpoints.is_empty() {
                let key = format!("registries.\"{name}\".endpoints");
                endpoints.insert(registry.clone(), parse_urls(&reg.endpoints, &key)?);
            }
            if let Some(helper) = &reg.credential_helper {
                if helper.is_empty() || helper.contains(char::is_whitespace) {
                    return Err(invalid(format!(
                        "registries.\"{name}\".credential_helper: {helper:?} is not a helper name"
                    )));
                }
                credential_helpers.push((registry.clone(), helper.clone()));
            }
            if reg.client_cert.is_some() != reg.client_key.is_some() {
                return Err(invalid(format!("registries.\"{name}\": client_cert and client_key go together")));
            }
            for f in [&reg.ca, &reg.client_cert, &reg.client_key].into_iter().flatten() {
                if !f.is_file() {
                    return Err(invalid(format!("registries.\"{name}\": {} is not a readable file", f.display())));
                }
            }
            if reg.ca.is_some() || reg.client_cert.is_some() || reg.insecure {
                let tls = OriginTls {
                    ca: reg.ca.clone(),
                    client_cert: reg.client_cert.clone(),
                    client_key: reg.client_key.clone(),
                    insecure: reg.insecure,
                };
                origin_tls.insert(registry, tls);
            }
        }
        for spec in &cli.upstream {
            let (name, urls) = spec
                .split_once('=')
                .ok_or_else(|| invalid(format!("--upstream {spec:?}: expected NAME=URL[,URL...]")))?;
            let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
            let key = format!("--upstream {spec}");
            endpoints.insert(parse_name(name, &key)?, parse_urls(&urls, &key)?);
        }

        let private: Vec<String> =
            if cli.private_registry.is_empty() { file.private_registries } else { cli.private_registry };
        let private_registries =
            private.iter().map(|r| parse_name(r, "--private-registry")).collect::<Result<Vec<_>, _>>()?;

        // Registries the operator named anywhere are registries the operator meant to reach.
        let mut allowed: Vec<String> = file.allow_registries;
        allowed.extend(cli.allow_registry);
        allowed.extend(private_registries.iter().map(ToString::to_string));
        allowed.extend(credentials.registries().map(ToString::to_string));
        allowed.extend(credential_helpers.iter().map(|(r, _)| r.to_string()));
        let docker_config = cli.docker_config.or(file.docker_config);
        if let Some(p) = &docker_config {
            // Validated now (a broken file fails the start); read again when it changes.
            let sources = crate::upstream::sources::CredentialSources::new(Vec::new(), None, Some(p), Duration::ZERO)
                .map_err(invalid)?;
            allowed.extend(sources.registries().iter().map(ToString::to_string));
        }
        let registries = Registries::new(endpoints, &allowed).map_err(invalid)?;

        let default_name = cli.default_registry.or(file.default_registry).unwrap_or_else(|| "docker.io".to_owned());
        let default_registry = parse_name(&default_name, "--default-registry")?;
        if !registries.is_allowed(&default_registry) {
            return Err(invalid(format!(
                "--default-registry {default_name}: not allowed; add it with --allow-registry or --upstream"
            )));
        }

        let immutable = cli.immutable_tags.or(file.immutable_tags).filter(|s| !s.is_empty());
        let immutable_tags = match immutable {
            Some(re) => Some(
                Regex::new(&re).map_err(|e| invalid(format!("--immutable-tags {re:?} is not a valid regex: {e}")))?,
            ),
            None => None,
        };
        let defaults = OriginOptions::default();
        let origin = OriginOptions {
            offline: cli.offline.or(file.offline).unwrap_or(false),
            connect_timeout: cli.connect_timeout.or(file.connect_timeout).unwrap_or(defaults.connect_timeout),
            first_byte_timeout: cli
                .first_byte_timeout
                .or(file.first_byte_timeout)
                .unwrap_or(defaults.first_byte_timeout),
            endpoint_backoff: cli.endpoint_backoff.or(file.endpoint_backoff).unwrap_or(defaults.endpoint_backoff),
        };

        let file_max_size = match &file.max_size {
            Some(s) => Some(crate::store::eviction::parse_size(s).map_err(|e| invalid(format!("max_size: {e}")))?),
            None => None,
        };
        let eviction =
            EvictionPolicy { max_size: cli.max_size.or(file_max_size), max_age: cli.max_age.or(file.max_age) };
        let (tls_cert, tls_key) = (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key));
        if tls_cert.is_some() != tls_key.is_some() {
            return Err(invalid("--tls-cert and --tls-key go together"));
        }
        if let (Some(c), Some(k)) = (&tls_cert, &tls_key) {
            crate::server::tls::server_config(c, k).map_err(invalid)?;
        }

        let log_level = cli.log_level.or(file.log_level).unwrap_or_else(|| "info".to_owned());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| invalid(format!("--log-level {log_level:?}: {e}")))?;

        Ok(Config {
            listen: SocketAddr::new(ip, port),
            cache_dir,
            policy: TagPolicy {
                cache_manifests: cli.cache_manifests.or(file.cache_manifests).unwrap_or(true),
                skip_tags,
                private_registries,
                tag_ttl: cli.tag_ttl.or(file.tag_ttl).unwrap_or(Duration::from_secs(300)),
                immutable_tags,
            },
            origin,
            auth_cache_ttl: cli.auth_cache_ttl.or(file.auth_cache_ttl).unwrap_or(Duration::from_secs(60)),
            htpasswd: cli.htpasswd.or(file.htpasswd),
            metrics_auth: cli.metrics_auth.or(file.metrics_auth).unwrap_or(false),
            max_upstream_concurrency: cli.max_upstream_concurrency.or(file.max_upstream_concurrency).unwrap_or(32),
            tls_cert,
            tls_key,
            eviction,
            storage,
            shutdown_timeout: cli.shutdown_timeout.or(file.shutdown_timeout).unwrap_or(Duration::from_secs(30)),
            shutdown_delay: cli.shutdown_delay.or(file.shutdown_delay).unwrap_or(Duration::ZERO),
            warm_from_cluster: cli.warm_from_cluster.or(file.warm_from_cluster).unwrap_or(false),
            kubeconfig: cli.kubeconfig.or(file.kubeconfig),
            creds_file,
            docker_config,
            credential_helpers,
            credential_ttl: cli.credential_ttl.or(file.credential_ttl).unwrap_or(Duration::from_secs(300)),
            origin_tls,
            registries,
            default_registry,
            log_level,
            log_format: cli.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
        })
    }
}

fn parse_name(s: &str, key: &str) -> Result<RegistryName, ConfigError> {
    RegistryName::parse(s).map_err(|e| invalid(format!("{key}: {}", e.message)))
}

fn parse_urls(urls: &[String], key: &str) -> Result<Vec<Url>, ConfigError> {
    if urls.is_empty() {
        return Err(invalid(format!("{key}: at least one URL is needed")));
    }
    urls.iter()
        .map(|u| {
            let url = Url::parse(u.trim()).map_err(|e| invalid(format!("{key}: {u:?} is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(format!("{key}: {u:?} must be an http:// or https:// URL")));
            }
            Ok(url)
        })
        .collect()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
