//! Configuration: the flags of containerd-registry-cache (same names, same meaning) plus ocicache's
//! own, and an optional TOML file with the same settings.
//!
//! One struct, [`Settings`], is the file's format, holds every default (`Settings::default`) and is
//! what `ocicache check-config` prints. It is built in layers: the defaults, the file on top, the
//! flags that were given on top of that ([`Layered`]). Only then is it validated, once, into the
//! [`Config`] the server runs with, so a bad setting fails at start with a message naming it: the
//! flag when a flag set it, the file's key otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use regex::Regex;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::cache::TagPolicy;
use crate::oci::RegistryName;
use crate::store::eviction::EvictionPolicy;
use crate::upstream::{Credentials, OriginOptions, Registries};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting, as the config file spells it. Each key means what the flag of the same name
/// means (see [`Cli`]); repeatable flags are lists (`private_registries`, `allow_registries`) and
/// `--upstream NAME=URL` is `registries."NAME".endpoints`. A key missing from the file keeps its
/// default; an unknown key is an error, so a typo never silently does nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub port: u16,
    pub listen: IpAddr,
    pub cache_dir: PathBuf,
    pub cache_manifests: bool,
    /// Unanchored regex; empty disables.
    pub skip_tags: String,
    pub creds_file: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
    pub credential_ttl: HumanDuration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub private_registries: Vec<String>,
    pub bucket: Option<String>,
    pub storage: Option<String>,
    /// How the other replicas sharing `storage` reach this one (cluster-wide single flight).
    pub advertise_url: Option<String>,
    /// The secret replicas prove to each other on the internal peer endpoint.
    pub peer_secret_file: Option<PathBuf>,
    pub allow_registries: Vec<String>,
    pub default_registry: String,
    pub tag_ttl: HumanDuration,
    pub immutable_tags: Option<String>,
    pub offline: bool,
    pub connect_timeout: HumanDuration,
    pub first_byte_timeout: HumanDuration,
    pub endpoint_backoff: HumanDuration,
    pub auth_cache_ttl: HumanDuration,
    pub htpasswd: Option<PathBuf>,
    pub metrics_auth: bool,
    pub max_upstream_concurrency: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_size: Option<ByteSize>,
    pub max_age: Option<HumanDuration>,
    pub shutdown_timeout: HumanDuration,
    pub shutdown_delay: HumanDuration,
    pub warm_from_cluster: bool,
    pub kubeconfig: Option<PathBuf>,
    /// `off`, or how long the signed URLs of redirected blob GETs are valid.
    pub redirect_blobs: RedirectBlobs,
    /// Regex of `User-Agent`s never redirected; unset or empty: none.
    pub redirect_blobs_skip_user_agent: Option<String>,
    /// Per-registry settings, keyed by registry name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, RegistrySettings>,
}

/// The defaults: containerd-registry-cache's for its flags, ocicache's own for the rest. The only
/// place they are written down (the `[default: ...]` of `--help` is checked against them).
impl Default for Settings {
    fn default() -> Self {
        let secs = |s| HumanDuration(Duration::from_secs(s));
        Settings {
            port: 3000,
            listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            cache_dir: PathBuf::from("/tmp/data"),
            cache_manifests: true,
            skip_tags: "latest".to_owned(),
            creds_file: None,
            docker_config: None,
            credential_ttl: secs(300),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            private_registries: Vec::new(),
            bucket: None,
            storage: None,
            advertise_url: None,
            peer_secret_file: None,
            allow_registries: Vec::new(),
            default_registry: "docker.io".to_owned(),
            tag_ttl: secs(300),
            immutable_tags: None,
            offline: false,
            connect_timeout: secs(5),
            first_byte_timeout: secs(30),
            endpoint_backoff: secs(30),
            auth_cache_ttl: secs(60),
            htpasswd: None,
            metrics_auth: false,
            max_upstream_concurrency: 32,
            tls_cert: None,
            tls_key: None,
            max_size: None,
            max_age: None,
            shutdown_timeout: secs(30),
            shutdown_delay: secs(0),
            warm_from_cluster: false,
            kubeconfig: None,
            redirect_blobs: RedirectBlobs(None),
            redirect_blobs_skip_user_agent: None,
            registries: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Same as `--upstream NAME=URL,...`.
    pub endpoints: Vec<String>,
    /// Runs `docker-credential-<name> get` for this registry's credentials (or a path to a helper).
    pub credential_helper: Option<String>,
    /// Extra CA bundle (PEM) trusted for this origin only.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS with this origin; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Skip certificate verification for this origin (self-signed test setups). Defaults stay strict.
    pub insecure: bool,
}

/// A duration written `5m`, `30s`, `1h30m` or as a bare number of seconds (also a TOML integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Text", into = "String")]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(HumanDuration(Duration::from_secs(secs)));
        }
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 1h: {e}"))
    }
}

