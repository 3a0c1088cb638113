//! Router time of `seqtopk` vs `topk` (and the other modes) at OLMoE-like shapes.
//!
//! `cargo bench -p seqtopk-router` (add `--features wgpu` for the wgpu backend). Prints the
//! median wall time of one routing call (softmax, candidate read-back, selection, plan with its
//! differentiable weight gather) and the ratio to `topk` on the same backend.

use std::time::{Duration, Instant};

use burn::tensor::{Distribution, Tensor};
use seqtopk_backend::test_devices;
use seqtopk_router::{Router, RouterConfig, RoutingMode, TokenLayout};

fn main() {
    let shapes = [(4usize, 4096usize, 64usize, 8usize), (4, 2048, 128, 4)];
    let quick = std::env::args().any(|a| a == "--quick");
    for (backend, device) in test_devices() {
        println!("\nbackend: {backend}");
        println!(
            "{:>22} {:>16} {:>12} {:>10} {:>12}",
            "shape (B,T,E,K)", "mode", "median ms", "vs topk", "pairs/token"
        );
        for &(b, t, e, k) in &shapes {
            let (b, t) = if quick { (1, t / 8) } else { (b, t) };
            device.seed(7);
            let logits = Tensor::<3>::random([b, t, e], Distribution::Normal(0.0, 2.0), &device);
            let layout = TokenLayout::dense(b, t);
            let mut topk_ms = None;
            for mode in [
                RoutingMode::Topk,
                RoutingMode::Seqtopk,
                RoutingMode::OnlineSeqtopk,
                RoutingMode::BatchTopk,
            ] {
                let router = Router::new(&RouterConfig::new(mode, k), e, false).unwrap();
                let mut times = Vec::new();
                let mut pairs = 0;
                let runs = if quick { 3 } else { 11 };
                for i in 0..runs + 1 {
                    let start = Instant::now();
                    let out = router.route(logits.clone(), &layout).unwrap();
                    // Force the weight gather to finish, as the MoE layer would.
                    let _ = out.plan.weights.clone().sum().into_data();
                    if i > 0 {
                        times.push(start.elapsed());
                    }
                    pairs = out.plan.num_pairs();
                }
                times.sort();
                let median: Duration = times[times.len() / 2];
                let ms = median.as_secs_f64() * 1e3;
                let base = *topk_ms.get_or_insert(ms);
                println!(
                    "{:>22} {:>16} {:>12.2} {:>9.2}x {:>12.3}",
                    format!("({b},{t},{e},{k})"),
                    mode.name(),
                    ms,
                    ms / base,
                    pairs as f64 / (b * t) as f64
                );
            }
        }
    }
}
