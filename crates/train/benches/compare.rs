//! This project against PyTorch (transformers 5 + torch), in one run, on the same shapes, with
//! the same number of threads: training-step time, peak memory and page faults; TopK vs SeqTopK;
//! the kernels one MoE layer launches for E = 16 and E = 64; the model step on wgpu.
//!
//! ```text
//! cargo bench --workspace --features seqtopk-backend/wgpu --bench compare [-- --quick]
//! ```
//!
//! Plain `cargo bench` builds the release profile users run (`cargo run --release`); add
//! `--profile dev` to reuse the test build instead (slower code; the run says which it is).
//!
//! Cases (each side of each case in its own process, so its peak resident memory is its own; the
//! SeqTopK/TopK time ratio comes from a further process that alternates their steps, so that
//! load from elsewhere on a shared machine falls on both alike):
//! - (a) model step: OLMoE hidden 256, 4 layers, 16 experts of 128, K 4, vocab 4096, `[4, 512]`;
//!   forward, next-token cross-entropy (the trainer's chunked LM-head loss) + 0.01 × load
//!   balancing, backward (no optimiser).
//! - (b) whole trainer step (forward, backward, global-norm clipping, AdamW): ours through the real
//!   [`Trainer`] on the tiny recipe and on the tiny recipe widened to hidden 256, 4 layers,
//!   16 experts, K 4, `[4, 512]` (vocabulary 50304 in both); PyTorch with the same config,
//!   `clip_grad_norm_` and `torch.optim.AdamW`.
//! - (c) one OLMoE-1B-7B MoE layer (hidden 2048, 64 experts of 1024, K 8) on 512 tokens, forward
//!   and backward: ours is `SparseMoe::forward` of a one-layer model; PyTorch is
//!   `OlmoeSparseMoeBlock`.
//!
//! PyTorch runs every case with both of transformers 5's CPU experts implementations (`eager`, a
//! loop over experts, and `grouped_mm`); the ratio is against the faster. A PyTorch run whose
//! warm-up step alone exceeds 60 s reports that one step. The PyTorch side is
//! `tools/bench/torch_bench.py`, run by `$SEQTOPK_TORCH_PYTHON`, else `tools/fixtures/.venv` (made
//! by `tools/fixtures/setup-venv.sh`); without it only our side runs.
//!
//! Operation counts are the kernels the wgpu backend launches, observed through CubeCL's launch
//! hook ([`LaunchObserver`]), for one MoE layer's forward and backward after a warm-up pass; they
//! need the wgpu backend and an adapter (Mesa's software driver does).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Distribution, Tensor};
use cubecl_runtime::logging::{LaunchObservation, LaunchObserver};
use seqtopk_backend::Backend;
use seqtopk_model::{Ffn, MoeTransformer, MoeTransformerConfig, RouteCall, next_token_targets};
use seqtopk_router::{LbConvention, RouterConfig, RoutingMode, TokenLayout, load_balancing_loss};
use seqtopk_train::{DEFAULT_RECIPE, Recipe, Trainer};
use serde_json::{Value, json};

// What users get: the `seqtopk` binary uses the same allocator.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: seqtopk_alloc::MiMalloc = seqtopk_alloc::MiMalloc;

const CASE_ENV: &str = "SEQTOPK_COMPARE_CASE";
/// Threads for both sides (the project's machines have 2 cores).
const THREADS: usize = 2;
const AUX_COEF: f64 = 0.01;
/// PyTorch runs whose warm-up step takes longer than this report that one step.
const TORCH_CAP_S: f64 = 60.0;

