//! Attention's probabilities, `softmax(scale·s, masked → fill)`, as one op on the CPU backend.
//!
//! Burn's autodiff has no softmax of its own: it differentiates the decomposition
//! `exp(x − max) / Σ exp(x − max)` op by op, and on the CPU backend (Flex) those element-wise
//! ops run on one thread. Over attention's `[B, heads, T_q, T_k]` scores that is about ten
//! single-threaded passes per layer and step (measured at `[4, 4, 512, 512]` in four causal
//! blocks: 55 ms of a 95 ms attention forward and backward on two cores), and the scaling and
//! masking before it are two more ops whose recomputation keeps the raw scores alive under
//! balanced checkpointing. Here tracked f32 scores on Flex get one op: the same scaling and
//! masking as untracked Flex ops, Flex's fused row-parallel softmax, and one row-parallel
//! backward pass `∂s = scale · masked→0(p ⊙ (g − Σ g·p))`. The op keeps only its output (which
//! the following `p·v` keeps anyway) and the mask. Every other case (GPU backends, untracked
//! tensors, half precision) composes Burn's ops as before.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{DispatchKindConversion, DispatchTensor, Scalar};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Bytes, DType, Tensor};
use rayon::prelude::*;

/// Rows per parallel task: enough work per task at attention's row widths.
const ROWS_PER_TASK: usize = 16;

/// `softmax(scale·scores, masked → fill)` over the last axis (`masked` has the scores' shape),
/// fused on the CPU backend while training (see the module docs).
pub fn attention_probs(
    scores: Tensor<4>,
    masked: Tensor<4, Bool>,
    fill: f32,
    scale: f64,
) -> Tensor<4> {
    let fused = Masking { fill, scale };
    if scores.dtype() == DType::F32 {
        if let Some(p) = fused.tracked_on::<NoCheckpointing>(&scores, &masked) {
            return p;
        }
        if let Some(p) = fused.tracked_on::<BalancedCheckpointing>(&scores, &masked) {
            return p;
        }
    }
    softmax((scores * scale).mask_fill(masked, fill), 3)
}

/// The scaling and the masked value of one attention softmax.
#[derive(Debug, Clone, Copy)]
struct Masking {
    fill: f32,
    scale: f64,
}

impl Masking {
    /// The fused op when `scores` is a tracked Flex tensor under checkpointing strategy `C`.
    fn tracked_on<C: CheckpointStrategy>(
        self,
        scores: &Tensor<4>,
        masked: &Tensor<4, Bool>,
    ) -> Option<Tensor<4>>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let s = scores
            .clone()
            .try_into_primitive::<Autodiff<Flex, C>>()
            .ok()?;
        let m = masked
            .clone()
            .try_into_primitive::<Autodiff<Flex, C>>()
            .ok()?;
        Some(Tensor::from_primitive::<Autodiff<Flex, C>>(
            self.tracked::<C>(s, m),
        ))
    }

    fn tracked<C: CheckpointStrategy>(
        self,
        scores: FloatTensor<Autodiff<Flex, C>>,
        masked: FlexTensor,
    ) -> FloatTensor<Autodiff<Flex, C>> {
        let (scores, node) = scores.into_parts();
        let last = scores.layout().shape().num_dims() - 1;
        let x = Flex::float_mul_scalar(scores, Scalar::Float(self.scale));
        let x = Flex::float_mask_fill(x, masked.clone(), Scalar::Float(f64::from(self.fill)));
        let probs = <Flex as ActivationOps<Flex>>::softmax(x, last);
        match self.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((probs.clone(), masked), probs),
            OpsKind::UnTracked(prep) => prep.finish(probs),
        }
    }
}

impl Backward<Flex, 1> for Masking {
    /// The op's output `p` and the mask.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (probs, masked) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let d = softmax_backward(&probs, &grad);
            let d = Flex::float_mask_fill(d, masked, Scalar::Float(0.0));
            Flex::float_mul_scalar(d, Scalar::Float(self.scale))
        });
    }
}