/// In the largest unit that divides the duration (`90m`, `30d`), as such settings are written.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u128); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        if self.0.subsec_nanos() % 1_000_000 != 0 {
            return humantime::format_duration(self.0).fmt(f);
        }
        let ms = self.0.as_millis();
        let (unit, n) = UNITS.iter().find(|(_, n)| ms % n == 0).unwrap_or(&("ms", 1));
        write!(f, "{}{unit}", ms / n)
    }
}

/// `--redirect-blobs[=TTL]`: `off` (the default), or the lifetime of each signed URL.
///
/// The bare flag (or `on`, `true`) means [`RedirectBlobs::DEFAULT_TTL`]. A client follows a redirect
/// at once and the store checks the expiry when the request starts (a long download goes on after
/// it), so the URL only has to outlive the hop and any clock skew between the pod and the store;
/// anyone who sees it (a log, a proxy) can read the blob until it expires, so it should not live
/// long. At most [`RedirectBlobs::MAX_TTL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Text", into = "String")]
pub struct RedirectBlobs(pub Option<Duration>);

impl RedirectBlobs {
    /// Five minutes: enough for clock skew and a client that queues its downloads, short enough
    /// that a leaked URL is soon useless.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    /// A URL valid for longer is a standing grant to whoever sees it.
    pub const MAX_TTL: Duration = Duration::from_secs(3600);
    /// Shorter ones risk expiring before the client's request arrives (clock skew).
    pub const MIN_TTL: Duration = Duration::from_secs(10);
}

impl FromStr for RedirectBlobs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "no" | "0" | "0s" => Ok(RedirectBlobs(None)),
            "on" | "true" | "yes" => Ok(RedirectBlobs(Some(Self::DEFAULT_TTL))),
            _ => s
                .parse::<HumanDuration>()
                .map(|d| RedirectBlobs(Some(d.0)))
                .map_err(|_| format!("{s:?} is not off, on or a duration like 5m")),
        }
    }
}

impl fmt::Display for RedirectBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(d) => HumanDuration(d).fmt(f),
        }
    }
}

impl TryFrom<Text> for RedirectBlobs {
    type Error = String;

    fn try_from(t: Text) -> Result<Self, String> {
        t.0.parse()
    }
}

impl From<RedirectBlobs> for String {
    fn from(r: RedirectBlobs) -> String {
        r.to_string()
    }
}

/// A size written `50GiB`, `500MB` or as a number of bytes (also a TOML integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Text", into = "String")]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        crate::store::eviction::parse_size(s).map(ByteSize)
    }
}

/// In the largest unit that divides the size, so that printed settings read as they were written.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 8] = [
            ("TiB", 1 << 40),
            ("TB", 1_000_000_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("KiB", 1 << 10),
            ("KB", 1_000),
        ];
        match UNITS.iter().find(|(_, n)| self.0 > 0 && self.0 % n == 0) {
            Some((unit, n)) => write!(f, "{}{unit}", self.0 / n),
            None => write!(f, "{}B", self.0),
        }
    }
}

