//! A real upstream registry: Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1.
//!
//! Log streams of distribution 2.8 (checked on this machine):
//! * **stdout** is the access log, Apache *combined* format, one line per completed request, e.g.
//!   `127.0.0.1 - - [22/Nov/2026:13:46:05 +0000] "GET /v2/?x=1 HTTP/1.1" 200 2 "" "curl/7.88.1"`
//!   (the query string is included; the third field is the Basic-auth user or `-`).
//! * **stderr** is the application log (logrus `time=... level=... msg=...`, including
//!   `msg="response completed"` lines with more detail, and panics).
//!
//! [`Registry::requests`] reads the access log after a sentinel round-trip, so every request whose
//! response a test has already received is included.

use super::{free_port, http_request, poll_until, port_is_open, run_ok, unique_token, DEFAULT_TIMEOUT};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Query parameter used for sentinel requests; lines containing it are hidden from results.
const SENTINEL_PARAM: &str = "__harness_sentinel=";

/// One parsed access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    /// Request URI as sent, including the query string.
    pub path: String,
    pub status: u16,
}

/// A running `docker-registry` child process with its own storage and config in a temp dir.
/// Killed on drop (the temp dir is then deleted).
pub struct Registry {
    pub port: u16,
    /// Filesystem-storage root (kept across [`Registry::stop`]/[`Registry::restart`]).
    pub storage_dir: PathBuf,
    pub config_path: PathBuf,
    /// stdout of the registry: the combined-format access log (appended across restarts).
    pub access_log_path: PathBuf,
    /// stderr of the registry: the application log (appended across restarts).
    pub log_path: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

#[derive(Default)]
struct Extra {
    htpasswd: Option<String>,
    /// `auth: token:` settings (realm, service, issuer, root certificate bundle).
    token: Option<(String, String, String, PathBuf)>,
    /// `storage: s3:` on an S3-compatible endpoint (endpoint URL, bucket), blob GETs redirected to it.
    s3: Option<(String, String)>,
    proxy_remote: Option<String>,
    /// (certificate, key) PEM files: serve HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Registry {
    /// Anonymous registry, filesystem storage, deletes enabled.
    pub fn start() -> Registry {
        Self::launch(Extra::default())
    }

    /// Registry with htpasswd (bcrypt, `htpasswd -Bbn`) Basic auth, realm "test-realm".
    pub fn start_with_htpasswd(users: &[(&str, &str)]) -> Registry {
        Self::launch(Extra { htpasswd: Some(htpasswd_file(users)), ..Extra::default() })
    }

    /// Registry with distribution's token auth: clients are sent to `tokens`' realm (which may live
    /// on another address) and the registry checks the RS256 JWTs it issues against its certificate.
    pub fn start_with_token_auth(tokens: &super::TokenServer) -> Registry {
        let token = (tokens.realm(), tokens.service.clone(), tokens.issuer.clone(), tokens.cert_path.clone());
        Self::launch(Extra { token: Some(token), ..Extra::default() })
    }

    /// Registry storing in an S3 bucket at `endpoint` (moto, or something in front of it) with
    /// `redirect: {disable: false}`: blob GETs answer 307 to a presigned URL on `endpoint`, as
    /// distribution, Harbor and Quay do on MinIO. `users` non-empty adds htpasswd Basic auth.
    pub fn start_with_s3(endpoint: &str, bucket: &str, users: &[(&str, &str)]) -> Registry {
        let htpasswd = (!users.is_empty()).then(|| htpasswd_file(users));
        Self::launch(Extra { htpasswd, s3: Some((endpoint.to_owned(), bucket.to_owned())), ..Extra::default() })
    }

    /// Registry serving HTTPS with this certificate and key (PEM). Its access log can't be synced
    /// with a plain-HTTP sentinel, so `requests()` is not for this one.
    pub fn start_with_tls(cert: &Path, key: &Path) -> Registry {
        Self::launch(Extra { tls: Some((cert.to_path_buf(), key.to_path_buf())), ..Extra::default() })
    }

