//! Training throughput and peak memory, TopK vs SeqTopK:
//! - the tiny default recipe (whole trainer step: forward, backward, clipping, AdamW);
//! - one OLMoE-1B-7B-shaped MoE layer (hidden 2048, 64 experts of 1024, K = 8), forward+backward.
//!
//! Each case runs in its own child process so its peak resident memory (`VmHWM`) is its own.
//! `cargo bench -p seqtopk-train --bench train [-- --quick]`; run from anywhere.

use std::process::Command;
use std::time::Instant;

use burn::tensor::Device;
use seqtopk_model::{MoeTransformer, MoeTransformerConfig};
use seqtopk_router::{RouterConfig, RoutingMode, TokenLayout};
use seqtopk_train::{DEFAULT_RECIPE, Recipe, Trainer};

const CASE_ENV: &str = "SEQTOPK_BENCH_CASE";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).unwrap();
    if let Ok(case) = std::env::var(CASE_ENV) {
        run_case(&case, quick);
        return;
    }
    println!("backend: cpu (flex); peak memory = the case process's VmHWM");
    println!(
        "{:<34} {:>8} {:>12} {:>12} {:>10}",
        "case", "router", "tokens/s", "s/step", "peak MiB"
    );
    for case in ["tiny", "olmoe_layer"] {
        let mut rates = Vec::new();
        for mode in ["topk", "seqtopk"] {
            let exe = std::env::current_exe().unwrap();
            let mut cmd = Command::new(exe);
            cmd.env(CASE_ENV, format!("{case}:{mode}"));
            if quick {
                cmd.arg("--quick");
            }
            let out = cmd.output().unwrap();
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() {
                eprintln!(
                    "{case}/{mode} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            }
            let fields: Vec<f64> = line
                .split_whitespace()
                .map(|f| f.parse().unwrap())
                .collect();
            let (tps, sps, peak) = (fields[0], fields[1], fields[2]);
            println!(
                "{:<34} {:>8} {:>12.0} {:>12.3} {:>10.0}",
                label(case),
                mode,
                tps,
                sps,
                peak
            );
            rates.push(tps);
        }
        if let [topk, seqtopk] = rates[..] {
            println!("{:<34} seqtopk/topk throughput = {:.3}", "", seqtopk / topk);
        }
    }
}

fn label(case: &str) -> &'static str {
    match case {
        "tiny" => "tiny recipe (trainer step, B4 T128)",
        _ => "OLMoE layer (H2048 E64 I1024 K8)",
    }
}

/// Runs one case and prints `tokens/s seconds/step peak_MiB`.
fn run_case(case: &str, quick: bool) {
    let (case, mode) = case.split_once(':').unwrap();
    let (tokens, seconds) = match case {
        "tiny" => tiny(mode, quick),
        _ => olmoe_layer(mode, quick),
    };
    println!("{} {} {}", tokens / seconds, seconds, peak_mib());
}

fn tiny(mode: &str, quick: bool) -> (f64, f64) {
    let steps = if quick { 3 } else { 10 };
    let overrides = vec![
        format!("router.mode=\"{mode}\""),
        format!("train.steps={}", steps + 1),
    ];
    let recipe = Recipe::parse(DEFAULT_RECIPE, "default", &overrides).unwrap();
    let mut trainer = Trainer::new(recipe).unwrap();
    trainer.step_once().unwrap(); // warm-up
    let start = Instant::now();
    let mut tokens = 0;
    for _ in 0..steps {
        tokens += trainer.step_once().unwrap().tokens;
    }
    let s = start.elapsed().as_secs_f64();
    (tokens as f64 / steps as f64, s / steps as f64)
}

fn olmoe_layer(mode: &str, quick: bool) -> (f64, f64) {
    let t = if quick { 128 } else { 512 };
    let config = serde_json::json!({
        "model_type": "olmoe", "vocab_size": 1024, "hidden_size": 2048,
        "intermediate_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 16,
        "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
        "norm_topk_prob": false, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": false
    });
    let config = MoeTransformerConfig::from_json_str(&config.to_string(), "bench").unwrap();
    let device = Device::flex().autodiff();
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
    for rep in 0..=reps {
        let start = Instant::now();
        let out = model.forward(&ids, &layout, &device).unwrap();
        let loss = out.logits.mean();
        let grads = loss.backward();
        drop(grads);
        if rep > 0 {
            elapsed += start.elapsed().as_secs_f64();
        }
    }
    (t as f64, elapsed / reps as f64)
}

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
