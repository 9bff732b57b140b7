//! Subcommands besides serving: node configuration (`hosts`), pre-warming (`warm`), offline garbage
//! collection (`gc`), what the cluster uses and is cached (`status`). Each takes the validated config and its own arguments.

pub mod gc;
pub mod hosts;
pub mod status;
pub mod warm;
