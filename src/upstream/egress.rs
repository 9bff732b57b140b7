//! Where ocicache may connect. Registry names are checked against the allow-list before a request is
//! built; this module closes the remaining ways to reach an address the operator never meant:
//! a DNS name of an allowed registry resolving to a loopback, link-local or private address, an
//! origin redirecting (307) to one, or a token realm pointing at one. Such addresses are dialled only
//! when the operator configured them explicitly (`--upstream`, or an exact `--allow-registry`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// Addresses only reachable inside the machine or the local network.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // carrier-grade NAT
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
        }
    }
}

/// The explicitly configured places that may be internal.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Host names (lowercase) whose DNS answers may be internal.
    hosts: HashSet<String>,
    /// `host:port` pairs that may be dialled even when internal.
    endpoints: HashSet<String>,
}

impl EgressPolicy {
    /// `explicit`: the configured endpoint URLs and the exact registry names the operator allowed.
    pub fn new<'a>(urls: impl IntoIterator<Item = &'a Url>, names: impl IntoIterator<Item = String>) -> Self {
        let mut p = EgressPolicy::default();
        for u in urls {
            if let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) {
                p.add(host, port);
            }
        }
        // An HTTP(S) proxy from the environment is the operator's choice too, wherever it lives.
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            if let Some(u) = std::env::var(var).ok().and_then(|v| Url::parse(&v).ok()) {
                if let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) {
                    p.add(host, port);
                }
            }
        }
        for n in names {
            if let Ok(u) = Url::parse(&format!("https://{n}")) {
                if let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) {
                    p.add(host, port);
                }
            }
        }
        p
    }

    fn add(&mut self, host: &str, port: u16) {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.endpoints.insert(format!("{host}:{port}"));
        self.hosts.insert(host);
    }

    /// Whether a URL (a redirect target or token realm) may be requested.
    pub fn allows_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{} is not an http(s) URL", url.scheme()));
        }
        let Some(host) = url.host_str() else {
            return Err("no host".into());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        match host.parse::<IpAddr>() {
            Ok(ip) if is_internal(ip) && !self.endpoints.contains(&format!("{host}:{port}")) => {
                Err(format!("{host}:{port} is an internal address that was not configured"))
            }
            _ => Ok(()),
        }
    }

    /// A DNS resolver that drops internal answers for names that were not configured.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { hosts: self.hosts.clone() })
    }

    /// A redirect policy that follows up to 10 redirects to allowed places only.
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match policy.allows_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => {
                    tracing::warn!(to = %attempt.url(), %why, "origin redirect refused");
                    attempt.error(format!("redirect refused: {why}"))
                }
            }
        })
    }
}

pub struct GuardedResolver {
    hosts: HashSet<String>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let trusted = self.hosts.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| trusted || !is_internal(a.ip())).collect();
            if allowed.is_empty() {
                let msg = format!("{host} resolves only to internal addresses, which were not configured");
                return Err(msg.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_configured_internal_endpoints_are_allowed() {
        let up = Url::parse("http://127.0.0.1:5000").unwrap();
        let p = EgressPolicy::new([&up], ["10.0.0.9:8443".to_owned()]);
        let ok = |u: &str| p.allows_url(&Url::parse(u).unwrap()).is_ok();
        assert!(ok("http://127.0.0.1:5000/v2/x"));
        assert!(ok("https://10.0.0.9:8443/token"));
        assert!(ok("https://cdn.example.com/blob"));
        assert!(!ok("http://127.0.0.1:22/"));
        assert!(!ok("http://169.254.169.254/latest/meta-data"));
        assert!(!ok("http://[::1]:5000/"));
        assert!(!ok("file:///etc/passwd"));
    }
}
