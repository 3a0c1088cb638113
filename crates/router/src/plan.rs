//! The routing plan: selected pairs in the layout an MoE layer dispatches from.

use std::ops::Range;

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::select::Candidates;

/// Selected (token, expert) pairs grouped by expert, with differentiable combine weights.
///
/// An MoE layer runs expert `e` on the rows `token_index[expert_range(e)]` of its flattened
/// input, scales the outputs by `weights[expert_range(e)]`, and scatter-adds them back to
/// those rows. Positions are flat (`b·T + t`). Only selected pairs appear, so unselected
/// experts cost nothing and padding never appears.
#[derive(Debug, Clone)]
pub struct RoutingPlan {
    num_positions: usize,
    num_experts: usize,
    expert_offsets: Vec<usize>,
    pair_positions: Vec<u32>,
    /// Flat positions of the pairs, grouped by expert (device copy of [`Self::pair_positions`]).
    pub token_index: Tensor<1, Int>,
    /// Combine weight of each pair: the selected softmax probability, renormalised over the
    /// token's selected experts when configured. Gradients flow to the logits through these only.
    pub weights: Tensor<1>,
    /// Allocation statistics.
    pub stats: RoutingStats,
}

/// How the budget was spread: what SeqTopK changes compared to TopK.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingStats {
    /// Experts given to each position (0 for padding), `[B·T]`.
    pub experts_per_token: Vec<u32>,
    /// Tokens sent to each expert, `[E]`.
    pub tokens_per_expert: Vec<u32>,
    /// Validity of each position.
    pub valid: Vec<bool>,
    /// The configured per-token floor.
    pub floor: usize,
    /// The configured per-token cap.
    pub cap: usize,
}

impl RoutingStats {
    /// Valid positions.
    pub fn num_valid(&self) -> usize {
        self.valid.iter().filter(|&&v| v).count()
    }

    /// Selected pairs.
    pub fn total_pairs(&self) -> usize {
        self.experts_per_token.iter().map(|&c| c as usize).sum()
    }

    fn valid_counts(&self) -> impl Iterator<Item = u32> + '_ {
        self.experts_per_token
            .iter()
            .zip(&self.valid)
            .filter(|(_, v)| **v)
            .map(|(&c, _)| c)
    }

    /// Mean and standard deviation of experts per valid token.
    pub fn experts_per_token_mean_std(&self) -> (f64, f64) {
        let n = self.num_valid();
        if n == 0 {
            return (0.0, 0.0);
        }
        let mean = self.valid_counts().map(f64::from).sum::<f64>() / n as f64;
        let var = self
            .valid_counts()
            .map(|c| (f64::from(c) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        (mean, var.sqrt())
    }

    /// Histogram of experts per valid token: entry `c` counts tokens with `c` experts.
    pub fn experts_per_token_histogram(&self) -> Vec<u32> {
        let mut hist = vec![0u32; self.cap + 1];
        for c in self.valid_counts() {
            hist[(c as usize).min(self.cap)] += 1;
        }
        hist
    }

    /// Fraction of valid tokens given exactly the floor (for floor 0: no expert at all).
    pub fn fraction_at_floor(&self) -> f64 {
        self.fraction(|c| c as usize <= self.floor)
    }

    /// Fraction of valid tokens given the cap.
    pub fn fraction_at_cap(&self) -> f64 {
        self.fraction(|c| c as usize >= self.cap)
    }

    fn fraction(&self, pred: impl Fn(u32) -> bool) -> f64 {
        let n = self.num_valid();
        if n == 0 {
            return 0.0;
        }
        self.valid_counts().filter(|&c| pred(c)).count() as f64 / n as f64
    }

    /// Max over mean tokens per expert (1 = perfectly balanced).
    pub fn load_imbalance(&self) -> f64 {
        let total: u64 = self.tokens_per_expert.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0.0;
        }
        let mean = total as f64 / self.tokens_per_expert.len() as f64;
        f64::from(*self.tokens_per_expert.iter().max().unwrap_or(&0)) / mean
    }

    /// Experts that received no token.
    pub fn dead_experts(&self) -> usize {
        self.tokens_per_expert.iter().filter(|&&c| c == 0).count()
    }
}

