//! Which manifests may be answered from the cache: the rules of containerd-registry-cache
//! (`--cache-manifests`, `--skip-tags`, `--private-registry`).

use regex::Regex;

use crate::oci::{RegistryName, Tag};

#[derive(Debug, Clone)]
pub struct TagPolicy {
    pub cache_manifests: bool,
    /// Unanchored, as Go's `MatchString`: the default `latest` also skips `latest-alpine`.
    pub skip_tags: Option<Regex>,
    pub private_registries: Vec<RegistryName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagDecision {
    /// Serve from the cache when present; store what is fetched.
    Cache,
    /// Ask the origin every time.
    Skip,
}

impl TagPolicy {
    pub fn decide(&self, registry: &RegistryName, tag: &Tag) -> TagDecision {
        let skip = !self.cache_manifests
            || self.private_registries.contains(registry)
            || self.skip_tags.as_ref().is_some_and(|re| re.is_match(tag.as_str()));
        if skip {
            TagDecision::Skip
        } else {
            TagDecision::Cache
        }
    }

    /// Manifests of private registries are never written to the cache, not even by digest.
    pub fn may_store_manifests(&self, registry: &RegistryName) -> bool {
        !self.private_registries.contains(registry)
    }
}
