//! Where operator credentials for an origin come from, in order: a credential helper configured for
//! the registry (`credential_helper = "gcr"` runs `docker-credential-gcr`), the `--creds-file` YAML,
//! then a docker `config.json` (`--docker-config`: `auths`, `credHelpers`, `credsStore`). Files are
//! re-read when they change (secrets rotate); helper answers are cached for `credential_ttl` and
//! fetched again at once when the origin rejects them. No secret is ever logged or put in an error.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::creds::{Credential, Credentials};
use crate::oci::{RegistryName, Repository};

/// A credential and where it came from (for error messages; never includes the secret).
#[derive(Debug, Clone)]
pub struct Sourced {
    pub credential: Credential,
    pub source: String,
    /// From a helper: worth asking again when the origin rejects it.
    pub helper: Option<String>,
}

/// Why no credential could be had from a configured source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{from}: {reason}")]
pub struct SourceError {
    pub from: String,
    pub reason: String,
}

/// (modification time, size, last look, parsed content) of a reloading file.
type FileState<T> = (Option<(SystemTime, u64)>, Option<T>, Option<Instant>);

/// A file that is parsed again when its modification time or size changes.
struct Reloading<T> {
    path: PathBuf,
    parse: fn(&str) -> Result<T, String>,
    state: Mutex<FileState<T>>,
}

/// Files are looked at again at most this often.
const RECHECK: Duration = Duration::from_secs(1);

impl<T: Clone> Reloading<T> {
    fn new(path: &Path, parse: fn(&str) -> Result<T, String>) -> Result<Self, String> {
        let r = Reloading { path: path.to_path_buf(), parse, state: Mutex::new((None, None, None)) };
        r.current().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(r)
    }

    /// The parsed file; the last good version when a rewrite is half done or broken.
    fn current(&self) -> Result<T, String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let due = st.2.is_none_or(|t| t.elapsed() >= RECHECK);
        if due {
            st.2 = Some(Instant::now());
            let meta = std::fs::metadata(&self.path).map_err(|e| e.to_string());
            let stamp = meta.as_ref().ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            if stamp.is_some() && stamp != st.0 {
                match std::fs::read_to_string(&self.path).map_err(|e| e.to_string()).and_then(|t| (self.parse)(&t)) {
                    Ok(v) => {
                        if st.0.is_some() {
                            tracing::info!(path = %self.path.display(), "credentials file changed; reloaded");
                        }
                        *st = (stamp, Some(v), st.2);
                    }
                    Err(e) if st.1.is_some() => {
                        tracing::warn!(path = %self.path.display(), error = %e, "credentials file unreadable; keeping the last good version");
                    }
                    Err(e) => return Err(e),
                }
            } else if let (Err(e), None) = (&meta, &st.1) {
                return Err(e.clone());
            }
        }
        st.1.clone().ok_or_else(|| "not loaded".to_owned())
    }
}

/// The parts of a docker `config.json` (or a `.dockerconfigjson` pull secret) that give credentials.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// `https://index.docker.io/v1/`, `ghcr.io`, `http://localhost:5000` -> the registry name.
fn docker_key(key: &str) -> Option<RegistryName> {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    RegistryName::parse(k.split('/').next()?).ok()
}

impl DockerConfig {
    fn parse(text: &str) -> Result<DockerConfig, String> {
        serde_json::from_str(text).map_err(|e| format!("not a docker config.json: {e}"))
    }

    fn auth_for(&self, registry: &RegistryName) -> Option<Credential> {
        let (_, a) = self.auths.iter().find(|(k, _)| docker_key(k).as_ref() == Some(registry))?;
        if let Some(token) = a.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Some(Credential::IdentityToken(token.clone()));
        }
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Some(Credential::from_user(u.clone(), p.clone()));
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(a.auth.as_ref()?.trim()).ok()?;
        let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        Some(Credential::from_user(u.to_owned(), p.to_owned()))
    }

    fn helper_for(&self, registry: &RegistryName) -> Option<String> {
        self.named_helper_for(registry).or_else(|| self.creds_store.clone())
    }

    /// A `credHelpers` entry naming exactly this host (no `credsStore` fallback).
    fn named_helper_for(&self, registry: &RegistryName) -> Option<String> {
        self.cred_helpers.iter().find(|(k, _)| docker_key(k).as_ref() == Some(registry)).map(|(_, h)| h.clone())
    }
}

