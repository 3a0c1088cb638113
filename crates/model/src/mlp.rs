//! SwiGLU feed-forward: dense MLPs, routed experts and the shared expert.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::lora::linear_forward;

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
    /// # Shapes
    /// `[..., H]` → `[..., H]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = silu(linear_forward(&self.gate_proj, x.clone()));
        linear_forward(&self.down_proj, gate * linear_forward(&self.up_proj, x))
    }
}
