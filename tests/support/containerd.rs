//! A real containerd daemon (needs root) with everything in a temp dir, driven through `ctr`.
//!
//! Registry host configuration (`--hosts-dir`) facts for containerd 1.6:
//! * For a registry host `H:PORT` containerd uses the FIRST existing directory of
//!   `H_PORT_/`, `H:PORT/`, `_default/` and reads only that one's hosts.toml: a per-registry
//!   directory completely shadows `_default`. That is why [`Containerd::block_fallback`] repeats
//!   the mirror entry written by [`Containerd::mirror_all_to`].
//! * Requests carry `?ns=<registry host>` (URL-encoded: `ns=127.0.0.1%3A5000`) whenever the host
//!   contacted differs from the image's registry host: mirror (`[host."..."]`) requests, and also a
//!   `server` that points elsewhere (seen: the closed-port fallback gets `?ns=docker.io`). A
//!   `server` equal to the registry itself (see [`Containerd::direct_to`]) gets no `?ns=`.
//! * Order of hosts tried: the `[host]` entries in file order, then `server`. A mirror answering
//!   404 is logged as "trying next host - response was http.StatusNotFound".
//! * On a mirror 404/error containerd falls back to the next host and finally to `server`
//!   (default `https://<registry>`), hence [`Containerd::block_fallback`].

use super::{closed_port, describe, poll_until, run_output, DEFAULT_TIMEOUT};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Instant;
use tempfile::TempDir;

/// A running containerd. Killed on drop; mounts under its temp dir are lazily unmounted.
pub struct Containerd {
    /// gRPC socket (`ctr --address`).
    pub sock: PathBuf,
    /// Directory passed as `ctr ... pull --hosts-dir`.
    pub hosts_dir: PathBuf,
    /// containerd's `root` (content store, snapshots, metadata).
    pub root: PathBuf,
    /// containerd's stderr.
    pub log_path: PathBuf,
    /// Mirror address set by [`Containerd::mirror_all_to`]; [`Containerd::block_fallback`] writes
    /// it into per-registry files too (and `mirror_all_to` rewrites those already written).
    mirror: Mutex<Option<String>>,
    blocked: Mutex<Vec<String>>,
    child: Option<Child>,
    dir: TempDir,
}