/// Whose entries a lookup reads: an endpoint's own (explicit entries only) or the registry's.
#[derive(Clone, Copy)]
enum Scope {
    Endpoint,
    Registry,
}

/// The name credential sources use for an endpoint: its `host[:port]`, the port as written in the URL
/// (a scheme's default port is not written).
pub fn endpoint_name(endpoint: &url::Url) -> Option<RegistryName> {
    let host = endpoint.host_str()?;
    let name = match endpoint.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    RegistryName::parse(&name).ok()
}

/// The server string a helper expects on stdin for a registry.
fn helper_server(registry: &RegistryName) -> String {
    if registry.is_docker_hub() {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_string()
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

pub struct CredentialSources {
    /// Per-registry helpers from the config file: (registry, helper name).
    helpers: Vec<(RegistryName, String)>,
    creds_file: Option<Reloading<Credentials>>,
    docker: Option<Reloading<DockerConfig>>,
    helper_ttl: Duration,
    /// Helper answers per (helper, registry). A `credsStore` answers for any registry, and registries
    /// under a `*.domain` pattern are the client's to invent: bounded, and gone after `helper_ttl`.
    helper_cache: moka::sync::Cache<(String, String), (Sourced, Instant)>,
    /// Background refreshes running. Only keys in `helper_cache` start one, and at most
    /// `MAX_REFRESHES` run at once; beyond that an answer is fetched when it expires.
    refreshes: Mutex<HashSet<(String, String)>>,
}

/// Helper answers kept at most (one per registry and helper).
const MAX_HELPER_ANSWERS: u64 = 1_000;

/// Background helper refreshes running at most at once.
const MAX_REFRESHES: usize = 64;

/// Helper answers are refreshed in the background once this fraction of `credential_ttl` has passed.
const REFRESH_AT: f32 = 0.8;

/// How long a helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

impl CredentialSources {
    pub fn new(
        helpers: Vec<(RegistryName, String)>,
        creds_file: Option<&Path>,
        docker_config: Option<&Path>,
        helper_ttl: Duration,
    ) -> Result<Self, String> {
        Ok(CredentialSources {
            helpers,
            creds_file: creds_file
                .map(|p| Reloading::new(p, Credentials::parse).map_err(|e| format!("--creds-file {e}")))
                .transpose()?,
            docker: docker_config
                .map(|p| Reloading::new(p, DockerConfig::parse).map_err(|e| format!("--docker-config {e}")))
                .transpose()?,
            helper_ttl,
            // moka refuses a zero time-to-live; with a zero TTL nothing is stored anyway.
            helper_cache: crate::bounded::expiring(MAX_HELPER_ANSWERS, helper_ttl.max(Duration::from_millis(1))),
            refreshes: Mutex::default(),
        })
    }

    /// Registries named by the sources, which the operator therefore means to reach.
    pub fn registries(&self) -> Vec<RegistryName> {
        let mut out: Vec<RegistryName> = self.helpers.iter().map(|(r, _)| r.clone()).collect();
        if let Some(c) = self.creds_file.as_ref().and_then(|f| f.current().ok()) {
            out.extend(c.registries().cloned());
        }
        if let Some(d) = self.docker.as_ref().and_then(|f| f.current().ok()) {
            out.extend(d.auths.keys().chain(d.cred_helpers.keys()).filter_map(|k| docker_key(k)));
        }
        out
    }

    /// The operator's credential for a request to `endpoint` for this repository, if any source has
    /// one. Entries naming the endpoint's own `host[:port]` come first, whichever registry it serves
    /// (a private mirror has its own account), then the registry's. An endpoint's entries are used
    /// for that endpoint only; the docker config's catch-all `credsStore` is asked for the registry.
    pub async fn lookup(
        self: &Arc<Self>,
        endpoint: &url::Url,
        registry: &RegistryName,
        repo: &Repository,
    ) -> Result<Option<Sourced>, SourceError> {
        if let Some(host) = endpoint_name(endpoint).filter(|h| h != registry) {
            if let Some(found) = self.lookup_named(&host, repo, Scope::Endpoint).await? {
                return Ok(Some(found));
            }
        }
        self.lookup_named(registry, repo, Scope::Registry).await
    }

    async fn lookup_named(
        self: &Arc<Self>,
        name: &RegistryName,
        repo: &Repository,
        scope: Scope,
    ) -> Result<Option<Sourced>, SourceError> {
        let tag = |source: &str| match scope {
            Scope::Endpoint => format!("{source} (endpoint {name})"),
            Scope::Registry => source.to_owned(),
        };
        if let Some((_, helper)) = self.helpers.iter().find(|(r, _)| r == name) {
            return self.ask_helper(helper, name).await.map(Some);
        }
        if let Some(file) = &self.creds_file {
            let creds = file.current().map_err(|reason| SourceError { from: "--creds-file".into(), reason })?;
            if let Some(c) = creds.lookup(name, repo) {
                return Ok(Some(Sourced { credential: c.clone(), source: tag("--creds-file"), helper: None }));
            }
        }
        if let Some(file) = &self.docker {
            let cfg = file.current().map_err(|reason| SourceError { from: "--docker-config".into(), reason })?;
            if let Some(c) = cfg.auth_for(name) {
                return Ok(Some(Sourced { credential: c, source: tag("--docker-config auths"), helper: None }));
            }
            let helper = match scope {
                Scope::Endpoint => cfg.named_helper_for(name),
                Scope::Registry => cfg.helper_for(name),
            };
            if let Some(helper) = helper {
                return self.ask_helper(&helper, name).await.map(Some);
            }
        }
        Ok(None)
    }

    /// The origin rejected a helper's credential: forget it, so the next lookup asks the helper again.
    pub fn invalidate(&self, helper: &str, registry: &RegistryName) {
        self.helper_cache.invalidate(&(helper.to_owned(), registry.to_string()));
    }

    async fn ask_helper(self: &Arc<Self>, helper: &str, registry: &RegistryName) -> Result<Sourced, SourceError> {
        let key = (helper.to_owned(), registry.to_string());
        if let Some((s, at)) = self.helper_cache.get(&key) {
            if at.elapsed() < self.helper_ttl {
                // Past most of its life: refresh in the background, so no request waits for the helper
                // and the credential never lapses while in use.
                if at.elapsed() >= self.helper_ttl.mul_f32(REFRESH_AT) && self.refreshing(&key, true) {
                    let (this, helper, registry) = (self.clone(), helper.to_owned(), registry.clone());
                    tokio::spawn(async move {
                        if let Err(e) = this.run_helper(&helper, &registry).await {
                            tracing::warn!(%registry, error = %e, "refreshing credentials failed; the current ones stay until they expire");
                        }
                        this.refreshing(&(helper, registry.to_string()), false);
                    });
                }
                return Ok(s);
            }
        }
        self.run_helper(helper, registry).await
    }

    /// Marks a refresh as running (returns false if one already was) or as finished.
    fn refreshing(&self, key: &(String, String), start: bool) -> bool {
        let mut set = self.refreshes.lock().unwrap_or_else(|p| p.into_inner());
        if start {
            set.len() < MAX_REFRESHES && set.insert(key.clone())
        } else {
            set.remove(key)
        }
    }

    /// Runs the helper and caches its answer.
    async fn run_helper(&self, helper: &str, registry: &RegistryName) -> Result<Sourced, SourceError> {
        let key = (helper.to_owned(), registry.to_string());
        let program = if helper.contains('/') { helper.to_owned() } else { format!("docker-credential-{helper}") };
        let source = format!("credential helper {program}");
        let fail = |reason: String| SourceError { from: source.clone(), reason };
        let mut child = tokio::process::Command::new(&program)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot run it ({e}); is it installed and on PATH?")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(helper_server(registry).as_bytes()).await;
        }
        let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer within {}s", HELPER_TIMEOUT.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let msg = if stderr.trim().is_empty() { stdout } else { stderr };
            return Err(fail(format!("exited with {}: {}", out.status, crate::oci::digest::truncate(msg.trim()))));
        }
        let answer: HelperAnswer =
            serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("unreadable answer: {e}")))?;
        let sourced = Sourced {
            credential: Credential::from_user(answer.username, answer.secret),
            source,
            helper: Some(helper.to_owned()),
        };
        tracing::info!(%registry, helper = %program, "credentials from helper");
        if !self.helper_ttl.is_zero() {
            self.helper_cache.insert(key, (sourced.clone(), Instant::now()));
        }
        Ok(sourced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_and_helpers() {
        let cfg = DockerConfig::parse(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
                "ghcr.io":{"username":"u","password":"p"},
                "myacr.azurecr.io":{"identitytoken":"refresh"}},
               "credHelpers":{"us-docker.pkg.dev":"gcr"},"credsStore":"desktop"}"#,
        )
        .unwrap();
        let r = |s: &str| RegistryName::parse(s).unwrap();
        assert_eq!(cfg.auth_for(&r("docker.io")).unwrap().basic().unwrap().1, "secret");
        assert_eq!(cfg.auth_for(&r("ghcr.io")).unwrap().username(), "u");
        assert_eq!(cfg.auth_for(&r("myacr.azurecr.io")).unwrap(), Credential::IdentityToken("refresh".into()));
        assert_eq!(cfg.helper_for(&r("us-docker.pkg.dev")).as_deref(), Some("gcr"));
        assert_eq!(cfg.helper_for(&r("quay.io")).as_deref(), Some("desktop"));
        assert!(cfg.auth_for(&r("quay.io")).is_none());
    }

    #[tokio::test]
    async fn helper_answers_for_invented_registries_stay_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-test");
        std::fs::write(&helper, "#!/bin/sh\ncat >/dev/null\necho '{\"Username\":\"u\",\"Secret\":\"s\"}'\n").unwrap();
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let sources = Arc::new(CredentialSources::new(Vec::new(), None, None, Duration::from_secs(300)).unwrap());
        let helper = helper.display().to_string();
        for i in 0..(MAX_HELPER_ANSWERS + 500) {
            let registry = RegistryName::parse(&format!("r{i}.wild.test")).unwrap();
            assert_eq!(sources.ask_helper(&helper, &registry).await.unwrap().credential.username(), "u");
        }
        sources.helper_cache.run_pending_tasks();
        let kept = sources.helper_cache.entry_count();
        assert!(kept <= MAX_HELPER_ANSWERS, "{kept} answers kept");
        // The most recent answers are the ones kept.
        let last = RegistryName::parse(&format!("r{}.wild.test", MAX_HELPER_ANSWERS + 499)).unwrap();
        assert!(sources.helper_cache.contains_key(&(helper.clone(), last.to_string())));
    }

    #[tokio::test]
    async fn an_endpoints_own_entries_come_before_the_registrys_and_go_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds.yaml");
        std::fs::write(
            &creds,
            "127.0.0.1:5001: {username: first, password: p1}\n\
             docker.io: {username: hub, password: p}\n",
        )
        .unwrap();
        let docker = dir.path().join("config.json");
        std::fs::write(&docker, r#"{"auths":{"myacr.azurecr.io":{"username":"acr","password":"p"}}}"#).unwrap();
        let sources =
            Arc::new(CredentialSources::new(Vec::new(), Some(&creds), Some(&docker), Duration::ZERO).unwrap());
        let user = |endpoint: &str, registry: &str| {
            let sources = sources.clone();
            let (endpoint, registry) = (url::Url::parse(endpoint).unwrap(), RegistryName::parse(registry).unwrap());
            async move {
                let repo = Repository::parse("library/alpine").unwrap();
                sources.lookup(&endpoint, &registry, &repo).await.unwrap().map(|s| s.credential.username().to_owned())
            }
        };
        // The port as written names the endpoint; another port on the same host is another endpoint.
        assert_eq!(user("http://127.0.0.1:5001", "one.test").await.as_deref(), Some("first"));
        assert_eq!(user("http://127.0.0.1:5002", "one.test").await, None);
        // A mirror with its own entry (docker config) gets it; the registry's other endpoint gets the
        // registry's entry.
        assert_eq!(user("https://myacr.azurecr.io", "docker.io").await.as_deref(), Some("acr"));
        assert_eq!(user("https://registry-1.docker.io", "docker.io").await.as_deref(), Some("hub"));
        // Without an entry of its own, an endpoint gets the registry's (as before).
        assert_eq!(user("https://mirror.example.com:8443", "docker.io").await.as_deref(), Some("hub"));
        assert_eq!(
            endpoint_name(&url::Url::parse("https://myacr.azurecr.io:443/").unwrap()).unwrap().as_str(),
            "myacr.azurecr.io",
            "a scheme's default port is not part of the name"
        );
    }
}
