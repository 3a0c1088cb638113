//! Placeholder until this command lands.

use anyhow::{Result, bail};
use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct LossArgs {}

/// Runs the command.
pub fn run(_args: LossArgs) -> Result<()> {
    bail!("not implemented yet")
}
