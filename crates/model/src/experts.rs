//! Routed experts as stacked tensors, run by batched matmuls over the routing plan.
//!
//! A per-expert loop issues a handful of tensor operations per expert (and, under autodiff, one
//! full-size input gradient per expert gather): its cost grows with E, which on a GPU means
//! thousands of kernel launches per step. Here the experts' weights are two stacked parameters
//! and one dispatch runs every expert at once as `[S, C, H] × [S, H, 2I]` batched matmuls, where
//! each expert's rows are padded to a common capacity `C`. The number of tensor operations is
//! the same for any E.
//!
//! Under load imbalance one capacity wastes work on padding, so the dispatch may split the pairs
//! into two *tiers*: every expert up to a capacity `C₁`, then only the overflowing experts (their
//! weights gathered) for the rest. [`plan_tiers`] picks `C₁` by counting padded rows; decoding a
//! few tokens thereby runs just the selected experts.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::{Flex, FlexTensor};
use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use seqtopk_router::RoutingPlan;

use crate::LoadError;
use crate::fused::{FusedOp, Rows, on_autodiff_flex, par_rows, sigmoid, with_width};
use crate::hf_keys::MoeKeys;
use crate::lora::LoraFactors;
use crate::weights::{Init, Weights, transpose};

/// The routed experts of one MoE layer: `down(silu(x·gate) ⊙ x·up)` per expert, stacked.
///
/// Weights are stored input-major (as Burn's `Linear`), so a dispatch is a plain batched matmul.
/// [`Self::from_hf`] and [`Self::to_hf`] convert from and to the Hugging Face transformers 5
/// fused layout; the per-expert HF layout is its slices.
#[derive(Module, Debug)]
pub struct Experts {
    /// `[E, H, 2I]`: each expert's gate projection (columns `..I`, HF `gate_proj`/`w1`) and up
    /// projection (columns `I..`, HF `up_proj`/`w3`).
    pub gate_up: Param<Tensor<3>>,
    /// `[E, I, H]`: each expert's down projection (HF `down_proj`/`w2`).
    pub down: Param<Tensor<3>>,
}

/// Expert weights in the Hugging Face fused layout, host copies.
#[derive(Debug, Clone, PartialEq)]
pub struct HfExperts {
    /// Experts `E`.
    pub num_experts: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// Expert width `I`.
    pub intermediate: usize,
    /// `[E, 2I, H]` row-major: per expert, the gate rows then the up rows (`[out, in]`).
    pub gate_up: Vec<f32>,
    /// `[E, H, I]` row-major (`[out, in]`).
    pub down: Vec<f32>,
}

impl HfExperts {
    /// Expert `e`'s HF `gate_proj`, `up_proj`, `down_proj` weights (`[I, H]`, `[I, H]`, `[H, I]`).
    pub fn expert(&self, e: usize) -> [&[f32]; 3] {
        let (h, i) = (self.hidden, self.intermediate);
        let gu = &self.gate_up[e * 2 * i * h..(e + 1) * 2 * i * h];
        [
            &gu[..i * h],
            &gu[i * h..],
            &self.down[e * h * i..(e + 1) * h * i],
        ]
    }
}

impl Experts {
    /// Builds the stacked parameters from the HF fused layout.
    pub fn from_hf(hf: &HfExperts, device: &Device) -> Self {
        let (e, h, i) = (hf.num_experts, hf.hidden, hf.intermediate);
        let mut gate_up = Vec::with_capacity(e * h * 2 * i);
        let mut down = Vec::with_capacity(e * i * h);
        for x in 0..e {
            gate_up.extend(transpose(
                &hf.gate_up[x * 2 * i * h..(x + 1) * 2 * i * h],
                2 * i,
                h,
            ));
            down.extend(transpose(&hf.down[x * h * i..(x + 1) * h * i], h, i));
        }
        Self {
            gate_up: Param::from_data(TensorData::new(gate_up, [e, h, 2 * i]), device),
            down: Param::from_data(TensorData::new(down, [e, i, h]), device),
        }
    }