    /// Pull-through proxy registry (`proxy: {remoteurl: ...}`), the peer to benchmark against.
    /// The remote must already be listening: distribution panics at start otherwise.
    pub fn start_proxy(remote_url: &str) -> Registry {
        Self::launch(Extra { proxy_remote: Some(remote_url.to_string()), ..Extra::default() })
    }

    fn launch(extra: Extra) -> Registry {
        let dir = tempfile::Builder::new().prefix("ocicache-registry-").tempdir().expect("create registry temp dir");
        let storage_dir = dir.path().join("storage");
        fs::create_dir_all(&storage_dir).expect("create registry storage dir");
        let mut auth = String::new();
        if let Some(htpasswd) = &extra.htpasswd {
            let path = dir.path().join("htpasswd");
            fs::write(&path, htpasswd).expect("write htpasswd file");
            auth = format!("auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n", path.display());
        }
        if let Some((realm, service, issuer, cert)) = &extra.token {
            auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            );
        }
        let proxy = match &extra.proxy_remote {
            Some(url) => format!("proxy:\n  remoteurl: {url}\n"),
            None => String::new(),
        };
        let mut reg = Registry {
            port: 0,
            storage_dir,
            config_path: dir.path().join("config.yml"),
            access_log_path: dir.path().join("access.log"),
            log_path: dir.path().join("registry.log"),
            child: None,
            dir,
        };
        // The port is picked before the registry binds it; if something grabbed it in between,
        // retry with another one.
        let mut last_err = String::new();
        for _ in 0..5 {
            reg.port = free_port();
            let config = [
                "version: 0.1".to_string(),
                "log:".into(),
                "  level: info".into(),
                "  accesslog:".into(),
                "    disabled: false".into(),
                "storage:".into(),
                match &extra.s3 {
                    Some((endpoint, bucket)) => [
                        "  s3:",
                        "    region: us-east-1",
                        &format!("    bucket: {bucket}"),
                        &format!("    regionendpoint: {endpoint}"),
                        "    accesskey: test",
                        "    secretkey: test",
                        "    secure: false",
                        "    v4auth: true",
                        "  redirect:",
                        "    disable: false",
                    ]
                    .join("\n"),
                    None => format!("  filesystem:\n    rootdirectory: {}", reg.storage_dir.display()),
                },
                "  delete:".into(),
                "    enabled: true".into(),
                "  maintenance:".into(),
                "    uploadpurging:".into(),
                "      enabled: false".into(),
                "http:".into(),
                format!("  addr: 127.0.0.1:{}", reg.port),
                "  secret: ocicache-test-secret".into(),
                match &extra.tls {
                    Some((c, k)) => format!("  tls:\n    certificate: {}\n    key: {}", c.display(), k.display()),
                    None => String::new(),
                },
                auth.clone(),
                proxy.clone(),
            ]
            .join("\n");
            fs::write(&reg.config_path, config).expect("write registry config");
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(e) if e.contains("address already in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("docker-registry could not bind a port after 5 attempts: {last_err}");
    }

    /// Spawn the child and wait until it accepts connections. Err(message) if it exits first.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let open_log = |p: &Path| -> File {
            OpenOptions::new().create(true).append(true).open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config_path)
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("REGISTRY_HTTP_ADDR")
            .stdin(Stdio::null())
            .stdout(open_log(&self.access_log_path))
            .stderr(open_log(&self.log_path))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn docker-registry: {e}"));
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait docker-registry") {
                return Err(format!(
                    "docker-registry on port {} exited during startup ({status}); log:\n{}",
                    self.port,
                    self.app_log()
                ));
            }
            if port_is_open(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "docker-registry did not listen on 127.0.0.1:{} within {DEFAULT_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.app_log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The application log (stderr) so far.
    pub fn app_log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Temp dir holding config, storage and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// "127.0.0.1:PORT"
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// All requests served so far (across restarts), in log order, excluding the harness's own
    /// sentinel requests. Race-free: a sentinel request is made and the log is polled until its
    /// line appears, so every request completed before this call is included.
    pub fn requests(&self) -> Vec<AccessLine> {
        assert!(self.child.is_some(), "Registry::requests() on a stopped registry (port {})", self.port);
        let token = unique_token();
        let path = format!("/v2/?{SENTINEL_PARAM}{token}");
        // Status does not matter (401 with auth); the access log records every response.
        http_request(&self.addr(), "GET", &path, &[]);
        let needle = format!("{SENTINEL_PARAM}{token} ");
        let mut text = String::new();
        poll_until(Duration::from_secs(10), &format!("sentinel line in {}", self.access_log_path.display()), || {
            text = fs::read_to_string(&self.access_log_path).unwrap_or_default();
            text.contains(&needle)
        });
        text.lines()
            .filter(|l| !l.contains(SENTINEL_PARAM))
            .map(|l| {
                parse_access_line(l).unwrap_or_else(|| {
                    panic!("unparseable access-log line in {}: {l:?}", self.access_log_path.display())
                })
            })
            .collect()
    }

    /// Number of requests with `method` (exact, e.g. "GET"/"HEAD") whose path contains
    /// `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests().iter().filter(|r| r.method == method && r.path.contains(path_contains)).count()
    }

