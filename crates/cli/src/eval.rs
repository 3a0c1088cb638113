//! `eval`: task evaluation (`eval --tasks …`) and the next-token loss diagnostic (`eval loss`).

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::{eval_loss, eval_tasks};

/// `eval` takes either task options or the `loss` subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: Option<EvalCommand>,
    #[command(flatten)]
    tasks: eval_tasks::TaskArgs,
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// Mean next-token cross-entropy of token-id rows (parity check on any checkpoint).
    Loss(eval_loss::LossArgs),
}

/// Runs `eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    match args.command {
        Some(EvalCommand::Loss(loss)) => eval_loss::run(loss),
        None => eval_tasks::run(args.tasks),
    }
}
