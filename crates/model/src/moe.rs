//! The sparse MoE block: router → batched expert dispatch ([`Experts`]) → weighted scatter-add.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;
use seqtopk_router::{ExpertCache, Router, RouterOutput, TokenLayout};

use crate::config::{Family, MoeTransformerConfig};
use crate::experts::{Experts, load_experts};
use crate::hf_keys::MoeKeys;
use crate::mlp::SwiGlu;
use crate::weights::Weights;
use crate::{LoadError, ModelError};

/// How the block asks the router for a plan.
#[derive(Debug)]
pub enum RouteCall<'a> {
    /// Whole sequences at once (training, evaluation, any mode).
    Full,
    /// Generation prefill in `online_seqtopk` mode; fills the layer's expert cache.
    Prefill(&'a mut ExpertCache),
    /// Generation decode step in `online_seqtopk` mode.
    Decode(&'a mut ExpertCache),
    /// Whole sequences routed as generation would (`online_seqtopk`): the first `n[b]` valid
    /// tokens of row `b` as a prefilled prompt, the rest as decode steps.
    Prompted(&'a [usize]),
}

/// Sparse MoE block (HF `OlmoeSparseMoeBlock`, `Qwen2MoeSparseMoeBlock`, `Qwen3MoeSparseMoeBlock`,
/// `MixtralSparseMoeBlock`): `y = Σ_{e ∈ sel(x)} w_e(x)·expert_e(x)` plus, for Qwen2-MoE,
/// `sigmoid(shared_expert_gate(x))·shared_expert(x)`.
///
/// The routed experts are stacked ([`Experts`]) and run by one batched dispatch, so the layer
/// issues the same number of tensor operations for any number of experts.
#[derive(Module, Debug)]
pub struct SparseMoe {
    /// Router projection `[H, E]` (HF `mlp.gate`, transposed), no bias.
    pub gate: Linear,
    /// Routed experts.
    pub experts: Experts,
    /// Qwen2-MoE shared expert.
    pub shared_expert: Option<SwiGlu>,
    /// Qwen2-MoE shared expert gate `[H, 1]`.
    pub shared_expert_gate: Option<Linear>,
}

impl SparseMoe {
    /// The MoE block of the decoder layer under `w`: router, experts (per-expert or fused) and,
    /// for Qwen2-MoE, the shared expert and its gate.
    pub fn load(c: &MoeTransformerConfig, w: &mut Weights<'_>) -> Result<Self, LoadError> {
        let moe = c
            .moe
            .as_ref()
            .ok_or_else(|| ModelError::Input("MoE layer without an MoE config".into()))?;
        let (h, e, i) = (c.hidden_size, moe.num_experts, moe.expert_intermediate_size);
        // Mixtral keeps `block_sparse_moe` on disk unless re-saved in the fused v5 layout (`mlp`).
        let v5 = MoeKeys::new("", false);
        let mixtral_per_expert =
            c.family == Family::Mixtral && !w.pp(&v5.gate()).contains("weight");
        let keys = MoeKeys::new("", mixtral_per_expert);
        let gate = w.pp(&keys.gate()).linear(h, e, false)?;
        let experts = load_experts(w, &keys, e, h, i)?;
        let (shared_expert, shared_expert_gate) = match moe.shared_expert_intermediate_size {
            Some(si) => (
                Some(SwiGlu::load(&mut w.pp(&keys.shared_expert()), h, si)?),
                Some(w.pp(&keys.shared_expert_gate()).linear(h, 1, false)?),
            ),
            None => (None, None),
        };
        Ok(Self {
            gate,
            experts,
            shared_expert,
            shared_expert_gate,
        })
    }

    /// Routes `x` and runs only the selected (token, expert) pairs.
    ///
    /// Host synchronisation: exactly one, inside the router (it reads the per-token candidate
    /// scores back to build the plan). The plan carries host copies of the per-expert offsets and
    /// pair positions, so the dispatch's gather indices need no further read-back.
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
        let e = self.experts.num_experts();
        let flat = x.reshape([b * t, h]);
        let logits = self.gate.forward(flat.clone()).reshape([b, t, e]);
        let out = match call {
            RouteCall::Full => router.route(logits, layout)?,
            RouteCall::Prefill(cache) => router.route_prefill(logits, layout, cache)?,
            RouteCall::Decode(cache) => router.route_decode(logits, layout, cache)?,
            RouteCall::Prompted(prompt_lens) => {
                router.route_prompted(logits, layout, prompt_lens)?
            }
        };
        let mut y = self.experts.forward(flat.clone(), &out.plan);
        if let (Some(shared), Some(gate)) = (&self.shared_expert, &self.shared_expert_gate) {
            y = y + sigmoid(gate.forward(flat.clone())) * shared.forward(flat);
        }
        Ok((y.reshape([b, t, h]), out))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor, TensorData};
    use seqtopk_router::{RouterConfig, RoutingMode, TokenLayout};

    use super::RouteCall;
    use crate::{Ffn, MoeTransformer, MoeTransformerConfig};

    /// The sparse dispatch equals a dense reference that runs every expert on every token and
    /// weights it by the plan (zero where not selected), for variable per-token counts and padding.
    #[test]
    fn sparse_dispatch_equals_dense_reference() {
        let device = Device::flex();
        let cfg = MoeTransformerConfig::from_json_str(
            r#"{"model_type":"qwen2_moe","vocab_size":32,"hidden_size":24,"intermediate_size":20,
            "moe_intermediate_size":12,"num_hidden_layers":1,"num_attention_heads":2,
            "rms_norm_eps":1e-6,"rope_theta":10000.0,"num_experts":5,"num_experts_per_tok":2,
            "shared_expert_intermediate_size":8}"#,
            "test",
        )
        .unwrap();
        let mut model = MoeTransformer::init(&cfg, 7, &device).unwrap();
        model
            .set_routing(&RouterConfig::new(RoutingMode::Seqtopk, 2))
            .unwrap();
        let Ffn::Moe(moe) = &model.layers[0].mlp else {
            panic!("layer 0 is MoE");
        };
        let (b, t, h, e) = (2, 6, 24, 5);
        let x = Tensor::<3>::random([b, t, h], Distribution::Normal(0.0, 1.0), &device);
        let layout = TokenLayout::from_lengths(t, &[6, 4]).unwrap();
        let router = model.router().unwrap();
        let (y, out) = moe
            .forward(x.clone(), router, &layout, RouteCall::Full)
            .unwrap();

        let mut dense_w = vec![0f32; b * t * e];
        for (p, pairs) in out.plan.per_token().iter().enumerate() {
            for &(x, w) in pairs {
                dense_w[p * e + x as usize] = w;
            }
        }
        let w = Tensor::<2>::from_data(TensorData::new(dense_w, [b * t, e]), &device);
        let flat = x.reshape([b * t, h]);
        // [E, N, H] weighted by [E, N, 1], summed over experts.
        let dense = moe.experts.forward_dense(flat.clone());
        let mut reference = (dense * w.transpose().unsqueeze_dim::<3>(2))
            .sum_dim(0)
            .squeeze_dim::<2>(0);
        let gate = moe.shared_expert_gate.as_ref().unwrap();
        reference = reference
            + burn::tensor::activation::sigmoid(gate.forward(flat.clone()))
                * moe.shared_expert.as_ref().unwrap().forward(flat);
        let got = y
            .reshape([b * t, h])
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let want = reference.into_data().try_into_vec_as::<f32>().unwrap();
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "sparse vs dense max diff {max}");
        assert!(
            (20..=20
                + out
                    .plan
                    .stats
                    .experts_per_token
                    .iter()
                    .filter(|&&c| c == 1)
                    .count())
                .contains(&out.plan.num_pairs()),
            "T·K = 20 pairs plus floor rescues (each leaves a token at one expert)"
        );
    }

    /// Gradients reach the router and the experts through the sparse path.
    #[test]
    fn gradients_reach_router_and_experts() {
        let device = Device::flex().autodiff();
        let cfg = MoeTransformerConfig::from_json_str(
            r#"{"model_type":"olmoe","vocab_size":32,"hidden_size":16,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,
            "rope_theta":10000.0,"num_experts":4,"num_experts_per_tok":2}"#,
            "test",
        )
        .unwrap();
        let model = MoeTransformer::init(&cfg, 3, &device).unwrap();
        let ids: Vec<u32> = (0..10).map(|i| (i * 7 % 32) as u32).collect();
        let layout = TokenLayout::dense(2, 5);
        let out = model.forward(&ids, &layout, &device).unwrap();
        let (loss, _) = crate::causal_lm_loss(out.logits, &ids, &layout).unwrap();
        let grads = loss.backward();
        let Ffn::Moe(moe) = &model.layers[0].mlp else {
            panic!("layer 0 is MoE");
        };
        let router_grad = moe
            .gate
            .weight
            .grad(&grads)
            .expect("router weight gradient");
        let norm: f32 = router_grad.abs().sum().into_scalar::<f32>();
        assert!(norm > 0.0);
        for grad in [
            moe.experts.gate_up.grad(&grads).expect("gate_up gradient"),
            moe.experts.down.grad(&grads).expect("down gradient"),
        ] {
            assert!(grad.abs().sum().into_scalar::<f32>() > 0.0);
        }
    }
}
