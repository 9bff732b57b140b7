//! Registry hosts, repository names and tags, validated against the distribution grammar. Repository
//! names and tags become path components in the local store, so validation here is what keeps every
//! file inside the cache directory.

use std::fmt;
use std::net::IpAddr;

use super::digest::truncate;
use super::error::{ErrorCode, OciError};

/// Longest repository name the distribution spec allows (including registry in practice).
const MAX_REPOSITORY_LEN: usize = 255;
/// Tags are `[\w][\w.-]{0,127}`.
const MAX_TAG_LEN: usize = 128;

/// A registry host with optional port, lowercased, with Docker Hub's many aliases folded into
/// `docker.io` so that one image is cached once whichever alias a client used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryName(String);

impl RegistryName {
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let invalid = || OciError::new(ErrorCode::NameInvalid, format!("invalid registry name {:?}", truncate(s)));
        if s.is_empty() || s.len() > 255 {
            return Err(invalid());
        }
        let lower = s.to_ascii_lowercase();
        let (host, port) = split_host_port(&lower).ok_or_else(invalid)?;
        if let Some(port) = port {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            match port.parse::<u32>() {
                Ok(1..=65535) => {}
                _ => return Err(invalid()),
            }
        }
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| invalid())?;
        } else if !valid_hostname(host) {
            return Err(invalid());
        }
        let canonical = match lower.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "docker.io" => "docker.io".into(),
            _ => lower,
        };
        Ok(RegistryName(canonical))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_docker_hub(&self) -> bool {
        self.0 == "docker.io"
    }

    /// The host without port or IPv6 brackets.
    pub fn host(&self) -> &str {
        let (host, _) = split_host_port(&self.0).unwrap_or((&self.0, None));
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The host as an IP address, when it is a literal: such names are only ever dialled when the
    /// operator named them explicitly.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host().parse().ok()
    }
}

impl fmt::Display for RegistryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => Some((h, Some(p))),
            None => Some((s, None)),
        }
    }
}

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether a first path segment names a registry (docker's rule: it has a `.` or `:`, or is `localhost`).
pub fn looks_like_registry(segment: &str) -> bool {
    segment.contains('.') || segment.contains(':') || segment == "localhost"
}

/// A repository name within a registry, e.g. `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

impl Repository {
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let invalid = || OciError::new(ErrorCode::NameInvalid, format!("invalid repository name {:?}", truncate(s)));
        if s.is_empty() || s.len() > MAX_REPOSITORY_LEN {
            return Err(invalid());
        }
        if !s.split('/').all(valid_component) {
            return Err(invalid());
        }
        Ok(Repository(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker Hub keeps official images under `library/`; clients may omit it.
    pub fn with_library_prefix(self) -> Self {
        if self.0.contains('/') {
            self
        } else {
            Repository(format!("library/{}", self.0))
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. It can never be `.` or `..`, so it is a safe file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let b = s.as_bytes();
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && word(b[0])
            && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-');
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(OciError::new(ErrorCode::TagInvalid, format!("invalid tag {:?}", truncate(s))))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
