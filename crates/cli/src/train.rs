//! `seqtopk train`: runs a recipe (the embedded tiny recipe when none is given).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use seqtopk_train::{
    DEFAULT_RECIPE, DEFAULT_RECIPE_NAME, Recipe, RunOutcome, Trainer, TrainerOptions,
};

/// Arguments of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Recipe file (TOML). Default: the embedded `recipes/tiny-seqtopk-math.toml`.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Override a recipe field, e.g. `--set optimizer.lr=3e-4 --set router.mode=topk`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Backend to run on (shorthand for `--set backend=…`).
    #[arg(long)]
    backend: Option<String>,
    /// Print the resolved recipe and the parameter/token budget, then exit.
    #[arg(long)]
    dry_run: bool,
    /// Continue from the newest checkpoint in the run's output directory.
    #[arg(long)]
    resume: bool,
    /// No progress bar (logs only).
    #[arg(long)]
    no_progress: bool,
}

/// Runs `train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(b) = &args.backend {
        overrides.push(format!("backend=\"{b}\""));
    }
    let recipe = match &args.recipe {
        Some(path) => Recipe::from_file(path, &overrides)?,
        None => Recipe::parse(DEFAULT_RECIPE, DEFAULT_RECIPE_NAME, &overrides)?,
    };
    let origin = args
        .recipe
        .as_ref()
        .map_or(DEFAULT_RECIPE_NAME.to_owned(), |p| p.display().to_string());
    let trainer = Trainer::new(recipe.clone()).with_context(|| format!("preparing {origin}"))?;
    let budget = trainer.budget();
    if args.dry_run {
        println!("# resolved recipe ({origin})\n{}", recipe.to_toml());
        println!("# budget");
        println!("parameters_total = {}", budget.params_total);
        println!("parameters_active_per_token = {}", budget.params_active);
        println!("parameters_trainable = {}", budget.params_trainable);
        println!("steps = {}", budget.steps);
        println!("tokens_per_step = {}", budget.tokens_per_step);
        println!("tokens_total = {}", budget.total_tokens);
        return Ok(());
    }
    tracing::info!(
        recipe = %origin,
        backend = %recipe.backend,
        params = budget.params_total,
        active = budget.params_active,
        steps = budget.steps,
        tokens_per_step = budget.tokens_per_step,
        output = %recipe.output_dir().display(),
        tensorboard = %recipe.log_dir().display(),
        "training"
    );
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("interrupt: saving a checkpoint after this step (Ctrl-C again to abort)");
    })
    .context("installing the Ctrl-C handler")?;
    let options = TrainerOptions {
        resume: args.resume,
        progress: !args.no_progress,
        interrupt: Some(interrupt),
    };
    match trainer.run(&options)? {
        RunOutcome::Completed { steps, final_dir } => {
            println!(
                "trained {steps} steps; final model: {}; TensorBoard: tensorboard --logdir {}",
                final_dir.display(),
                recipe.log_dir().display()
            );
            Ok(())
        }
        RunOutcome::Interrupted { steps, checkpoint } => {
            eprintln!(
                "interrupted after step {steps}; checkpoint {}; continue with --resume",
                checkpoint.display()
            );
            std::process::exit(130);
        }
    }
}