    /// The weights in the HF fused layout (exact: transposes only).
    pub fn to_hf(&self) -> Result<HfExperts, String> {
        let [e, h, i2] = self.gate_up.val().dims();
        let i = i2 / 2;
        let read = |t: Tensor<3>| {
            t.into_data()
                .try_into_vec_as::<f32>()
                .map_err(|err| format!("reading expert weights back failed: {err:?}"))
        };
        let gu = read(self.gate_up.val())?;
        let dn = read(self.down.val())?;
        let mut gate_up = Vec::with_capacity(gu.len());
        let mut down = Vec::with_capacity(dn.len());
        for x in 0..e {
            gate_up.extend(transpose(&gu[x * h * i2..(x + 1) * h * i2], h, i2));
            down.extend(transpose(&dn[x * i * h..(x + 1) * i * h], i, h));
        }
        Ok(HfExperts {
            num_experts: e,
            hidden: h,
            intermediate: i,
            gate_up,
            down,
        })
    }

    /// Experts `E`.
    pub fn num_experts(&self) -> usize {
        self.gate_up.base().dims()[0]
    }

    /// Every expert on every row, `[N, H]` → `[E, N, H]`: the dense reference the sparse
    /// dispatch must equal (tests, analysis), not a training path.
    pub fn forward_dense(&self, x: Tensor<2>) -> Tensor<3> {
        let e = self.num_experts();
        let [n, h] = x.dims();
        let x = x.unsqueeze_dim::<3>(0).expand([e, n, h]);
        self.swiglu(x, self.gate_up.val(), self.down.val())
    }

    fn swiglu(&self, x: Tensor<3>, gate_up: Tensor<3>, down: Tensor<3>) -> Tensor<3> {
        gated_silu(x.matmul(gate_up)).matmul(down)
    }

    /// `Σ_{(p, e) ∈ plan} w_{p,e} · expert_e(x_p)` for the flattened input `x` `[N, H]`.
    ///
    /// The combine weights multiply in f32 and the sum is rounded once, as Hugging Face does
    /// (its router weights stay f32). Gradients reach `x` through one gather per tier, so no
    /// per-expert full-size input gradient is ever allocated.
    pub fn forward(&self, x: Tensor<2>, plan: &RoutingPlan) -> Tensor<2> {
        let mut y = x.zeros_like();
        let pairs = plan.num_pairs();
        if pairs == 0 {
            return y;
        }
        let device = x.device();
        let counts: Vec<usize> = (0..plan.num_experts())
            .map(|e| plan.expert_range(e).len())
            .collect();
        // One zero weight past the pairs: padded slots point at it and contribute nothing.
        let weights = Tensor::cat(
            vec![
                plan.weights.clone(),
                Tensor::zeros([1], (&device, plan.weights.dtype())),
            ],
            0,
        );
        let training = x.is_tracked() || tracked(&self.gate_up) || tracked(&self.down);
        let [_, h] = x.dims();
        for tier in plan_tiers(&counts, training) {
            let (s, c) = (tier.experts.len(), tier.capacity);
            // Padded rows read position 0 and take the zero weight past the pairs.
            let (rows, slot_index): (Vec<i64>, Vec<i64>) = tier
                .slots(plan)
                .into_iter()
                .map(|slot| match slot {
                    Some(q) => (i64::from(plan.pair_positions()[q]), q as i64),
                    None => (0, pairs as i64),
                })
                .unzip();
            let rows = int_tensor(rows, &device);
            let xg = x.clone().select(0, rows.clone()).reshape([s, c, h]);
            let which = (!tier.all_experts)
                .then(|| int_tensor(tier.experts.iter().map(|&e| e as i64).collect(), &device));
            let gu = project(&self.gate_up, xg, which.as_ref());
            let out = project(&self.down, gated_silu(gu), which.as_ref()).reshape([s * c, h]);
            let w = weights
                .clone()
                .select(0, int_tensor(slot_index, &device))
                .unsqueeze_dim::<2>(1);
            let contribution = match out.dtype() {
                DType::F32 => out * w,
                dtype => (out.cast(DType::F32) * w).cast(dtype),
            };
            y = y.select_assign(0, rows, contribution, IndexingUpdateOp::Add);
        }
        y
    }
}

