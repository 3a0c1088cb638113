//! Hugging Face weight names: one table for reading (the model's builders, the loader, LoRA's
//! adapter sites) and writing (`seqtopk_checkpoint::hf`), so a checkpoint is read and written
//! under the same keys. Names are those transformers 5 saves; Mixtral's original per-expert
//! layout (`block_sparse_moe`, `w1`/`w3`/`w2`) is the one family-specific exception.

/// The token embedding (module path; its tensor is `.weight`).
pub const EMBED_TOKENS: &str = "model.embed_tokens";
/// The final norm (module path).
pub const FINAL_NORM: &str = "model.norm";
/// The untied output head (module path).
pub const LM_HEAD: &str = "lm_head";
/// Attention projections under `self_attn`, in the order transformers lists them.
pub const ATTENTION: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
/// A SwiGLU block's projections (dense MLP, shared expert, one expert): gate, up, down.
pub const SWIGLU: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];
/// Mixtral's per-expert names for gate, up and down.
pub const MIXTRAL_EXPERT: [&str; 3] = ["w1", "w3", "w2"];
/// The fused experts' parameters under `experts`: gate/up `[E, 2I, H]` (gate rows first) and
/// down `[E, H, I]`.
pub const FUSED_EXPERTS: [&str; 2] = ["gate_up_proj", "down_proj"];

/// `path.name`, or `name` alone under the empty path (keys relative to a layer's own view).
pub fn join(path: &str, name: &str) -> String {
    match path {
        "" => name.to_owned(),
        _ => format!("{path}.{name}"),
    }
}

/// The path of decoder layer `l`.
pub fn layer(l: usize) -> String {
    format!("model.layers.{l}")
}

/// A decoder layer's attention block: [`ATTENTION`] projections and Qwen3/OLMoE `q_norm`/`k_norm`.
pub fn self_attn(layer_path: &str) -> String {
    join(layer_path, "self_attn")
}

/// A dense decoder layer's SwiGLU block ([`SWIGLU`] projections).
pub fn dense_mlp(layer_path: &str) -> String {
    join(layer_path, "mlp")
}

/// Where an MoE layer's router, experts and shared expert live, and what its per-expert keys
/// are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeKeys {
    /// `model.layers.L.mlp`, or `model.layers.L.block_sparse_moe` in Mixtral's original layout.
    pub block: String,
    mixtral_per_expert: bool,
}

impl MoeKeys {
    /// The keys of layer `layer_path`'s MoE block (relative to the layer for the empty path):
    /// Mixtral's original layout when `mixtral_per_expert`, transformers 5's otherwise.
    pub fn new(layer_path: &str, mixtral_per_expert: bool) -> Self {
        let block = match mixtral_per_expert {
            true => join(layer_path, "block_sparse_moe"),
            false => join(layer_path, "mlp"),
        };
        Self {
            block,
            mixtral_per_expert,
        }
    }

    /// The router (a linear module).
    pub fn gate(&self) -> String {
        format!("{}.gate", self.block)
    }

    /// The experts' module path.
    pub fn experts(&self) -> String {
        format!("{}.experts", self.block)
    }

    /// Projection `j` (gate, up, down) of expert `x` in the per-expert layout.
    pub fn expert_weight(&self, x: usize, j: usize) -> String {
        let names = match self.mixtral_per_expert {
            true => MIXTRAL_EXPERT,
            false => SWIGLU,
        };
        format!("{}.experts.{x}.{}.weight", self.block, names[j])
    }

    /// Fused parameter `j` ([`FUSED_EXPERTS`]).
    pub fn fused(&self, j: usize) -> String {
        format!("{}.experts.{}", self.block, FUSED_EXPERTS[j])
    }

    /// Qwen2-MoE's shared expert (a SwiGLU block).
    pub fn shared_expert(&self) -> String {
        format!("{}.shared_expert", self.block)
    }

    /// Qwen2-MoE's shared-expert gate (a linear module).
    pub fn shared_expert_gate(&self) -> String {
        format!("{}.shared_expert_gate", self.block)
    }
}

/// The dense MLP key a Mixtral per-expert key upcycles from (`…block_sparse_moe.experts.E.w1.weight`
/// → `…mlp.gate_proj.weight`): every expert starts as a copy of the dense block.
pub fn dense_source_of_expert(key: &str) -> Option<String> {
    let (layer, rest) = key.split_once(".block_sparse_moe.experts.")?;
    let (_expert, proj) = rest.split_once('.')?;
    let j = MIXTRAL_EXPERT
        .iter()
        .position(|name| proj.strip_suffix(".weight") == Some(name))?;
    Some(format!("{layer}.mlp.{}.weight", SWIGLU[j]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtral_expert_keys_map_to_their_dense_sources() {
        let keys = MoeKeys::new(&layer(3), true);
        assert_eq!(keys.gate(), "model.layers.3.block_sparse_moe.gate");
        for j in 0..3 {
            assert_eq!(
                dense_source_of_expert(&keys.expert_weight(5, j)),
                Some(format!("model.layers.3.mlp.{}.weight", SWIGLU[j]))
            );
        }
        assert_eq!(dense_source_of_expert(&keys.gate()), None);
        let v5 = MoeKeys::new(&layer(0), false);
        assert_eq!(v5.fused(0), "model.layers.0.mlp.experts.gate_up_proj");
        assert_eq!(
            v5.expert_weight(1, 2),
            "model.layers.0.mlp.experts.1.down_proj.weight"
        );
    }
}
