//! `eval --checkpoint DIR --tasks …`: downstream tasks under one routing setting, or several with
//! `--compare` (the paper-style router × K table).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use seqtopk_data::{ChatTemplate, ChatTemplateKind};
use seqtopk_eval::{
    ESFT_NOTE, EvalOptions, EvalReport, Lm, SandboxConfig, TaskId, compare_markdown, evaluate,
};
use seqtopk_router::{RouterConfig, RoutingMode};

use crate::common::ModelArgs;

/// Task evaluation options (boxed: they are many, and `eval loss` shares the enum).
#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(flatten)]
    options: Box<TaskOptions>,
}

/// The options themselves.
#[derive(Debug, Args)]
struct TaskOptions {
    /// Checkpoint directory (`config.json`, safetensors weights and `tokenizer.json`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Comma-separated tasks: gsm8k, math500, humaneval, mbpp, mmlu_law, esft_law,
    /// esft_summary, lambada, ppl, or `all`.
    #[arg(long, default_value = "all")]
    tasks: String,
    /// Score only the first N items of each task (per domain for `ppl`).
    #[arg(long)]
    limit: Option<usize>,
    /// New tokens per generation (default: per task, 256–512).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Directory with `{math,code,law,writing}/*.jsonl`: the committed samples or a full fetch
    /// (`data`).
    #[arg(long, default_value = "data/samples")]
    data_dir: PathBuf,
    /// Write the results as JSON here (else the JSON goes to stdout and the table to stderr).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Router settings to compare, `mode:K` comma-separated (e.g.
    /// `topk:2,seqtopk:2,online_seqtopk:2`; `mode` alone uses the checkpoint's K).
    #[arg(long)]
    compare: Option<String>,
    /// Write the router × K table as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Replace existing `--out` / `--markdown` files.
    #[arg(long)]
    overwrite: bool,
    /// Chat template around prompts: none (raw prompts), olmoe, tulu, chatml.
    #[arg(long, default_value = "none", value_parser = parse_template)]
    chat_template: ChatTemplateKind,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Context window in tokens (default: the checkpoint's `max_position_embeddings`).
    #[arg(long)]
    max_length: Option<usize>,
    /// Wall-clock limit per generated program, seconds.
    #[arg(long, default_value_t = 10.0)]
    code_timeout: f64,
    /// Address-space limit per generated program, MiB.
    #[arg(long, default_value_t = 1024)]
    code_memory_mb: u64,
    /// Generated programs run at once (default: up to 8, one per core).
    #[arg(long)]
    code_jobs: Option<usize>,
    /// Leave per-item records (generations, extracted answers) out of the JSON.
    #[arg(long)]
    no_items: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn parse_template(s: &str) -> Result<ChatTemplateKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown chat template `{s}` (expected none, olmoe, tulu or chatml)"))
}

fn parse_mode(s: &str) -> Result<RoutingMode> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        anyhow::anyhow!(
            "unknown routing mode `{s}` (expected topk, seqtopk, online_seqtopk, batch_topk or top_p)"
        )
    })
}

/// `topk:2,seqtopk:2` → [(topk, Some(2)), (seqtopk, Some(2))].
fn parse_compare(s: &str) -> Result<Vec<(RoutingMode, Option<usize>)>> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (mode, k) = match entry.split_once(':') {
            Some((m, k)) => {
                let k: usize = k.trim().parse().with_context(|| {
                    format!("--compare entry `{entry}`: K must be a positive integer")
                })?;
                ensure!(k > 0, "--compare entry `{entry}`: K must be at least 1");
                (m.trim(), Some(k))
            }
            None => (entry, None),
        };
        out.push((
            parse_mode(mode).with_context(|| format!("--compare entry `{entry}`"))?,
            k,
        ));
    }
    ensure!(!out.is_empty(), "--compare lists no router setting");
    Ok(out)
}

/// Fails before any work when `path` cannot receive the results: it exists (without
/// `--overwrite`), is a directory, or its directory cannot be created or written.
fn check_output(path: &Option<PathBuf>, overwrite: bool, flag: &str) -> Result<()> {
    let Some(p) = path else {
        return Ok(());
    };
    if p.is_dir() {
        bail!(
            "{flag} {} is a directory; give the path of a file to write",
            p.display()
        );
    }
    if p.exists() && !overwrite {
        bail!(
            "{flag} {} already exists (pass --overwrite to replace it)",
            p.display()
        );
    }
    // The same temporary file the results will go through, created and removed now.
    let tmp = temp_path(p)?;
    if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!("{flag} {}: cannot create {}", p.display(), parent.display())
        })?;
    }
    std::fs::write(&tmp, "")
        .with_context(|| format!("{flag} {}: cannot write there", p.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// The temporary sibling `path` is written through.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    Ok(path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Write `text` to a temporary file beside `path`, then rename it into place.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = temp_path(path)?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("renaming {} to {}: {e}", tmp.display(), path.display())
    })
}

