//! An S3-compatible server on loopback for the object-storage tests: moto in server mode, installed
//! by `.ci/run` into `target/moto-venv` (or named by `OCICACHE_MOTO_SERVER`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{free_port, http_request, wait_for_port};

pub struct Moto {
    pub port: u16,
    child: Child,
}

fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("OCICACHE_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server");
    assert!(
        p.exists(),
        "moto_server not found at {}: run `python3 -m venv target/moto-venv && target/moto-venv/bin/pip install 'moto[server]'` (.ci/run does this)",
        p.display()
    );
    p
}

impl Moto {
    pub fn start() -> Moto {
        Self::spawn(Command::new(moto_server()), free_port())
    }

    /// A fresh (empty) server on a given port: the same endpoint back after an outage.
    pub fn start_on(port: u16) -> Moto {
        Self::spawn(Command::new(moto_server()), port)
    }

    /// Stops the server (an outage of the object store).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Started so that it is killed when the calling thread ends (Linux's parent-death signal):
    /// for a server shared by a whole test binary, started from a thread that never ends.
    pub fn start_tied_to_this_thread() -> Moto {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(moto_server());
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Self::spawn(cmd, free_port())
    }

    fn spawn(mut cmd: Command, port: u16) -> Moto {
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        wait_for_port(port);
        Moto { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, name: &str) {
        let r = http_request(&self.addr(), "PUT", &format!("/{name}"), &[("Content-Length", "0")]);
        assert_eq!(r.status, 200, "create bucket {name}: {}", String::from_utf8_lossy(&r.body));
    }

    /// Every object key in the bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let r = http_request(&self.addr(), "GET", &format!("/{bucket}?list-type=2&max-keys=1000"), &[]);
        assert_eq!(r.status, 200, "list {bucket}");
        let body = String::from_utf8_lossy(&r.body);
        body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect()
    }

    /// An object's bytes, `None` when it does not exist. moto refuses anonymous reads of objects but
    /// does not check signatures, so any well-formed `Authorization` makes the request a signed one.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
                            SignedHeaders=host, Signature=00";
        let r = http_request(&self.addr(), "GET", &format!("/{bucket}/{key}"), &[("Authorization", AUTH)]);
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("get {bucket}/{key}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
    }

    /// Environment for an ocicache process using this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_S3", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
