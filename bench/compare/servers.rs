//! The processes the benchmark runs beside the test harness's registries: ocicache itself (the built
//! binary, on disk or on a moto bucket), nginx serving the same bytes as static files, and the
//! bookkeeping around them (when a blob is committed, a process's peak RSS).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{free_port, http_request, poll_until, port_is_open, Moto, DEFAULT_TIMEOUT};

/// How long a blob may take to reach its storage after its clients have it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(180);

/// Peak resident set (`VmHWM` of /proc/PID/status) in MiB; None once the process is gone.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM")
}

/// A `kB` field of /proc/PID/status (`VmHWM`, `VmRSS`, `RssAnon`, `RssFile`) in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Spawns `cmd` (output to `log`) and waits until it listens on `port`; panics with the log if it
/// exits first or never listens.
fn spawn_listening(cmd: &mut Command, port: u16, log: &Path, what: &str) -> Child {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({}): {e}", crate::support::describe(cmd)));
    let mut exited = None;
    poll_until(DEFAULT_TIMEOUT, &format!("{what} to listen on 127.0.0.1:{port}"), || {
        exited = child.try_wait().ok().flatten();
        exited.is_some() || port_is_open(port)
    });
    if let Some(status) = exited {
        panic!("{what} exited at start ({status}); its log:\n{}", fs::read_to_string(log).unwrap_or_default());
    }
    child
}

/// Where an ocicache keeps what it caches.
pub enum Storage<'a> {
    Disk,
    /// `--storage s3://BUCKET` on moto; `--cache-dir` then only stages fills.
    S3(&'a Moto, String),
}

/// One ocicache process with its own cache directory (deleted when it is dropped).
pub struct Ocicache {
    pub port: u16,
    pub bucket: Option<String>,
    child: Child,
    dir: TempDir,
}

impl Ocicache {
    /// Starts `bin` with an empty cache, with its default settings except where to listen, where to
    /// cache and where `registry` is (`--upstream registry=upstream`).
    pub fn start(bin: &Path, registry: &str, upstream: &str, storage: Storage) -> Ocicache {
        Self::start_with(bin, registry, upstream, storage, &|_| Vec::new())
    }