/// A routing to evaluate under: its mode and K, and the config to apply (`None`: the
/// checkpoint's own).
type RoutingRun = (RoutingMode, Option<usize>, Option<RouterConfig>);

/// Runs `eval --tasks …`.
pub fn run(args: TaskArgs) -> Result<()> {
    let args = *args.options;
    let Some(checkpoint) = args.checkpoint.clone() else {
        bail!("eval needs --checkpoint DIR (or the `loss` subcommand)");
    };
    let tasks = TaskId::parse_list(&args.tasks)?;
    check_options(&args)?;
    let settings = args.compare.as_deref().map(parse_compare).transpose()?;
    check_output(&args.out, args.overwrite, "--out")?;
    check_output(&args.markdown, args.overwrite, "--markdown")?;

    let device = args.model.device.device()?;
    let mut loaded = args
        .model
        .verify
        .load(&checkpoint, &device, &args.model.precision)?;
    let tokenizer_path = loaded.tokenizer.clone().with_context(|| {
        format!(
            "checkpoint {} has no tokenizer.json beside its weights: copy the tokenizer the model was trained with there (for OLMoE: data/samples/tokenizers/olmoe/tokenizer.json)",
            checkpoint.display()
        )
    })?;
    let tokenizer = seqtopk_data::load_tokenizer(&tokenizer_path)?;
    let checkpoint_k = loaded
        .model
        .config()
        .moe
        .as_ref()
        .map(|m| m.num_experts_per_tok);
    let opts = eval_options(&args)?;
    let runs = routing_runs(&args, settings.as_deref(), &loaded, checkpoint_k)?;

    let mut reports = Vec::new();
    for (mode, k, config) in runs {
        if let Some(config) = &config {
            loaded
                .model
                .set_routing(config)
                .with_context(|| format!("applying router {mode} K={k:?}"))?;
        }
        let mut lm = Lm::new(&loaded.model, &tokenizer, &device);
        lm.batch_size = args.batch_size;
        if let Some(m) = args.max_length {
            lm.max_length = m;
        }
        tracing::info!(router = %mode, k = ?k, tasks = tasks.len(), "evaluating");
        let results = evaluate(&lm, &tasks, &opts)?;
        let mut report = EvalReport {
            checkpoint: checkpoint.display().to_string(),
            router: if config.is_none() && checkpoint_k.is_none() {
                "dense".to_string()
            } else {
                mode.to_string()
            },
            k,
            router_from_checkpoint: config.is_none(),
            data_dir: args.data_dir.display().to_string(),
            limit: args.limit,
            chat_template: serde_json::to_value(args.chat_template)?
                .as_str()
                .unwrap_or("none")
                .to_string(),
            results,
            average: None,
            notes: routing_notes(mode, &tasks),
        };
        report.update_average();
        reports.push(report);
    }
    write_reports(&reports, &args, settings.is_some())
}

/// Refuses options no evaluation can run with.
fn check_options(args: &TaskOptions) -> Result<()> {
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    ensure!(args.limit != Some(0), "--limit must be at least 1");
    ensure!(
        args.max_new_tokens != Some(0),
        "--max-new-tokens must be at least 1"
    );
    ensure!(
        args.code_timeout > 0.0 && args.code_timeout.is_finite(),
        "--code-timeout must be a positive number of seconds"
    );
    ensure!(args.code_jobs != Some(0), "--code-jobs must be at least 1");
    if let Some(m) = args.max_length {
        ensure!(m >= 2, "--max-length must be at least 2");
    }
    if args.compare.is_some()
        && (args.model.router.router.is_some() || args.model.router.k.is_some())
    {
        bail!("--compare lists the router settings itself: drop --router / --k");
    }
    Ok(())
}

/// The evaluation settings the options ask for.
fn eval_options(args: &TaskOptions) -> Result<EvalOptions> {
    let mut opts = EvalOptions {
        data_dir: args.data_dir.clone(),
        limit: args.limit,
        max_new_tokens: args.max_new_tokens,
        chat_template: (args.chat_template != ChatTemplateKind::None)
            .then(|| ChatTemplate::new(args.chat_template, None)),
        sandbox: SandboxConfig {
            timeout: std::time::Duration::from_secs_f64(args.code_timeout),
            cpu_seconds: args.code_timeout.ceil() as u64,
            memory_bytes: args.code_memory_mb << 20,
            ..SandboxConfig::default()
        },
        keep_items: !args.no_items,
        ..EvalOptions::default()
    };
    if let Some(j) = args.code_jobs {
        opts.sandbox_jobs = j;
    }
    Ok(opts)
}

