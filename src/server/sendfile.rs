//! Warm blobs leave through `sendfile(2)`: the kernel moves the bytes from the page cache to the
//! socket, with no copy through ocicache's memory and no read per chunk — what nginx and Go's
//! `http.ServeContent` do, and why they beat a server that reads 1 MiB chunks through user space.
//!
//! hyper writes every response itself and has no way to hand a file to the socket, so the handoff
//! goes around it at the one place both meet, the connection's write side:
//! 1. The handler answers a warm blob GET with an *empty* body and a private header
//!    `x-ocicache-sendfile: <token>`; the token names an open file and a byte range in `Handoffs`.
//! 2. hyper writes the response head (with `content-length: 0`) and considers the response done.
//! 3. `SendfileStream`, the connection's I/O, recognises that head as it is written: it drops the
//!    private header, writes the real `content-length`, and then sends the range with `sendfile`
//!    before anything else hyper writes on the connection (the next response on a keep-alive
//!    connection waits behind it, as it would behind a body).
//!
//! Only plain-TCP connections do this (TLS encrypts in user space and keeps the streaming path), and
//! only for content that needs no verification on the way out (the store decides: a blob verified in
//! this process, or a range that ends before the blob's end). `sendfile` does not block on the
//! socket (it is non-blocking; tokio's readiness drives it), and the file pages of each window are
//! read on the blocking pool (`readahead`) first, so a cold page cache stalls a blocking thread,
//! never an async worker.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The private header naming a handoff; never reaches a client.
pub const MARKER: &str = "x-ocicache-sendfile";
const MARKER_LINE: &[u8] = b"\r\nx-ocicache-sendfile: ";

/// Bytes made resident (on the blocking pool) before they are sent.
const WINDOW: u64 = 8 << 20;

/// Handoffs not picked up within this time belong to responses that were never written (the client
/// left first); their files are closed.
const HANDOFF_TTL: Duration = Duration::from_secs(30);
/// Handoffs waiting at most: each holds an open file. Normally one exists only between a handler's
/// answer and hyper's write of its head.
const MAX_HANDOFFS: u64 = 512;

struct Handoff {
    file: Arc<File>,
    start: u64,
    end: u64,
}

/// Files waiting to be sent, by token.
pub struct Handoffs {
    waiting: moka::sync::Cache<u64, Arc<Handoff>>,
    /// `ocicache_sendfile_bytes_total`.
    sent: prometheus_client::metrics::counter::Counter,
}

impl Default for Handoffs {
    fn default() -> Self {
        Handoffs { waiting: crate::bounded::expiring(MAX_HANDOFFS, HANDOFF_TTL), sent: Default::default() }
    }
}

impl Handoffs {
    pub fn new(metrics: &crate::metrics::Metrics) -> Self {
        Handoffs { sent: metrics.sendfile_bytes.clone(), ..Default::default() }
    }

    /// Registers bytes `start..end` of `file` to be sent after the head of the response that
    /// carries the returned token in its `MARKER` header.
    pub fn offer(&self, file: Arc<File>, start: u64, end: u64) -> u64 {
        let token = rand::random::<u64>();
        self.waiting.insert(token, Arc::new(Handoff { file, start, end }));
        token
    }

    fn take(&self, token: u64) -> Option<Arc<Handoff>> {
        self.waiting.remove(&token)
    }
}

/// A TCP listener whose connections can send files (for `axum::serve`).
pub struct SendfileListener {
    tcp: TcpListener,
    handoffs: Arc<Handoffs>,
}

impl SendfileListener {
    pub fn new(tcp: TcpListener, handoffs: Arc<Handoffs>) -> Self {
        SendfileListener { tcp, handoffs }
    }
}