    /// `start` with more flags, which may name the port it will listen on.
    pub fn start_with(
        bin: &Path,
        registry: &str,
        upstream: &str,
        storage: Storage,
        extra: &dyn Fn(u16) -> Vec<String>,
    ) -> Ocicache {
        let dir = tempfile::Builder::new().prefix("ocicache-bench-").tempdir().expect("temp dir");
        let cache = dir.path().join("cache");
        let log = dir.path().join("ocicache.log");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--upstream", &format!("{registry}={upstream}")])
            .args(extra(port))
            .env("NO_COLOR", "1");
        let bucket = match storage {
            Storage::Disk => None,
            Storage::S3(moto, bucket) => {
                cmd.args(["--storage", &format!("s3://{bucket}")]).envs(moto.env());
                Some(bucket)
            }
        };
        let child = spawn_listening(&mut cmd, port, &log, "ocicache");
        Ocicache { port, bucket, child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn peak_rss_mib(&self) -> Option<f64> {
        peak_rss_mib(self.pid())
    }

    /// Its resident set now, split: "VmRSS x MiB (RssAnon y, RssFile z)".
    pub fn rss_now(&self) -> String {
        let f = |field| status_mib(self.pid(), field).map_or("?".into(), |v| format!("{v:.1}"));
        format!("VmRSS {} MiB (RssAnon {}, RssFile {})", f("VmRSS"), f("RssAnon"), f("RssFile"))
    }

    /// A sample of /metrics (`name` or `name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let r = http_request(&self.addr(), "GET", "/metrics", &[]);
        String::from_utf8_lossy(&r.body)
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the blob `hex` of `size` bytes is committed: no download running and the blob's
    /// file in the cache directory, or (on S3) its object in the bucket. Err says what is missing.
    pub fn wait_committed(&self, moto: Option<&Moto>, hex: &str, size: u64) -> Result<(), String> {
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        let committed = || match (&self.bucket, moto) {
            (Some(bucket), Some(moto)) => {
                objects(moto, bucket).iter().any(|(key, len)| key.ends_with(hex) && *len == size)
            }
            _ => has_file(&self.dir.path().join("cache"), hex, size),
        };
        while Instant::now() < deadline {
            if self.metric("ocicache_inflight_downloads") == 0.0 && committed() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "ocicache :{}: blob {hex} not committed {COMMIT_TIMEOUT:?} after its download ({})",
            self.port,
            self.bucket
                .as_ref()
                .map_or("no file of its size in the cache dir".into(), |b| format!("not in bucket {b}"))
        ))
    }

    /// Lines of its log with WARN or ERROR.
    pub fn warnings(&self) -> Vec<String> {
        let log = fs::read_to_string(self.dir.path().join("ocicache.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned).collect()
    }
}

impl Drop for Ocicache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file named after `hex` (the store names blobs by digest) of `size` bytes under `dir`.
pub fn has_file(dir: &Path, hex: &str, size: u64) -> bool {
    crate::support::files_under(dir).iter().any(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().contains(hex))
            && fs::metadata(p).is_ok_and(|m| m.len() == size)
    })
}

/// Every object in `bucket` with its size.
pub fn objects(moto: &Moto, bucket: &str) -> Vec<(String, u64)> {
    let r = http_request(&moto.addr(), "GET", &format!("/{bucket}?list-type=2&max-keys=1000"), &[]);
    let body = String::from_utf8_lossy(&r.body);
    body.split("<Contents>")
        .skip(1)
        .filter_map(|c| {
            let key = c.split("<Key>").nth(1)?.split("</Key>").next()?;
            let size = c.split("<Size>").nth(1)?.split("</Size>").next()?.parse().ok()?;
            Some((key.to_owned(), size))
        })
        .collect()
}

/// moto checks no signatures, but refuses some requests with no Authorization at all.
const MOTO_AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=test/20000101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// Deletes every object of `bucket`, then the bucket, so moto does not keep one blob per cold run.
pub fn delete_bucket(moto: &Moto, bucket: &str) -> Result<(), String> {
    for (key, _) in objects(moto, bucket) {
        http_request(&moto.addr(), "DELETE", &format!("/{bucket}/{key}"), &[("Authorization", MOTO_AUTH)]);
    }
    let r = http_request(&moto.addr(), "DELETE", &format!("/{bucket}"), &[("Authorization", MOTO_AUTH)]);
    match r.status {
        200 | 204 => Ok(()),
        s => Err(format!(
            "moto: bucket {bucket} not deleted ({s}); objects left: {:?}",
            objects(moto, bucket).into_iter().map(|(k, _)| k).take(5).collect::<Vec<_>>()
        )),
    }
}

/// nginx serving a directory as static files (`sendfile on`, no access log), in the foreground as a
/// child of the benchmark, with its config, pid file and logs in a temp dir.
pub struct Nginx {
    pub port: u16,
    pub version: String,
    child: Child,
    _dir: TempDir,
}

/// Files nginx serves under `/v2/`: a blob and a manifest at the distribution API's paths.
pub struct StaticSite<'a> {
    /// Directory serving as the root: `<root>/v2/...`.
    pub root: &'a Path,
    /// Path prefix of the manifests (`/v2/REPO/manifests/`), served with `media_type` and the digest.
    pub manifests: &'a str,
    pub media_type: &'a str,
    pub manifest_digest: &'a str,
}

impl Nginx {
    pub fn start(site: &StaticSite) -> Nginx {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nginx");
        let dir = tempfile::Builder::new().prefix("ocicache-bench-nginx-").tempdir().expect("temp dir");
        let d = dir.path();
        fs::create_dir_all(d.join("tmp")).expect("nginx temp dir");
        let port = free_port();
        // Workers started by root drop to `nobody`, who cannot read a 0700 temp dir.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 { "user root root;" } else { "" };
        let conf = format!(
            r#"{user}
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /v2/ {{ default_type application/json; return 200 '{{}}'; }}
        location {manifests} {{
            default_type {media_type};
            add_header Docker-Content-Digest {digest};
        }}
    }}
}}
"#,
            d = d.display(),
            root = site.root.display(),
            manifests = site.manifests,
            media_type = site.media_type,
            digest = site.manifest_digest,
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let version = Command::new(bin)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(bin);
        cmd.arg("-p").arg(d).arg("-e").arg(d.join("error.log")).arg("-c").arg(&conf_path).args(["-g", "daemon off;"]);
        let child = spawn_listening(&mut cmd, port, &d.join("stderr.log"), "nginx");
        Nginx { port, version, child, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM to the master makes it stop its workers too (a KILL would leave them running).
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where distribution's proxy keeps a blob it has stored (`storage_dir` of its `Registry`).
pub fn registry_blob_path(storage_dir: &Path, hex: &str) -> PathBuf {
    storage_dir.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
}

/// Waits until `path` exists with `size` bytes (a registry's committed blob).
pub fn wait_file(path: &Path, size: u64) -> Result<(), String> {
    let deadline = Instant::now() + COMMIT_TIMEOUT;
    while Instant::now() < deadline {
        if fs::metadata(path).is_ok_and(|m| m.len() == size) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} not written with {size} bytes within {COMMIT_TIMEOUT:?}", path.display()))
}
