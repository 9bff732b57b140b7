//! Talking to origin registries: which ones may be dialled and at which endpoints, with which
//! credentials, through the token dance, following redirects without leaking credentials.

pub mod auth;
pub mod client;
pub mod creds;
pub mod egress;
pub mod health;
pub mod registries;
pub mod sources;

pub use client::{cache_then_client, Identity, OriginClient, OriginOptions, OriginRequest};
pub use creds::{Credential, Credentials};
pub use registries::Registries;

#[cfg(test)]
mod tests;

/// A reqwest error with its causes, since the top-level message alone ("error sending request")
/// does not tell an operator what went wrong.
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
