//! Element-wise work fused into one row-parallel pass on the CPU backend, as autodiff ops.
//!
//! Burn's autodiff differentiates a composition such as `exp(x − max) / Σ exp(x − max)` or
//! `silu(g) ⊙ u` op by op, and the CPU backend (Flex) runs each element-wise op as its own pass
//! on one thread, with libm's scalar `expf`. An op here ([`FusedOp`]) is one forward pass and
//! one backward pass over the rows of its input, spread over rayon's threads, with an `exp`
//! that vectorises; it keeps what its backward needs and nothing else. [`on_flex`] runs it on
//! f32 Flex tensors (tracked under either checkpointing strategy, or not tracked) and declines
//! everything else (GPU backends, half precision), where the caller composes Burn's ops.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::backend::{DispatchKindConversion, DispatchTensor};
use burn::tensor::{Bool, Bytes, DType, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task: enough work per task at attention's row widths.
const ROWS_PER_TASK: usize = 16;

/// An op with a hand-written forward and backward over the rows of an f32 Flex tensor.
pub(crate) trait FusedOp: Backward<Flex, 1> + Clone {
    /// The output, and the state the backward needs.
    fn forward(&self, x: &FlexTensor) -> (FlexTensor, Self::State);
}

/// `op(x)` as one autodiff node when `x` is an f32 tensor on the CPU backend, tracked or not;
/// `None` elsewhere.
pub(crate) fn on_flex<const D: usize, const O: usize>(
    op: impl FusedOp,
    x: &Tensor<D>,
) -> Option<Tensor<O>> {
    on_autodiff_flex(&op, x).or_else(|| {
        let x = x.clone().try_into_primitive::<Flex>().ok()?;
        Some(Tensor::from_primitive::<Flex>(op.forward(&x).0))
    })
}

/// [`on_flex`] for training only: `x` on the CPU backend under autodiff. For ops whose
/// rounding would move inference off the HF parity fixtures' tolerances.
pub(crate) fn on_autodiff_flex<const D: usize, const O: usize>(
    op: &impl FusedOp,
    x: &Tensor<D>,
) -> Option<Tensor<O>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    tracked::<NoCheckpointing, D, O>(op, x)
        .or_else(|| tracked::<BalancedCheckpointing, D, O>(op, x))
}

