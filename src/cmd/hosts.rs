//! `ocicache hosts`: writes the containerd `hosts.toml` files (or docker / podman configuration) that
//! send a node's pulls through a cache.
//!
//! Rendering ([`render`]) is separate from writing so the exact text can be checked without touching
//! the filesystem, and so printing and writing always produce the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use url::Url;

use crate::oci::name::looks_like_registry;
use crate::oci::RegistryName;

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
    /// Directory to write into (containerd: /etc/containerd/certs.d); prints to stdout when absent.
    /// A containerd config_path with several directories (`A:B`) writes into the first and says
    /// which files of the others it shadows
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// What to generate
    #[arg(long, value_enum, default_value = "containerd")]
    pub format: HostsFormat,
    /// containerd 2.1+: how long to try connecting to the cache before falling back to the origin
    /// (containerd's own default is 30 s per request, which a dead cache would cost every blob);
    /// 0 leaves it out. Older containerd ignores the setting
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub dial_timeout: std::time::Duration,
}

/// Registries a podman `registries.conf` lists when none is named: podman has no catch-all mirror,
/// so each registry needs its own entry, and these are the ones most images come from.
pub const PODMAN_DEFAULT_REGISTRIES: [&str; 4] = ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"];

/// One generated configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to `--dir` (e.g. `_default/hosts.toml`, `daemon.json`).
    pub path: PathBuf,
    pub contents: String,
}

/// What `hosts` produces: the files, plus advice for the operator that belongs on stderr (it is not
/// part of any file, and stdout must stay pipeable into the file itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub files: Vec<GeneratedFile>,
    pub notes: Vec<String>,
}

