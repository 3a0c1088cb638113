//! Training throughput and peak memory, TopK vs SeqTopK:
//! - the tiny default recipe (whole trainer step: forward, backward, clipping, AdamW);
//! - one OLMoE-1B-7B-shaped MoE layer (hidden 2048, 64 experts of 1024, K = 8), forward+backward;
//! - the tiny recipe again in each mixed precision (bf16, f16) the device supports;
//! - memory set-ups of the tiny recipe at `seq_len` 512 and 2048, and of the upcycled SmolLM2
//!   (`recipes/smollm2-e8k2-seqtopk-math.toml`) when its checkpoint is there: full fine-tuning
//!   and LoRA (r 16, attention + experts, router trained), f32 and bf16 (a LoRA base then stored
//!   in bf16), each without and with `train.recompute = "balanced"`, against the dry run's
//!   predicted peak (`--memory` runs these alone).
//!
//! Each case runs in its own child process so its peak resident memory (`VmHWM`) is its own; its
//! minor page faults per timed step (`/proc/self/stat`) say how much memory it takes fresh from
//! the OS each step. The bench runs on mimalloc, as the `seqtopk` binary does; add
//! `--features seqtopk-train/system-allocator` to measure glibc's malloc instead.
//! `cargo bench -p seqtopk-train --bench train [-- --quick] [--memory] [--backend wgpu|cuda]`; run from
//! anywhere. The tiny recipe's data paths are relative, so the bench runs from the repository root.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use seqtopk_backend::Backend;
use seqtopk_model::{MoeTransformer, MoeTransformerConfig};
use seqtopk_router::{RouterConfig, RoutingMode, TokenLayout};
use seqtopk_train::{DEFAULT_RECIPE, Precision, Recipe, Trainer};

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: seqtopk_alloc::CountingMiMalloc = seqtopk_alloc::CountingMiMalloc;

const CASE_ENV: &str = "SEQTOPK_BENCH_CASE";

fn main() {
    #[cfg(not(feature = "system-allocator"))]
    seqtopk_alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let backend = args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map_or("cpu", String::as_str)
        .to_owned();
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).unwrap();
    if let Ok(case) = std::env::var(CASE_ENV) {
        run_case(&case, &backend, quick);
        return;
    }
    let device: Backend = backend.parse().unwrap();
    let device = device.device(0).unwrap();
    if args.iter().any(|a| a == "--memory") {
        memory_setups(&device, &backend, quick);
        return;
    }
    let allocator = if cfg!(feature = "system-allocator") {
        "system"
    } else {
        "mimalloc"
    };
    println!(
        "backend: {backend}; allocator: {allocator}; peak memory = the case process's VmHWM \
         (host memory); faults per timed step"
    );
    println!(
        "{:<36} {:>8} {:>9} {:>12} {:>12} {:>10} {:>12} {:>7}",
        "case", "router", "precision", "tokens/s", "s/step", "peak MiB", "minflt/step", "majflt"
    );
    let mut cases: Vec<(&str, &str, Precision)> = Vec::new();
    for mode in ["topk", "seqtopk"] {
        cases.push(("tiny", mode, Precision::F32));
    }
    for precision in [Precision::Bf16, Precision::F16] {
        if precision.is_supported_by(&device) {
            cases.push(("tiny", "seqtopk", precision));
        }
    }
    for mode in ["topk", "seqtopk"] {
        cases.push(("olmoe_layer", mode, Precision::F32));
    }
    let mut rates: Vec<(&str, &str, Precision, f64)> = Vec::new();
    for (case, mode, precision) in cases {
        let Some(fields) = run_child(&format!("{case}:{mode}:{precision}:"), &backend, quick)
        else {
            continue;
        };
        let (tps, sps, peak, minflt, majflt) =
            (fields[0], fields[1], fields[2], fields[3], fields[4]);
        println!(
            "{:<36} {:>8} {:>9} {:>12.0} {:>12.3} {:>10.0} {:>12.0} {:>7.0}",
            label(case),
            mode,
            precision.to_string(),
            tps,
            sps,
            peak,
            minflt,
            majflt
        );
        rates.push((case, mode, precision, tps));
    }
    let rate = |case: &str, mode: &str, p: Precision| {
        rates
            .iter()
            .find(|r| r.0 == case && r.1 == mode && r.2 == p)
            .map(|r| r.3)
    };
    for case in ["tiny", "olmoe_layer"] {
        if let (Some(topk), Some(seqtopk)) = (
            rate(case, "topk", Precision::F32),
            rate(case, "seqtopk", Precision::F32),
        ) {
            println!(
                "{:<36} seqtopk/topk throughput = {:.3}",
                label(case),
                seqtopk / topk
            );
        }
    }
    for p in [Precision::Bf16, Precision::F16] {
        if let (Some(f32_rate), Some(half)) = (
            rate("tiny", "seqtopk", Precision::F32),
            rate("tiny", "seqtopk", p),
        ) {
            println!(
                "{:<36} {p}/f32 throughput = {:.3}",
                label("tiny"),
                half / f32_rate
            );
        }
    }
    memory_setups(&device, &backend, quick);
}