/// `x · W` for the experts `which` (all when `None`) of a stacked weight `W` `[E, in, out]`,
/// plus its LoRA term `s·(x·A)·B` computed on the activations, so that no adapted copy of `W`
/// is materialised (and kept for the backward pass).
fn project(param: &Param<Tensor<3>>, x: Tensor<3>, which: Option<&Tensor<1, Int>>) -> Tensor<3> {
    let w = match which {
        None => param.base(),
        Some(which) => param.base().select(0, which.clone()),
    };
    match param.reparameterization::<LoraFactors>() {
        None => x.matmul(w),
        Some(lora) => x.clone().matmul(w) + lora.on_activations(x, which),
    }
}

/// Whether gradients flow into a stacked weight (its base or its LoRA factors).
fn tracked(param: &Param<Tensor<3>>) -> bool {
    param.base().is_tracked()
        || param
            .reparameterization::<LoraFactors>()
            .is_some_and(|f| f.a.val().is_tracked())
}

/// One batched pass of the dispatch: `experts` (ascending) each run on `capacity` rows, taking
/// the pair slots `[skip, skip + capacity)` of their range in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Experts of the pass.
    pub experts: Vec<usize>,
    /// Whether `experts` is every expert (their weights are then used without a gather).
    pub all_experts: bool,
    /// Rows per expert.
    pub capacity: usize,
    /// Pair slots already handled by earlier tiers.
    pub skip: usize,
}

impl Tier {
    /// The plan's pair slot for each of the `experts.len() · capacity` rows, `None` for padding.
    fn slots(&self, plan: &RoutingPlan) -> Vec<Option<usize>> {
        let mut out = Vec::with_capacity(self.experts.len() * self.capacity);
        for &e in &self.experts {
            let range = plan.expert_range(e);
            for j in 0..self.capacity {
                let q = range.start + self.skip + j;
                out.push((q < range.end).then_some(q));
            }
        }
        out
    }
}

/// Rows of work that streaming one expert's weights once is worth: a training row costs
/// `18·H·I` multiply-adds (forward and backward), the weights `12·H·I` bytes, so this is a few
/// rows on any machine whose arithmetic outpaces its memory, for any H and I. A pass costs each
/// expert `max(capacity, this)`: a matmul over a few rows is bound by reading the weights.
const WEIGHT_STREAM_ROWS: usize = 4;

/// Most passes one dispatch makes: the operation count stays bounded for any E.
pub const MAX_TIERS: usize = 4;

/// Rows of work one gathered pass's backward is worth per expert of the layer, in training: it
/// scatters into a zeroed gradient the size of all experts' weights. Measured on the CPU backend
/// at OLMoE's shape (64 experts of 2048 × 1024): ~6 s per gathered pass against ~0.6 ms per
/// padded row, i.e. ~150 rows per expert (a scalar scatter plus page faults for ~1.5 GB).
const GATHER_BACKWARD_ROWS_PER_EXPERT: usize = 128;

