//! Where ocicache may connect. Registry names are checked against the allow-list before a request is
//! built; this module closes the remaining ways to reach an address the operator never meant:
//! a DNS name of an allowed registry resolving to a loopback, link-local or private address, an
//! origin redirecting (307) to one, or a token realm pointing at one.
//!
//! How far an origin's own answers are believed depends on who picked the registry ([`Trust`]): a
//! registry the operator named exactly is the operator's infrastructure, and so are the token
//! service and object store it points at (a self-hosted GitLab's realm, a Harbor's in-cluster MinIO);
//! a registry reached through the built-in list or a `*.domain` pattern was named by a client, so its
//! redirects and realms reach internal addresses only when the operator configured those addresses.

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

/// Link-local addresses, where cloud metadata services answer (169.254.169.254, and AWS's
/// fd00:ec2::254): never followed on an origin's word, not even for a trusted registry, because no
/// registry's storage or token service lives there and instance credentials do.
pub fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_link_local();
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// How far a registry's own answers (its redirect targets and token realm) are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The operator named the registry exactly (`--upstream`, an exact `--allow-registry`, a
    /// credentials entry): where it sends the cache is the operator's network too, so internal
    /// addresses and names resolving to them are followed; link-local ones still are not.
    Named,
    /// Allowed by the built-in list or a `*.domain` pattern: a client chose the name, so an internal
    /// address is reached only when the operator configured it.
    Guarded,
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

    /// Whether a URL (a redirect target or token realm of a registry with `trust`) may be requested.
    /// Names are left to the resolver, which sees the addresses they resolve to.
    pub fn allows_url(&self, url: &Url, trust: Trust) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{} is not an http(s) URL", url.scheme()));
        }
        let Some(host) = url.host_str() else {
            return Err("no host".into());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Ok(());
        };
        if !is_internal(ip) || self.endpoints.contains(&format!("{host}:{port}")) {
            return Ok(());
        }
        match trust {
            Trust::Named if !is_link_local_or_metadata(ip) => Ok(()),
            Trust::Named => {
                Err(format!("{host}:{port} is a link-local address (cloud metadata) that was not configured"))
            }
            Trust::Guarded => Err(format!(
                "{host}:{port} is an internal address that was not configured, and the registry was not named \
                 exactly by the operator"
            )),
        }
    }

    /// A DNS resolver for a registry with `trust`: drops the answers that registry may not reach.
    pub fn resolver(&self, trust: Trust) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { hosts: self.hosts.clone(), trust })
    }

    /// A redirect policy for a registry with `trust`: up to 10 redirects, to allowed places only.
    /// reqwest drops `Authorization` whenever a redirect changes host or port, so credentials never
    /// follow a redirect to another service, trusted or not.
    pub fn redirect_policy(&self, trust: Trust) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match policy.allows_url(attempt.url(), trust) {
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
    /// Configured names: every answer is fine.
    hosts: HashSet<String>,
    trust: Trust,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let configured = self.hosts.contains(&host);
        let trust = self.trust;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let reachable = |ip: IpAddr| match trust {
                _ if configured => true,
                Trust::Named => !is_link_local_or_metadata(ip),
                Trust::Guarded => !is_internal(ip),
            };
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| reachable(a.ip())).collect();
            if allowed.is_empty() {
                let msg = match trust {
                    Trust::Named => format!("{host} resolves only to link-local addresses, which were not configured"),
                    Trust::Guarded => format!("{host} resolves only to internal addresses, which were not configured"),
                };
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
    fn link_local_and_metadata_addresses() {
        for ip in ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"] {
            assert!(is_link_local_or_metadata(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.5", "fd00::1", "::1", "8.8.8.8"] {
            assert!(!is_link_local_or_metadata(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_guarded_registry_reaches_only_configured_internal_endpoints() {
        let up = Url::parse("http://127.0.0.1:5000").unwrap();
        let p = EgressPolicy::new([&up], ["10.0.0.9:8443".to_owned()]);
        let ok = |u: &str| p.allows_url(&Url::parse(u).unwrap(), Trust::Guarded).is_ok();
        assert!(ok("http://127.0.0.1:5000/v2/x"));
        assert!(ok("https://10.0.0.9:8443/token"));
        assert!(ok("https://cdn.example.com/blob"));
        assert!(!ok("http://127.0.0.1:22/"));
        assert!(!ok("https://10.0.0.5/jwt/auth"));
        assert!(!ok("http://169.254.169.254/latest/meta-data"));
        assert!(!ok("http://[::1]:5000/"));
        assert!(!ok("file:///etc/passwd"));
    }

    #[test]
    fn a_named_registry_reaches_internal_addresses_but_not_link_local_ones() {
        let p = EgressPolicy::new([], []);
        let ok = |u: &str| p.allows_url(&Url::parse(u).unwrap(), Trust::Named).is_ok();
        assert!(ok("https://10.0.0.5/jwt/auth"), "a self-hosted GitLab's token service");
        assert!(ok("http://127.0.0.2:9000/bucket/blob?X-Amz-Signature=x"), "an in-cluster MinIO");
        assert!(ok("http://[fd00::5]:9000/b"));
        assert!(ok("https://cdn.example.com/blob"));
        assert!(!ok("http://169.254.169.254/latest/meta-data"));
        assert!(!ok("http://[fd00:ec2::254]/latest/meta-data"));
        assert!(!ok("http://[fe80::1]:80/"));
        assert!(!ok("file:///etc/passwd"));
        // Unless the operator configured that very address.
        let meta = Url::parse("http://169.254.169.254").unwrap();
        let p = EgressPolicy::new([&meta], []);
        assert!(p.allows_url(&Url::parse("http://169.254.169.254/x").unwrap(), Trust::Named).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_internally_are_followed_for_named_registries_only() {
        use std::str::FromStr;
        let p = EgressPolicy::new([], []);
        let name = || Name::from_str("localhost").unwrap();
        let named: Vec<SocketAddr> = p.resolver(Trust::Named).resolve(name()).await.unwrap().collect();
        assert!(named.iter().any(|a| a.ip().is_loopback()), "{named:?}");
        let guarded = p.resolver(Trust::Guarded).resolve(name()).await.err().map(|e| e.to_string());
        assert!(guarded.is_some_and(|e| e.contains("only to internal addresses")));
        // A configured name resolves for either trust.
        let p = EgressPolicy::new([], ["localhost:5000".to_owned()]);
        assert!(p.resolver(Trust::Guarded).resolve(name()).await.is_ok());
    }
}
