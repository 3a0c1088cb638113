//! Forward + backward throughput of one training step on the CPU backend: `topk` vs `seqtopk`
//! routing, and the same step in PyTorch transformers when torch is available.
//!
//! ```text
//! cargo bench -p seqtopk-model --bench train_step                 # release profile
//! cargo bench -p seqtopk-model --bench train_step --profile dev   # reuse the test build
//! cargo bench -p seqtopk-model --bench train_step -- --quick      # tiny shapes, one step
//! ```
//!
//! The model is a randomly initialised OLMoE (hidden 256, 4 layers, 16 experts, K = 4, expert
//! width 128, vocabulary 4096) on `[4, 512]` random tokens; a step is forward, next-token
//! cross-entropy plus 0.01 × the HF load-balancing loss, and backward (no optimiser). The
//! PyTorch side (`tools/bench/torch_train_step.py`) builds the same config with
//! `AutoModelForCausalLM.from_config` and times the same step (`output_router_logits=True`).
//! Its Python is `$SEQTOPK_TORCH_PYTHON`, else `tools/fixtures/.venv` (made by
//! `tools/fixtures/setup-venv.sh`); without torch that part is skipped with a message.
//!
//! Output: median milliseconds per step, tokens/s, and ratios (`seqtopk`/`topk`, and each
//! against PyTorch: above 1 means faster than PyTorch).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use seqtopk_model::{MoeTransformer, MoeTransformerConfig, causal_lm_loss};
use seqtopk_router::{LbConvention, RouterConfig, RoutingMode, TokenLayout, load_balancing_loss};

const AUX_COEF: f64 = 0.01;

fn config_json(vocab: usize, hidden: usize, layers: usize, experts: usize, k: usize) -> String {
    format!(
        r#"{{"model_type": "olmoe", "vocab_size": {vocab}, "hidden_size": {hidden},
  "intermediate_size": {inter}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
  "num_key_value_heads": {heads}, "num_experts": {experts}, "num_experts_per_tok": {k},
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "max_position_embeddings": 4096,
  "norm_topk_prob": false, "router_aux_loss_coef": {AUX_COEF}, "output_router_logits": true,
  "tie_word_embeddings": false, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
  "attention_bias": false, "clip_qkv": null}}"#,
        inter = hidden / 2,
        heads = hidden / 64,
    )
}

/// Deterministic token ids in `[3, vocab)`.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = seqtopk_rng::SplitMix64::new(0x5EED);
    (0..n).map(|_| 3 + rng.below(vocab - 3) as u32).collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median milliseconds of a forward + backward step and the mean experts per token.
fn time_burn(
    model: &MoeTransformer,
    ids: &[u32],
    layout: &TokenLayout,
    device: &Device,
    warmup: usize,
    steps: usize,
) -> (f64, f64) {
    let mut times = Vec::new();
    let mut experts = 0.0;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let out = model.forward(ids, layout, device).expect("forward");
        let aux = load_balancing_loss(&out.router_outputs, layout, LbConvention::Hf);
        experts = out
            .router_outputs
            .iter()
            .map(|r| r.plan.stats.experts_per_token_mean_std().0)
            .sum::<f64>()
            / out.router_outputs.len() as f64;
        let (ce, _) = causal_lm_loss(out.logits, ids, layout).expect("loss");
        let loss = ce + aux * AUX_COEF;
        let grads = loss.backward();
        drop(grads);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    (median(times), experts)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python to run PyTorch with, if one imports torch and transformers.
fn torch_python(root: &Path) -> Result<PathBuf, String> {
    let python = match std::env::var_os("SEQTOPK_TORCH_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let venv = root.join("tools/fixtures/.venv/bin/python");
            if !venv.exists() {
                return Err(format!(
                    "no SEQTOPK_TORCH_PYTHON and no {} (run tools/fixtures/setup-venv.sh)",
                    venv.display()
                ));
            }
            venv
        }
    };
    let ok = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !ok.status.success() {
        return Err(format!(
            "{} cannot import torch and transformers",
            python.display()
        ));
    }
    Ok(python)
}

