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