/// Runs one case in a child process; its printed fields, or `None` (reported) when it failed.
fn run_child(case: &str, backend: &str, quick: bool) -> Option<Vec<f64>> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CASE_ENV, case).args(["--backend", backend]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        eprintln!("{case} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(
        line.split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect(),
    )
}

/// The upcycled SmolLM2 recipe the memory set-ups also run when its checkpoint is at hand.
const SMOLLM2_RECIPE: &str = "recipes/smollm2-e8k2-seqtopk-math.toml";

/// Peak memory and throughput of full and LoRA fine-tuning, ± half precision and recomputation,
/// against the dry run's prediction: on the tiny recipe at two lengths, and on the upcycled
/// SmolLM2 (692 M parameters) when `tools/fetch-corpora.sh` and `convert upcycle` have made it.
fn memory_setups(device: &burn::tensor::Device, backend: &str, quick: bool) {
    println!(
        "\n{:<8} {:<10} {:>5} {:>6} {:>9} {:>11} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "model",
        "setup",
        "seq",
        "prec",
        "recompute",
        "trainable",
        "tokens/s",
        "RSS MiB",
        "allocated",
        "predicted",
        "ratio"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let smollm2 = root.join(SMOLLM2_RECIPE);
    let checkpoint = root.join("checkpoints/smollm2-135m-e8k2/model.bpk");
    let mut models: Vec<(&str, Option<&Path>, &[usize])> =
        vec![("tiny", None, if quick { &[256] } else { &[512, 2048] })];
    if !quick && checkpoint.exists() {
        models.push(("smollm2", Some(smollm2.as_path()), &[512]));
    } else if !quick {
        println!(
            "(upcycled SmolLM2 skipped: {} not found)",
            checkpoint.display()
        );
    }
    for (model, recipe, seqs) in models {
        for &seq in seqs {
            for setup in ["full", "lora r16"] {
                for precision in [Precision::F32, Precision::Bf16] {
                    if !precision.is_supported_by(device) {
                        continue;
                    }
                    for recompute in ["none", "balanced"] {
                        let mut sets = vec![
                            format!("data.seq_len={seq}"),
                            format!("train.recompute=\"{recompute}\""),
                        ];
                        if setup != "full" {
                            sets.push("lora.r=16".into());
                        }
                        let name = recipe.map_or("tiny".into(), |p| p.display().to_string());
                        let case = format!("{name}:seqtopk:{precision}:{}", sets.join(";"));
                        let Some(f) = run_child(&case, backend, quick) else {
                            continue;
                        };
                        let (rss, predicted, runtime, allocated) = (f[2], f[6], f[7], f[8]);
                        println!(
                            "{model:<8} {setup:<10} {seq:>5} {:>6} {recompute:>9} {:>11.0} {:>9.0} {rss:>9.0} {allocated:>10.0} {predicted:>10.0} {:>7.2}",
                            precision.to_string(),
                            f[5],
                            f[0],
                            allocated / (predicted + runtime),
                        );
                    }
                }
            }
        }
    }
    println!(
        "RSS: the process's VmHWM; allocated: the most bytes its data held at once; predicted: \
         the dry run's peak per device (MiB); ratio: allocated / (predicted + what the process \
         held besides the weights before the first step)"
    );
}

fn label(case: &str) -> &'static str {
    match case {
        "tiny" => "tiny recipe (trainer step, B4 T128)",
        _ => "OLMoE layer (H2048 E64 I1024 K8)",
    }
}

/// Runs one case and prints `tokens/s seconds/step peak_MiB minflt/step majflt/step`.
fn run_case(case: &str, backend: &str, quick: bool) {
    let mut parts = case.split(':');
    let (case, mode, precision, sets) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap_or(""),
    );
    let sets: Vec<String> = sets
        .split(';')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let ((tokens, seconds, (minflt, majflt)), (trainable, predicted, runtime)) = match case {
        "tiny" => recipe_step(None, mode, precision, &sets, backend, quick),
        path if path.ends_with(".toml") => recipe_step(
            Some(Path::new(path)),
            mode,
            precision,
            &sets,
            backend,
            quick,
        ),
        _ => (olmoe_layer(mode, backend, quick), (0.0, 0.0, 0.0)),
    };
    println!(
        "{} {} {} {minflt} {majflt} {trainable} {predicted} {runtime} {}",
        tokens / seconds,
        seconds,
        common::peak_mib(),
        allocated_peak_mib()
    );
}

/// Most memory the process's data held at once (the counting allocator's peak), MiB.
fn allocated_peak_mib() -> f64 {
    #[cfg(not(feature = "system-allocator"))]
    return seqtopk_alloc::CountingMiMalloc::peak_bytes() as f64 / (1024.0 * 1024.0);
    #[cfg(feature = "system-allocator")]
    f64::NAN
}

