//! Shared helpers for the router tests.
#![allow(dead_code, missing_docs)]

use burn::tensor::{DType, Device, Tensor, TensorData};
use seqtopk_router::{Router, RouterConfig, RouterOutput, RoutingMode, TokenLayout};

/// Logits `[b, t, e]` from row-major values.
pub fn logits(values: Vec<f32>, shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// f64 logits (gradient checks).
pub fn logits_f64(values: Vec<f64>, shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F64))
}

/// Routes with a fresh router.
pub fn route(config: &RouterConfig, logits: Tensor<3>, layout: &TokenLayout) -> RouterOutput {
    let e = logits.dims()[2];
    Router::new(config, e, false)
        .expect("valid config")
        .route(logits, layout)
        .expect("routing succeeds")
}

/// The router's probabilities read back, `[B·T·E]`.
pub fn probs_of(out: &RouterOutput) -> Vec<f32> {
    out.probs
        .clone()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

/// Selected expert sets per position, sorted by expert id.
pub fn expert_sets(out: &RouterOutput) -> Vec<Vec<u32>> {
    let mut sets: Vec<Vec<u32>> = out
        .plan
        .per_token()
        .into_iter()
        .map(|l| l.into_iter().map(|(e, _)| e).collect())
        .collect();
    for s in &mut sets {
        s.sort_unstable();
    }
    sets
}

/// A deterministic pseudo-random generator for inputs (no external state).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

/// Brute-force SeqTopK/BatchTopK over full probabilities: rank every (token, expert) of a
/// segment by (prob desc, position asc, per-token rank asc), keep each token's top-`cap`,
/// take the best `n·k` positive ones, then apply the floor. Returns sorted expert sets.
pub fn brute_force_budgeted(
    probs: &[f32],
    e: usize,
    segments: &[Vec<usize>],
    n_positions: usize,
    k: usize,
    cap: usize,
    floor: usize,
) -> Vec<Vec<u32>> {
    let mut sets = vec![Vec::new(); n_positions];
    for seg in segments {
        let mut all = Vec::new();
        let mut ranked: Vec<Vec<u32>> = Vec::new();
        for &p in seg {
            let row = &probs[p * e..(p + 1) * e];
            let mut order: Vec<u32> = (0..e as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            for (rank, &x) in order.iter().enumerate().take(cap) {
                if row[x as usize] > 0.0 {
                    all.push((row[x as usize], p, rank, x));
                }
            }
            ranked.push(order);
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for &(_, p, _, x) in all.iter().take(seg.len() * k) {
            sets[p].push(x);
        }
        for (i, &p) in seg.iter().enumerate() {
            for &x in ranked[i].iter().take(floor) {
                if !sets[p].contains(&x) {
                    sets[p].push(x);
                }
            }
        }
    }
    for s in &mut sets {
        s.sort_unstable();
    }
    sets
}

pub fn config(mode: RoutingMode, k: usize) -> RouterConfig {
    RouterConfig::new(mode, k)
}