impl axum::serve::Listener for SendfileListener {
    type Io = SendfileStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, addr)) => {
                    return (SendfileStream { tcp, handoffs: self.handoffs.clone(), sending: None }, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A client connection: hyper's reads and writes pass through, except a response head carrying the
/// marker, which is followed by its file.
pub struct SendfileStream {
    tcp: TcpStream,
    handoffs: Arc<Handoffs>,
    sending: Option<Sending>,
}

struct Sending {
    head: Vec<u8>,
    head_written: usize,
    handoff: Arc<Handoff>,
    pos: u64,
    /// Bytes before this offset were made resident.
    resident_to: u64,
    readahead: Option<JoinHandle<io::Result<()>>>,
}

impl SendfileStream {
    /// If `buf` is exactly a response head with the marker, the head as the client must see it and
    /// the handoff it names.
    fn intercept(&self, buf: &[u8]) -> io::Result<Option<Sending>> {
        if !buf.starts_with(b"HTTP/1.") || !buf.ends_with(b"\r\n\r\n") {
            return Ok(None);
        }
        let Some(at) = find(buf, MARKER_LINE) else { return Ok(None) };
        let value_start = at + MARKER_LINE.len();
        let value_end = value_start + find(&buf[value_start..], b"\r\n").unwrap_or(0);
        let token = std::str::from_utf8(&buf[value_start..value_end]).ok().and_then(|t| t.parse::<u64>().ok());
        // A marked head whose file is gone cannot be completed truthfully: end the connection, and
        // the client retries.
        let handoff = token
            .and_then(|t| self.handoffs.take(t))
            .ok_or_else(|| io::Error::other("a response's file handoff expired before it was written"))?;
        let len = handoff.end - handoff.start;
        let mut head = Vec::with_capacity(buf.len() + 24);
        for line in buf[..buf.len() - 2].split_inclusive(|&b| b == b'\n') {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with(b"content-length:") || lower.starts_with(MARKER.as_bytes()) {
                continue;
            }
            head.extend_from_slice(line);
        }
        head.extend_from_slice(format!("content-length: {len}\r\n\r\n").as_bytes());
        let pos = handoff.start;
        Ok(Some(Sending { head, head_written: 0, handoff, pos, resident_to: pos, readahead: None }))
    }

    /// Drives a head and its file to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(s) = self.sending.as_mut() else { return Poll::Ready(Ok(())) };
        loop {
            if s.head_written < s.head.len() {
                let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &s.head[s.head_written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                s.head_written += n;
                continue;
            }
            let end = s.handoff.end;
            if s.pos >= end {
                self.sending = None;
                return Poll::Ready(Ok(()));
            }
            if s.pos >= s.resident_to {
                let window = |from: u64| {
                    let (file, len) = (s.handoff.file.clone(), WINDOW.min(end - from));
                    tokio::task::spawn_blocking(move || readahead(&file, from, len))
                };
                let task = s.readahead.get_or_insert_with(|| window(s.resident_to));
                let done = ready!(Pin::new(task).poll(cx));
                // A failed readahead only means sendfile reads the pages itself.
                if let Ok(Err(e)) = done {
                    tracing::debug!(error = %e, "readahead failed");
                }
                s.resident_to += WINDOW.min(end - s.resident_to);
                // The next window is read while this one is sent, so the socket never waits for it.
                s.readahead = (s.resident_to < end).then(|| window(s.resident_to));
                continue;
            }
            ready!(self.tcp.poll_write_ready(cx))?;
            let (file_fd, count) = (s.handoff.file.as_raw_fd(), (s.resident_to.min(end) - s.pos) as usize);
            let mut offset = s.pos as libc::off_t;
            let sock_fd = self.tcp.as_raw_fd();
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                // SAFETY: both descriptors are open for the duration of the call (the stream and
                // the handoff's file are borrowed), and `offset` is a valid pointer.
                let n = unsafe { libc::sendfile(sock_fd, file_fd, &mut offset, count) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                Ok(0) => return Poll::Ready(Err(io::Error::other("blob file ended before its size"))),
                Ok(n) => {
                    s.pos += n as u64;
                    self.handoffs.sent.inc_by(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

use std::future::Future;

/// Reads `len` bytes at `from` into the page cache (blocking: runs on the blocking pool).
fn readahead(file: &File, from: u64, len: u64) -> io::Result<()> {
    // SAFETY: a plain syscall on an open descriptor.
    let r = unsafe { libc::readahead(file.as_raw_fd(), from as libc::off64_t, len as usize) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl AsyncRead for SendfileStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        if let Some(sending) = this.intercept(buf)? {
            this.sending = Some(sending);
            // The head is ours now; it and the file go out before anything else is written.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        if let Some(first) = bufs.first() {
            if let Some(sending) = this.intercept(first)? {
                this.sending = Some(sending);
                return Poll::Ready(Ok(first.len()));
            }
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_head_gets_the_real_length_and_loses_the_marker() {
        let handoffs = Arc::new(Handoffs::default());
        let file = Arc::new(tempfile::tempfile().unwrap());
        let token = handoffs.offer(file, 10, 110);
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 10-109/200\r\n{MARKER}: {token}\r\ncontent-length: 0\r\n\r\n"
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let s = SendfileStream { tcp: c, handoffs: handoffs.clone(), sending: None };
            let sending = s.intercept(head.as_bytes()).unwrap().unwrap();
            let text = String::from_utf8(sending.head).unwrap();
            assert_eq!(
                text,
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 10-109/200\r\ncontent-length: 100\r\n\r\n"
            );
            // Single use: the same head again names nothing and ends the connection.
            assert!(s.intercept(head.as_bytes()).is_err());
            // Anything else passes through untouched.
            assert!(s.intercept(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n").unwrap().is_none());
            assert!(s.intercept(b"some body bytes").unwrap().is_none());
        });
    }
}
