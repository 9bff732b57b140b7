//! Which manifests may be answered from the cache and for how long: the rules of
//! containerd-registry-cache (`--cache-manifests`, `--skip-tags`, `--private-registry`) plus tag
//! freshness (`--tag-ttl`, `--immutable-tags`). Pure functions of their inputs (the current time is
//! passed in), so the rules are tested without waiting for a clock.

use std::time::Duration;

use regex::Regex;

use crate::oci::{RegistryName, Tag};

#[derive(Debug, Clone)]
pub struct TagPolicy {
    pub cache_manifests: bool,
    /// Unanchored, as Go's `MatchString`: the default `latest` also skips `latest-alpine`.
    pub skip_tags: Option<Regex>,
    pub private_registries: Vec<RegistryName>,
    /// How long a cached tag is served without asking the origin; zero revalidates every time.
    pub tag_ttl: Duration,
    /// Tags that never move once published (e.g. `v1.2.3`): never revalidated.
    pub immutable_tags: Option<Regex>,
}

impl Default for TagPolicy {
    /// The policy of a configuration that sets nothing: the defaults of `config::Settings`.
    fn default() -> Self {
        crate::config::Settings::default().tag_policy().expect("the default settings are valid")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagDecision {
    /// Serve from the cache while fresh; store what is fetched.
    Cache,
    /// Ask the origin every time; the last answer is kept only to serve when the origin fails.
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

    /// Whether a tag confirmed by the origin at `fetched_at` may be served at `now` (Unix seconds)
    /// without asking again.
    pub fn is_fresh(&self, tag: &Tag, fetched_at: u64, now: u64) -> bool {
        if self.immutable_tags.as_ref().is_some_and(|re| re.is_match(tag.as_str())) {
            return true;
        }
        let ttl = self.tag_ttl.as_secs();
        ttl > 0 && now.saturating_sub(fetched_at) < ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> Tag {
        Tag::parse(s).unwrap()
    }

    #[test]
    fn tags_are_fresh_for_the_ttl_and_immutable_ones_forever() {
        let p = TagPolicy {
            tag_ttl: Duration::from_secs(300),
            immutable_tags: Some(Regex::new(r"^v?[0-9]+(\.[0-9]+){2}$").unwrap()),
            ..TagPolicy::default()
        };
        assert!(p.is_fresh(&tag("3.20"), 1000, 1000));
        assert!(p.is_fresh(&tag("3.20"), 1000, 1299));
        assert!(!p.is_fresh(&tag("3.20"), 1000, 1300));
        assert!(p.is_fresh(&tag("v1.2.3"), 0, 10_000_000));
        assert!(!p.is_fresh(&tag("v1.2"), 0, 10_000_000));
        let always = TagPolicy { tag_ttl: Duration::ZERO, ..TagPolicy::default() };
        assert!(!always.is_fresh(&tag("1"), 1000, 1000));
    }

    #[test]
    fn skip_rules_match_the_go_tool() {
        let r = RegistryName::parse("docker.io").unwrap();
        let p = TagPolicy { skip_tags: Some(Regex::new("latest").unwrap()), ..TagPolicy::default() };
        assert_eq!(p.decide(&r, &tag("latest")), TagDecision::Skip);
        assert_eq!(p.decide(&r, &tag("latest-alpine")), TagDecision::Skip);
        assert_eq!(p.decide(&r, &tag("1.0")), TagDecision::Cache);
        let off = TagPolicy { cache_manifests: false, ..TagPolicy::default() };
        assert_eq!(off.decide(&r, &tag("1.0")), TagDecision::Skip);
        let private = TagPolicy { private_registries: vec![r.clone()], ..TagPolicy::default() };
        assert_eq!(private.decide(&r, &tag("1.0")), TagDecision::Skip);
        assert!(!private.may_store_manifests(&r));
    }
}
