//! Placeholder until this command lands.

use anyhow::{Result, bail};
use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct ConvertArgs {}

/// Runs the command.
pub fn run(_args: ConvertArgs) -> Result<()> {
    bail!("not implemented yet")
}
