//! Softmax as one fused op on the CPU backend: attention's `softmax(scale·s, masked → fill)`
//! and the loss head's softmax over the vocabulary.
//!
//! Burn's autodiff differentiates the decomposition `exp(x − max) / Σ exp(x − max)` op by op,
//! and before this op the scaling and masking were two more: about a dozen single-threaded
//! passes over attention's `[B, heads, T_q, T_k]` scores per layer and step (at `[4, 4, 512,
//! 512]` in four causal blocks, 55 ms of a 95 ms attention forward and backward on two cores),
//! and recomputing the memory-bound ones kept the raw scores alive under balanced
//! checkpointing. Here it is one [`FusedOp`]: forward, per row, scale, mask, max, `exp`, sum,
//! normalise; backward `∂s = scale · masked→0(p ⊙ (g − Σ g·p))`; it keeps only its output
//! (which the following `p·v` keeps anyway) and the mask, read in place even when expanded
//! over heads. GPU backends, half precision and attention outside training compose Burn's ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use crate::fused::{
    FusedOp, Rows, dot_lanes, exp_nonpositive, flex_bool, fold_lanes, on_autodiff_flex, on_flex,
    par_rows,
};

/// `softmax(scale·scores, masked → fill)` over the last axis (`masked` has the scores' shape),
/// fused when training on the CPU backend (see the module docs). Inference keeps Burn's
/// composition: its libm `exp` and summation order keep Qwen2-MoE's logits within the HF
/// parity fixtures' tolerance, which the fused op's rounding overstepped by 1e-6.
pub fn attention_probs(
    scores: Tensor<4>,
    masked: Tensor<4, Bool>,
    fill: f32,
    scale: f64,
) -> Tensor<4> {
    let op = |masked| Masking {
        fill,
        scale,
        masked,
    };
    flex_bool(&masked)
        .and_then(|m| on_autodiff_flex(&op(Some(m)), &scores))
        .unwrap_or_else(|| softmax((scores * scale).mask_fill(masked, fill), 3))
}

/// `softmax` over the last axis of `[rows, width]` (the loss head's logits), fused on the CPU
/// backend.
pub(crate) fn softmax_rows(x: Tensor<2>) -> Tensor<2> {
    let plain = Masking {
        fill: 0.0,
        scale: 1.0,
        masked: None,
    };
    on_flex(plain, &x).unwrap_or_else(|| softmax(x, 1))
}

/// The scaling and the masked value of one softmax, and its mask (Flex's bool storage).
#[derive(Debug, Clone)]
struct Masking {
    fill: f32,
    scale: f64,
    masked: Option<FlexTensor>,
}

impl FusedOp for Masking {
    /// `softmax(scale·x, masked → fill)` row by row: keeps its output `p` (which the following
    /// `p·v` keeps anyway) and the mask.
    fn forward(&self, x: &FlexTensor) -> (FlexTensor, Self::State) {
        let (xs, ms) = (Rows::of(x), self.masked.as_ref().map(Rows::of));
        let (scale, fill) = (self.scale as f32, self.fill);
        let probs = par_rows(
            x.layout().shape().clone(),
            #[inline(always)]
            |row, out| {
                let x = xs.floats(row);
                match &ms {
                    Some(m) => {
                        for ((o, &x), &m) in out.iter_mut().zip(x).zip(m.flags(row)) {
                            *o = if m != 0 { fill } else { x * scale };
                        }
                    }
                    None => out.copy_from_slice(x),
                }
                let max = fold_lanes(out, f32::NEG_INFINITY, f32::max);
                for o in out.iter_mut() {
                    *o = exp_nonpositive(*o - max);
                }
                let inv = 1.0 / fold_lanes(out, 0.0, |a, b| a + b);
                for o in out.iter_mut() {
                    *o *= inv;
                }
            },
        );
        (probs.clone(), (probs, self.masked.clone()))
    }
}

impl Backward<Flex, 1> for Masking {
    /// The op's output `p` and the mask.
    type State = (FlexTensor, Option<FlexTensor>);

    /// `∂x = scale · masked→0(p ⊙ (g − Σ g·p))`, row by row.
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (probs, masked) = ops.state;
        let scale = self.scale as f32;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let (p, g) = (Rows::of(&probs), Rows::of(&grad));
            let m = masked.as_ref().map(Rows::of);
            par_rows(
                probs.layout().shape().clone(),
                #[inline(always)]
                |row, out| {
                    let (p, g) = (p.floats(row), g.floats(row));
                    let dot = dot_lanes(p, g);
                    for ((o, &p), &g) in out.iter_mut().zip(p).zip(g) {
                        *o = scale * (p * (g - dot));
                    }
                    if let Some(m) = &m {
                        for (o, &m) in out.iter_mut().zip(m.flags(row)) {
                            if m != 0 {
                                *o = 0.0;
                            }
                        }
                    }
                },
            )
        });
    }
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
                        let m = flex_bool(&masked).expect("a Flex mask");
                        let op = Masking {
                            fill,
                            scale,
                            masked: Some(m),
                        };
                        let took = on_autodiff_flex::<4, 4>(&op, &x).is_some();
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

    /// The loss head's softmax (detached logits, outside autodiff) equals Burn's, on a
    /// transposed (strided) input too.
    #[test]
    fn row_softmax_matches_burn() {
        let device = Device::flex();
        let x = Tensor::<2>::random([42, 11], Distribution::Normal(0.0, 4.0), &device);
        for rows in [x.clone(), x.transpose()] {
            let plain = Masking {
                fill: 0.0,
                scale: 1.0,
                masked: None,
            };
            assert!(on_flex::<2, 2>(plain, &rows).is_some());
            let diff: f32 = (softmax_rows(rows.clone()) - softmax(rows, 1))
                .abs()
                .max()
                .into_scalar();
            assert!(diff < 1e-6, "differs by {diff}");
        }
    }
}