fn main() -> Result<()> {
    #[cfg(not(feature = "system-allocator"))]
    seqtopk_alloc::keep_freed_memory();
    let quick = std::env::args().any(|a| a == "--quick");
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))?;
    if let Ok(spec) = std::env::var(CASE_ENV) {
        let spec: Value = serde_json::from_str(&spec)?;
        println!("{}", run_case(&spec)?);
        return Ok(());
    }
    let python = torch_python();
    let shapes = Shapes::new(quick);
    println!(
        "ours: {} build",
        if cfg!(debug_assertions) {
            "dev-profile (debug assertions on; the README's commands build release)"
        } else {
            "release-profile (as the README's commands build)"
        }
    );
    println!(
        "{THREADS} threads each side; median of {} steps after {} warm-up; peak = VmHWM of the \
         case's process; faults = per timed step",
        shapes.steps, shapes.warmup
    );
    match &python {
        Ok(p) => println!("PyTorch: {}", torch_versions(p)),
        Err(why) => println!("PyTorch side skipped: {why}"),
    }
    print_header();

    // (a) the model step.
    let model_cfg = model_config(4096, 256, 4, 16, 4);
    let (b, t) = shapes.model;
    let ours = |mode: &str| {
        json!({"kind": "model", "mode": mode, "backend": "cpu", "config": model_cfg,
               "batch": b, "seq": t, "warmup": shapes.warmup, "steps": shapes.steps})
    };
    let torch = |p: &Path, dir: &Path| -> Result<(PathBuf, Vec<String>)> {
        let cfg = write_config(dir, "model.json", &model_cfg)?;
        let args = vec![
            "model".into(),
            format!("--config={}", cfg.display()),
            format!("--batch={b}"),
            format!("--seq={t}"),
        ];
        Ok((p.to_path_buf(), args))
    };
    compare(
        &format!("(a) model step H256 L4 E16 K4 V4096 [{b}, {t}]"),
        &ours,
        python.as_deref().ok().map(|p| torch(p, &temp_dir())),
        &shapes,
    );

    // (b) whole trainer steps.
    for which in ["tiny", "wide"] {
        let recipe = trainer_recipe(which, "topk", &shapes)?;
        let cfg = torch_model_config(&recipe)?;
        let (b, t) = (recipe.batch.micro_batch_size, recipe.data.seq_len);
        let o = recipe.optimizer.clone();
        let ours = |mode: &str| {
            json!({"kind": "trainer", "which": which, "mode": mode,
                   "warmup": shapes.warmup, "steps": shapes.steps, "quick": quick})
        };
        let torch = |p: &Path, dir: &Path| -> Result<(PathBuf, Vec<String>)> {
            let path = write_config(dir, &format!("{which}.json"), &cfg)?;
            Ok((
                p.to_path_buf(),
                vec![
                    "trainer".into(),
                    format!("--config={}", path.display()),
                    format!("--batch={b}"),
                    format!("--seq={t}"),
                    format!("--lr={}", o.lr),
                    "--betas".into(),
                    o.betas[0].to_string(),
                    o.betas[1].to_string(),
                    format!("--eps={}", o.eps),
                    format!("--weight-decay={}", o.weight_decay),
                    format!("--max-grad-norm={}", o.max_grad_norm),
                ],
            ))
        };
        let label = match which {
            "tiny" => format!("(b) trainer step, tiny recipe [{b}, {t}]"),
            _ => format!("(b) trainer step H256 L4 E16 K4 V50304 [{b}, {t}]"),
        };
        compare(
            &label,
            &ours,
            python.as_deref().ok().map(|p| torch(p, &temp_dir())),
            &shapes,
        );
    }

    // (c) one OLMoE-1B-7B MoE layer.
    let l = shapes.layer;
    let ours = |mode: &str| {
        json!({"kind": "layer", "mode": mode, "hidden": l.hidden, "experts": l.experts,
               "inter": l.inter, "k": l.k, "seq": l.seq,
               "warmup": shapes.warmup, "steps": shapes.steps})
    };
    let torch = |p: &Path| -> Result<(PathBuf, Vec<String>)> {
        Ok((
            p.to_path_buf(),
            vec![
                "layer".into(),
                format!("--hidden={}", l.hidden),
                format!("--experts={}", l.experts),
                format!("--inter={}", l.inter),
                format!("--top-k={}", l.k),
                format!("--seq={}", l.seq),
            ],
        ))
    };
    compare(
        &format!(
            "(c) MoE layer H{} E{} I{} K{}, T {}",
            l.hidden, l.experts, l.inter, l.k, l.seq
        ),
        &ours,
        python.as_deref().ok().map(torch),
        &shapes,
    );

    // Kernel launches of one MoE layer, and the model step on wgpu.
    println!();
    let wgpu = Backend::Wgpu.device(0);
    match wgpu {
        Err(e) => println!("wgpu: skipped ({e}); operation counts need it"),
        Ok(_) => {
            op_counts(&shapes);
            wgpu_step(&shapes);
        }
    }
    let _ = std::fs::remove_dir_all(temp_dir());
    Ok(())
}