/// How durations and sizes may be written in the file: as text, as on the command line, or as a
/// whole number (of seconds, of bytes), which reads as its digits would.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("text such as \"30s\" or \"50GiB\", a whole number (of seconds, of bytes), or a boolean")
            }

            fn visit_str<E>(self, s: &str) -> Result<Text, E> {
                Ok(Text(s.to_owned()))
            }

            fn visit_i64<E>(self, n: i64) -> Result<Text, E> {
                Ok(Text(n.to_string()))
            }

            fn visit_u64<E>(self, n: u64) -> Result<Text, E> {
                Ok(Text(n.to_string()))
            }

            fn visit_bool<E>(self, b: bool) -> Result<Text, E> {
                Ok(Text(b.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl TryFrom<Text> for HumanDuration {
    type Error = String;

    fn try_from(t: Text) -> Result<Self, String> {
        t.0.parse()
    }
}

impl TryFrom<Text> for ByteSize {
    type Error = String;

    fn try_from(t: Text) -> Result<Self, String> {
        t.0.parse()
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        d.to_string()
    }
}

impl From<ByteSize> for String {
    fn from(s: ByteSize) -> String {
        s.to_string()
    }
}

/// One `--upstream NAME=URL[,URL...]`, checked as the flag is parsed.
#[derive(Debug, Clone)]
pub struct Upstream {
    name: String,
    endpoints: Vec<String>,
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (name, urls) = spec.split_once('=').ok_or("expected NAME=URL[,URL...]")?;
        RegistryName::parse(name).map_err(|e| e.message)?;
        let endpoints: Vec<String> = urls.split(',').map(str::to_owned).collect();
        parse_urls(&endpoints)?;
        Ok(Upstream { name: name.to_owned(), endpoints })
    }
}

/// `--upstream` as the file spells it: `registries."NAME".endpoints` (the last flag for a name wins).
fn upstreams_as_registries<S: Serializer>(upstreams: &[Upstream], s: S) -> Result<S::Ok, S::Error> {
    let tables: BTreeMap<&str, BTreeMap<&str, &[String]>> =
        upstreams.iter().map(|u| (u.name.as_str(), BTreeMap::from([("endpoints", u.endpoints.as_slice())]))).collect();
    tables.serialize(s)
}

/// Command-line flags. Every value is optional so that a flag the user did not give leaves the
/// config file's value (or the default) in place. Serialized, the flags that were given are a table
/// of the config file's shape ([`Cli::overrides`]; TOML leaves out the `None`s), which is laid over
/// the file.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "ocicache",
    version,
    about = "A pull-through cache for OCI container registries: one endpoint for many registries",
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    #[serde(skip)]
    version: Option<bool>,

    /// TOML config file with the same settings as these flags (flags win)
    #[arg(global = true, short = 'c', long = "config", value_name = "FILE", env = "OCICACHE_CONFIG")]
    #[serde(skip)]
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
    #[arg(global = true, long, value_name = "DURATION")]
    pub credential_ttl: Option<HumanDuration>,

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
    #[serde(rename = "private_registries", skip_serializing_if = "Vec::is_empty")]
    pub private_registry: Vec<String>,

    /// S3 bucket shared by every replica (same as --storage s3://NAME); AWS_* environment for credentials
    /// and endpoint
    #[arg(global = true, short = 'b', long, value_name = "NAME")]
    pub bucket: Option<String>,

    /// Shared storage for the cache: s3://bucket[/prefix], gs://, az://, file:///path; --cache-dir is then its local disk tier (bounded by --max-size)
    #[arg(global = true, long, value_name = "URL")]
    pub storage: Option<String>,

    /// How replicas sharing --storage reach this one (e.g. http://POD_IP:3000): a blob one replica is
    /// downloading is streamed from it to the others instead of being downloaded again; needs
    /// --peer-secret-file
    #[arg(global = true, long, value_name = "URL")]
    pub advertise_url: Option<String>,

    /// File with a secret shared by the replicas (at least 16 characters): enables the internal peer
    /// endpoint, and proves this replica to the others
    #[arg(global = true, long, value_name = "FILE")]
    pub peer_secret_file: Option<PathBuf>,

    /// Where registry NAME is fetched from, endpoints tried in order; repeatable.
    /// Example: --upstream myreg.test=http://127.0.0.1:5000
    #[arg(global = true, long, value_name = "NAME=URL[,URL...]")]
    #[serde(rename = "registries", skip_serializing_if = "Vec::is_empty", serialize_with = "upstreams_as_registries")]
    pub upstream: Vec<Upstream>,

    /// Extra registry that may be dialled (exact host[:port] or `*.domain`); repeatable, adds to the
    /// config file's list
    #[arg(global = true, long = "allow-registry", value_name = "NAME")]
    #[serde(rename = "allow_registries", skip_serializing_if = "Vec::is_empty")]
    pub allow_registry: Vec<String>,

    /// Registry for requests with neither `?ns=` nor a registry host in the path [default: docker.io]
    #[arg(global = true, long, value_name = "NAME")]
    pub default_registry: Option<String>,

    /// How long a cached tag is served before revalidating with a HEAD (0 = every time) [default: 5m]
    #[arg(global = true, long, value_name = "DURATION")]
    pub tag_ttl: Option<HumanDuration>,

    /// Regex of tags that never move (e.g. '^v?[0-9]+(\.[0-9]+){2}$'): never revalidated
    #[arg(global = true, long, value_name = "REGEX")]
    pub immutable_tags: Option<String>,

    /// Serve only what is cached; never contact an origin [default: false]
    #[arg(global = true, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub offline: Option<bool>,

    /// Time allowed to connect to an origin [default: 5s]
    #[arg(global = true, long, value_name = "DURATION")]
    pub connect_timeout: Option<HumanDuration>,

    /// Time allowed for an origin's response headers [default: 30s]
    #[arg(global = true, long, value_name = "DURATION")]
    pub first_byte_timeout: Option<HumanDuration>,

    /// Require Basic credentials from every client, checked against this htpasswd file (bcrypt, `htpasswd -B`)
    #[arg(global = true, long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,

    /// With --htpasswd, also require credentials for /metrics [default: false]
    #[arg(global = true, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub metrics_auth: Option<bool>,

    /// Keep the store under this size, evicting least recently used content (e.g. 50GiB)
    #[arg(global = true, long, value_name = "SIZE")]
    pub max_size: Option<ByteSize>,

    /// Evict content not used for this long (e.g. 30d)
    #[arg(global = true, long, value_name = "DURATION")]
    pub max_age: Option<HumanDuration>,

    /// How long in-flight responses may take to finish after SIGTERM [default: 30s]
    #[arg(global = true, long, value_name = "DURATION")]
    pub shutdown_timeout: Option<HumanDuration>,

    /// After SIGTERM, how long /readyz reports unready before new connections stop [default: 0s]
    #[arg(global = true, long, value_name = "DURATION")]
    pub shutdown_delay: Option<HumanDuration>,

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
    #[arg(global = true, long, value_name = "DURATION")]
    pub auth_cache_ttl: Option<HumanDuration>,

    /// How long a failed origin endpoint is skipped (doubles while it keeps failing, up to 8x) [default: 30s]
    #[arg(global = true, long, value_name = "DURATION")]
    pub endpoint_backoff: Option<HumanDuration>,

    /// Serve: list and watch the cluster's workloads and keep every image they use warm (needs
    /// list/watch on pods, nodes and the workload kinds) [default: false]
    #[arg(global = true, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub warm_from_cluster: Option<bool>,

    /// Kubeconfig for --warm-from-cluster, warm --kubernetes and status --kubernetes (without it: the
    /// in-cluster service account, $KUBECONFIG, ~/.kube/config)
    #[arg(global = true, long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Answer GETs of blobs in the bucket with a 307 to a signed URL of the object, valid this long
    /// (10s to 1h; the bare flag: 5m), so the store sends the bytes; needs --storage s3://, gs:// or
    /// az:// [default: off]
    #[arg(global = true, long, num_args = 0..=1, require_equals = true, default_missing_value = "on", value_name = "TTL")]
    pub redirect_blobs: Option<RedirectBlobs>,

    /// Regex (unanchored) of User-Agents never redirected by --redirect-blobs: clients that cannot
    /// follow a redirect or reach the bucket get the bytes from ocicache
    #[arg(global = true, long, value_name = "REGEX")]
    pub redirect_blobs_skip_user_agent: Option<String>,

    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,
}

impl Cli {
    /// The flags that were given, as a table of the config file's shape.
    pub fn overrides(&self) -> Result<toml::Table, ConfigError> {
        toml::Table::try_from(self).map_err(|e| ConfigError::Invalid(format!("flags: {e}")))
    }
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
    /// Check the configuration (the flags and --config FILE) as a start would, without serving, and
    /// print the effective settings as TOML; exits 2 naming the bad setting
    CheckConfig,
}

/// Go's flag package accepts these spellings; containerd-registry-cache's README uses `=no`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (use true or false)")),
    }
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
    /// Where the other replicas reach this one; with it, fills are coordinated cluster-wide.
    pub advertise_url: Option<Url>,
    /// The peer secret's file (read again at start), enabling the internal peer endpoint.
    pub peer_secret_file: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    pub shutdown_delay: Duration,
    /// Watch the cluster and keep the images it uses warm (`--warm-from-cluster`).
    pub warm_from_cluster: bool,
    pub kubeconfig: Option<PathBuf>,
    /// `--redirect-blobs`: the lifetime of signed URLs, when blob GETs are redirected to the store.
    pub redirect_blobs: Option<Duration>,
    pub redirect_blobs_skip_user_agent: Option<Regex>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A message that names its setting itself (from the credential, TLS and htpasswd loaders).
    #[error("{0}")]
    Invalid(String),
    /// `setting` is a file key (`skip_tags`, `registries."a.test".ca`) or, once [`Layered`] knows
    /// where the value came from, the flag that set it or the key and its file.
    #[error("{setting}: {message}")]
    Setting { setting: String, message: String },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn bad(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Setting { setting: setting.to_owned(), message: message.into() }
}

