//! The crate's integration tests, one binary: each file under `tests/` is a module of it, so
//! the workspace links one test executable per crate instead of one per file.

mod support;

mod behaviour;
mod generation;
mod parity;
