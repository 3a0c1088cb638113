//! `seqtopk`: train, convert, evaluate and sample MoE language models whose router can spend the
//! expert budget per sequence (SeqTopK) instead of per token.

mod common;
mod convert;
mod eval;
mod eval_loss;
mod eval_tasks;
mod generate;
mod tokenizer;
mod train;

use clap::{Parser, Subcommand};

/// mimalloc, keeping freed memory for reuse: otherwise every step's large temporaries are given
/// back to the OS when freed and faulted in (zeroed) again on the next step.
#[global_allocator]
static GLOBAL: seqtopk_alloc::MiMalloc = seqtopk_alloc::MiMalloc;

/// Command line of the `seqtopk` binary.
#[derive(Debug, Parser)]
#[command(name = "seqtopk", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (`tracing` env-filter syntax); `RUST_LOG` wins when set.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train or fine-tune a model from a TOML recipe.
    Train(train::TrainArgs),
    /// Convert checkpoints: HF ⇄ native, dense → MoE upcycling, inspection.
    Convert(convert::ConvertArgs),
    /// Evaluate a checkpoint on tasks, or measure its next-token loss (`eval loss`).
    Eval(eval::EvalArgs),
    /// Generate continuations of prompts.
    Generate(generate::GenerateArgs),
    /// Train a byte-level BPE tokenizer on a recipe's training data (for models from scratch).
    Tokenizer(tokenizer::TokenizerArgs),
}

fn main() -> std::process::ExitCode {
    seqtopk_alloc::keep_freed_memory();
    let cli = Cli::parse();
    common::init_logging(&cli.log);
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Tokenizer(args) => tokenizer::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: the libraries' messages already embed their source
/// (`cannot read x: <io error>`), so anyhow's `{:#}` chain would print it a second time.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("cannot read x.toml: no such file");
        let e = e.context("preparing the run");
        assert_eq!(
            describe(&e),
            "preparing the run: cannot read x.toml: no such file"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&e), "outer: inner");
    }
}
