//! The request-path grammar of the distribution API, spelled once: `/v2/`, and
//! `/v2/[<registry>/]<repository>/{manifests/<reference>|blobs/<digest>|tags/list|referrers/<digest>}`, plus containerd's
//! `?ns=<registry>` query. Everything a handler needs is parsed here into typed values.

use std::fmt;

use super::digest::{truncate, Digest};
use super::error::{ErrorCode, OciError};
use super::name::{looks_like_registry, RegistryName, Repository, Tag};

/// A manifest is asked for by tag (mutable) or by digest (immutable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, OciError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// Which repository of which origin registry a request is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub registry: RegistryName,
    pub repository: Repository,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    Manifest(Reference),
    Blob(Digest),
    Tags,
    /// The OCI 1.1 referrers API: what refers to the manifest with this digest.
    Referrers(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`: the API version check every client starts with.
    Base,
    Api {
        target: Target,
        kind: RouteKind,
    },
}

/// Parses a raw (still percent-encoded) request path and the `ns` query value.
///
/// The registry is, in order: `ns`; the first path segment when it looks like a host (path routing for
/// clients that cannot send `ns`); `default_registry`. Percent-encoding is refused outright: no valid
/// name, tag or digest contains `%`, and decoding would let `%2F` or `%2e%2e` smuggle path structure.
pub fn parse(path: &str, ns: Option<&str>, default_registry: &RegistryName) -> Result<Route, OciError> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Route::Base),
        Some(r) => r.strip_prefix('/').ok_or_else(|| unsupported(path))?,
        None => return Err(unsupported(path)),
    };
    if rest.contains('%') {
        return Err(OciError::new(
            ErrorCode::NameInvalid,
            format!("percent-encoded characters are not allowed in {:?}", truncate(path)),
        ));
    }
    // Push endpoints end in a slash (`/blobs/uploads/`); they are refused below as unsupported.
    let segments: Vec<&str> = rest.strip_suffix('/').unwrap_or(rest).split('/').collect();
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(OciError::new(
            ErrorCode::NameInvalid,
            format!("empty, `.` or `..` path segments are not allowed in {:?}", truncate(path)),
        ));
    }
    if segments.len() < 3 {
        return Err(unsupported(path));
    }
    let (name, tail) = segments.split_at(segments.len() - 2);
    let kind = match (tail[0], tail[1]) {
        ("manifests", r) => RouteKind::Manifest(Reference::parse(r)?),
        ("blobs", "uploads") => return Err(unsupported(path)),
        ("blobs", d) => RouteKind::Blob(d.parse()?),
        ("tags", "list") => RouteKind::Tags,
        ("referrers", d) => RouteKind::Referrers(d.parse()?),
        _ => {
            // `/v2/<name>/blobs/uploads/<id>` and other push paths land here.
            return Err(unsupported(path));
        }
    };
    let (registry, repo_segments) = match ns {
        Some(ns) => (RegistryName::parse(ns)?, name),
        None if name.len() >= 2 && looks_like_registry(name[0]) => (RegistryName::parse(name[0])?, &name[1..]),
        None => (default_registry.clone(), name),
    };
    let mut repository = Repository::parse(&repo_segments.join("/"))?;
    if registry.is_docker_hub() {
        repository = repository.with_library_prefix();
    }
    Ok(Route::Api { target: Target { registry, repository }, kind })
}

fn unsupported(path: &str) -> OciError {
    OciError::new(
        ErrorCode::Unsupported,
        format!("{:?} is not part of the pull API; ocicache is a read-only pull-through cache", truncate(path)),
    )
}
