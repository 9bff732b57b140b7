//! The allow-list and endpoint table. `ns` and path-routed registry names are attacker-controlled, so a
//! registry is dialled only when the operator allowed it; anything else is refused before any DNS lookup.

use std::collections::{BTreeMap, BTreeSet};

use url::Url;

use crate::oci::RegistryName;

/// Public registries allowed out of the box. `*.domain` matches any subdomain (not the domain itself).
pub const BUILTIN_ALLOWED: &[&str] = &[
    "docker.io",
    "ghcr.io",
    "quay.io",
    "registry.k8s.io",
    "gcr.io",
    "*.gcr.io",
    "*.pkg.dev",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "nvcr.io",
    "*.azurecr.io",
];

#[derive(Debug, Clone, Default)]
pub struct Registries {
    endpoints: BTreeMap<RegistryName, Vec<Url>>,
    exact: Vec<RegistryName>,
    suffixes: Vec<String>,
    /// Exact names the operator allowed (not the built-in ones): may resolve to internal addresses.
    operator_named: BTreeSet<RegistryName>,
}

impl Registries {
    /// `endpoints`: explicitly configured origins (always allowed). `allowed`: extra names or `*.domain`
    /// patterns. Both are checked by the config layer; here they are trusted.
    pub fn new(endpoints: BTreeMap<RegistryName, Vec<Url>>, allowed: &[String]) -> Result<Self, String> {
        let mut r = Registries { endpoints, ..Default::default() };
        for pattern in BUILTIN_ALLOWED.iter().copied().chain(allowed.iter().map(String::as_str)) {
            r.allow(pattern)?;
        }
        r.operator_named = allowed.iter().filter_map(|a| RegistryName::parse(a).ok()).collect();
        Ok(r)
    }

    fn allow(&mut self, pattern: &str) -> Result<(), String> {
        if let Some(domain) = pattern.strip_prefix("*.") {
            RegistryName::parse(domain).map_err(|e| format!("allow-list entry {pattern:?}: {}", e.message))?;
            self.suffixes.push(format!(".{}", domain.to_ascii_lowercase()));
        } else {
            let name =
                RegistryName::parse(pattern).map_err(|e| format!("allow-list entry {pattern:?}: {}", e.message))?;
            self.exact.push(name);
        }
        Ok(())
    }

    pub fn is_allowed(&self, name: &RegistryName) -> bool {
        if self.endpoints.contains_key(name) || self.exact.contains(name) {
            return true;
        }
        // Patterns never match a name with a port or an IP literal: those must be named exactly.
        let s = name.as_str();
        name.ip().is_none() && !s.contains(':') && self.suffixes.iter().any(|suf| s.ends_with(suf.as_str()))
    }

    /// Where to fetch `name` from, in order; `None` when it is not allowed.
    pub fn endpoints(&self, name: &RegistryName) -> Option<Vec<Url>> {
        if let Some(urls) = self.endpoints.get(name) {
            return Some(urls.clone());
        }
        if !self.is_allowed(name) {
            return None;
        }
        let host = if name.is_docker_hub() { "registry-1.docker.io" } else { name.as_str() };
        Url::parse(&format!("https://{host}")).ok().map(|u| vec![u])
    }

    /// How far this registry's redirects and token realm are believed. Named: a configured endpoint
    /// (`--upstream`, `[registries]` endpoints) or an exact name in the allow-list — which includes
    /// every registry the operator gave credentials, a credential helper or `--private-registry` for,
    /// since the config layer adds those exactly. Guarded: reached through the built-in list or a
    /// `*.domain` pattern, so the name came from a client.
    pub fn trust(&self, name: &RegistryName) -> super::egress::Trust {
        if self.endpoints.contains_key(name) || self.operator_named.contains(name) {
            super::egress::Trust::Named
        } else {
            super::egress::Trust::Guarded
        }
    }

    /// Internal addresses the operator named explicitly: configured endpoints and exact allow-list names.
    pub fn egress_policy(&self) -> super::egress::EgressPolicy {
        super::egress::EgressPolicy::new(
            self.endpoints.values().flatten(),
            self.operator_named.iter().map(|n| n.to_string()),
        )
    }

    pub fn configured(&self) -> impl Iterator<Item = (&RegistryName, &Vec<Url>)> {
        self.endpoints.iter()
    }

    /// The `registry` label of metrics about `name`. A name configured (`--upstream`, an exact
    /// `--allow-registry`, a credentials source) or built in keeps its own; a name allowed only by a
    /// `*.domain` pattern is labelled with that pattern, because clients may invent any number of
    /// such names and each label value is a series Prometheus keeps. A name nobody allowed is `other`.
    pub fn label(&self, name: &RegistryName) -> String {
        if self.named_exactly(name) {
            return name.to_string();
        }
        self.pattern_for(name).unwrap_or_else(|| "other".to_owned())
    }

    /// The `endpoint` label of metrics about one of `name`'s endpoints: its URL when the registry is
    /// named exactly, else the registry's label (the endpoint `https://<name>` is invented too).
    pub fn endpoint_label(&self, name: &RegistryName, endpoint: &Url) -> String {
        if self.named_exactly(name) {
            endpoint.to_string()
        } else {
            self.label(name)
        }
    }

    fn named_exactly(&self, name: &RegistryName) -> bool {
        self.endpoints.contains_key(name) || self.exact.contains(name)
    }

    /// The `*.domain` pattern that allows `name` (the most specific one), as the operator wrote it.
    fn pattern_for(&self, name: &RegistryName) -> Option<String> {
        let s = name.as_str();
        if name.ip().is_some() || s.contains(':') {
            return None;
        }
        self.suffixes
            .iter()
            .filter(|suf| s.ends_with(suf.as_str()))
            .max_by_key(|suf| suf.len())
            .map(|suf| format!("*{suf}"))
    }
}
