//! Router time of `seqtopk` vs `topk` (and the other modes) at OLMoE-like shapes.
//!
//! `cargo bench -p seqtopk-router` (add `--features wgpu` for the wgpu backend). Prints the
//! median wall time of one routing call (softmax, candidate read-back, selection, plan with its
//! differentiable weight gather) and the ratio to `topk` on the same backend. Two host-side rows
//! follow each shape: SeqTopK over packed rows of 16-token documents (the layout's documents
//! work), and the online prefill that fills an empty expert cache.

use std::time::{Duration, Instant};

use burn::tensor::{Distribution, Tensor};
use seqtopk_backend::test_devices;
use seqtopk_router::{ExpertCache, Router, RouterConfig, RoutingMode, TokenLayout};

/// Median of `runs` timed calls after one warm-up call.
fn median_ms(runs: usize, mut call: impl FnMut() -> usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut pairs = 0;
    for i in 0..runs + 1 {
        let start = Instant::now();
        pairs = call();
        if i > 0 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    (median.as_secs_f64() * 1e3, pairs)
}

fn main() {
    let shapes = [(4usize, 4096usize, 64usize, 8usize), (4, 2048, 128, 4)];
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 3 } else { 11 };
    for (backend, device) in test_devices() {
        println!("\nbackend: {backend}");
        println!(
            "{:>22} {:>24} {:>12} {:>10} {:>12}",
            "shape (B,T,E,K)", "mode", "median ms", "vs topk", "pairs/token"
        );
        for &(b, t, e, k) in &shapes {
            let (b, t) = if quick { (1, t / 8) } else { (b, t) };
            device.seed(7);
            let logits = Tensor::<3>::random([b, t, e], Distribution::Normal(0.0, 2.0), &device);
            let layout = TokenLayout::dense(b, t);
            let shape = format!("({b},{t},{e},{k})");
            let mut topk_ms = None;
            let row = |name: &str, ms: f64, pairs: usize, base: &mut Option<f64>| {
                let base = *base.get_or_insert(ms);
                println!(
                    "{shape:>22} {name:>24} {ms:>12.2} {:>9.2}x {:>12.3}",
                    ms / base,
                    pairs as f64 / (b * t) as f64
                );
            };
            for mode in [
                RoutingMode::Topk,
                RoutingMode::Seqtopk,
                RoutingMode::OnlineSeqtopk,
                RoutingMode::BatchTopk,
            ] {
                let router = Router::new(&RouterConfig::new(mode, k), e, false).unwrap();
                let (ms, pairs) = median_ms(runs, || {
                    let out = router.route(logits.clone(), &layout).unwrap();
                    // Force the weight gather to finish, as the MoE layer would.
                    let _ = out.plan.weights.clone().sum().into_data();
                    out.plan.num_pairs()
                });
                row(mode.name(), ms, pairs, &mut topk_ms);
            }
            // Packed rows of 16-token documents: many segments per row.
            let docs: Vec<u32> = (0..b * t).map(|p| ((p % t) / 16) as u32).collect();
            let packed = TokenLayout::new(b, t, vec![true; b * t], docs).unwrap();
            let router =
                Router::new(&RouterConfig::new(RoutingMode::Seqtopk, k), e, false).unwrap();
            let (ms, pairs) = median_ms(runs, || {
                let out = router.route(logits.clone(), &packed).unwrap();
                let _ = out.plan.weights.clone().sum().into_data();
                out.plan.num_pairs()
            });
            row("seqtopk, 16-token docs", ms, pairs, &mut topk_ms);
            // Online prefill: offline SeqTopK over the prompt, then the cache filled.
            let router =
                Router::new(&RouterConfig::new(RoutingMode::OnlineSeqtopk, k), e, false).unwrap();
            let (ms, pairs) = median_ms(runs, || {
                let mut cache = ExpertCache::new(b, e);
                let out = router
                    .route_prefill(logits.clone(), &layout, &mut cache)
                    .unwrap();
                let _ = out.plan.weights.clone().sum().into_data();
                out.plan.num_pairs()
            });
            row("online prefill", ms, pairs, &mut topk_ms);
        }
    }
}