/// Step counts and shapes: the issue's, or a smoke run's.
struct Shapes {
    warmup: usize,
    steps: usize,
    model: (usize, usize),
    layer: LayerShape,
    /// Tokens for the MoE-layer operation count.
    ops_seq: usize,
    /// `[B, T]` of the model step on wgpu (the software driver is slow: a small batch).
    wgpu_model: (usize, usize),
}

#[derive(Clone, Copy)]
struct LayerShape {
    hidden: usize,
    experts: usize,
    inter: usize,
    k: usize,
    seq: usize,
}

impl Shapes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                warmup: 1,
                steps: 1,
                model: (1, 64),
                layer: LayerShape {
                    hidden: 256,
                    experts: 64,
                    inter: 128,
                    k: 8,
                    seq: 64,
                },
                ops_seq: 256,
                wgpu_model: (1, 32),
            }
        } else {
            Self {
                // PyTorch's first two steps are slow (allocator and oneDNN warm-up).
                warmup: 2,
                steps: 3,
                model: (4, 512),
                layer: LayerShape {
                    hidden: 2048,
                    experts: 64,
                    inter: 1024,
                    k: 8,
                    seq: 512,
                },
                ops_seq: 512,
                wgpu_model: (1, 128),
            }
        }
    }
}

/// An HF OLMoE `config.json` (expert width hidden/2, heads of 64).
fn model_config(vocab: usize, hidden: usize, layers: usize, experts: usize, k: usize) -> Value {
    json!({"model_type": "olmoe", "vocab_size": vocab, "hidden_size": hidden,
           "intermediate_size": hidden / 2, "num_hidden_layers": layers,
           "num_attention_heads": hidden / 64, "num_key_value_heads": hidden / 64,
           "num_experts": experts, "num_experts_per_tok": k, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "max_position_embeddings": 4096, "norm_topk_prob": false,
           "router_aux_loss_coef": AUX_COEF, "output_router_logits": true,
           "tie_word_embeddings": false, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
}

/// The default (tiny) recipe, or that recipe widened to the issue's config.
fn trainer_recipe(which: &str, mode: &str, shapes: &Shapes) -> Result<Recipe> {
    let mut overrides = vec![
        format!("router.mode=\"{mode}\""),
        format!("train.steps={}", shapes.warmup + shapes.steps + 1),
        "schedule.warmup_steps=1".to_owned(),
    ];
    if which == "wide" {
        let seq = if shapes.steps == 1 { 128 } else { 512 };
        overrides.extend([
            "model.config.hidden_size=256".to_owned(),
            "model.config.intermediate_size=128".to_owned(),
            "model.config.num_hidden_layers=4".to_owned(),
            "model.config.num_experts=16".to_owned(),
            "model.config.num_experts_per_tok=4".to_owned(),
            "router.top_k=4".to_owned(),
            format!("data.seq_len={seq}"),
        ]);
    }
    Ok(Recipe::parse(DEFAULT_RECIPE, "default", &overrides)?)
}

/// The recipe's model as an HF config for PyTorch, with the load-balancing loss switched on as
/// the recipe has it (`router_aux_loss_coef` is the recipe's coefficient).
fn torch_model_config(recipe: &Recipe) -> Result<Value> {
    let table = recipe
        .model
        .config
        .clone()
        .context("recipe without model.config")?;
    let mut cfg = serde_json::to_value(table)?;
    let coef = recipe
        .router
        .as_ref()
        .filter(|r| r.load_balance.convention != LbConvention::None)
        .map_or(0.0, |r| r.load_balance.coef);
    cfg["router_aux_loss_coef"] = json!(coef);
    cfg["output_router_logits"] = json!(coef > 0.0);
    Ok(cfg)
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("seqtopk-compare-{}", std::process::id()))
}

fn write_config(dir: &Path, name: &str, cfg: &Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, cfg.to_string())?;
    Ok(path)
}