/// The routings to evaluate under: each `--compare` entry, else `--router`/`--k`, else the
/// checkpoint's own (recorded by `seqtopk train`, else per-token top-K).
fn routing_runs(
    args: &TaskOptions,
    settings: Option<&[(RoutingMode, Option<usize>)]>,
    loaded: &seqtopk_checkpoint::LoadedCheckpoint,
    checkpoint_k: Option<usize>,
) -> Result<Vec<RoutingRun>> {
    if let Some(list) = settings {
        return list
            .iter()
            .map(|&(mode, k)| {
                let k = k.or(checkpoint_k).with_context(|| {
                    format!("--compare entry `{mode}` needs a K: the checkpoint has no MoE layers")
                })?;
                let mut config = args.model.router.config(mode, k);
                // One `--online-budget` serves the online entry of the list only.
                if mode != RoutingMode::OnlineSeqtopk {
                    config.online_budget = None;
                }
                Ok((mode, Some(k), Some(config)))
            })
            .collect();
    }
    if let Some(config) = args.model.router.resolve(checkpoint_k)? {
        return Ok(vec![(config.mode, Some(config.top_k), Some(config))]);
    }
    let own = loaded
        .model
        .router()
        .map(|r| (r.config().mode, r.config().top_k));
    let origin = if loaded.routing.is_some() {
        "recorded in the checkpoint's config.json"
    } else {
        "the checkpoint's default"
    };
    if let Some((mode, k)) = own {
        tracing::info!("routing: {mode} K={k} ({origin})");
    }
    Ok(vec![(
        own.map_or(RoutingMode::Topk, |o| o.0),
        own.map(|o| o.1).or(checkpoint_k),
        None,
    )])
}

/// What a report must say about how `mode` routes `tasks`: ESFT's offline metric, and where
/// sequence-level routing is not causal (generation decodes token by token; log-likelihood
/// scoring sees the continuation).
fn routing_notes(mode: RoutingMode, tasks: &[TaskId]) -> Vec<String> {
    let mut notes = Vec::new();
    if tasks
        .iter()
        .any(|t| matches!(t, TaskId::EsftLaw | TaskId::EsftSummary))
    {
        notes.push(ESFT_NOTE.to_string());
    }
    let sequence_level = matches!(mode, RoutingMode::Seqtopk | RoutingMode::BatchTopk);
    let generates = |t: &TaskId| t.default_max_new_tokens() > 0;
    if sequence_level && tasks.iter().any(generates) {
        notes.push(format!(
            "{mode}: scoring passes route whole sequences; during generation each decode step is routed on its own (use online_seqtopk for causal sequence-level routing with the expert cache)"
        ));
    }
    if sequence_level && tasks.iter().any(|t| !generates(t)) {
        notes.push(format!(
            "{mode}: log-likelihood scoring is non-causal (a token's experts depend on later tokens, the scored continuation included); online_seqtopk scores causally, routing the context as generation's prefill would"
        ));
    }
    notes
}

/// Prints the reports (JSON on stdout and the table on stderr, or the table on stdout when
/// `--out` takes the JSON) and writes `--out` / `--markdown`.
fn write_reports(reports: &[EvalReport], args: &TaskOptions, compared: bool) -> Result<()> {
    let table: String = reports
        .iter()
        .map(EvalReport::table)
        .collect::<Vec<_>>()
        .join("\n");
    let json = if compared {
        serde_json::to_string_pretty(&serde_json::json!({ "runs": reports }))?
    } else {
        serde_json::to_string_pretty(&reports[0])?
    };
    let markdown = compare_markdown(reports);
    if let Some(path) = &args.markdown {
        write_atomic(path, &markdown)?;
        tracing::info!(path = %path.display(), "wrote the markdown table");
    }
    match &args.out {
        Some(path) => {
            write_atomic(path, &(json + "\n"))?;
            tracing::info!(path = %path.display(), "wrote the results");
            print!("{table}");
            if compared {
                println!("\n{markdown}");
            }
        }
        None => {
            println!("{json}");
            eprint!("{table}");
            if compared {
                eprintln!("\n{markdown}");
            }
        }
    }
    Ok(())
}