    /// Current number of (non-sentinel) requests; use with [`Registry::requests_since`].
    pub fn mark(&self) -> usize {
        self.requests().len()
    }

    /// Requests after a [`Registry::mark`].
    pub fn requests_since(&self, mark: usize) -> Vec<AccessLine> {
        self.requests().into_iter().skip(mark).collect()
    }

    /// Whether the child process is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kill the registry and wait for it; storage and logs are kept. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Reaping the child guarantees its listening socket is closed.
            let _ = child.wait();
        }
    }

    /// Start again on the same port with the same storage and config (stops it first if running).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("restart: {e}");
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An htpasswd file (bcrypt, as `htpasswd -Bbn` writes) for `users`.
fn htpasswd_file(users: &[(&str, &str)]) -> String {
    let mut file = String::new();
    for (user, pass) in users {
        let out = run_ok(Command::new("htpasswd").args(["-Bbn", user, pass]));
        // `htpasswd -n` prints "user:hash\n\n".
        let line = String::from_utf8(out.stdout).expect("htpasswd output is UTF-8");
        file.push_str(line.trim());
        file.push('\n');
    }
    file
}

/// Parse one combined-format line:
/// `HOST IDENT USER [DATE] "METHOD URI PROTO" STATUS SIZE "REFERER" "UA"`.
pub fn parse_access_line(line: &str) -> Option<AccessLine> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_string();
    let path = request.next()?.to_string();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(AccessLine { method, path, status })
}

/// Pushes one blob to `repo` of the registry at `addr` with the monolithic upload of the
/// distribution API (POST, then PUT with the digest); returns its digest.
pub fn push_blob_raw(addr: &str, repo: &str, data: &[u8]) -> String {
    let digest = super::sha256_digest(data);
    let started = super::http_send(addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], Some(b""));
    assert_eq!(started.status, 202, "start upload: {}", String::from_utf8_lossy(&started.body));
    let location = started.header("location").expect("upload Location").to_owned();
    let path =
        location.split_once("://").map(|(_, rest)| &rest[rest.find('/').unwrap_or(rest.len())..]).unwrap_or(&location);
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = super::http_send(
        addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        Some(data),
    );
    assert_eq!(put.status, 201, "finish upload: {}", String::from_utf8_lossy(&put.body));
    digest
}

/// Pushes manifest `body` (of `media_type`) to `repo` under `reference` (tag or digest); returns its digest.
pub fn push_manifest_raw(addr: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
    let r = super::http_send(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        Some(body),
    );
    assert_eq!(r.status, 201, "push manifest {reference}: {}", String::from_utf8_lossy(&r.body));
    super::sha256_digest(body)
}
