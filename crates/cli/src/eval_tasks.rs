//! Placeholder until this command lands.

use anyhow::{Result, bail};
use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct TaskArgs {}

/// Runs the command.
pub fn run(_args: TaskArgs) -> Result<()> {
    bail!("not implemented yet")
}