/// Splits the dispatch of experts with `counts` pairs into at most [`MAX_TIERS`] passes. Pass
/// `j` takes the pair slots `[c_{j−1}, c_j)` of every expert with more than `c_{j−1}` pairs, with
/// thresholds `0 = c_0 < c_1 < … = max(counts)` chosen among the counts to minimise estimated
/// work: per expert and pass `max(capacity, W)` rows, plus, for a pass that does not cover every
/// expert, `2·W` per expert for gathering its weights and, when `training`,
/// [`GATHER_BACKWARD_ROWS_PER_EXPERT`] per expert of the layer for the gather's backward. A pass
/// runs every expert, padding those with no pairs in it, whenever that costs less than the
/// gather (a few idle experts must not force one). Ties prefer fewer passes.
///
/// Balanced loads run as one pass over every expert; decoding, which uses a few experts, gathers
/// only those; a skewed load (a freshly initialised model sends most tokens to a few experts)
/// runs its busiest experts in extra passes instead of padding every expert to their count.
pub fn plan_tiers(counts: &[usize], training: bool) -> Vec<Tier> {
    let e = counts.len();
    let w = WEIGHT_STREAM_ROWS;
    let mut cuts: Vec<usize> = counts.to_vec();
    cuts.push(0);
    cuts.sort_unstable();
    cuts.dedup();
    let last = cuts.len() - 1;
    if cuts[last] == 0 {
        return Vec::new();
    }
    // A pass either runs every expert (those with no pairs in it only pad) or gathers the
    // weights of the experts it needs: whichever costs less; `true` when every expert runs.
    let tier_choice = |from: usize, to: usize| {
        let n = counts.iter().filter(|&&c| c > from).count();
        let rows = (to - from).max(w);
        let every = e * rows;
        let gathered = n * (rows + 2 * w)
            + if training {
                GATHER_BACKWARD_ROWS_PER_EXPERT * e
            } else {
                0
            };
        if n == e || every <= gathered {
            (every, true)
        } else {
            (gathered, false)
        }
    };
    let tier_cost = |from: usize, to: usize| tier_choice(from, to).0;
    // best[k][j]: least cost covering slots [0, cuts[j]) in k passes, and the previous cut.
    let mut best = vec![vec![(usize::MAX, 0usize); cuts.len()]; MAX_TIERS + 1];
    best[0][0] = (0, 0);
    for k in 1..=MAX_TIERS {
        for j in 1..cuts.len() {
            for i in 0..j {
                let (prev, _) = best[k - 1][i];
                if prev == usize::MAX {
                    continue;
                }
                let cost = prev + tier_cost(cuts[i], cuts[j]);
                if cost < best[k][j].0 {
                    best[k][j] = (cost, i);
                }
            }
        }
    }
    let mut k = (1..=MAX_TIERS)
        .min_by_key(|&k| (best[k][last].0, k))
        .unwrap_or(1);
    let mut bounds = vec![last];
    let mut j = last;
    while k > 0 {
        j = best[k][j].1;
        bounds.push(j);
        k -= 1;
    }
    bounds.reverse();
    bounds
        .windows(2)
        .map(|pair| {
            let (from, to) = (cuts[pair[0]], cuts[pair[1]]);
            let all_experts = tier_choice(from, to).1;
            let experts: Vec<usize> = (0..e)
                .filter(|&x| all_experts || counts[x] > from)
                .collect();
            Tier {
                all_experts,
                experts,
                capacity: to - from,
                skip: from,
            }
        })
        .collect()
}

/// A 1-D index tensor on `device`.
pub(crate) fn int_tensor(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}

