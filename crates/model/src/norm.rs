//! RMSNorm in the Hugging Face order.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::LoadError;
use crate::weights::{Init, Weights};

/// `y = cast_back(x / sqrt(mean(x²) + eps)) · weight`, the statistics in f32.
///
/// Hugging Face (Llama, OLMoE, Qwen, Mixtral) upcasts to f32, normalises, casts back to the input
/// dtype and only then multiplies by the weight; burn-nn's `RmsNorm` multiplies before casting,
/// which differs in bf16.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Scale, `[W]` (HF `weight`).
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// A norm of width `width` with unit weights.
    pub fn ones(width: usize, eps: f64, device: &Device) -> Self {
        Self::from_values(vec![1.0; width], eps, device)
    }

    /// The norm under `w` (HF `weight`), of width `width`.
    pub fn load(w: &mut Weights<'_>, width: usize, eps: f64) -> Result<Self, LoadError> {
        let weight = w.tensor("weight", &[width], Init::Ones)?;
        Ok(Self::from_values(weight, eps, w.device()))
    }

    /// A norm with the given weights.
    pub fn from_values(weight: Vec<f32>, eps: f64, device: &Device) -> Self {
        let n = weight.len();
        Self {
            weight: Param::from_data(TensorData::new(weight, [n]), device),
            eps,
        }
    }

    /// Normalises over the last dimension.
    ///
    /// # Shapes
    /// `[..., W]` → `[..., W]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let xf = if dtype == DType::F32 || dtype == DType::F64 {
            x
        } else {
            x.cast(DType::F32)
        };
        let mean_sq = xf.clone().square().mean_dim(D - 1);
        let normed = xf * (mean_sq + self.eps).sqrt().recip();
        let normed = if normed.dtype() == dtype {
            normed
        } else {
            normed.cast(dtype)
        };
        normed * self.weight.val().unsqueeze::<D>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_case() {
        let device = Device::flex();
        let norm = RmsNorm::from_values(vec![1.0, 2.0], 0.0, &device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
        // rms = sqrt((9 + 16) / 2) = sqrt(12.5)
        let r = 12.5f32.sqrt();
        let y = norm
            .forward(x)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert!(
            (y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6,
            "{y:?}"
        );
    }
}