impl Containerd {
    /// Start containerd (config version 2, all state in a temp dir, CRI and exotic snapshotters
    /// disabled) and wait until `ctr version` answers.
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new().prefix("ocicache-ctrd-").tempdir().expect("create containerd temp dir");
        let d = dir.path();
        let sock = d.join("c.sock");
        let hosts_dir = d.join("hosts");
        let root = d.join("root");
        fs::create_dir_all(&hosts_dir).expect("create hosts dir");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = root.display(),
            state = d.join("state").display(),
            sock = sock.display(),
            opt = d.join("opt").display(),
        );
        let config_path = d.join("config.toml");
        fs::write(&config_path, config).expect("write containerd config");
        let log_path = d.join("containerd.log");
        let log = File::create(&log_path).expect("create containerd log");
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .env_remove("CONTAINERD_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn containerd: {e}"));
        let read_log = || fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait containerd") {
                panic!("containerd exited during startup ({status}); log:\n{}", read_log());
            }
            if sock.exists() && ctr_cmd(&sock).arg("version").output().is_ok_and(|o| o.status.success()) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "containerd did not answer on {} within {DEFAULT_TIMEOUT:?}; log:\n{}",
                    sock.display(),
                    read_log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Containerd {
            sock,
            hosts_dir,
            root,
            log_path,
            mirror: Mutex::new(None),
            blocked: Mutex::new(Vec::new()),
            child: Some(child),
            dir,
        }
    }

    /// `ctr --address SOCK` (namespace "default"); append subcommand and args.
    pub fn ctr(&self) -> Command {
        ctr_cmd(&self.sock)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn write_hosts_toml(&self, registry: &str, contents: &str) {
        let dir = self.hosts_dir.join(registry);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::write(dir.join("hosts.toml"), contents)
            .unwrap_or_else(|e| panic!("write {}/hosts.toml: {e}", dir.display()));
    }

    fn mirror_entry(cache_addr: &str) -> String {
        format!("[host.\"http://{cache_addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
    }

    fn blocked_toml(&self, mirror: Option<&str>) -> String {
        let mut s = format!("server = \"http://127.0.0.1:{}\"\n", closed_port());
        if let Some(m) = mirror {
            s.push('\n');
            s.push_str(&Self::mirror_entry(m));
        }
        s
    }

    /// Use `cache_addr` ("127.0.0.1:PORT", plain HTTP) as pull/resolve mirror for every registry:
    /// writes `hosts_dir/_default/hosts.toml`. The address is remembered, and per-registry files
    /// written by [`Containerd::block_fallback`] (before or after) list it too.
    pub fn mirror_all_to(&self, cache_addr: &str) {
        self.write_hosts_toml("_default", &Self::mirror_entry(cache_addr));
        *self.mirror.lock().unwrap() = Some(cache_addr.to_string());
        for registry in self.blocked.lock().unwrap().iter() {
            self.write_hosts_toml(registry, &self.blocked_toml(Some(cache_addr)));
        }
    }

    /// Make sure pulls of `registry` (e.g. "docker.io", "127.0.0.1:5000") never fall back to the
    /// real registry: `hosts_dir/<registry>/hosts.toml` gets `server = "http://127.0.0.1:<closed
    /// port>"` plus the mirror entry of [`Containerd::mirror_all_to`] (if set, now or later),
    /// because a per-registry directory shadows `_default`.
    pub fn block_fallback(&self, registry: &str) {
        let mirror = self.mirror.lock().unwrap().clone();
        self.write_hosts_toml(registry, &self.blocked_toml(mirror.as_deref()));
        let mut blocked = self.blocked.lock().unwrap();
        if !blocked.iter().any(|r| r == registry) {
            blocked.push(registry.to_string());
        }
    }

    /// Pull `registry` directly over plain HTTP (`server = "http://<registry>"`, no mirror):
    /// writes `hosts_dir/<registry>/hosts.toml`. Undone by a later `block_fallback(registry)`.
    pub fn direct_to(&self, registry: &str) {
        self.blocked.lock().unwrap().retain(|r| r != registry);
        self.write_hosts_toml(registry, &format!("server = \"http://{registry}\"\n"));
    }

    /// `ctr --address S image pull --hosts-dir D [extra...] IMAGE`. Does not panic on failure.
    pub fn pull(&self, image: &str, extra: &[&str]) -> Output {
        run_output(self.ctr().args(["image", "pull", "--hosts-dir"]).arg(&self.hosts_dir).args(extra).arg(image))
    }

    /// Like [`Containerd::pull`] but panics (with ctr's output and the daemon log tail) on failure.
    pub fn pull_ok(&self, image: &str, extra: &[&str]) -> Output {
        let out = self.pull(image, extra);
        if !out.status.success() {
            panic!(
                "ctr pull {image} {extra:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Run `ctr` with `args`, panicking with its output on failure; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let mut cmd = self.ctr();
        cmd.args(args);
        let out = run_output(&mut cmd);
        super::assert_success(&out, &describe(&cmd));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Image names (`ctr images ls -q`).
    pub fn images(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["images", "ls", "-q"]))
    }

    /// Content digests in the content store (`ctr content ls -q`).
    pub fn content(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["content", "ls", "-q"]))
    }

    /// Remove all images (`ctr images rm --sync`) and all content, until `ctr content ls -q` is
    /// empty, so the next pull fetches every blob again.
    pub fn clean(&self) {
        let images = self.images();
        if !images.is_empty() {
            let mut args = vec!["images", "rm", "--sync"];
            args.extend(images.iter().map(String::as_str));
            self.ctr_ok(&args);
        }
        poll_until(DEFAULT_TIMEOUT, "containerd content store to be empty", || {
            let content = self.content();
            if content.is_empty() {
                return true;
            }
            // Left-overs (e.g. from a failed pull) are not referenced by an image: delete them.
            let mut cmd = self.ctr();
            cmd.args(["content", "rm"]).args(&content);
            let _ = run_output(&mut cmd);
            false
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Best effort: unmount anything left under our temp dir (deepest first).
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ctr_cmd(sock: &Path) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(sock).env_remove("CONTAINERD_NAMESPACE").env_remove("CONTAINERD_SNAPSHOTTER");
    cmd
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}