/// The settings of one start, with where they came from: the defaults, the config file laid over
/// them, the flags that were given laid over that.
#[derive(Debug, Clone)]
pub struct Layered {
    pub settings: Settings,
    file: Option<PathBuf>,
    /// Top-level keys that a flag set.
    flags: BTreeSet<String>,
}

impl Layered {
    pub fn from_cli(cli: &Cli) -> Result<Layered, ConfigError> {
        let from_file = match &cli.config {
            Some(path) => {
                let file_error = |message: String| ConfigError::File { path: path.clone(), message };
                let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
                toml::from_str::<Settings>(&text).map_err(|e| file_error(e.to_string()))?
            }
            None => Settings::default(),
        };
        let mut flags = cli.overrides()?;
        // `--allow-registry` adds to the file's list, each naming one more registry that may be
        // dialled; every other flag replaces the file's value.
        if let Some(toml::Value::Array(added)) = flags.get_mut("allow_registries") {
            added.splice(0..0, from_file.allow_registries.iter().map(|r| toml::Value::from(r.as_str())));
        }
        let set_by_flags = flags.keys().cloned().collect();
        let mut table =
            toml::Table::try_from(&from_file).map_err(|e| ConfigError::Invalid(format!("settings: {e}")))?;
        lay_over(&mut table, flags);
        let settings = table.try_into().map_err(|e| ConfigError::Invalid(format!("flags: {e}")))?;
        Ok(Layered { settings, file: cli.config.clone(), flags: set_by_flags })
    }

