//! A token service for distribution's token auth, since none is packaged: a std `TcpListener` thread
//! that checks credentials and issues RS256 JWTs, as GitLab's `/jwt/auth` or Harbor's `/service/token`
//! do. It may listen on another loopback address than the registry (127.0.0.2), like a GitLab whose
//! registry and token service are two hosts.
//!
//! * GET form (`?service=S&scope=...`, Basic credentials or none), as skopeo and anonymous clients use;
//!   POST form (`grant_type=password`, space-separated `scope`), as containerd uses with credentials.
//! * The JWT carries the signing key's self-signed certificate in its `x5c` header; the registry
//!   checks that chain against `rootcertbundle` ([`TokenServer::cert_path`]).
//! * Wrong credentials get 401; anyone else gets a token whose `access` lists only what a grant allows.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use super::run_ok;

/// One request the token service answered.
#[derive(Debug, Clone)]
pub struct SeenTokenRequest {
    pub method: String,
    /// The user whose credentials were checked (right or wrong); None when anonymous.
    pub user: Option<String>,
    /// Whether an `Authorization` header came at all.
    pub had_authorization: bool,
    pub user_agent: String,
    pub scopes: Vec<String>,
    pub status: u16,
}

pub struct TokenServer {
    pub addr: SocketAddr,
    pub service: String,
    pub issuer: String,
    /// The signing key's self-signed certificate (PEM): the registry's `rootcertbundle`.
    pub cert_path: PathBuf,
    state: Arc<State>,
    _dir: tempfile::TempDir,
}

struct State {
    users: HashMap<String, String>,
    /// (user, repository prefix): that user gets every action it asks for below the prefix.
    grants: Vec<(String, String)>,
    key: RsaKeyPair,
    /// Standard base64 of the certificate's DER, for the `x5c` header.
    x5c: String,
    service: String,
    issuer: String,
    seen: Mutex<Vec<SeenTokenRequest>>,
}

impl TokenServer {
    /// Listens on `ip` (any free port). `users`: (name, password). `grants`: (user, repository
    /// prefix) pairs, e.g. `("alice", "priv/")`.
    pub fn start(ip: IpAddr, users: &[(&str, &str)], grants: &[(&str, &str)]) -> TokenServer {
        let dir = tempfile::Builder::new().prefix("ocicache-tokens-").tempdir().expect("token server temp dir");
        let p = |n: &str| dir.path().join(n).to_str().expect("utf-8 temp path").to_owned();
        let ssl = |args: &[&str]| run_ok(Command::new("openssl").args(args));
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ocicache test token issuer",
        ]
        .iter()
        .copied()
        .chain(["-keyout", &p("key.pem"), "-out", &p("cert.pem")])
        .collect::<Vec<_>>());
        // ring's `from_der` reads PKCS#1 DER, which `openssl rsa -traditional` writes.
        ssl(&["rsa", "-traditional", "-in", &p("key.pem"), "-outform", "DER", "-out", &p("key.der")]);
        ssl(&["x509", "-in", &p("cert.pem"), "-outform", "DER", "-out", &p("cert.der")]);
        let key = RsaKeyPair::from_der(&std::fs::read(p("key.der")).expect("read key.der")).expect("RSA key");
        let x5c = base64::engine::general_purpose::STANDARD.encode(std::fs::read(p("cert.der")).expect("cert.der"));

        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("token server: bind {ip}:0: {e}"));
        let addr = listener.local_addr().expect("token server address");
        let state = Arc::new(State {
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            grants: grants.iter().map(|(u, r)| (u.to_string(), r.to_string())).collect(),
            key,
            x5c,
            service: "ocicache-test-registry".into(),
            issuer: "ocicache-test-issuer".into(),
            seen: Mutex::default(),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || state.serve(conn));
            }
        });
        TokenServer {
            addr,
            service: state.service.clone(),
            issuer: state.issuer.clone(),
            cert_path: dir.path().join("cert.pem"),
            state,
            _dir: dir,
        }
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<SeenTokenRequest> {
        self.state.seen.lock().unwrap().clone()
    }

    /// A token for `user` (None: anonymous) and one scope, as that user's own client would get it.
    pub fn token_for(&self, user: Option<&str>, scope: &str) -> String {
        let user = user.map(str::to_owned);
        self.state.token(user.as_deref(), &[scope.to_owned()])
    }
}

impl State {
    fn serve(&self, mut conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let Some((method, target, headers, body)) = read_request(&conn) else { return };
        let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let params: Vec<(String, String)> = if method == "POST" {
            url::form_urlencoded::parse(&body).into_owned().collect()
        } else {
            url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
        };
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        // Basic credentials (GET form) or the OAuth2 password grant (POST form).
        let basic = match header("authorization").split_once(' ') {
            Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))),
            _ => None,
        };
        let password_grant = param("grant_type").as_deref() == Some("password");
        let form = if password_grant { param("username").zip(param("password")) } else { None };
        let credentials = basic.or(form);
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let authenticated = credentials.as_ref().is_none_or(|(u, p)| self.users.get(u) == Some(p));
        let status = if authenticated { 200 } else { 401 };
        self.seen.lock().unwrap().push(SeenTokenRequest {
            method,
            user: credentials.as_ref().map(|(u, _)| u.clone()),
            had_authorization: headers.contains_key("authorization"),
            user_agent: header("user-agent"),
            scopes: scopes.clone(),
            status,
        });
        let (status_line, body) = if authenticated {
            let token = self.token(credentials.as_ref().map(|(u, _)| u.as_str()), &scopes);
            ("200 OK", serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string())
        } else {
            ("401 Unauthorized", r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_owned())
        };
        let resp = format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes());
    }

    /// A signed JWT granting `user` what the grants allow of `scopes` (`repository:NAME:ACTIONS`).
    fn token(&self, user: Option<&str>, scopes: &[String]) -> String {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                let user = user?;
                let granted = self.grants.iter().any(|(u, prefix)| u == user && name.starts_with(prefix.as_str()));
                (kind == "repository" && granted).then(|| {
                    serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()})
                })
            })
            .collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": user.unwrap_or(""),
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": super::unique_token(),
            "access": access,
        });
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut sig)
            .expect("RS256 signature");
        format!("{signing_input}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig))
    }
}

/// One HTTP/1.1 request: method, target, lower-cased headers, body.
type Request = (String, String, HashMap<String, String>, Vec<u8>);

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((method, target, headers, body))
}
