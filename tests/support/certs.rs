//! Test certificates made with openssl: a private CA and a server certificate for 127.0.0.1 it
//! signed (rustls refuses a self-signed CA certificate used as the server's own).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_ok;

pub struct TestCerts {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ca_and_server_cert(dir: &Path) -> TestCerts {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let ssl = |args: &[&str]| run_ok(Command::new("openssl").args(args));
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    ssl(&[
        &["req", "-x509"],
        &rsa[..],
        &["-days", "1", "-subj", "/CN=ocicache test CA", "-keyout", &p("ca.key"), "-out", &p("ca.pem")],
    ]
    .concat());
    ssl(&[&["req"], &rsa[..], &["-subj", "/CN=127.0.0.1", "-keyout", &p("key.pem"), "-out", &p("srv.csr")]].concat());
    std::fs::write(p("ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let ca_args = ["-CA", &p("ca.pem"), "-CAkey", &p("ca.key"), "-CAcreateserial", "-days", "1"];
    ssl(&[&["x509", "-req", "-in", &p("srv.csr")], &ca_args[..], &["-extfile", &p("ext"), "-out", &p("srv.pem")]]
        .concat());
    TestCerts { ca: dir.join("ca.pem"), cert: dir.join("srv.pem"), key: dir.join("key.pem") }
}
