//! A slow origin for the Range figure: a TCP relay in front of the real upstream registry that passes
//! the registry's answers on at a fixed rate, so a cold download takes seconds and a client can ask
//! for a range while it is running. It counts what it passed on, which is how far the download is.
//! (tests/support's `Relay` records what clients send and cannot throttle.)

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SlowRelay {
    pub port: u16,
    relayed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl SlowRelay {
    /// Listens on 127.0.0.1 (a free port) and relays every connection to `target`, the answers at
    /// `bytes_per_sec` per connection.
    pub fn start(target: SocketAddr, bytes_per_sec: u64) -> SlowRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("slow relay: bind");
        let port = listener.local_addr().expect("slow relay: address").port();
        let relayed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (relayed.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else { continue };
                let _ = client.set_nodelay(true);
                let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_server);
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                let count = count.clone();
                std::thread::spawn(move || throttled_copy(server, client, bytes_per_sec, &count));
            }
        });
        SlowRelay { port, relayed, stop }
    }

    /// Bytes passed on to clients so far, over all connections.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to` no faster than `rate` bytes a second: after each piece it waits until the
/// time that many bytes are due at that rate. Time spent idle (between requests on a keep-alive
/// connection) is not credited: the count starts again.
fn throttled_copy(mut from: TcpStream, mut to: TcpStream, rate: u64, count: &AtomicU64) {
    let piece = usize::try_from(rate / 100).unwrap_or(64 * 1024).clamp(1024, 64 * 1024);
    let mut buf = vec![0u8; piece];
    let mut started = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        count.fetch_add(n as u64, Ordering::Relaxed);
        let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
        let now = Instant::now();
        match due.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            None if now - due > Duration::from_millis(50) => (started, sent) = (now, 0),
            None => {}
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