/// The routed experts of the MoE block `keys` names (`model.layers.L.mlp` or
/// `.block_sparse_moe`), from per-expert keys or the fused v5 layout (`experts.gate_up_proj
/// [E, 2I, H]` with gate rows first, `experts.down_proj [E, H, I]`; the transposed `[E, H, 2I]` /
/// `[E, I, H]` variant is recognised by shape when `H ≠ 2I` / `H ≠ I`).
///
/// A seeded source has no fused key, so fresh experts are drawn per expert and projection in HF
/// order (gate, up, down), as a per-expert checkpoint lists them.
pub(crate) fn load_experts(
    source: &mut Weights<'_>,
    keys: &MoeKeys,
    e: usize,
    h: usize,
    i: usize,
) -> Result<Experts, LoadError> {
    let (fused_gu, fused_down) = (keys.fused(0), keys.fused(1));
    let mut hf = HfExperts {
        num_experts: e,
        hidden: h,
        intermediate: i,
        gate_up: Vec::with_capacity(e * 2 * i * h),
        down: Vec::with_capacity(e * h * i),
    };
    if source.contains(&fused_gu) {
        let gu_shape = source.shape(&fused_gu).unwrap_or_default();
        let gu_transposed = gu_shape == [e, h, 2 * i] && h != 2 * i;
        let shape = if gu_transposed {
            [e, h, 2 * i]
        } else {
            [e, 2 * i, h]
        };
        let gu = source.tensor(&fused_gu, &shape, Init::Zeros)?;
        let down_shape = source.shape(&fused_down).unwrap_or_default();
        let down_transposed = down_shape == [e, i, h] && h != i;
        let shape = if down_transposed {
            [e, i, h]
        } else {
            [e, h, i]
        };
        let down = source.tensor(&fused_down, &shape, Init::Zeros)?;
        if gu_transposed {
            for gu_e in gu.chunks_exact(2 * i * h) {
                hf.gate_up.extend(transpose(gu_e, h, 2 * i));
            }
        } else {
            hf.gate_up = gu;
        }
        if down_transposed {
            for down_e in down.chunks_exact(h * i) {
                hf.down.extend(transpose(down_e, i, h));
            }
        } else {
            hf.down = down;
        }
        return Ok(Experts::from_hf(&hf, source.device()));
    }
    let std_in = |d: usize| Init::Normal(1.0 / (d as f32).sqrt());
    for x in 0..e {
        let gate = source.tensor(&keys.expert_weight(x, 0), &[i, h], std_in(h))?;
        let up = source.tensor(&keys.expert_weight(x, 1), &[i, h], std_in(h))?;
        let down = source.tensor(&keys.expert_weight(x, 2), &[h, i], std_in(i))?;
        hf.gate_up.extend(gate);
        hf.gate_up.extend(up);
        hf.down.extend(down);
    }
    Ok(Experts::from_hf(&hf, source.device()))
}

/// `silu(gate) ⊙ up` for `gu = [gate | up]` along the last axis (the stacked `gate_up`
/// projection's output), one fused op when training on the CPU backend (see `fused`).
/// Inference keeps Burn's `silu`, whose libm `expf` keeps Qwen2-MoE's logits within the HF
/// parity tolerance (the fused sigmoid's extra ulp moved them 1.2e-6 beyond it).
fn gated_silu(gu: Tensor<3>) -> Tensor<3> {
    on_autodiff_flex(&GatedSilu, &gu).unwrap_or_else(|| {
        let i = gu.dims()[2] / 2;
        let gate = gu.clone().narrow(2, 0, i);
        let up = gu.narrow(2, i, i);
        silu(gate) * up
    })
}

/// [`gated_silu`] as one op. It keeps its input, which holds both halves its backward needs;
/// Burn's composition keeps the sigmoid and the SiLU besides.
#[derive(Debug, Clone)]
struct GatedSilu;

impl FusedOp for GatedSilu {
    fn forward(&self, gu: &FlexTensor) -> (FlexTensor, FlexTensor) {
        let rows = Rows::of(gu);
        let shape = gu.layout().shape();
        let i = shape.last().copied().unwrap_or(0) / 2;
        let out = par_rows(
            with_width(shape, i),
            #[inline(always)]
            |row, out| {
                let (gate, up) = rows.floats(row).split_at(i);
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = g * sigmoid(g) * u;
                }
            },
        );
        (out, gu.clone())
    }
}

impl Backward<Flex, 1> for GatedSilu {
    type State = FlexTensor;

