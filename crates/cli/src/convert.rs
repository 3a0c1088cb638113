//! `convert`: HF ⇄ native checkpoints, dense → MoE upcycling, inspection, logit comparison.
//!
//! Results go to stdout as one JSON object (logs to stderr); `inspect` prints a readable summary
//! unless `--json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Args, Subcommand};
use seqtopk_checkpoint::{
    ExpertLayout, ExportOptions, ImportOptions, LoadedCheckpoint, SaveOptions, StorageDtype,
    UpcycleOptions, export_dir_with, export_hf, import_hf, inspect, load, save_native, upcycle,
    verify,
};
use seqtopk_model::MoeTransformer;
use seqtopk_router::TokenLayout;
use serde_json::json;

use crate::common::{DeviceArgs, VerifyArgs};

/// `convert` and its subcommands.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(subcommand)]
    command: ConvertCommand,
}

#[derive(Debug, Subcommand)]
enum ConvertCommand {
    /// HF checkpoint directory → native checkpoint directory (burnpack weights, config,
    /// tokenizer files, manifest with checksums).
    Import(ImportArgs),
    /// Checkpoint directory (native or HF) → HF directory that transformers loads.
    Export(ExportArgs),
    /// Dense Llama checkpoint → Mixtral-style MoE whose experts are copies of the dense MLP.
    Upcycle(UpcycleArgs),
    /// Show what a checkpoint directory or safetensors file holds.
    Inspect(InspectArgs),
    /// Largest |Δ logit| between two checkpoints on a few prompts.
    Compare(CompareArgs),
    /// Base checkpoint + LoRA adapter (PEFT format, e.g. a run's final/adapter) → one model
    /// with the adapter folded into its weights.
    Merge(MergeArgs),
}

