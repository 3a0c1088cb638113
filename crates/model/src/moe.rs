//! The sparse MoE block: router → per-expert gather → SwiGLU → weighted scatter-add.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::sigmoid;
use burn::tensor::{IndexingUpdateOp, Tensor};
use seqtopk_router::{ExpertCache, Router, RouterOutput, TokenLayout};

use crate::ModelError;
use crate::mlp::SwiGlu;

/// How the block asks the router for a plan.
#[derive(Debug)]
pub enum RouteCall<'a> {
    /// Whole sequences at once (training, evaluation, any mode).
    Full,
    /// Generation prefill in `online_seqtopk` mode; fills the layer's expert cache.
    Prefill(&'a mut ExpertCache),
    /// Generation decode step in `online_seqtopk` mode.
    Decode(&'a mut ExpertCache),
}

/// Sparse MoE block (HF `OlmoeSparseMoeBlock`, `Qwen2MoeSparseMoeBlock`, `Qwen3MoeSparseMoeBlock`,
/// `MixtralSparseMoeBlock`): `y = Σ_{e ∈ sel(x)} w_e(x)·expert_e(x)` plus, for Qwen2-MoE,
/// `sigmoid(shared_expert_gate(x))·shared_expert(x)`.
///
/// Experts are one [`SwiGlu`] each rather than stacked `[E, H, I]` parameters: Burn has no grouped
/// GEMM, so a stacked tensor would be sliced per expert anyway, and the backward of each slice
/// materialises a full `[E, H, I]` gradient (E of them per layer). Per-expert parameters keep
/// each expert's gradient its own size and map 1:1 to HF's per-expert keys.
#[derive(Module, Debug)]
pub struct SparseMoe {
    /// Router projection `[H, E]` (HF `mlp.gate`, transposed), no bias.
    pub gate: Linear,
    /// Routed experts.
    pub experts: Vec<SwiGlu>,
    /// Qwen2-MoE shared expert.
    pub shared_expert: Option<SwiGlu>,
    /// Qwen2-MoE shared expert gate `[H, 1]`.
    pub shared_expert_gate: Option<Linear>,
}

impl SparseMoe {
    /// Routes `x` and runs only the selected (token, expert) pairs.
    ///
    /// Host synchronisation: exactly one, inside the router (it reads the per-token candidate
    /// scores back to build the plan). The plan carries host copies of the per-expert offsets, so
    /// slicing `token_index` per expert and skipping idle experts needs no further read-back.
    ///
    /// # Shapes
    /// `x`: `[B, T, H]` → `[B, T, H]`; the layout is `[B, T]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        router: &Router,
        layout: &TokenLayout,
        call: RouteCall<'_>,
    ) -> Result<(Tensor<3>, RouterOutput), ModelError> {
        let [b, t, h] = x.dims();
        let e = self.experts.len();
        let flat = x.reshape([b * t, h]);
        let logits = self.gate.forward(flat.clone()).reshape([b, t, e]);
        let out = match call {
            RouteCall::Full => router.route(logits, layout)?,
            RouteCall::Prefill(cache) => router.route_prefill(logits, layout, cache)?,
            RouteCall::Decode(cache) => router.route_decode(logits, layout, cache)?,
        };
        let plan = &out.plan;
        let mut y = flat.zeros_like();
        for (idx, expert) in self.experts.iter().enumerate() {
            let range = plan.expert_range(idx);
            if range.is_empty() {
                continue;
            }
            let rows = plan.token_index.clone().narrow(0, range.start, range.len());
            let weights = plan
                .weights
                .clone()
                .narrow(0, range.start, range.len())
                .unsqueeze_dim::<2>(1);
            let xe = flat.clone().select(0, rows.clone());
            let ye = expert.forward(xe) * weights.cast(flat.dtype());
            y = y.select_assign(0, rows, ye, IndexingUpdateOp::Add);
        }
        if let (Some(shared), Some(gate)) = (&self.shared_expert, &self.shared_expert_gate) {
            y = y + sigmoid(gate.forward(flat.clone())) * shared.forward(flat);
        }
        Ok((y.reshape([b, t, h]), out))
    }
}
