//! Operator credentials for origins, from the `--creds-file` YAML of containerd-registry-cache: keys are
//! a registry host or a host/path prefix (longest prefix wins), values `username`/`password`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::oci::{RegistryName, Repository};

/// An operator credential for an origin.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A username and a password (or an access token a registry takes as one): Basic at the registry
    /// or its token service.
    Password { username: String, password: String },
    /// An OAuth2 refresh token (docker's `identitytoken`, or a helper's answer with the username
    /// `<token>`): exchanged at the token service with the `refresh_token` grant, never sent as Basic.
    IdentityToken(String),
}

/// The username docker's credential helpers and config answer with for an identity token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credential {
    /// A username and secret as docker's sources give them: the username `<token>` marks an
    /// identity token.
    pub fn from_user(username: String, secret: String) -> Credential {
        if username == IDENTITY_TOKEN_USER {
            Credential::IdentityToken(secret)
        } else {
            Credential::Password { username, password: secret }
        }
    }

    /// The username, for messages and tests (`<token>` for an identity token).
    pub fn username(&self) -> &str {
        match self {
            Credential::Password { username, .. } => username,
            Credential::IdentityToken(_) => IDENTITY_TOKEN_USER,
        }
    }

    /// Username and password for Basic authentication; an identity token has none.
    pub fn basic(&self) -> Option<(&str, &str)> {
        match self {
            Credential::Password { username, password } => Some((username, password)),
            Credential::IdentityToken(_) => None,
        }
    }

    /// Identifies the credential in cache keys without holding the secret in the key.
    pub fn id(&self) -> String {
        let secret = match self {
            Credential::Password { username, password } => format!("{username}\0{password}"),
            Credential::IdentityToken(t) => format!("{IDENTITY_TOKEN_USER}\0{t}"),
        };
        crate::oci::Digest::sha256_of(secret.as_bytes()).hex()[..16].to_owned()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Password { username, .. } => {
                write!(f, "Credential::Password {{ username: {username:?}, password: <redacted> }}")
            }
            Credential::IdentityToken(_) => write!(f, "Credential::IdentityToken(<redacted>)"),
        }
    }
}

/// One value of the creds file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    username: String,
    password: String,
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
        let raw: BTreeMap<String, FileEntry> = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for (key, FileEntry { username, password }) in raw {
            let cred = Credential::from_user(username, password);
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
