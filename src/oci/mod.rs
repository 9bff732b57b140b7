//! The OCI distribution protocol as plain values: names, digests, references, routes, media types and
//! error codes. Nothing here performs I/O, so every later layer can rely on these types being valid by
//! construction instead of re-checking strings.

pub mod accept;
pub mod digest;
pub mod error;
pub mod name;
pub mod range;
pub mod route;

pub use accept::AcceptList;
pub use digest::{Algorithm, Digest, DigestHasher};
pub use error::{ErrorCode, OciError};
pub use name::{RegistryName, Repository, Tag};
pub use route::{Reference, Route, RouteKind, Target};

#[cfg(test)]
mod tests;