    /// Validates the settings; an error names the flag that set the bad value, or its key in the file.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        self.settings.validate().map_err(|e| match e {
            ConfigError::Setting { setting, message } => {
                ConfigError::Setting { setting: self.source_of(&setting), message }
            }
            other => other,
        })
    }

    fn source_of(&self, key: &str) -> String {
        let top = key.split('.').next().unwrap_or(key);
        // Flags set only the endpoints of `registries`, and those are checked as the flag is parsed.
        if self.flags.contains(top) && top != "registries" {
            return match top {
                "private_registries" => "--private-registry".to_owned(),
                "allow_registries" => "--allow-registry".to_owned(),
                _ => format!("--{}", top.replace('_', "-")),
            };
        }
        match &self.file {
            Some(path) => format!("{key} in {}", path.display()),
            None => key.to_owned(),
        }
    }

    /// The effective settings as a config file (`ocicache check-config`). Files such as the
    /// password files appear as their paths; nothing read from them is printed.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(&self.settings)
            .map_err(|e| ConfigError::Invalid(format!("cannot print the settings: {e}")))?;
        let from = match &self.file {
            Some(path) => format!("the defaults < {} < the flags", path.display()),
            None => "the defaults < the flags".to_owned(),
        };
        Ok(format!("# ocicache {}: effective settings ({from})\n{body}", env!("CARGO_PKG_VERSION")))
    }
}