fn print_header() {
    println!(
        "\n{:<48} {:<20} {:>8} {:>10} {:>9} {:>9} {:>11} {:>7}",
        "case",
        "implementation",
        "router",
        "ms/step",
        "tokens/s",
        "peak MiB",
        "minflt/step",
        "majflt"
    );
}

fn print_row(case: &str, imp: &str, router: &str, r: &Value) {
    let ms = r["median_ms"].as_f64().unwrap_or(f64::NAN);
    let tokens = r["tokens"].as_f64().unwrap_or(f64::NAN);
    let note = if r["capped"].as_bool() == Some(true) {
        "  (1 step: warm-up over the cap)"
    } else {
        ""
    };
    println!(
        "{case:<48} {imp:<20} {router:>8} {ms:>10.1} {:>9.0} {:>9.0} {:>11.0} {:>7.0}{note}",
        tokens / (ms / 1e3),
        r["peak_mib"].as_f64().unwrap_or(f64::NAN),
        r["minflt_per_step"].as_f64().unwrap_or(f64::NAN),
        r["majflt_per_step"].as_f64().unwrap_or(f64::NAN),
    );
}

/// Runs our TopK and SeqTopK and PyTorch's implementations of one case and prints their rows
/// and ratios.
fn compare(
    case: &str,
    ours: &dyn Fn(&str) -> Value,
    torch: Option<Result<(PathBuf, Vec<String>)>>,
    shapes: &Shapes,
) {
    let mut ms = Vec::new();
    for mode in ["topk", "seqtopk"] {
        match run_ours(&ours(mode)) {
            Ok(r) => {
                print_row(case, "seqtopk (ours)", mode, &r);
                ms.push((mode, r["median_ms"].as_f64().unwrap_or(f64::NAN)));
            }
            Err(e) => println!("{case:<48} seqtopk (ours) {mode}: failed: {e:#}"),
        }
    }
    let mut best: Option<(String, f64)> = None;
    let mut torch_cmd = None;
    match torch {
        None => {}
        Some(Err(e)) => println!("{case:<48} PyTorch: failed: {e:#}"),
        Some(Ok((python, args))) => {
            for imp in ["eager", "grouped_mm"] {
                match run_torch(&python, &args, imp, shapes) {
                    Ok(r) => {
                        print_row(case, &format!("PyTorch {imp}"), "topk", &r);
                        let t = r["median_ms"].as_f64().unwrap_or(f64::NAN);
                        if best.as_ref().is_none_or(|(_, b)| t < *b) {
                            best = Some((imp.to_owned(), t));
                        }
                    }
                    Err(e) => println!("{case:<48} PyTorch {imp}: failed: {e:#}"),
                }
            }
            torch_cmd = Some((python, args));
        }
    }
    let mut summary = Vec::new();
    let mut vs_torch = None;
    if let (Some((imp, torch_ms)), Some((python, args))) = (&best, torch_cmd) {
        let first = ms.iter().find(|(mode, _)| *mode == "topk");
        let first = first.map(|(_, m)| torch_ms / m);
        match ours_over_torch(ours, (&python, &args, imp), first, shapes) {
            Ok(ratios) => {
                let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                let median = common::median(ratios);
                summary.push(format!(
                    "ours topk/PyTorch {imp} throughput {median:.2} (median of rounds {})",
                    listed.join(", ")
                ));
                vs_torch = Some((imp, median));
            }
            Err(e) => println!("{case:<48} ours/PyTorch rounds: failed: {e:#}"),
        }
    }
    // More steps than the per-mode runs: the ratio is the median of per-pair ratios.
    let mut paired = ours("pair");
    paired["steps"] = json!(3 * shapes.steps);
    match run_ours(&paired) {
        Ok(r) => {
            let ratio = r["seqtopk_over_topk"].as_f64().unwrap_or(f64::NAN);
            summary.push(format!(
                "seqtopk/topk time {ratio:.3} (steps alternated in one process)"
            ));
            if let Some((imp, topk)) = vs_torch {
                summary.push(format!("so ours seqtopk/PyTorch {imp} {:.2}", topk / ratio));
            }
        }
        Err(e) => println!("{case:<48} seqtopk (ours) paired: failed: {e:#}"),
    }
    if !summary.is_empty() {
        println!("{:<48} -> {}", "", summary.join("; "));
    }
}

