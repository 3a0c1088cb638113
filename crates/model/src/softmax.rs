//! Softmax over the last axis with a one-pass backward on the CPU backend.
//!
//! Burn's autodiff has no softmax of its own: it differentiates the decomposition
//! `exp(x − max) / Σ exp(x − max)` op by op, and on the CPU backend (Flex) those element-wise
//! ops run on one thread. Over attention's `[B, heads, T_q, T_k]` scores that is about ten
//! single-threaded passes per layer and step (measured at `[4, 4, 512, 512]` in four causal
//! blocks: 55 ms of a 95 ms attention forward and backward on two cores). Here a tracked f32
//! tensor on Flex gets Flex's fused row-parallel softmax forward and one row-parallel backward
//! pass, `∂x = p ⊙ (g − Σ g·p)`, and the op keeps only its output (which the following `p·v`
//! keeps anyway). Every other case (GPU backends, untracked tensors, half precision) is Burn's
//! own softmax.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{DispatchKindConversion, DispatchTensor};
use burn::tensor::activation::softmax;
use burn::tensor::{Bytes, DType, Tensor};
use rayon::prelude::*;

/// Rows per parallel task: enough work per task at attention's row widths.
const ROWS_PER_TASK: usize = 16;

/// `softmax(x, D − 1)`, fused on the CPU backend while training (see the module docs).
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 {
        if let Some(y) = fused::<D, NoCheckpointing>(&x) {
            return y;
        }
        if let Some(y) = fused::<D, BalancedCheckpointing>(&x) {
            return y;
        }
    }
    softmax(x, D - 1)
}

/// The fused op when `x` is a tracked Flex tensor under checkpointing strategy `C`.
fn fused<const D: usize, C: CheckpointStrategy>(x: &Tensor<D>) -> Option<Tensor<D>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = x.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(tracked::<C>(x)))
}

#[derive(Debug)]
struct SoftmaxLast;

impl Backward<Flex, 1> for SoftmaxLast {
    /// The op's output `p`.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let probs = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            softmax_backward(&probs, &grad)
        });
    }
}

fn tracked<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
) -> FloatTensor<Autodiff<Flex, C>> {
    let (x, node) = x.into_parts();
    let last = x.layout().shape().num_dims() - 1;
    let probs = <Flex as ActivationOps<Flex>>::softmax(x, last);
    match SoftmaxLast.prepare::<C>([node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(probs.clone(), probs),
        OpsKind::UnTracked(prep) => prep.finish(probs),
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
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    /// Values and input gradients of `softmax_last` against Burn's softmax, with masked (−∞)
    /// entries, a fully masked row (`f32::MIN`, uniform) and an upstream gradient that is not
    /// constant, with and without recomputation.
    #[test]
    fn fused_softmax_matches_burn_in_value_and_gradient() {
        for device in [
            Device::flex().autodiff(),
            Device::flex().autodiff().gradient_checkpointing(),
        ] {
            let base = Tensor::<3>::random([2, 37, 45], Distribution::Normal(0.0, 3.0), &device);
            let mut values = base.into_data().try_to_vec::<f32>().expect("f32");
            values[..45].fill(f32::MIN);
            for (i, v) in values.iter_mut().enumerate().skip(45) {
                if i % 7 == 3 {
                    *v = f32::NEG_INFINITY;
                }
            }
            let weights = Tensor::<3>::random([2, 37, 45], Distribution::Default, &device);
            let run = |fuse: bool| {
                let x = Tensor::<1>::from_floats(values.as_slice(), &device)
                    .reshape([2, 37, 45])
                    .require_grad();
                let took_fused = fused::<3, NoCheckpointing>(&x)
                    .or_else(|| fused::<3, BalancedCheckpointing>(&x))
                    .is_some();
                assert!(took_fused, "a tracked f32 Flex tensor takes the fused op");
                let p = if fuse {
                    softmax_last(x.clone())
                } else {
                    softmax(x.clone(), 2)
                };
                let grads = (p.clone() * weights.clone()).sum().backward();
                let g = x.grad(&grads).expect("x is tracked");
                (
                    p.into_data().try_to_vec::<f32>().expect("f32"),
                    g.into_data().try_to_vec::<f32>().expect("f32"),
                )
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
            assert!(p[..45].iter().all(|&v| (v - 1.0 / 45.0).abs() < 1e-7));
        }
    }
}
