//! Subcommands besides serving: node configuration (`hosts`), pre-warming (`warm`), offline garbage
//! collection (`gc`). Each takes the validated config and its own arguments.

pub mod gc;
pub mod hosts;
pub mod warm;