/// Lays `top` over `base`: tables merge key by key, any other value replaces the one below.
fn lay_over(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => lay_over(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Config {
    /// Parses command-line arguments (including the program name) into a validated config.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Config::from_cli(cli)
    }

    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        Layered::from_cli(&cli)?.validate()
    }
}

impl Settings {
    /// The manifest rules these settings give (with the defaults: `TagPolicy::default()`).
    pub fn tag_policy(&self) -> Result<TagPolicy, ConfigError> {
        let immutable_tags = match &self.immutable_tags {
            Some(re) => regex_unless_empty("immutable_tags", re)?,
            None => None,
        };
        Ok(TagPolicy {
            cache_manifests: self.cache_manifests,
            skip_tags: regex_unless_empty("skip_tags", &self.skip_tags)?,
            private_registries: self
                .private_registries
                .iter()
                .map(|r| parse_name(r, "private_registries"))
                .collect::<Result<_, _>>()?,
            tag_ttl: self.tag_ttl.0,
            immutable_tags,
        })
    }

    /// Checks every setting (reading the files they name, as a start would) and builds the config.
    /// Errors name the file key; [`Layered::validate`] names the flag instead where a flag set it.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let storage = match (&self.storage, &self.bucket) {
            (Some(_), Some(_)) => return Err(bad("storage", "names the same thing as bucket (--bucket); give one")),
            (Some(url), None) => Some(url.clone()),
            (None, Some(bucket)) => Some(format!("s3://{bucket}")),
            (None, None) => None,
        };
        if let Some(url) = &storage {
            if !["s3://", "gs://", "az://", "azure://", "file:///"].iter().any(|p| url.starts_with(p)) {
                return Err(bad(
                    "storage",
                    format!(
                        "{url:?}: use s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix] or \
                         file:///shared/path (local disk is the default)"
                    ),
                ));
            }
        }
        let advertise_url = self.advertise_url.as_deref().map(parse_advertise_url).transpose()?;
        if advertise_url.is_some() {
            if self.peer_secret_file.is_none() {
                return Err(bad(
                    "advertise_url",
                    "needs peer_secret_file (--peer-secret-file): the replicas prove themselves to each other with it",
                ));
            }
            if storage.is_none() {
                return Err(bad(
                    "advertise_url",
                    "needs shared storage (--storage or --bucket): leases live where every replica sees them",
                ));
            }
        }
        if let Some(p) = &self.peer_secret_file {
            read_peer_secret(p).map_err(|e| bad("peer_secret_file", e))?;
        }
        let policy = self.tag_policy()?;

        let credentials = match &self.creds_file {
            Some(p) => Credentials::load(p).map_err(|e| bad("creds_file", e))?,
            None => Credentials::default(),
        };

        let mut endpoints: BTreeMap<RegistryName, Vec<Url>> = BTreeMap::new();
        let mut credential_helpers = Vec::new();
        let mut origin_tls = BTreeMap::new();
        for (name, reg) in &self.registries {
            let key = format!("registries.\"{name}\"");
            let registry = parse_name(name, &key)?;
            if !reg.endpoints.is_empty() {
                let urls = parse_urls(&reg.endpoints).map_err(|e| bad(&format!("{key}.endpoints"), e))?;
                endpoints.insert(registry.clone(), urls);
            }
            if let Some(helper) = &reg.credential_helper {
                if helper.is_empty() || helper.contains(char::is_whitespace) {
                    return Err(bad(&format!("{key}.credential_helper"), format!("{helper:?} is not a helper name")));
                }
                credential_helpers.push((registry.clone(), helper.clone()));
            }
            if reg.client_cert.is_some() != reg.client_key.is_some() {
                return Err(bad(&key, "client_cert and client_key go together"));
            }
            for f in [&reg.ca, &reg.client_cert, &reg.client_key].into_iter().flatten() {
                if !f.is_file() {
                    return Err(bad(&key, format!("{} is not a readable file", f.display())));
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

        // Registries the operator named anywhere are registries the operator meant to reach.
        let mut allowed = self.allow_registries.clone();
        allowed.extend(policy.private_registries.iter().map(ToString::to_string));
        allowed.extend(credentials.registries().map(ToString::to_string));
        allowed.extend(credential_helpers.iter().map(|(r, _)| r.to_string()));
        if let Some(p) = &self.docker_config {
            // Validated now (a broken file fails the start); read again when it changes.
            let sources = crate::upstream::sources::CredentialSources::new(Vec::new(), None, Some(p), Duration::ZERO)
                .map_err(ConfigError::Invalid)?;
            allowed.extend(sources.registries().iter().map(ToString::to_string));
        }
        let registries = Registries::new(endpoints, &allowed).map_err(|e| bad("allow_registries", e))?;

        let default_registry = parse_name(&self.default_registry, "default_registry")?;
        if !registries.is_allowed(&default_registry) {
            return Err(bad(
                "default_registry",
                format!(
                    "{:?} is not allowed; add it to allow_registries (--allow-registry) or give it endpoints \
                     (--upstream)",
                    self.default_registry
                ),
            ));
        }
        if self.max_upstream_concurrency == 0 {
            return Err(bad("max_upstream_concurrency", "must be at least 1"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::server::tls::server_config(cert, key).map_err(ConfigError::Invalid)?;
            }
            (Some(_), None) => return Err(bad("tls_cert", "needs tls_key (--tls-key) as well")),
            (None, Some(_)) => return Err(bad("tls_key", "needs tls_cert (--tls-cert) as well")),
            (None, None) => {}
        }
        if let Some(p) = &self.htpasswd {
            crate::server::auth::Htpasswd::open(p).map_err(ConfigError::Invalid)?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| bad("log_level", format!("{:?}: {e}", self.log_level)))?;
        if let Some(ttl) = self.redirect_blobs.0 {
            if !(RedirectBlobs::MIN_TTL..=RedirectBlobs::MAX_TTL).contains(&ttl) {
                return Err(bad(
                    "redirect_blobs",
                    format!(
                        "{}: signed URLs must be valid for {} to {} (or off)",
                        self.redirect_blobs,
                        HumanDuration(RedirectBlobs::MIN_TTL),
                        HumanDuration(RedirectBlobs::MAX_TTL)
                    ),
                ));
            }
            match &storage {
                Some(url) if crate::store::can_sign_urls(url) => {}
                Some(url) => {
                    return Err(bad("redirect_blobs", format!("{url} cannot sign URLs; use s3://, gs:// or az:// storage")))
                }
                None => {
                    return Err(bad(
                        "redirect_blobs",
                        "needs object storage (storage, --storage s3://...): blobs on local disk have no URL to redirect to",
                    ))
                }
            }
        }
        let redirect_blobs_skip_user_agent = match &self.redirect_blobs_skip_user_agent {
            Some(re) => regex_unless_empty("redirect_blobs_skip_user_agent", re)?,
            None => None,
        };

        Ok(Config {
            listen: SocketAddr::new(self.listen, self.port),
            cache_dir: self.cache_dir.clone(),
            policy,
            creds_file: self.creds_file.clone(),
            docker_config: self.docker_config.clone(),
            credential_helpers,
            credential_ttl: self.credential_ttl.0,
            origin_tls,
            registries,
            default_registry,
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            origin: OriginOptions {
                offline: self.offline,
                connect_timeout: self.connect_timeout.0,
                first_byte_timeout: self.first_byte_timeout.0,
                endpoint_backoff: self.endpoint_backoff.0,
            },
            auth_cache_ttl: self.auth_cache_ttl.0,
            htpasswd: self.htpasswd.clone(),
            metrics_auth: self.metrics_auth,
            max_upstream_concurrency: self.max_upstream_concurrency,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            eviction: EvictionPolicy { max_size: self.max_size.map(|s| s.0), max_age: self.max_age.map(|d| d.0) },
            storage,
            advertise_url,
            peer_secret_file: self.peer_secret_file.clone(),
            shutdown_timeout: self.shutdown_timeout.0,
            shutdown_delay: self.shutdown_delay.0,
            warm_from_cluster: self.warm_from_cluster,
            kubeconfig: self.kubeconfig.clone(),
            redirect_blobs: self.redirect_blobs.0,
            redirect_blobs_skip_user_agent,
        })
    }
}

/// `--advertise-url`: an http(s) URL of this replica with neither path, query nor credentials (the
/// peer endpoint's path is appended to it).
fn parse_advertise_url(u: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(u.trim()).map_err(|e| bad("advertise_url", format!("{u:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("advertise_url", format!("{u:?} must be an http:// or https:// URL with a host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad(
            "advertise_url",
            format!("{u:?}: give scheme, host and port only (e.g. http://10.0.0.7:3000)"),
        ));
    }
    Ok(url)
}

/// Peers prove this secret to each other; a short one could be guessed.
const MIN_PEER_SECRET: usize = 16;

/// The peer secret: the file's content without surrounding whitespace (a trailing newline is usual).
pub fn read_peer_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = raw.trim_ascii().to_vec();
    if secret.len() < MIN_PEER_SECRET {
        return Err(format!("{}: the secret must be at least {MIN_PEER_SECRET} characters", path.display()));
    }
    Ok(secret)
}

fn regex_unless_empty(key: &str, re: &str) -> Result<Option<Regex>, ConfigError> {
    if re.is_empty() {
        return Ok(None);
    }
    Regex::new(re).map(Some).map_err(|e| bad(key, format!("{re:?} is not a valid regex: {e}")))
}

fn parse_name(s: &str, key: &str) -> Result<RegistryName, ConfigError> {
    RegistryName::parse(s).map_err(|e| bad(key, e.message))
}

fn parse_urls(urls: &[String]) -> Result<Vec<Url>, String> {
    if urls.is_empty() {
        return Err("at least one URL is needed".to_owned());
    }
    urls.iter()
        .map(|u| {
            let url = Url::parse(u.trim()).map_err(|e| format!("{u:?} is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!("{u:?} must be an http:// or https:// URL"));
            }
            Ok(url)
        })
        .collect()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