    /// `∂up = ∂y ⊙ silu(g)`, `∂gate = ∂y ⊙ up ⊙ σ(g)(1 + g(1 − σ(g)))`, row by row.
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gu = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let (rows, grad) = (Rows::of(&gu), Rows::of(&grad));
            par_rows(
                gu.layout().shape().clone(),
                #[inline(always)]
                |row, out| {
                    let i = out.len() / 2;
                    let (gate, up) = rows.floats(row).split_at(i);
                    let (d_gate, d_up) = out.split_at_mut(i);
                    let dy = grad.floats(row);
                    for j in 0..i {
                        let s = sigmoid(gate[j]);
                        d_up[j] = dy[j] * (gate[j] * s);
                        d_gate[j] = dy[j] * up[j] * s * (1.0 + gate[j] * (1.0 - s));
                    }
                },
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused `silu(gate) ⊙ up` equals Burn's composition in value and in the gradient of
    /// `[gate | up]`, with and without recomputation, and is the op taken in training only.
    #[test]
    fn fused_gated_silu_matches_burn() {
        use burn::tensor::Distribution;
        for (device, tracked) in [
            (Device::flex().autodiff(), true),
            (Device::flex().autodiff().gradient_checkpointing(), true),
            (Device::flex(), false),
        ] {
            let values = Tensor::<3>::random([3, 5, 14], Distribution::Normal(0.0, 4.0), &device)
                .into_data();
            let weights = Tensor::<3>::random([3, 5, 7], Distribution::Default, &device);
            let run = |fuse: bool| {
                let mut gu = Tensor::<3>::from_data(values.clone(), &device);
                if tracked {
                    gu = gu.require_grad();
                }
                let y = match fuse {
                    true => {
                        let took = on_autodiff_flex::<3, 3>(&GatedSilu, &gu).is_some();
                        assert_eq!(took, tracked, "the fused op is for training only");
                        gated_silu(gu.clone())
                    }
                    false => silu(gu.clone().narrow(2, 0, 7)) * gu.clone().narrow(2, 7, 7),
                };
                let to_vec = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().expect("f32");
                let grad = tracked.then(|| {
                    let grads = (y.clone() * weights.clone()).sum().backward();
                    to_vec(gu.grad(&grads).expect("tracked"))
                });
                (to_vec(y), grad)
            };
            let ((y, g), (y_ref, g_ref)) = (run(true), run(false));
            assert_eq!(g.is_some(), tracked);
            let max_diff = |a: &[f32], b: &[f32]| {
                let d = a.iter().zip(b).map(|(a, b)| (a - b).abs());
                d.fold(0.0f32, f32::max)
            };
            assert!(
                max_diff(&y, &y_ref) < 1e-5,
                "values: {}",
                max_diff(&y, &y_ref)
            );
            if let (Some(g), Some(g_ref)) = (g, g_ref) {
                assert!(
                    max_diff(&g, &g_ref) < 1e-5,
                    "gradients: {}",
                    max_diff(&g, &g_ref)
                );
            }
        }
    }

    fn padded_rows(tiers: &[Tier]) -> usize {
        tiers.iter().map(|t| t.experts.len() * t.capacity).sum()
    }

    #[test]
    fn balanced_load_is_one_tier() {
        let tiers = plan_tiers(&[40, 40, 40, 40], true);
        assert_eq!(tiers.len(), 1);
        assert!(tiers[0].all_experts);
        assert_eq!(tiers[0].capacity, 40);
    }

    #[test]
    fn decoding_runs_only_the_selected_experts() {
        // One token, top-2 of 64: two gathered experts with one row each.
        let mut counts = vec![0; 64];
        counts[5] = 1;
        counts[40] = 1;
        let tiers = plan_tiers(&counts, false);
        assert_eq!(tiers.len(), 1);
        assert_eq!(tiers[0].experts, vec![5, 40]);
        assert!(!tiers[0].all_experts);
        assert_eq!((tiers[0].capacity, tiers[0].skip), (1, 0));
    }

    #[test]
    fn one_hot_expert_gets_a_second_tier() {
        // 15 experts at 100, one at 400: a single capacity would pad 4500 rows.
        let mut counts = vec![100; 16];
        counts[3] = 400;
        let tiers = plan_tiers(&counts, false);
        assert_eq!(tiers.len(), 2);
        assert_eq!((tiers[0].capacity, tiers[1].capacity), (100, 300));
        assert_eq!(tiers[1].experts, vec![3]);
        assert!(padded_rows(&tiers) < 16 * 400);
        assert_covers(&counts, &tiers);
    }

    #[test]
    fn skewed_load_uses_more_passes_and_covers_every_pair_once() {
        // Measured at the first step of an OLMoE-shaped layer on a repetitive input.
        let counts = [
            0, 0, 0, 0, 1, 2, 2, 3, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 10, 14, 16, 17, 17, 19, 20, 20,
            21, 24, 24, 25, 25, 27, 27, 29, 33, 34, 36, 43, 46, 46, 50, 53, 55, 59, 65, 67, 75, 76,
            82, 83, 90, 98, 104, 130, 152, 165, 166, 195, 221, 226, 268, 284, 312, 381,
        ];
        let tiers = plan_tiers(&counts, false);
        assert!(tiers.len() > 2 && tiers.len() <= MAX_TIERS);
        let total: usize = counts.iter().sum();
        // One pass would pad to 64 · 381 = 24384 rows for 4096 pairs.
        assert!(padded_rows(&tiers) < 2 * total, "{tiers:?}");
        assert_covers(&counts, &tiers);
    }

    fn assert_covers(counts: &[usize], tiers: &[Tier]) {
        for (e, &c) in counts.iter().enumerate() {
            let mut slots: Vec<usize> = tiers
                .iter()
                .filter(|t| t.experts.contains(&e))
                .flat_map(|t| t.skip..(t.skip + t.capacity).min(c))
                .collect();
            slots.sort_unstable();
            assert_eq!(slots, (0..c).collect::<Vec<_>>(), "expert {e}");
        }
    }

    #[test]
    fn nothing_routed_is_no_tier() {
        assert!(plan_tiers(&[0, 0, 0], true).is_empty());
        assert!(plan_tiers(&[0, 0, 0], false).is_empty());
    }

    #[test]
    fn training_gathers_only_when_the_skew_pays_for_the_backward() {
        // Mild imbalance: one pass.
        let counts: Vec<usize> = (0..64).map(|x| 52 + (x * 37 % 34)).collect();
        let tiers = plan_tiers(&counts, true);
        assert_eq!(tiers.len(), 1);
        assert!(tiers[0].all_experts);
        // Four experts take every token (a fresh model's router): they run alone.
        let mut counts = vec![0; 16];
        for c in &mut counts[..4] {
            *c = 2048;
        }
        let tiers = plan_tiers(&counts, true);
        assert_eq!(tiers.len(), 1);
        assert_eq!(tiers[0].experts, vec![0, 1, 2, 3]);
        assert_covers(&counts, &tiers);
    }

    #[test]
    fn a_few_idle_experts_pad_rather_than_gather() {
        // Measured on a fresh one-layer OLMoE model (64 experts, K 8, 128 tokens): three experts
        // get no pair. Gathering the other 61 would cost a full-size weight gradient in backward.
        let counts = [
            59, 52, 51, 46, 46, 45, 43, 40, 33, 31, 29, 29, 26, 25, 24, 23, 22, 18, 18, 17, 17, 17,
            17, 15, 15, 14, 14, 14, 13, 13, 13, 12, 11, 10, 10, 10, 10, 9, 9, 8, 8, 8, 8, 7, 7, 7,
            6, 6, 5, 5, 5, 5, 4, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0,
        ];
        for training in [true, false] {
            let tiers = plan_tiers(&counts, training);
            assert!(tiers[0].all_experts, "{training}: {tiers:?}");
            assert_eq!(tiers[0].experts.len(), 64);
            assert_covers(&counts, &tiers);
        }
    }

    #[test]
    fn hf_layout_round_trips_exactly() {
        let device = Device::flex();
        let (e, h, i) = (3, 4, 5);
        let hf = HfExperts {
            num_experts: e,
            hidden: h,
            intermediate: i,
            gate_up: (0..e * 2 * i * h).map(|x| x as f32 * 0.5 - 7.0).collect(),
            down: (0..e * h * i).map(|x| x as f32 * -0.25 + 3.0).collect(),
        };
        let experts = Experts::from_hf(&hf, &device);
        assert_eq!(experts.to_hf().unwrap(), hf);
        let [gate, up, down] = hf.expert(1);
        assert_eq!(gate[0], hf.gate_up[2 * i * h]);
        assert_eq!(up[0], hf.gate_up[2 * i * h + i * h]);
        assert_eq!(down.len(), h * i);
    }
}
