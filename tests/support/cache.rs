//! ocicache itself for integration tests: in-process on its own runtime thread (fast, and the server
//! is the real one: `ocicache::run` with a config parsed from the same flags users give), or as the
//! built binary when a test is about the command line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

/// A running in-process ocicache on 127.0.0.1.
pub struct Cache {
    pub port: u16,
    pub dir: PathBuf,
    _tmp: Option<TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cache {
    /// Starts with a fresh cache directory and the given flags (`--cache-dir` is added).
    pub fn start(args: &[&str]) -> Cache {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cache");
        let mut c = Cache::start_in(&dir, args);
        c._tmp = Some(tmp);
        c
    }

    /// Starts on an existing cache directory (to check what survives a restart).
    pub fn start_in(dir: &Path, args: &[&str]) -> Cache {
        let mut all: Vec<String> = vec!["ocicache".into(), "--cache-dir".into(), dir.display().to_string()];
        all.extend(super::backend_flags());
        all.extend(args.iter().map(|s| s.to_string()));
        let config = ocicache::Config::from_args(&all).unwrap_or_else(|e| panic!("config {all:?}: {e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let shutdown = async move {
                    let _ = rx.await;
                };
                if let Err(e) = ocicache::run(listener, config, shutdown).await {
                    eprintln!("ocicache stopped with error: {e}");
                }
            });
            rt.shutdown_background();
        });
        Cache { port, dir: dir.to_path_buf(), _tmp: None, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server (waits for it to let go of its port).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Every committed blob file in the store, once no download is running (a verified download is
    /// served to its clients first and made durable right after).
    pub fn stored_blobs(&self) -> Vec<PathBuf> {
        super::poll_until(super::DEFAULT_TIMEOUT, "downloads to finish", || {
            self.metric("ocicache_inflight_downloads") == 0.0
        });
        files_under(&self.dir.join("blobs"))
    }

    /// The Prometheus text from /metrics.
    pub fn metrics(&self) -> String {
        let r = super::http_request(&self.addr(), "GET", "/metrics", &[]);
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).expect("utf8 metrics")
    }

    /// The value of one sample line (`name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample).and_then(|rest| rest.trim().split(' ').next()).and_then(|v| v.parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Signal only: a test that failed mid-stream must not hang waiting for the server.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The ocicache binary as a child process, for tests of the command line itself.
pub struct CacheProcess {
    pub child: Child,
    pub port: u16,
    /// Its stderr (logs) go to a file: an undrained pipe would fill up and block the server.
    pub log: tempfile::NamedTempFile,
}

pub fn ocicache_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ocicache"))
}

impl CacheProcess {
    pub fn spawn(args: &[&str]) -> CacheProcess {
        Self::spawn_env(args, &[])
    }

    /// Like `spawn`, with extra environment variables (e.g. a PATH with test credential helpers).
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> CacheProcess {
        Self::spawn_env_on(super::free_port(), args, env)
    }

    /// Like `spawn_env`, on a port chosen beforehand (a replica that must name its own address in
    /// its flags, e.g. `--advertise-url`).
    pub fn spawn_env_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> CacheProcess {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = ocicache_bin()
            .envs(super::backend_env())
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(super::backend_flags())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("spawn ocicache");
        super::wait_for_port(port);
        CacheProcess { child, port, log }
    }
}

impl CacheProcess {
    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for CacheProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
