//! Placeholder until this command lands.

use anyhow::{Result, bail};
use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {}

/// Runs the command.
pub fn run(_args: GenerateArgs) -> Result<()> {
    bail!("not implemented yet")
}