impl RoutingPlan {
    /// Builds the plan from per-token prefix counts over the candidates, gathering weights from
    /// `probs` (`[N, E]`, on the autodiff graph when training).
    pub(crate) fn build(
        cands: &Candidates,
        counts: &[u32],
        probs: Tensor<2>,
        renormalize: bool,
        valid: Vec<bool>,
        floor: usize,
        cap: usize,
    ) -> Self {
        let [n, e] = probs.dims();
        let device = probs.device();
        let dtype = probs.dtype();
        let mut tokens_per_expert = vec![0u32; e];
        for (p, &c) in counts.iter().enumerate() {
            for &x in &cands.experts_of(p)[..c as usize] {
                tokens_per_expert[x as usize] += 1;
            }
        }
        let mut expert_offsets = Vec::with_capacity(e + 1);
        expert_offsets.push(0);
        for &c in &tokens_per_expert {
            expert_offsets.push(expert_offsets.last().unwrap() + c as usize);
        }
        let total = *expert_offsets.last().unwrap();
        let mut cursor = expert_offsets.clone();
        let mut pair_positions = vec![0u32; total];
        let mut flat_index = vec![0i64; total];
        for (p, &c) in counts.iter().enumerate() {
            for &x in &cands.experts_of(p)[..c as usize] {
                let slot = &mut cursor[x as usize];
                pair_positions[*slot] = p as u32;
                flat_index[*slot] = (p * e) as i64 + i64::from(x);
                *slot += 1;
            }
        }
        let token_index = int_tensor(
            pair_positions.iter().map(|&p| i64::from(p)).collect(),
            &device,
        );
        let weights = if total == 0 {
            Tensor::zeros([0], (&device, dtype))
        } else {
            let gathered = probs
                .reshape([n * e])
                .select(0, int_tensor(flat_index, &device));
            if renormalize {
                let per_token = Tensor::<1>::zeros([n], (&device, dtype)).select_assign(
                    0,
                    token_index.clone(),
                    gathered.clone(),
                    IndexingUpdateOp::Add,
                );
                gathered.clone() / per_token.select(0, token_index.clone())
            } else {
                gathered
            }
        };
        Self {
            num_positions: n,
            num_experts: e,
            expert_offsets,
            pair_positions,
            token_index,
            weights,
            stats: RoutingStats {
                experts_per_token: counts.to_vec(),
                tokens_per_expert,
                valid,
                floor,
                cap,
            },
        }
    }

    /// Positions (`B·T`) the plan covers.
    pub fn num_positions(&self) -> usize {
        self.num_positions
    }

    /// Experts in the layer.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// Selected pairs.
    pub fn num_pairs(&self) -> usize {
        self.pair_positions.len()
    }

    /// The pair slots of expert `e`.
    pub fn expert_range(&self, e: usize) -> Range<usize> {
        self.expert_offsets[e]..self.expert_offsets[e + 1]
    }

    /// Flat positions of every pair, grouped by expert (host copy).
    pub fn pair_positions(&self) -> &[u32] {
        &self.pair_positions
    }

    /// Experts selected for each position, in candidate (score) order, with their weights read
    /// back from the device. For inspection and tests; the dispatch path never needs it.
    pub fn per_token(&self) -> Vec<Vec<(u32, f32)>> {
        let weights: Vec<f32> = if self.num_pairs() == 0 {
            Vec::new()
        } else {
            self.weights
                .clone()
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("weights are floats")
        };
        let mut out = vec![Vec::new(); self.num_positions];
        for e in 0..self.num_experts {
            for slot in self.expert_range(e) {
                out[self.pair_positions[slot] as usize].push((e as u32, weights[slot]));
            }
        }
        for list in &mut out {
            list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        out
    }
}

pub(crate) fn int_tensor(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}