/// `convert merge`.
#[derive(Debug, Args)]
struct MergeArgs {
    /// Base checkpoint directory (HF or native) the adapter was trained on.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Native output directory.
    #[arg(long, required_unless_present = "hf_out")]
    out: Option<PathBuf>,
    /// Hugging Face output directory.
    #[arg(long)]
    hf_out: Option<PathBuf>,
    /// Storage dtype (default: the base checkpoint's).
    #[arg(long)]
    dtype: Option<StorageDtype>,
    /// Replace existing outputs.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `convert import`.
#[derive(Debug, Args)]
struct ImportArgs {
    /// HF checkpoint directory (config.json + model.safetensors or shards).
    #[arg(long)]
    hf: PathBuf,
    /// Output directory, e.g. checkpoints/NAME.
    #[arg(long)]
    out: PathBuf,
    /// Storage dtype of the native weights (default: the source's).
    #[arg(long)]
    dtype: Option<StorageDtype>,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `convert export`.
#[derive(Debug, Args)]
struct ExportArgs {
    /// Checkpoint directory (native, e.g. from `convert import` or `train`, or HF).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output HF directory.
    #[arg(long)]
    hf_out: PathBuf,
    /// Write transformers-5 fused expert tensors instead of per-expert keys.
    #[arg(long)]
    fused: bool,
    /// Dtype of the written tensors (default: the checkpoint's).
    #[arg(long)]
    dtype: Option<StorageDtype>,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    verify: VerifyArgs,
}

/// `convert upcycle`.
#[derive(Debug, Args)]
struct UpcycleArgs {
    /// Dense Llama checkpoint directory (HF or native).
    #[arg(long)]
    hf: PathBuf,
    /// Routed experts per layer.
    #[arg(long)]
    experts: usize,
    /// Experts per token.
    #[arg(long)]
    top_k: usize,
    /// Native output directory (default: checkpoints/<dense name>-e<E>k<K>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write an HF directory here.
    #[arg(long)]
    hf_out: Option<PathBuf>,
    /// Standard deviation of the new router weights.
    #[arg(long, default_value_t = 0.02)]
    router_std: f32,
    /// Seed of the router initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Storage dtype (default: the dense checkpoint's).
    #[arg(long)]
    dtype: Option<StorageDtype>,
    /// Replace existing outputs.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `convert inspect`.
#[derive(Debug, Args)]
struct InspectArgs {
    /// Checkpoint directory (HF or native) or a .safetensors file.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also verify the SHA-256 of every file of a native checkpoint.
    #[arg(long)]
    verify: bool,
}

/// `convert compare`.
#[derive(Debug, Args)]
struct CompareArgs {
    /// First checkpoint directory (its tokenizer.json, if any, encodes the prompts).
    a: PathBuf,
    /// Second checkpoint directory.
    b: PathBuf,
    /// A prompt (repeatable); without one, a few built-in prompts are used.
    #[arg(long)]
    prompt: Vec<String>,
    /// Fail when the largest |Δ logit| exceeds this.
    #[arg(long)]
    max_diff: Option<f32>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Runs `convert`.
pub fn run(args: ConvertArgs) -> Result<()> {
    // Ctrl-C ends the process without destructors: remove half-written outputs first.
    ctrlc::set_handler(|| {
        seqtopk_checkpoint::remove_unfinished_outputs();
        eprintln!("interrupted: the unfinished output was removed");
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    match args.command {
        ConvertCommand::Import(a) => run_import(a),
        ConvertCommand::Export(a) => run_export(a),
        ConvertCommand::Upcycle(a) => run_upcycle(a),
        ConvertCommand::Inspect(a) => run_inspect(a),
        ConvertCommand::Compare(a) => run_compare(a),
        ConvertCommand::Merge(a) => run_merge(a),
    }
}

fn print(value: serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn run_import(args: ImportArgs) -> Result<()> {
    let device = args.device.device()?;
    let start = Instant::now();
    let manifest = import_hf(
        &args.hf,
        &args.out,
        &ImportOptions {
            dtype: args.dtype,
            force: args.force,
        },
        &device,
    )
    .with_context(|| format!("importing {}", args.hf.display()))?;
    print(json!({
        "out": args.out,
        "family": manifest.family,
        "dtype": manifest.dtype,
        "parameter_count": manifest.parameter_count,
        "files": manifest.files.len(),
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

fn run_export(args: ExportArgs) -> Result<()> {
    let device = args.device.device()?;
    let start = Instant::now();
    let layout = if args.fused {
        ExpertLayout::Fused
    } else {
        ExpertLayout::PerExpert
    };
    let tensors = export_dir_with(
        &args.checkpoint,
        &args.hf_out,
        layout,
        args.dtype,
        args.force,
        !args.verify.no_verify,
        &device,
    )
    .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    print(json!({
        "out": args.hf_out,
        "tensors": tensors,
        "layout": if args.fused { "fused" } else { "per-expert" },
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

fn run_upcycle(args: UpcycleArgs) -> Result<()> {
    let device = args.device.device()?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => {
            let name = args
                .hf
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("--hf has no directory name; pass --out")?;
            PathBuf::from("checkpoints").join(format!("{name}-e{}k{}", args.experts, args.top_k))
        }
    };
    refuse_existing(
        std::iter::once(&out).chain(args.hf_out.as_ref()),
        args.force,
    )?;
    let start = Instant::now();
    let dense = load(&args.hf, &device)
        .with_context(|| format!("loading the dense checkpoint {}", args.hf.display()))?;
    let loaded_s = start.elapsed().as_secs_f64();
    let options = UpcycleOptions {
        experts: args.experts,
        top_k: args.top_k,
        router_std: args.router_std,
        seed: args.seed,
    };
    let (model, config) = upcycle(&dense.model, &dense.hf_config, &options, &device)
        .with_context(|| format!("upcycling {}", args.hf.display()))?;
    let dtype = args.dtype.unwrap_or(dense.dtype);
    let source = format!(
        "upcycle:{} experts={} top_k={} router_std={} seed={}",
        std::fs::canonicalize(&args.hf)
            .unwrap_or_else(|_| args.hf.clone())
            .display(),
        args.experts,
        args.top_k,
        args.router_std,
        args.seed
    );
    let manifest = save_native(
        &model,
        &config,
        Some(&args.hf),
        &out,
        &SaveOptions {
            dtype,
            source,
            force: args.force,
        },
    )?;
    export_hf_to(
        &model,
        &config,
        &args.hf,
        args.hf_out.as_deref(),
        dtype,
        args.force,
    )?;
    print(json!({
        "out": out,
        "hf_out": args.hf_out,
        "experts": args.experts,
        "top_k": args.top_k,
        "dtype": manifest.dtype,
        "dense_parameter_count": dense.model.num_params(),
        "parameter_count": manifest.parameter_count,
        "load_seconds": loaded_s,
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

/// The `--hf-out` of `upcycle` and `merge`: `model` as an HF directory (tokenizer files from
/// `source`), when one was asked for.
fn export_hf_to(
    model: &MoeTransformer,
    config: &serde_json::Value,
    source: &Path,
    hf_out: Option<&Path>,
    dtype: StorageDtype,
    force: bool,
) -> Result<()> {
    if let Some(hf_out) = hf_out {
        let options = ExportOptions {
            dtype,
            force,
            ..ExportOptions::default()
        };
        export_hf(model, config, Some(source), hf_out, &options)?;
    }
    Ok(())
}

/// Refuses to start when an output exists and `--force` was not given.
fn refuse_existing<'a>(outputs: impl IntoIterator<Item = &'a PathBuf>, force: bool) -> Result<()> {
    for path in outputs {
        if !force && path.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; pass --force to replace it",
                path.display()
            );
        }
    }
    Ok(())
}

fn run_merge(args: MergeArgs) -> Result<()> {
    refuse_existing(args.out.iter().chain(&args.hf_out), args.force)?;
    let device = args.device.device()?;
    let start = Instant::now();
    let base = load(&args.checkpoint, &device)
        .with_context(|| format!("loading the base checkpoint {}", args.checkpoint.display()))?;
    let (adapted, spec) = seqtopk_checkpoint::peft::load_adapter(base.model, &args.adapter)
        .with_context(|| {
            format!(
                "applying the adapter {} to {}",
                args.adapter.display(),
                args.checkpoint.display()
            )
        })?;
    let adapters = adapted.clone().lora_factors().len();
    let merged = adapted.merge_lora();
    let dtype = args.dtype.unwrap_or(base.dtype);
    if let Some(out) = &args.out {
        let source = format!(
            "merge: {} + adapter {}",
            args.checkpoint.display(),
            args.adapter.display()
        );
        save_native(
            &merged,
            &base.hf_config,
            Some(&args.checkpoint),
            out,
            &SaveOptions {
                dtype,
                source,
                force: args.force,
            },
        )?;
    }
    export_hf_to(
        &merged,
        &base.hf_config,
        &args.checkpoint,
        args.hf_out.as_deref(),
        dtype,
        args.force,
    )?;
    print(json!({
        "out": args.out,
        "hf_out": args.hf_out,
        "adapters": adapters,
        "rank": spec.rank,
        "lora_alpha": spec.alpha,
        "modules_to_save": spec.modules_to_save,
        "dtype": dtype.name(),
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

fn run_inspect(args: InspectArgs) -> Result<()> {
    let report =
        inspect(&args.path).with_context(|| format!("inspecting {}", args.path.display()))?;
    let verified = if args.verify {
        if report.manifest.is_none() {
            bail!(
                "--verify needs a native checkpoint (with manifest.json); {} is {}",
                args.path.display(),
                report.format
            );
        }
        let m = verify(&args.path)?;
        Some(m.files.len())
    } else {
        None
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(n) = verified {
            value["verified_files"] = json!(n);
        }
        print(value)
    } else {
        let mut text = report.to_string();
        if let Some(n) = verified {
            text.push_str(&format!(
                "verified:   sha256 of {n} files matches the manifest\n"
            ));
        }
        // A closed pipe (`| head`) ends the listing quietly instead of panicking in `print!`.
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }
}

const DEFAULT_PROMPTS: [&str; 4] = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "Once upon a time, in a small village by the sea,",
    "Question: What is 12 + 30?\nAnswer:",
];

/// Token ids of `prompt`: the tokenizer's when there is one, else UTF-8 bytes folded into the
/// vocabulary (enough to compare two models on the same input).
fn encode(
    tokenizer: Option<&tokenizers::Tokenizer>,
    prompt: &str,
    vocab: usize,
) -> Result<Vec<u32>> {
    let ids = match tokenizer {
        Some(t) => t
            .encode(prompt, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {prompt:?}: {e}"))?
            .get_ids()
            .to_vec(),
        None => prompt
            .bytes()
            .map(|b| u32::from(b) % vocab as u32)
            .collect(),
    };
    if ids.is_empty() {
        bail!("prompt {prompt:?} encodes to no tokens");
    }
    Ok(ids)
}

fn logits(model: &MoeTransformer, ids: &[u32], device: &Device) -> Result<Vec<f32>> {
    let layout = TokenLayout::dense(1, ids.len());
    let out = model.forward(ids, &layout, device)?;
    out.logits
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))
}

fn load_timed(dir: &Path, device: &Device) -> Result<(LoadedCheckpoint, f64)> {
    let start = Instant::now();
    let c = load(dir, device).with_context(|| format!("loading {}", dir.display()))?;
    Ok((c, start.elapsed().as_secs_f64()))
}

/// The largest `|a − b|`, NaN when either side holds a NaN.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

/// The index of the largest logit of each `vocab`-wide row.
fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<usize> {
    logits
        .chunks(vocab)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |best, (i, &x)| if x > best.1 { (i, x) } else { best },
                )
                .0
        })
        .collect()
}

fn run_compare(args: CompareArgs) -> Result<()> {
    let device = args.device.device()?;
    let (a, a_s) = load_timed(&args.a, &device)?;
    let (b, b_s) = load_timed(&args.b, &device)?;
    let vocab = a.model.config().vocab_size;
    if b.model.config().vocab_size != vocab {
        bail!(
            "vocabularies differ: {} has {vocab}, {} has {}",
            args.a.display(),
            args.b.display(),
            b.model.config().vocab_size
        );
    }
    let tokenizer = match a.tokenizer.as_ref().or(b.tokenizer.as_ref()) {
        Some(path) => Some(
            seqtopk_data::load_tokenizer(path)
                .with_context(|| format!("loading {}", path.display()))?,
        ),
        None => None,
    };
    let prompts: Vec<String> = if args.prompt.is_empty() {
        DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect()
    } else {
        args.prompt.clone()
    };
    let mut rows = Vec::new();
    let mut worst = 0f32;
    let mut agree = 0;
    let mut positions = 0;
    for p in &prompts {
        let ids = encode(tokenizer.as_ref(), p, vocab)?;
        let la = logits(&a.model, &ids, &device)?;
        let lb = logits(&b.model, &ids, &device)?;
        let diff = max_abs_diff(&la, &lb);
        let (ta, tb) = (argmax_rows(&la, vocab), argmax_rows(&lb, vocab));
        let same = ta.iter().zip(&tb).filter(|(x, y)| x == y).count();
        agree += same;
        positions += ta.len();
        worst = if diff.is_nan() {
            f32::NAN
        } else {
            worst.max(diff)
        };
        rows.push(json!({
            "prompt": p,
            "tokens": ids.len(),
            "max_abs_diff": diff,
            "argmax_agreement": same as f64 / ta.len() as f64,
        }));
    }
    print(json!({
        "a": args.a,
        "b": args.b,
        "tokenizer": tokenizer.is_some(),
        "load_seconds": [a_s, b_s],
        "prompts": rows,
        "max_abs_diff": worst,
        "argmax_agreement": agree as f64 / positions as f64,
    }))?;
    if let Some(limit) = args.max_diff
        && (worst.is_nan() || worst > limit)
    {
        bail!("largest |Δ logit| {worst} exceeds --max-diff {limit}");
    }
    Ok(())
}