/// Writes the files into `--dir` (naming each on stderr), or prints them to stdout; advice for the
/// operator goes to stderr either way.
pub fn run(args: HostsArgs) -> anyhow::Result<()> {
    let mut rendered = render(&args)?;
    match &args.dir {
        Some(dirs) => {
            let dirs = config_path(dirs);
            let Some(dir) = dirs.first() else { bail!("--dir is empty") };
            if args.format == HostsFormat::Containerd {
                rendered.notes.extend(shadowed_notes(&dirs, &rendered.files));
            }
            for file in &rendered.files {
                let path = dir.join(&file.path);
                write_atomically(&path, &file.contents)?;
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            // A JSON file cannot carry a `# path` line; it is the only file of its format anyway.
            let label = args.format == HostsFormat::Containerd;
            for (i, file) in rendered.files.iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                if label {
                    writeln!(out, "# {}", file.path.display())?;
                }
                out.write_all(file.contents.as_bytes())?;
            }
            out.flush()?;
        }
    }
    for note in &rendered.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// Validates the arguments and renders every file, without touching the filesystem.
pub fn render(args: &HostsArgs) -> anyhow::Result<Rendered> {
    let endpoint = Endpoint::parse(&args.endpoint)?;
    let registries = parse_registries(&args.registries)?;
    match args.format {
        HostsFormat::Containerd => {
            Ok(containerd(&endpoint, &registries, args.default || registries.is_empty(), args.dial_timeout))
        }
        HostsFormat::Docker => Ok(docker(&endpoint, &registries)),
        HostsFormat::Podman => {
            // podman has no catch-all mirror: "every registry" (`--default`, or nothing named)
            // means the registries most images come from.
            let mut names = registries;
            if names.is_empty() || args.default {
                for name in PODMAN_DEFAULT_REGISTRIES {
                    let name = RegistryName::parse(name).map_err(|e| anyhow::anyhow!("{}", e.message))?;
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            Ok(podman(&endpoint, &names))
        }
    }
}

/// The cache's URL as clients are told about it: scheme, host and port only. containerd appends
/// `/v2/` itself and ocicache serves the API at the root, so a path would make every request miss.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `http://host:port`, no trailing slash.
    url: String,
    /// `host:port` (or `host` when the port is the scheme's default), for path-routing clients.
    authority: String,
    https: bool,
    /// An IPv6 literal (`http://[fd00::1]:3000`), which containerd before 2.0 cannot read in hosts.toml.
    ipv6: bool,
}

impl Endpoint {
    fn parse(s: &str) -> anyhow::Result<Endpoint> {
        if !s.contains("://") {
            bail!("--endpoint {s:?}: give a URL starting with http:// or https://, e.g. http://{}", s.trim());
        }
        let url = Url::parse(s.trim()).map_err(|e| {
            anyhow::anyhow!("--endpoint {s:?} is not a URL ({e}); give the cache's address, e.g. http://localhost:3000")
        })?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => bail!("--endpoint {s:?}: the scheme must be http or https, not {other:?}"),
        };
        let Some(host) = url.host_str() else { bail!("--endpoint {s:?} has no host") };
        if !url.username().is_empty() || url.password().is_some() {
            bail!(
                "--endpoint {s:?}: credentials do not belong in the endpoint (node configuration files are \
                 world-readable); give the URL without them"
            );
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            bail!(
                "--endpoint {s:?}: give only scheme, host and port (e.g. http://localhost:3000): clients add /v2/ \
                 themselves and ocicache serves it at the root"
            );
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let ipv6 = matches!(url.host(), Some(url::Host::Ipv6(_)));
        Ok(Endpoint { url: format!("{}://{authority}", url.scheme()), authority, https, ipv6 })
    }
}

/// Registry names as containerd names its host directories: validated, lowercased, Docker Hub's
/// aliases folded into `docker.io`, duplicates dropped (keeping the order given).
fn parse_registries(names: &[String]) -> anyhow::Result<Vec<RegistryName>> {
    let mut out: Vec<RegistryName> = Vec::new();
    for raw in names {
        let s = raw.trim();
        if s == "_default" {
            bail!("--registry _default: use --default for the mirror of every registry");
        }
        if s.contains("://") || s.contains('/') {
            bail!("--registry {raw:?}: give a registry host such as ghcr.io or registry.corp.example:5000, not a URL or path");
        }
        let name = RegistryName::parse(s).map_err(|e| {
            anyhow::anyhow!("--registry {raw:?}: {} (expected a host such as ghcr.io or localhost:5000)", e.message)
        })?;
        // A bare word like `library` is a repository, not a registry: clients would never send it there.
        if !looks_like_registry(name.as_str()) {
            bail!(
                "--registry {raw:?} does not look like a registry host: it needs a dot or a port \
                 (e.g. ghcr.io, registry.local:5000) or must be localhost"
            );
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Where containerd goes for a registry when no mirror answers: Docker Hub's API lives on a host of
/// its own; every other registry serves the API on its own name.
fn origin_server(name: &RegistryName) -> String {
    if name.is_docker_hub() {
        "https://registry-1.docker.io".to_owned()
    } else {
        format!("https://{name}")
    }
}

/// The `[host."<endpoint>"]` table for containerd, with advice on certificates when the cache serves
/// HTTPS (as comments: which of `ca` or `skip_verify` applies is the operator's decision).
fn containerd_mirror_entry(endpoint: &Endpoint, dial_timeout: std::time::Duration) -> String {
    let mut s = format!("[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", endpoint.url);
    if !dial_timeout.is_zero() {
        // Milliseconds: a form Go's time.ParseDuration (containerd's parser) reads for any value.
        s.push_str(&format!(
            "  # containerd 2.1+: a cache that does not accept the connection within this long is skipped\n  \
             # (the origin is asked instead); older versions ignore the setting.\n  \
             dial_timeout = \"{}ms\"\n",
            dial_timeout.as_millis().max(1)
        ));
    }
    if endpoint.https {
        s.push_str(
            "  # The cache serves HTTPS. If its certificate is not signed by a CA this node trusts, name the\n  \
             # CA that signed it (preferred), or, on a network you trust, turn verification off:\n  \
             # ca = \"/etc/containerd/certs.d/ocicache-ca.pem\"\n  \
             # skip_verify = true\n",
        );
    }
    s
}

fn containerd(
    endpoint: &Endpoint,
    registries: &[RegistryName],
    default: bool,
    dial_timeout: std::time::Duration,
) -> Rendered {
    let mut files = Vec::new();
    let mut notes = Vec::new();
    // Plain HTTP needs no TLS settings; HTTPS gets its advice inside the host table.
    let transport = if endpoint.https { "" } else { "# The cache speaks plain HTTP: containerd needs nothing else.\n" };
    if default {
        let contents = format!(
            "# Generated by `ocicache hosts`: pulls of every registry go through the cache at {url}.\n\
             # containerd sends ?ns=<registry> with each request; if the cache is unreachable or answers an\n\
             # error, containerd falls back to the registry itself.\n\
             {transport}\
             {entry}",
            url = endpoint.url,
            entry = containerd_mirror_entry(endpoint, dial_timeout),
        );
        files.push(GeneratedFile { path: Path::new("_default").join("hosts.toml"), contents });
    }
    for name in registries {
        let contents = format!(
            "# Generated by `ocicache hosts`: pulls of {name} go through the cache at {url};\n\
             # if the cache is unreachable or answers an error, containerd falls back to `server`.\n\
             {transport}\
             server = \"{server}\"\n\
             \n\
             {entry}",
            url = endpoint.url,
            server = origin_server(name),
            entry = containerd_mirror_entry(endpoint, dial_timeout),
        );
        files.push(GeneratedFile { path: Path::new(name.as_str()).join("hosts.toml"), contents });
    }
    if endpoint.ipv6 {
        notes.push(
            "the cache's address is an IPv6 literal: containerd before 2.0 cannot read it in a hosts.toml table \
             name and ignores the whole file (pulls then go to the origins); give the cache a DNS name (its \
             Service name) for those nodes"
                .to_owned(),
        );
    }
    if !registries.is_empty() {
        notes.push(
            "containerd reads only the most specific directory for a registry: these per-registry files \
             replace _default for their registries, which is why each lists the cache too"
                .to_owned(),
        );
    }
    notes.push(
        "containerd reads these files from its registry config_path (usually /etc/containerd/certs.d, set in \
         [plugins.\"io.containerd.grpc.v1.cri\".registry]); changes apply to the next pull, no restart needed"
            .to_owned(),
    );
    notes.push(
        "containerd 2.1+ pulls for Kubernetes through its transfer service, which reads config_path as one \
         directory and, on some versions, not at all: if pulls do not reach the cache, set \
         use_local_image_pull = true under [plugins.'io.containerd.cri.v1.images'] in config.toml"
            .to_owned(),
    );
    Rendered { files, notes }
}

/// A containerd `config_path` (`A:B:...`) as its directories; a plain directory is a list of one.
fn config_path(dir: &Path) -> Vec<PathBuf> {
    let text = dir.to_string_lossy();
    let dirs: Vec<PathBuf> = text.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    if dirs.is_empty() {
        vec![dir.to_path_buf()]
    } else {
        dirs
    }
}

/// With several config_path directories, containerd takes, for each registry, the first directory
/// that has either the registry's own directory or a `_default`: a `_default` written into the first
/// shadows every registry directory of the later ones. Say which, so nothing changes unnoticed.
fn shadowed_notes(dirs: &[PathBuf], files: &[GeneratedFile]) -> Vec<String> {
    let Some((first, later)) = dirs.split_first() else { return Vec::new() };
    if later.is_empty() {
        return Vec::new();
    }
    let mut notes =
        vec![format!("config_path lists {} directories; the files go into the first, {}", dirs.len(), first.display())];
    let writes_default = files.iter().any(|f| f.path.starts_with("_default"));
    for dir in later {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut shadowed: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("hosts.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| writes_default || files.iter().any(|f| f.path.starts_with(name)))
            .collect();
        shadowed.sort();
        if !shadowed.is_empty() {
            notes.push(format!(
                "{}: {} no longer used for {} (containerd stops at the first directory with a match)",
                dir.display(),
                if shadowed.len() == 1 { "this registry directory is" } else { "these registry directories are" },
                shadowed.join(", ")
            ));
        }
    }
    notes
}

fn docker(endpoint: &Endpoint, registries: &[RegistryName]) -> Rendered {
    let json = serde_json::json!({ "registry-mirrors": [endpoint.url] });
    // Pretty JSON of a string array cannot fail to serialize; fall back to the compact form anyway.
    let mut contents = serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string());
    contents.push('\n');
    let mut notes = vec![format!(
        "docker uses registry-mirrors for Docker Hub only; pull other registries through the cache by path, e.g. \
         docker pull {}/ghcr.io/org/app:1.0",
        endpoint.authority
    )];
    let others: Vec<&str> = registries.iter().filter(|r| !r.is_docker_hub()).map(RegistryName::as_str).collect();
    if !others.is_empty() {
        notes.push(format!("not configurable for docker, use path routing instead: {}", others.join(", ")));
    }
    if !endpoint.https {
        notes.push(format!(
            "path-routed pulls over plain HTTP also need \"insecure-registries\": [\"{}\"] in daemon.json \
             (127.0.0.0/8 is insecure by default)",
            endpoint.authority
        ));
    }
    notes.push("merge this into /etc/docker/daemon.json and restart dockerd".to_owned());
    Rendered { files: vec![GeneratedFile { path: PathBuf::from("daemon.json"), contents }], notes }
}

fn podman(endpoint: &Endpoint, registries: &[RegistryName]) -> Rendered {
    let mut contents = format!(
        "# Generated by `ocicache hosts`: pulls of these registries go through the cache at {url}.\n\
         # podman cannot send ?ns=, so the registry is the first path segment (path routing); if the cache\n\
         # fails, podman falls back to the registry itself.\n",
        url = endpoint.url
    );
    for name in registries {
        contents.push_str(&format!(
            "\n[[registry]]\nlocation = \"{name}\"\n\n[[registry.mirror]]\nlocation = \"{authority}/{name}\"\n",
            authority = endpoint.authority
        ));
        if !endpoint.https {
            contents.push_str("insecure = true\n");
        }
    }
    let notes = vec!["put this in /etc/containers/registries.conf.d/ocicache.conf (or merge it into \
         /etc/containers/registries.conf)"
        .to_owned()];
    Rendered { files: vec![GeneratedFile { path: PathBuf::from("registries.conf"), contents }], notes }
}

/// Writes through a temporary file and a rename: containerd re-reads hosts.toml on every pull and
/// must never see half a file.
fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create directory {}", parent.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&temp, contents).with_context(|| format!("cannot write {}", temp.display()))?;
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot move {} to {}", temp.display(), path.display()));
    }
    Ok(())
}