/// Rounds of ours (TopK) against PyTorch's best implementation.
const ROUNDS: usize = 3;

/// Our TopK throughput over PyTorch's (`torch`: python, arguments, its fastest implementation
/// here) in `ROUNDS` rounds of our process then PyTorch's, `first` being the round whose rows
/// were printed. One such pair of processes moved this ratio by ±25 % between runs on a shared
/// machine; the median of adjacent pairs is what to read.
fn ours_over_torch(
    ours: &dyn Fn(&str) -> Value,
    (python, args, imp): (&Path, &[String], &str),
    first: Option<f64>,
    shapes: &Shapes,
) -> Result<Vec<f64>> {
    let mut ratios: Vec<f64> = first.into_iter().collect();
    while ratios.len() < ROUNDS {
        let ours = run_ours(&ours("topk"))?["median_ms"].as_f64();
        let torch = run_torch(python, args, imp, shapes)?["median_ms"].as_f64();
        ratios.push(torch.unwrap_or(f64::NAN) / ours.unwrap_or(f64::NAN));
    }
    Ok(ratios)
}

/// Runs one of our cases in a child process and returns its JSON line.
fn run_ours(spec: &Value) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .env(CASE_ENV, spec.to_string())
        .env("RAYON_NUM_THREADS", THREADS.to_string())
        .output()?;
    parse_last_line(&out, "our case")
}

fn run_torch(python: &Path, args: &[String], imp: &str, shapes: &Shapes) -> Result<Value> {
    let out = Command::new(python)
        .arg("tools/bench/torch_bench.py")
        .args(args)
        .arg(format!("--experts-impl={imp}"))
        .arg(format!("--warmup={}", shapes.warmup))
        .arg(format!("--steps={}", shapes.steps))
        .arg(format!("--threads={THREADS}"))
        .arg(format!("--cap-s={TORCH_CAP_S}"))
        .output()?;
    parse_last_line(&out, "torch_bench.py")
}

fn parse_last_line(out: &std::process::Output, what: &str) -> Result<Value> {
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        bail!(
            "{what} exited with {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))
}

/// The Python that runs PyTorch, if one imports torch and transformers.
fn torch_python() -> Result<PathBuf> {
    let python = match std::env::var_os("SEQTOPK_TORCH_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("tools/fixtures/.venv/bin/python"),
    };
    let ok = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output()
        .with_context(|| {
            format!(
                "{} (set SEQTOPK_TORCH_PYTHON or run tools/fixtures/setup-venv.sh)",
                python.display()
            )
        })?;
    if !ok.status.success() {
        bail!("{} cannot import torch and transformers", python.display());
    }
    Ok(python)
}

fn torch_versions(python: &Path) -> String {
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, transformers; print(f'torch {torch.__version__}, transformers \
             {transformers.__version__}')",
        ])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Counts kernel launches (CubeCL backends only; nothing on the CPU backend).