fn tracked<C: CheckpointStrategy, const D: usize, const O: usize>(
    op: &impl FusedOp,
    x: &Tensor<D>,
) -> Option<Tensor<O>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let (x, node) = x
        .clone()
        .try_into_primitive::<Autodiff<Flex, C>>()
        .ok()?
        .into_parts();
    let (out, state) = op.forward(&x);
    // Compute-bound: balanced checkpointing keeps the state rather than recomputing the op.
    let out = match op.clone().prepare::<C>([node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

/// A bool tensor's Flex storage, whether its device is the CPU backend under autodiff (either
/// strategy) or not; `None` on other backends.
pub(crate) fn flex_bool<const D: usize>(t: &Tensor<D, Bool>) -> Option<FlexTensor> {
    t.clone()
        .try_into_primitive::<Autodiff<Flex, NoCheckpointing>>()
        .or_else(|_| {
            t.clone()
                .try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>()
        })
        .or_else(|_| t.clone().try_into_primitive::<Flex>())
        .ok()
}

/// A tensor's rows (all axes but the last) read in place: where each starts in the storage.
/// A mask expanded over heads (stride 0) is read without being copied to the scores' size;
/// a layout whose last axis is not unit-stride is copied first.
pub(crate) struct Rows {
    tensor: FlexTensor,
    starts: Vec<usize>,
    width: usize,
}

impl Rows {
    pub(crate) fn of(t: &FlexTensor) -> Self {
        match row_starts(t.layout()) {
            Some(starts) => Self {
                width: t.layout().shape().last().copied().unwrap_or(1),
                tensor: t.clone(),
                starts,
            },
            None => Self::of(&t.to_contiguous()),
        }
    }

    pub(crate) fn floats(&self, row: usize) -> &[f32] {
        &self.tensor.storage::<f32>()[self.starts[row]..][..self.width]
    }

    /// A bool row, one byte per flag (Flex stores bools as `u8`).
    pub(crate) fn flags(&self, row: usize) -> &[u8] {
        &self.tensor.storage::<u8>()[self.starts[row]..][..self.width]
    }
}

/// Where each row of `layout` starts in its storage, when its last axis is unit-stride and no
/// stride is negative (a contiguous layout always qualifies, so [`Rows::of`]'s copy ends there).
fn row_starts(layout: &Layout) -> Option<Vec<usize>> {
    let (shape, strides) = (layout.shape(), layout.strides());
    let n = shape.num_dims();
    if n == 0 {
        // A scalar is one row of one element.
        return Some(vec![layout.start_offset()]);
    }
    if (shape[n - 1] > 1 && strides[n - 1] != 1) || strides.iter().any(|&s| s < 0) {
        return None;
    }
    let rows: usize = (0..n - 1).map(|d| shape[d]).product();
    let mut index = vec![0usize; n - 1];
    let mut starts = Vec::with_capacity(rows);
    for _ in 0..rows {
        let offset: isize = index
            .iter()
            .zip(strides)
            .map(|(&i, &s)| i as isize * s)
            .sum();
        starts.push(layout.start_offset() + offset.unsigned_abs());
        for d in (0..n - 1).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(starts)
}

/// A fresh contiguous f32 tensor of `shape` whose rows `fill(row, out)` writes, in parallel.
/// Each task's loop is compiled for the widest vector extension the CPU has (`pulp` picks it
/// at run time; the binary's baseline is SSE2).
pub(crate) fn par_rows(shape: Shape, fill: impl Fn(usize, &mut [f32]) + Sync) -> FlexTensor {
    let width = shape.last().copied().unwrap_or(1).max(1);
    let mut out = vec![0.0f32; shape.num_elements()];
    let arch = pulp::Arch::new();
    out.par_chunks_mut(ROWS_PER_TASK * width)
        .enumerate()
        .for_each(|(task, rows)| {
            arch.dispatch(RowTask {
                rows,
                first: task * ROWS_PER_TASK,
                width,
                fill: &fill,
            })
        });
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// One task of [`par_rows`]: its rows, filled in a function compiled for the chosen vector
/// extension (`fill`, an `#[inline(always)]` closure, is inlined into it).
struct RowTask<'a, F> {
    rows: &'a mut [f32],
    first: usize,
    width: usize,
    fill: &'a F,
}

impl<F: Fn(usize, &mut [f32])> pulp::WithSimd for RowTask<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (i, row) in self.rows.chunks_exact_mut(self.width).enumerate() {
            (self.fill)(self.first + i, row);
        }
    }
}

/// `shape` with its last axis `width` wide.
pub(crate) fn with_width(shape: &Shape, width: usize) -> Shape {
    let mut dims: Vec<usize> = shape.iter().copied().collect();
    if let Some(last) = dims.last_mut() {
        *last = width;
    }
    Shape::from(dims)
}

/// Independent accumulators of the reductions (one AVX-512 register), so that they vectorise.
const LANES: usize = 16;

/// `xs` folded with `f` (associative and commutative) over `LANES` interleaved accumulators.
#[inline(always)]
pub(crate) fn fold_lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = f(*a, x);
        }
    }
    acc.into_iter().fold(tail, f)
}

/// `Σ aᵢ·bᵢ` over `LANES` interleaved accumulators.
#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.into_iter().sum::<f32>() + tail
}

/// `eˣ` for `x ≤ 0`, vectorisable (no libm call, no branch): `2ⁿ·eʳ` with `n = round(x / ln 2)`
/// and Cephes' degree-6 polynomial for `eʳ` on `|r| ≤ ln 2 / 2` (within 2.5 ulp of libm); 0
/// below the log of f32's smallest normal, NaN for NaN.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5·2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    /// ln of f32's smallest normal number.
    const LOWEST: f32 = -87.336_55;
    let c = x.clamp(LOWEST, 0.0);
    let n = (c * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LOWEST { 0.0 } else { e * two_n }
}

/// `1 / (1 + e⁻ˣ)` through [`exp_nonpositive`] of `−|x|`, as Flex computes it (no overflow).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised `exp` and sigmoid against libm's over their domains, with their edges.
    #[test]
    fn exp_and_sigmoid_are_within_a_few_ulp_of_libm() {
        let worst = (0..=200_000)
            .map(|i| -87.3 * i as f32 / 200_000.0)
            .chain([0.0, -1e-30, -0.5 * std::f32::consts::LN_2, -87.33])
            .map(|x| ((exp_nonpositive(x) - x.exp()) / x.exp()).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 2.5 * f32::EPSILON, "exp: relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        let libm = |x: f32| 1.0 / (1.0 + (-x).exp());
        let worst = (-200_000..=200_000)
            .map(|i| 30.0 * i as f32 / 200_000.0)
            .map(|x| ((sigmoid(x) - libm(x)) / libm(x)).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 4.0 * f32::EPSILON,
            "sigmoid: relative error {worst}"
        );
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
    }
}
