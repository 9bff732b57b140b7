//! A TCP relay that records what each connection sent: put in front of a real server (moto) to see
//! the headers a client sent it, which the server itself does not show. Bytes pass unchanged both ways.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

type Sent = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

pub struct Relay {
    pub port: u16,
    sent: Sent,
}

impl Relay {
    /// Listens on 127.0.0.1 (any free port) and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay: bind");
        let port = listener.local_addr().expect("relay address").port();
        let sent: Sent = Arc::default();
        let all = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else { continue };
                let record = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(record.clone());
                let (mut c_read, mut s_write) =
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = s_write.shutdown(Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(Shutdown::Write);
                });
            }
        });
        Relay { port, sent }
    }

    /// What each connection so far sent, lower-cased (header names and values are readable; bodies
    /// are there too, lossily).
    pub fn sent(&self) -> Vec<String> {
        let all = self.sent.lock().unwrap();
        all.iter().map(|r| String::from_utf8_lossy(&r.lock().unwrap()).to_ascii_lowercase()).collect()
    }
}

/// A TCP relay that passes each connection's answer only up to `hold_after` bytes (headers
/// included), then holds the rest until `release()`: a real server's download kept running, the way
/// `FakeOrigin`'s `HoldAt` keeps its own. Requests pass unchanged.
pub struct HoldingRelay {
    pub port: u16,
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl HoldingRelay {
    pub fn start(target: SocketAddr, hold_after: usize) -> HoldingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay: bind");
        let port = listener.local_addr().expect("relay address").port();
        let open: Arc<(Mutex<bool>, std::sync::Condvar)> = Arc::default();
        let gate = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else { continue };
                let (mut c_read, mut s_write) =
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(Shutdown::Write);
                });
                let (mut s_read, mut c_write, gate) = (server, client, gate.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    let mut sent = 0;
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut off = 0;
                        while off < n {
                            let released = *gate.0.lock().unwrap();
                            let take = if released { n - off } else { (n - off).min(hold_after.saturating_sub(sent)) };
                            if take == 0 {
                                let guard = gate.0.lock().unwrap();
                                let _open = gate.1.wait_while(guard, |open| !*open).unwrap();
                                continue;
                            }
                            if c_write.write_all(&buf[off..off + take]).is_err() {
                                return;
                            }
                            off += take;
                            sent += take;
                        }
                    }
                    let _ = c_write.shutdown(Shutdown::Write);
                });
            }
        });
        HoldingRelay { port, open }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Lets every held answer continue.
    pub fn release(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }
}

impl Drop for HoldingRelay {
    fn drop(&mut self) {
        self.release();
    }
}