struct TorchResult {
    median_ms: f64,
    params: u64,
    versions: String,
}

fn time_torch(
    python: &Path,
    root: &Path,
    config: &Path,
    (b, t, warmup, steps): (usize, usize, usize, usize),
) -> Result<TorchResult, String> {
    let script = root.join("tools/bench/torch_train_step.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--config", &config.display().to_string()])
        .args(["--batch", &b.to_string(), "--seq", &t.to_string()])
        .args([
            "--warmup",
            &warmup.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("torch output {line:?}: {e}"))?;
    Ok(TorchResult {
        median_ms: v["median_ms"].as_f64().ok_or("no median_ms")?,
        params: v["params"].as_u64().ok_or("no params")?,
        versions: format!(
            "torch {} / transformers {}, {} threads",
            v["torch"].as_str().unwrap_or("?"),
            v["transformers"].as_str().unwrap_or("?"),
            v["threads"]
        ),
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (vocab, hidden, layers, experts, k) = (4096, 256, 4, 16, 4);
    let (b, t, warmup, steps) = if quick { (1, 64, 1, 1) } else { (4, 512, 1, 3) };
    let json = config_json(vocab, hidden, layers, experts, k);
    let config = MoeTransformerConfig::from_json_str(&json, "bench").expect("bench config");
    let device = Device::flex().autodiff();
    let mut model = MoeTransformer::init(&config, 0, &device).expect("init");
    let ids = tokens(b * t, vocab);
    let layout = TokenLayout::dense(b, t);
    let tokens_per_step = (b * t) as f64;

    println!(
        "train step (forward + backward), CPU backend: hidden {hidden}, {layers} layers, \
         {experts} experts, K={k}, vocab {vocab}, batch {b} × T {t}; {steps} timed steps after \
         {warmup} warm-up, {} parameters",
        model.num_params()
    );
    println!(
        "{:>26} {:>12} {:>12} {:>14} {:>14}",
        "", "median ms", "tokens/s", "experts/token", "speed vs topk"
    );
    let mut results = Vec::new();
    for mode in [RoutingMode::Topk, RoutingMode::Seqtopk] {
        model
            .set_routing(&RouterConfig::new(mode, k))
            .expect("routing");
        let (ms, per_token) = time_burn(&model, &ids, &layout, &device, warmup, steps);
        let base = results.first().map_or(ms, |&(_, m)| m);
        println!(
            "{:>26} {:>12.1} {:>12.0} {:>14.2} {:>13.2}x",
            format!("seqtopk-model {}", mode.name()),
            ms,
            tokens_per_step / (ms / 1e3),
            per_token,
            base / ms
        );
        results.push((mode, ms));
    }

    let root = repo_root();
    let python = match torch_python(&root) {
        Ok(p) => p,
        Err(why) => {
            println!("PyTorch comparison skipped: {why}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("seqtopk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, &json).expect("write config");
    match time_torch(&python, &root, &config_path, (b, t, warmup, steps)) {
        Ok(torch) => {
            println!(
                "{:>26} {:>12.1} {:>12.0} {:>14.2} {:>10}",
                "PyTorch transformers topk",
                torch.median_ms,
                tokens_per_step / (torch.median_ms / 1e3),
                k as f64,
                ""
            );
            println!("PyTorch: {}", torch.versions);
            if torch.params != model.num_params() as u64 {
                println!(
                    "warning: PyTorch model has {} parameters, ours {}",
                    torch.params,
                    model.num_params()
                );
            }
            for (mode, ms) in &results {
                println!(
                    "ratio seqtopk-model {} / PyTorch topk (throughput): {:.2}",
                    mode.name(),
                    torch.median_ms / ms
                );
            }
        }
        Err(why) => println!("PyTorch comparison failed: {why}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
