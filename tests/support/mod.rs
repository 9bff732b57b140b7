//! Integration-test harness: real upstream registries (`docker-registry`), OCI image layouts built
//! in-process and pushed with `skopeo`, and a real `containerd` daemon as a client.
//!
//! Everything is synchronous (std::process, std::net) so it can be used from `#[test]` as well as
//! `#[tokio::test]` code. Every helper panics with a descriptive message (including the tool's
//! captured stderr) when something goes wrong. Nothing sleeps for synchronisation: conditions are
//! polled with a bounded deadline (see [`poll_until`]).
//!
//! Usage from an integration test: `mod support;` then `use support::*;` (or the submodules).
//! All traffic stays on 127.0.0.1.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod cache;
pub mod certs;
pub mod containerd;
pub mod fake;
pub mod image;
pub mod registry;
pub mod relay;
pub mod s3;
pub mod token;

pub use backend::*;
pub use cache::*;
pub use certs::*;
pub use containerd::*;
pub use fake::*;
pub use image::*;
pub use registry::*;
pub use relay::*;
pub use s3::*;
pub use token::*;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default deadline for "wait until X" helpers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener).
///
/// Ports handed out by this process are remembered, so two parallel tests of the same test binary
/// never receive the same port from this function.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("free_port: cannot bind 127.0.0.1:0: {e}"));
        let port = listener.local_addr().unwrap_or_else(|e| panic!("free_port: local_addr: {e}")).port();
        drop(listener);
        if handed_out.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("free_port: could not find an unused port after 100 attempts");
}

/// A port on 127.0.0.1 with nothing listening on it: connecting is refused immediately.
///
/// Unlike a plain [`free_port`], the port is *reserved* for the lifetime of the test process by a
/// bound but never-listening socket, so no other test (or registry started by one) can end up
/// listening on it. The same port is returned on every call.
pub fn closed_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(reserve_closed_port)
}

fn reserve_closed_port() -> u16 {
    // SAFETY: plain socket syscalls on a fresh descriptor we own; the descriptor is leaked on
    // purpose so the port stays reserved (bound, not listening) until the process exits.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "closed_port: socket(): {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = 0;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, &addr as *const libc::sockaddr_in as *const libc::sockaddr, len);
        assert!(rc == 0, "closed_port: bind(): {}", std::io::Error::last_os_error());
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut out_len = len;
        let rc = libc::getsockname(fd, &mut out as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut out_len);
        assert!(rc == 0, "closed_port: getsockname(): {}", std::io::Error::last_os_error());
        u16::from_be(out.sin_port)
    }
}

/// Poll TCP connect to 127.0.0.1:`port` until it succeeds; panic after 20 s.
pub fn wait_for_port(port: u16) {
    poll_until(DEFAULT_TIMEOUT, &format!("127.0.0.1:{port} to accept TCP connections"), || port_is_open(port));
}

/// True if a TCP connection to 127.0.0.1:`port` succeeds right now.
pub fn port_is_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Call `cond` repeatedly (with a short back-off between attempts, never as synchronisation by
/// itself) until it returns true; panic with `what` if `timeout` elapses first.
pub fn poll_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(2);
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// Like [`poll_until`], but the condition produces a value (`Some` = done).
pub fn poll_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut out = None;
    poll_until(timeout, what, || {
        out = f();
        out.is_some()
    });
    out.expect("poll_for: value present after success")
}

/// Render a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command to completion and capture its output; panics only if it cannot be spawned.
pub fn run_output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
}

/// Run a command and panic (with its stdout/stderr) unless it exits successfully.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run_output(cmd);
    assert_success(&out, &describe(cmd));
    out
}

/// Panic with the captured output unless `out` is a success.
pub fn assert_success(out: &Output, what: &str) {
    if !out.status.success() {
        panic!(
            "`{what}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// "sha256:<hex>" of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A parsed HTTP/1.1 response from [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names are lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A minimal blocking HTTP/1.1 client over a raw `TcpStream` (`Connection: close`, no redirects).
/// `addr` is "127.0.0.1:PORT", `path` includes the query. Handles Content-Length, chunked and
/// read-to-EOF bodies (HEAD responses have no body). Panics on I/O errors (30 s timeout).
pub fn http_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_begin(addr, method, path, headers).finish()
}

/// [`http_request`] with a request body (sent with its Content-Length).
pub fn http_send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
    http_start(addr, method, path, headers, body).finish()
}

/// A request whose response head has arrived and whose body may still be on its way: lets a test
/// know the server has answered (e.g. joined a running download) before it lets the body complete.
pub struct HttpPending {
    ctx: String,
    method: String,
    stream: TcpStream,
    raw: Vec<u8>,
}

/// Sends a request like [`http_request`] and waits only for the response head.
pub fn http_begin(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpPending {
    http_start(addr, method, path, headers, None)
}

fn http_start(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpPending {
    let ctx = format!("{method} http://{addr}{path}");
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{ctx}: connect: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap_or_else(|e| panic!("{ctx}: read: {e}"));
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    HttpPending { ctx, method: method.to_owned(), stream, raw }
}

impl HttpPending {
    /// The status code of the response head.
    pub fn status(&self) -> u16 {
        let line = self.raw.split(|&b| b == b'\r').next().unwrap_or_default();
        String::from_utf8_lossy(line).split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Reads the rest of the response and parses it.
    pub fn finish(mut self) -> HttpResponse {
        let ctx = &self.ctx;
        self.stream.read_to_end(&mut self.raw).unwrap_or_else(|e| panic!("{ctx}: read: {e}"));
        let raw = &self.raw;
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{ctx}: malformed response: {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let rest = &raw[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = HttpResponse { status, headers, body: Vec::new() };
        if self.method.eq_ignore_ascii_case("HEAD") {
            return resp;
        }
        resp.body = if resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            decode_chunked(rest).unwrap_or_else(|| panic!("{ctx}: bad chunked body"))
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap_or_else(|_| panic!("{ctx}: bad content-length {len:?}"));
            assert!(rest.len() >= len, "{ctx}: body truncated: {} of {len} bytes", rest.len());
            assert!(rest.len() == len, "{ctx}: {} body bytes after a Content-Length of {len}", rest.len());
            rest[..len].to_vec()
        } else {
            rest.to_vec()
        };
        resp
    }
}

fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A process-unique token (for sentinels, repository names, ...).
pub fn unique_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{n}-{nanos}", std::process::id())
}
