//! Operator credentials for origins, from the `--creds-file` YAML of containerd-registry-cache: keys are
//! a registry host or a host/path prefix (longest prefix wins), values `username`/`password`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::oci::{RegistryName, Repository};

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl Credential {
    /// Identifies the credential in cache keys without holding the secret in the key.
    pub fn id(&self) -> String {
        let d = crate::oci::Digest::sha256_of(format!("{}\0{}", self.username, self.password).as_bytes());
        d.hex()[..16].to_owned()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential {{ username: {:?}, password: <redacted> }}", self.username)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// (registry, path prefix within it, credential), longest prefix first.
    entries: Vec<(RegistryName, String, Credential)>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read creds file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("creds file {}: {e}", path.display()))
    }

    /// Parses the YAML text (also used to re-read the file when it changes).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: BTreeMap<String, Credential> = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for (key, cred) in raw {
            let key_trim = key.trim_end_matches('/');
            let (host, prefix) = key_trim.split_once('/').unwrap_or((key_trim, ""));
            let registry = RegistryName::parse(host).map_err(|e| format!("key {key:?}: {}", e.message))?;
            entries.push((registry, prefix.to_owned(), cred));
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.1.len()));
        Ok(Credentials { entries })
    }

    pub fn lookup(&self, registry: &RegistryName, repository: &Repository) -> Option<&Credential> {
        let repo = repository.as_str();
        self.entries.iter().find_map(|(r, prefix, cred)| {
            let matches = r == registry
                && (prefix.is_empty()
                    || repo == prefix
                    || (repo.starts_with(prefix.as_str()) && repo.as_bytes().get(prefix.len()) == Some(&b'/')));
            matches.then_some(cred)
        })
    }

    pub fn registries(&self) -> impl Iterator<Item = &RegistryName> {
        self.entries.iter().map(|(r, _, _)| r)
    }
}
