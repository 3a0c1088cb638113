//! SwiGLU feed-forward: dense MLPs, routed experts and the shared expert.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::LoadError;
use crate::hf_keys::SWIGLU;
use crate::lora::linear_forward;
use crate::weights::Weights;

/// `down(silu(gate(x)) ⊙ up(x))`, no biases (HF `*MLP` / Mixtral `w2(silu(w1 x) ⊙ w3 x)`).
#[derive(Module, Debug)]
pub struct SwiGlu {
    /// `[H, I]` (HF `gate_proj` / Mixtral `w1`, transposed).
    pub gate_proj: Linear,
    /// `[H, I]` (HF `up_proj` / Mixtral `w3`, transposed).
    pub up_proj: Linear,
    /// `[I, H]` (HF `down_proj` / Mixtral `w2`, transposed).
    pub down_proj: Linear,
}

impl SwiGlu {
    /// The block under `w` ([`SWIGLU`] projections) for hidden width `h` and intermediate `i`.
    pub fn load(w: &mut Weights<'_>, h: usize, i: usize) -> Result<Self, LoadError> {
        // Fields evaluate in HF order, so the first missing key is the first on disk.
        Ok(Self {
            gate_proj: w.pp(SWIGLU[0]).linear(h, i, false)?,
            up_proj: w.pp(SWIGLU[1]).linear(h, i, false)?,
            down_proj: w.pp(SWIGLU[2]).linear(i, h, false)?,
        })
    }

    /// # Shapes
    /// `[..., H]` → `[..., H]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = silu(linear_forward(&self.gate_proj, x.clone()));
        linear_forward(&self.down_proj, gate * linear_forward(&self.up_proj, x))
    }
}