#[derive(Default)]
struct Launches(AtomicUsize);

impl LaunchObserver for Launches {
    fn launched(&self, _kernel: &'static str) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Launches {
    fn take(&self) -> usize {
        self.0.swap(0, Ordering::Relaxed)
    }
}

/// Times `step(mode)` (which must leave the device idle) for the case's routing modes and
/// measures faults and launches around it. With both modes (`"mode": "pair"`) the steps
/// alternate in ABBA order, so that the machine's load falls on TopK and SeqTopK alike, and
/// the result adds the median of the per-pair SeqTopK/TopK time ratios.
fn timed(
    spec: &Value,
    tokens: usize,
    mut step: impl FnMut(RoutingMode) -> Result<()>,
) -> Result<Value> {
    let (warmup, steps) = (usize_of(spec, "warmup")?, usize_of(spec, "steps")?);
    let modes = modes_of(spec)?;
    for _ in 0..warmup {
        for &mode in &modes {
            step(mode)?;
        }
    }
    let launches = Arc::new(Launches::default());
    let (min0, maj0) = common::faults();
    let observing = LaunchObservation::new(launches.clone());
    let mut times = vec![Vec::new(); modes.len()];
    for s in 0..steps {
        let order: Vec<usize> = match s % 2 {
            0 => (0..modes.len()).collect(),
            _ => (0..modes.len()).rev().collect(),
        };
        for i in order {
            let start = Instant::now();
            step(modes[i])?;
            times[i].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    drop(observing);
    let (min1, maj1) = common::faults();
    let n = (steps * modes.len()) as f64;
    let mut out = json!({
        "tokens": tokens,
        "peak_mib": common::peak_mib(),
        "minflt_per_step": (min1 - min0) as f64 / n,
        "majflt_per_step": (maj1 - maj0) as f64 / n,
        "launches_per_step": launches.take() as f64 / n,
    });
    for (mode, times) in modes.iter().zip(&times) {
        out[mode.name()] = json!({
            "median_ms": common::median(times.clone()),
            "times_ms": times,
        });
    }
    if let [topk, seqtopk] = &times[..] {
        let ratios = topk.iter().zip(seqtopk).map(|(t, s)| s / t).collect();
        out["seqtopk_over_topk"] = json!(common::median(ratios));
    } else {
        out["median_ms"] = out[modes[0].name()]["median_ms"].clone();
        out["times_ms"] = out[modes[0].name()]["times_ms"].clone();
    }
    Ok(out)
}

/// The routing modes a case times: its `mode`, or both for `"pair"`.
fn modes_of(spec: &Value) -> Result<Vec<RoutingMode>> {
    Ok(match spec["mode"].as_str() {
        Some("pair") => vec![RoutingMode::Topk, RoutingMode::Seqtopk],
        _ => vec![mode_of(spec)?],
    })
}

fn mode_of(spec: &Value) -> Result<RoutingMode> {
    Ok(match spec["mode"].as_str() {
        Some("topk") => RoutingMode::Topk,
        Some("seqtopk") => RoutingMode::Seqtopk,
        other => bail!("unknown mode {other:?}"),
    })
}

fn usize_of(spec: &Value, key: &str) -> Result<usize> {
    spec[key]
        .as_u64()
        .map(|v| v as usize)
        .with_context(|| format!("case without {key}"))
}

fn device_of(spec: &Value) -> Result<Device> {
    let backend: Backend = spec["backend"].as_str().unwrap_or("cpu").parse()?;
    Ok(backend.device(0)?.autodiff())
}

fn run_case(spec: &Value) -> Result<Value> {
    match spec["kind"].as_str() {
        Some("model") => {
            let (b, t) = (usize_of(spec, "batch")?, usize_of(spec, "seq")?);
            let device = device_of(spec)?;
            let config = MoeTransformerConfig::from_json_str(&spec["config"].to_string(), "bench")?;
            let mut model = MoeTransformer::init(&config, 0, &device)?;
            let k = config.moe.as_ref().context("no MoE")?.num_experts_per_tok;
            let ids = tokens(b * t, config.vocab_size);
            let layout = TokenLayout::dense(b, t);
            let targets = next_token_targets(&ids, &layout);
            timed(spec, b * t, |mode| {
                model.set_routing(&RouterConfig::new(mode, k))?;
                // The trainer's loss path: the LM head and cross-entropy in row chunks.
                let out = model.forward_hidden(&ids, &layout, &device)?;
                let aux = load_balancing_loss(&out.router_outputs, &layout, LbConvention::Hf);
                let nll = model.target_nll(out.hidden, &targets)?;
                let ce = nll.sum / nll.positions.len() as f64;
                let grads = (ce + aux * AUX_COEF).backward();
                drop(grads);
                device.sync()?;
                Ok(())
            })
        }
        Some("trainer") => {
            let shapes = Shapes::new(spec["quick"].as_bool() == Some(true));
            let which = spec["which"].as_str().unwrap_or("tiny");
            let mut trainers = Vec::new();
            let mut tokens = 0;
            for mode in modes_of(spec)? {
                let recipe = trainer_recipe(which, mode.name(), &shapes)?;
                tokens = recipe.batch.micro_batch_size * recipe.data.seq_len;
                trainers.push((mode, Trainer::new(recipe)?));
            }
            timed(spec, tokens, |mode| {
                let (_, trainer) = trainers
                    .iter_mut()
                    .find(|(m, _)| *m == mode)
                    .context("no trainer for the mode")?;
                let m = trainer.step_once()?;
                anyhow::ensure!(m.tokens == tokens, "step had {} tokens", m.tokens);
                Ok(())
            })
        }
        Some("layer") => {
            let (mut moe_model, device) = one_layer_model(spec)?;
            let (h, t) = (usize_of(spec, "hidden")?, usize_of(spec, "seq")?);
            let k = usize_of(spec, "k")?;
            let layout = TokenLayout::dense(1, t);
            let x = Tensor::<3>::random([1, t, h], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            timed(spec, t, |mode| {
                moe_model.set_routing(&RouterConfig::new(mode, k))?;
                let (y, _) = moe_forward(&moe_model, x.clone(), &layout)?;
                drop(y.mean().backward());
                device.sync()?;
                Ok(())
            })
        }
        Some("ops") => op_count_case(spec),
        other => bail!("unknown case {other:?}"),
    }
}

/// A one-layer model whose only layer is the MoE layer to measure.
fn one_layer_model(spec: &Value) -> Result<(MoeTransformer, Device)> {
    let device = device_of(spec)?;
    let (h, e) = (usize_of(spec, "hidden")?, usize_of(spec, "experts")?);
    let (i, k) = (usize_of(spec, "inter")?, usize_of(spec, "k")?);
    let config = json!({
        "model_type": "olmoe", "vocab_size": 256, "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": 1, "num_attention_heads": (h / 128).max(1),
        "num_key_value_heads": (h / 128).max(1), "num_experts": e, "num_experts_per_tok": k,
        "norm_topk_prob": false, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": false
    });
    let config = MoeTransformerConfig::from_json_str(&config.to_string(), "bench")?;
    let mut model = MoeTransformer::init(&config, 0, &device)?;
    model.set_routing(&RouterConfig::new(modes_of(spec)?[0], k))?;
    Ok((model, device))
}

fn moe_forward(
    model: &MoeTransformer,
    x: Tensor<3>,
    layout: &TokenLayout,
) -> Result<(Tensor<3>, seqtopk_router::RouterOutput)> {
    let Ffn::Moe(moe) = &model.layers[0].mlp else {
        bail!("layer 0 is not an MoE layer");
    };
    let router = model.router().context("no router")?;
    Ok(moe.forward(x, router, layout, RouteCall::Full)?)
}

/// Kernels launched by one MoE layer's forward and its backward, after a warm-up pass.
fn op_count_case(spec: &Value) -> Result<Value> {
    let (model, device) = one_layer_model(spec)?;
    let (h, t) = (usize_of(spec, "hidden")?, usize_of(spec, "seq")?);
    let layout = TokenLayout::dense(1, t);
    let x = Tensor::<3>::random([1, t, h], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let (y, _) = moe_forward(&model, x.clone(), &layout)?;
    drop(y.mean().backward());
    device.sync()?;

    let launches = Arc::new(Launches::default());
    let observing = LaunchObservation::new(launches.clone());
    let (y, out) = moe_forward(&model, x.clone(), &layout)?;
    let loss = y.mean();
    device.sync()?;
    let forward = launches.take();
    drop(loss.backward());
    device.sync()?;
    let backward = launches.take();
    drop(observing);
    let active = out
        .plan
        .stats
        .tokens_per_expert
        .iter()
        .filter(|&&n| n > 0)
        .count();
    Ok(json!({"forward": forward, "backward": backward, "active_experts": active}))
}

/// Kernels one MoE layer launches on wgpu for E = 16 and E = 64 (same tokens, same K).
fn op_counts(shapes: &Shapes) {
    println!(
        "kernel launches of one MoE layer on wgpu (hidden 128, experts of 64, K 4, {} tokens; \
         the layer's own forward incl. router, and the backward of its mean)",
        shapes.ops_seq
    );
    println!(
        "{:>8} {:>8} {:>14} {:>9} {:>9} {:>7}",
        "experts", "router", "experts used", "forward", "backward", "total"
    );
    for experts in [16, 64] {
        for mode in ["topk", "seqtopk"] {
            let spec = json!({"kind": "ops", "backend": "wgpu", "mode": mode, "hidden": 128,
                              "experts": experts, "inter": 64, "k": 4, "seq": shapes.ops_seq,
                              "warmup": 0, "steps": 0});
            match run_ours(&spec) {
                Ok(r) => {
                    let (f, b) = (
                        r["forward"].as_u64().unwrap_or(0),
                        r["backward"].as_u64().unwrap_or(0),
                    );
                    let used = r["active_experts"].as_u64().unwrap_or(0);
                    println!(
                        "{experts:>8} {mode:>8} {used:>14} {f:>9} {b:>9} {:>7}",
                        f + b
                    );
                }
                Err(e) => println!("{experts:>8} {mode:>8} failed: {e:#}"),
            }
        }
    }
}

/// The model step (config (a)) on wgpu and on the CPU at a small batch: the software driver
/// runs kernels on the CPU, so the gap is mostly launch and synchronisation overhead.
fn wgpu_step(shapes: &Shapes) {
    let (b, t) = shapes.wgpu_model;
    let case = format!("model step (a) config, [{b}, {t}]");
    println!();
    print_header();
    let cfg = model_config(4096, 256, 4, 16, 4);
    let mut rows = Vec::new();
    for backend in ["cpu", "wgpu"] {
        for mode in ["topk", "seqtopk"] {
            let spec = json!({"kind": "model", "mode": mode, "backend": backend, "config": cfg,
                              "batch": b, "seq": t, "warmup": shapes.warmup,
                              "steps": shapes.steps});
            match run_ours(&spec) {
                Ok(r) => {
                    print_row(&case, &format!("seqtopk (ours) {backend}"), mode, &r);
                    rows.push((backend, mode, r));
                }
                Err(e) => println!("{case:<48} {backend} {mode}: failed: {e:#}"),
            }
        }
    }
    for (backend, mode, r) in &rows {
        if *backend == "wgpu" {
            println!(
                "{:<48} -> wgpu {mode}: {:.0} kernel launches per step",
                "", r["launches_per_step"]
            );
        }
    }
}

/// Deterministic token ids in `[3, vocab)`.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = seqtopk_rng::SplitMix64::new(0x5EED);
    (0..n).map(|_| 3 + rng.below(vocab - 3) as u32).collect()
}