/// Memory the process's data holds now (the counting allocator's count), MiB.
fn allocated_mib() -> f64 {
    #[cfg(not(feature = "system-allocator"))]
    return seqtopk_alloc::CountingMiMalloc::live_bytes() as f64 / (1024.0 * 1024.0);
    #[cfg(feature = "system-allocator")]
    f64::NAN
}

/// Page faults per step over `steps` steps since `before` (from [`common::faults`]).
fn faults_per_step(before: (u64, u64), steps: usize) -> (f64, f64) {
    let after = common::faults();
    let n = steps as f64;
    (
        (after.0 - before.0) as f64 / n,
        (after.1 - before.1) as f64 / n,
    )
}

/// A step-time case of a recipe (the tiny one when `None`) with `sets` overrides: tokens and
/// seconds per step and page faults, then its trainable parameters, the dry run's predicted peak
/// and the process's memory besides the weights before the first step (MiB).
type TinyResult = ((f64, f64, (f64, f64)), (f64, f64, f64));

fn recipe_step(
    recipe_path: Option<&Path>,
    mode: &str,
    precision: &str,
    sets: &[String],
    backend: &str,
    quick: bool,
) -> TinyResult {
    // Memory set-ups need only reach their peak: a few steps (one for a real checkpoint).
    let steps = match recipe_path {
        Some(_) => 1,
        None if quick || !sets.is_empty() => 3,
        None => 10,
    };
    let mut overrides = vec![
        format!("precision=\"{precision}\""),
        format!("backend=\"{backend}\""),
        format!("train.steps={}", steps + 1),
        // The recipe's 10 warm-up steps would outlast a --quick run (throughput is the same).
        "schedule.warmup_steps=1".to_owned(),
    ];
    // A dense model's recipe has no router to set.
    if mode != "dense" {
        overrides.push(format!("router.mode=\"{mode}\""));
    }
    overrides.extend_from_slice(sets);
    let recipe = match recipe_path {
        None => Recipe::parse(DEFAULT_RECIPE, "default", &overrides).unwrap(),
        Some(path) => Recipe::from_file(path, &overrides).unwrap(),
    };
    let mut trainer = Trainer::new(recipe).unwrap();
    let budget = trainer.budget();
    let trainable = budget.params_trainable as f64;
    let estimate = trainer.memory_estimate();
    let mib = 1024.0 * 1024.0;
    // What the process holds besides the model's weights before the first step: the tokenizer,
    // the tokenised corpus, the data pipeline.
    // (The weights as loaded: a half-precision run adds its 2-byte copies at the first step.)
    let copies = match precision {
        "f32" => 0.0,
        _ => 2.0 * (budget.params_total - budget.params_without_gradient) as f64,
    };
    let runtime = allocated_mib() - (estimate.weights - copies) / mib;
    let predicted = estimate.peak() / mib;
    trainer.step_once().unwrap(); // warm-up
    let faults = common::faults();
    let start = Instant::now();
    let mut tokens = 0;
    for _ in 0..steps {
        tokens += trainer.step_once().unwrap().tokens;
    }
    let s = start.elapsed().as_secs_f64();
    (
        (
            tokens as f64 / steps as f64,
            s / steps as f64,
            faults_per_step(faults, steps),
        ),
        (trainable, predicted, runtime),
    )
}

fn olmoe_layer(mode: &str, backend: &str, quick: bool) -> (f64, f64, (f64, f64)) {
    let t = if quick { 128 } else { 512 };
    let config = serde_json::json!({
        "model_type": "olmoe", "vocab_size": 1024, "hidden_size": 2048,
        "intermediate_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 16,
        "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
        "norm_topk_prob": false, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": false
    });
    let config = MoeTransformerConfig::from_json_str(&config.to_string(), "bench").unwrap();
    let backend: Backend = backend.parse().unwrap();
    let device = backend.device(0).unwrap().autodiff();
    let mut model = MoeTransformer::init(&config, 0, &device).unwrap();
    let mode = if mode == "topk" {
        RoutingMode::Topk
    } else {
        RoutingMode::Seqtopk
    };
    model.set_routing(&RouterConfig::new(mode, 8)).unwrap();
    let ids: Vec<u32> = (0..t).map(|i| (i * 7919 % 1024) as u32).collect();
    let layout = TokenLayout::dense(1, t);
    let reps = if quick { 1 } else { 3 };
    let mut elapsed = 0.0;
    let mut faults = common::faults();
    for rep in 0..=reps {
        if rep == 1 {
            faults = common::faults();
        }
        let start = Instant::now();
        let out = model.forward(&ids, &layout, &device).unwrap();
        let loss = out.logits.mean();
        let grads = loss.backward();
        drop(grads);
        if rep > 0 {
            elapsed += start.elapsed().as_secs_f64();
        }
    }
    (
        t as f64,
        elapsed / reps as f64,
        faults_per_step(faults, reps),
    )
}
