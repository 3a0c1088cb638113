//! Placeholder until this command lands.

use anyhow::{Result, bail};
use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct TrainArgs {}

/// Runs the command.
pub fn run(_args: TrainArgs) -> Result<()> {
    bail!("not implemented yet")
}
