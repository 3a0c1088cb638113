//! Mixed precision: a half-precision view of an f32 model for the forward pass.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, FloatDType, Tensor};

use crate::MoeTransformer;

/// Casts every float parameter to one dtype.
struct CastParams(FloatDType);

/// `module` with its float parameters stored in `dtype` (as they are when `None`).
pub(crate) fn stored_in<M: Module>(module: M, dtype: Option<FloatDType>) -> M {
    match dtype {
        Some(dtype) => module.map(&mut CastParams(dtype)),
        None => module,
    }
}

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| {
            if t.dtype() == DType::from(dtype) {
                t
            } else {
                t.cast(dtype)
            }
        })
    }
}

/// Casts the parameters that take no gradient (a LoRA base) to one dtype.
struct CastFrozen(FloatDType);

impl ModuleMapper for CastFrozen {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        // Mappers see a reparameterized weight without its factors, whose own gradient flag
        // (on) keeps them as they are.
        if param.base().is_require_grad() || param.base().dtype() == DType::from(dtype) {
            param
        } else {
            param.map(|t| t.cast(dtype))
        }
    }
}

impl MoeTransformer {
    /// The model with its frozen parameters (those that take no gradient, e.g. the base of a
    /// LoRA run on an autodiff device) stored in `dtype`: they need no f32 master copy, so a
    /// half-precision run keeps them at half the memory. Trainable parameters stay as they are.
    pub fn store_frozen_in(self, dtype: FloatDType) -> MoeTransformer {
        self.map(&mut CastFrozen(dtype))
    }

    /// The model with its float parameters cast to `dtype`, for computing in half precision
    /// while the optimiser keeps f32 master weights (mixed precision, as PyTorch's autocast).
    ///
    /// The casts are ordinary tensor ops: on an autodiff device they sit in the graph, so the
    /// gradients of a loss computed with the returned model reach `self`'s parameters in f32.
    /// Norm statistics, attention softmax, routing and the logits stay in f32 (see
    /// [`RmsNorm`](crate::RmsNorm), [`Attention`](crate::Attention), the router), as Hugging
    /// Face computes them in bf16.
    pub fn cast_for_compute(&self, dtype: FloatDType) -> MoeTransformer {
        self.clone().map(&mut CastParams(dtype))
    }
}
