//! `seqtopk train`: runs a recipe (the embedded tiny recipe when none is given).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use seqtopk_model::MoeTransformerConfig;
use seqtopk_train::memory::{self, MemoryEstimate, StepShape};
use seqtopk_train::{
    Budget, DEFAULT_RECIPE, DEFAULT_RECIPE_NAME, Recipe, RunOutcome, Trainer, TrainerOptions,
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
    /// Resume without checking the checkpoint's files against its manifest (sizes and SHA-256);
    /// also accepts a checkpoint written without one.
    #[arg(long, requires = "resume")]
    no_verify: bool,
    /// Evaluate instead of training: the held-out loss of every domain of the recipe's
    /// validation split (its first `train.eval_batches` batches each), with the routing each
    /// domain's tokens got, as one JSON object on stdout. Evaluates the model the recipe starts
    /// from, or with `--resume` the newest checkpoint of its output directory; `--set
    /// router.mode=… --set router.top_k=…` evaluates it under another router.
    #[arg(long, conflicts_with = "dry_run")]
    eval_only: bool,
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
    if args.dry_run {
        return dry_run(&recipe, &origin);
    }
    let mut trainer =
        Trainer::new(recipe.clone()).with_context(|| format!("preparing {origin}"))?;
    if args.eval_only {
        return eval_only(&mut trainer, &recipe, &origin, &args);
    }
    let budget = trainer.budget();
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
        no_verify: args.no_verify,
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

/// `--eval-only`: held-out loss and routing per domain, as JSON.
fn eval_only(trainer: &mut Trainer, recipe: &Recipe, origin: &str, args: &TrainArgs) -> Result<()> {
    let step = if args.resume {
        let found = trainer.resume_latest_with(!args.no_verify)?;
        if found.is_none() {
            anyhow::bail!(
                "--resume: no checkpoint in {} to evaluate",
                recipe.output_dir().display()
            );
        }
        found
    } else {
        None
    };
    let domains = trainer
        .evaluate()
        .with_context(|| format!("evaluating {origin}"))?;
    let (sum, tokens) = domains.iter().fold((0.0, 0usize), |(s, n), d| {
        (s + d.loss * d.tokens as f64, n + d.tokens)
    });
    let router = crate::common::describe_routing(trainer.model());
    let report = serde_json::json!({
        "recipe": origin,
        "checkpoint": recipe.model.checkpoint,
        "checkpoint_step": step,
        "router": router,
        "loss": (tokens > 0).then(|| sum / tokens as f64),
        "tokens": tokens,
        "domains": domains,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `--dry-run`: the resolved recipe and the run's cost. When the run cannot be built here (a
/// backend not compiled in, a checkpoint or corpus not fetched yet, a model too large for this
/// machine's memory), the cost is counted from the recipe and the model's config.json, followed
/// by what is missing; other errors stay errors.
fn dry_run(recipe: &Recipe, origin: &str) -> Result<()> {
    println!("# resolved recipe ({origin})\n{}", recipe.to_toml());
    let missing = missing_to_run(recipe);
    let error = match Trainer::new(recipe.clone()) {
        Ok(trainer) => {
            println!("# budget");
            print_budget(recipe, &trainer.budget(), &trainer.memory_estimate());
            return Ok(());
        }
        Err(e) if missing.is_empty() => {
            return Err(e).with_context(|| format!("preparing {origin}"));
        }
        Err(e) => e,
    };
    println!("# budget (from the recipe and the model's config.json; the model was not built)");
    match planned_config(recipe) {
        Ok((config, from)) => {
            println!("# parameters counted from {from}");
            let budget =
                Budget::planned(recipe, &config).with_context(|| format!("planning {origin}"))?;
            let shape = StepShape::of(recipe, &config);
            print_budget(recipe, &budget, &memory::estimate(&config, &budget, &shape));
        }
        Err(why) => {
            println!("# parameters unknown: {why}");
            if let Some(steps) = recipe.train.steps {
                println!("steps = {steps}");
            }
            println!("tokens_per_step = {}", recipe.tokens_per_step());
        }
    }
    let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
    println!("# missing to run (relative paths are read from {cwd}):");
    for m in &missing {
        println!("#   - {m}");
    }
    tracing::warn!("dry run only: this recipe cannot run here yet ({error})");
    Ok(())
}

/// The budget lines of a dry run, with the predicted memory of one device.
fn print_budget(recipe: &Recipe, budget: &Budget, memory: &MemoryEstimate) {
    println!("parameters_total = {}", budget.params_total);
    println!("parameters_active_per_token = {}", budget.params_active);
    println!("parameters_trainable = {}", budget.params_trainable);
    println!("steps = {}", budget.steps);
    println!("tokens_per_step = {}", budget.tokens_per_step);
    println!("tokens_total = {}", budget.total_tokens);
    // Three significant digits or so, for a 7 B model and a test fixture alike.
    let gb = |bytes: f64| {
        let gb = bytes / 1e9;
        let decimals = if gb >= 10.0 {
            1
        } else if gb >= 1.0 {
            2
        } else {
            4
        };
        format!("{gb:.decimals$}")
    };
    println!(
        "training_memory_gb = {} # weights, gradients, AdamW state",
        gb(memory.weights + memory.optimizer)
    );
    println!(
        "activation_memory_gb = {} # kept for backward: {} rows x {} tokens per device",
        gb(memory.activations),
        recipe.batch.micro_batch_size,
        recipe.data.seq_len
    );
    println!(
        "peak_memory_gb = {} # per device: the above + the largest working set",
        gb(memory.peak())
    );
}

/// The model config a recipe trains: its `[model.config]`, or its checkpoint's config.json.
fn planned_config(recipe: &Recipe) -> Result<(MoeTransformerConfig, String), String> {
    if let Some(dir) = &recipe.model.checkpoint {
        let path = dir.join("config.json");
        let config = MoeTransformerConfig::from_file(&path).map_err(|e| e.to_string())?;
        return Ok((config, path.display().to_string()));
    }
    let table = recipe.model.config.clone().unwrap_or_default();
    let json = serde_json::to_string(&table).map_err(|e| e.to_string())?;
    let config =
        MoeTransformerConfig::from_json_str(&json, "[model.config]").map_err(|e| e.to_string())?;
    Ok((config, "[model.config]".into()))
}

/// What this machine lacks to run `recipe`: the backend, the checkpoint's weights, the
/// tokenizer, the corpora.
fn missing_to_run(recipe: &Recipe) -> Vec<String> {
    let mut missing = Vec::new();
    if !recipe.backend.is_compiled() {
        missing.push(format!(
            "backend `{b}`: not compiled into this binary (rebuild with `--features {b}`)",
            b = recipe.backend
        ));
    }
    if let Some(dir) = &recipe.model.checkpoint {
        let has_weights = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name == "model.bpk" || name.ends_with(".safetensors")
            });
        if !dir.join("config.json").is_file() {
            missing.push(format!(
                "checkpoint {}: no config.json (convert it first: seqtopk convert import --hf <HF dir> --out {})",
                dir.display(),
                dir.display()
            ));
        } else if !has_weights {
            missing.push(format!(
                "checkpoint {}: config.json but no weights (model.bpk or *.safetensors)",
                dir.display()
            ));
        }
    }
    if !recipe.data.tokenizer.is_file() {
        missing.push(format!("tokenizer {}", recipe.data.tokenizer.display()));
    }
    for source in &recipe.data.sources {
        if !source.path.exists() {
            missing.push(format!(
                "data source {} (the corpora: bash tools/fetch-corpora.sh)",
                source.path.display()
            ));
        }
    }
    missing
}