/// `p ⊙ (g − Σ_last g·p)`, row-parallel, for f32 `p` and `g` of one shape.
fn softmax_backward(probs: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let shape = probs.layout().shape().clone();
    let width = shape.last().copied().unwrap_or(1).max(1);
    let (probs, grad) = (probs.to_contiguous(), grad.to_contiguous());
    let (p, g): (&[f32], &[f32]) = (probs.storage(), grad.storage());
    let mut out = vec![0.0f32; p.len()];
    let chunk = ROWS_PER_TASK * width;
    out.par_chunks_mut(chunk)
        .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(o, (p, g))| {
            for ((o, p), g) in o
                .chunks_exact_mut(width)
                .zip(p.chunks_exact(width))
                .zip(g.chunks_exact(width))
            {
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                    *o = p * (g - dot);
                }
            }
        });
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(shape),
        DType::F32,
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Int, Tensor};

    use super::*;

    /// Values and input gradients of `attention_probs` against Burn's composition, with a causal
    /// mask filled with −∞, a fully masked row filled with `f32::MIN` (uniform), and an upstream
    /// gradient that is not constant, with and without recomputation.
    #[test]
    fn fused_probabilities_match_burn_in_value_and_gradient() {
        let (b, h, tq, tk) = (2, 3, 9, 13);
        let scale = 0.125;
        for fill in [f32::NEG_INFINITY, f32::MIN] {
            for device in [
                Device::flex().autodiff(),
                Device::flex().autodiff().gradient_checkpointing(),
            ] {
                let values =
                    Tensor::<4>::random([b, h, tq, tk], Distribution::Normal(0.0, 3.0), &device)
                        .into_data();
                let weights = Tensor::<4>::random([b, h, tq, tk], Distribution::Default, &device);
                // Key j is masked for query i when j > i + 4; all of row 0 in batch 1.
                let q = Tensor::<1, Int>::arange(0..tq as i64, &device).reshape([1, 1, tq, 1]);
                let k = Tensor::<1, Int>::arange(0..tk as i64, &device).reshape([1, 1, 1, tk]);
                let causal = k.greater(q.add_scalar(4)).expand([b, 1, tq, tk]);
                let row0 = Tensor::<1, Int>::arange(0..(b * tq) as i64, &device)
                    .reshape([b, 1, tq, 1])
                    .equal_elem(tq as i64)
                    .expand([b, 1, tq, tk]);
                let masked = causal.bool_or(row0).expand([b, h, tq, tk]);
                let run = |fuse: bool| {
                    let x = Tensor::<4>::from_data(values.clone(), &device).require_grad();
                    if fuse {
                        let took = Masking { fill, scale }
                            .tracked_on::<NoCheckpointing>(&x, &masked)
                            .or_else(|| {
                                Masking { fill, scale }
                                    .tracked_on::<BalancedCheckpointing>(&x, &masked)
                            })
                            .is_some();
                        assert!(took, "tracked f32 Flex scores take the fused op");
                    }
                    let p = match fuse {
                        true => attention_probs(x.clone(), masked.clone(), fill, scale),
                        false => softmax((x.clone() * scale).mask_fill(masked.clone(), fill), 3),
                    };
                    let grads = (p.clone() * weights.clone()).sum().backward();
                    let g = x.grad(&grads).expect("x is tracked");
                    let to_vec = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().expect("f32");
                    (to_vec(p), to_vec(g))
                };
                let ((p, g), (p_ref, g_ref)) = (run(true), run(false));
                let max_diff = |a: &[f32], b: &[f32]| {
                    a.iter()
                        .zip(b)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max)
                };
                assert!(
                    max_diff(&p, &p_ref) < 1e-6,
                    "values differ by {}",
                    max_diff(&p, &p_ref)
                );
                assert!(
                    max_diff(&g, &g_ref) < 1e-6,
                    "gradients differ by {}",
                    max_diff(&g, &g_ref)
                );
                // The fully masked row: uniform with f32::MIN (HF's fill), no gradient either way.
                let row = (tq * tk * h)..(tq * tk * h + tk);
                if fill == f32::MIN {
                    assert!(
                        p[row.clone()]
                            .iter()
                            .all(|&v| (v - 1.0 / tk as f32).abs() < 1e-7)
                    );
                }
                assert!(g[row].iter().all(|&v| v == 0.0));
            }
        }
    }
}
