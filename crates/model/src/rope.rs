//! Rotary position embedding, Hugging Face rotate-half convention.
//!
//! HF pairs dimension `i` with `i + d/2` (`rotate_half`), not adjacent dimensions as burn-nn's
//! `RotaryEncoding` does; using the latter silently breaks parity with HF checkpoints.

use burn::tensor::{Device, Tensor, TensorData};

/// `cos` and `sin` tables `[B, 1, T, d]` for the given positions (`[B·T]`, row-major), computed
/// in f32 as HF does: `inv_freq_i = 1 / θ^(2i/d)`, angle = position · inv_freq, repeated twice.
pub fn cos_sin(
    positions: &[usize],
    batch: usize,
    seq_len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &p in positions {
        for _ in 0..2 {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let shape = [batch, 1, seq_len, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// `[-x₂, x₁]` where `x = [x₁, x₂]` split in halves along the last dimension.
pub fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let first = x.clone().narrow(3, 0, d / 2);
    let second = x.narrow(3, d / 2, d - d / 2);
    Tensor::cat(vec![second.neg(), first], 3)
}

/// `x·cos + rotate_half(x)·sin`.
///
/// # Shapes
/// `x`: `[B, heads, T, d]`, `cos`/`sin`: `[B, 1, T, d]`.
pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    x.clone() * cos.clone() + rotate_half(x) * sin.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec4(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn rotate_half_pairs_i_with_i_plus_half() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 4]),
            &device,
        );
        assert_eq!(vec4(rotate_half(x)), vec![-3.0, -4.0, 1.0, 2.0]);
    }

    #[test]
    fn hand_case() {
        // d = 4, θ = 100: inv_freq = [1, 1/10]; position 2 → angles [2, 0.2, 2, 0.2].
        let device = Device::flex();
        let (cos, sin) = cos_sin(&[2], 1, 1, 4, 100.0, &device);
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 4]),
            &device,
        );
        let y = vec4(apply(x, &cos, &sin));
        let (a, b) = (2.0f32, 0.2f32);
        let want = [
            a.cos() - 3.0 * a.sin(),
            2.0 * b.cos() - 4.0 * b.sin(),
            3.0 * a.cos() + a.sin(),
            4.0 * b.cos() + 2.0 * b.sin(),
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{y:?} vs {want:?}");
        }
    }
}
