//! Sparse upcycling (Komatsuzaki et al., 2022): a dense Llama-family model becomes a Mixtral-style
//! MoE whose experts all start as copies of the dense MLP, with a new router initialised small.
//!
//! Mixtral renormalises the selected top-k weights to sum to one, and all experts are equal, so
//! `Σ_k w_k · MLP(x) = MLP(x)`: the upcycled model computes what the dense one did (up to float
//! rounding) until training moves the experts apart.

use std::collections::HashMap;

use burn::tensor::Device;
use seqtopk_model::hf_keys;
use seqtopk_model::{
    Family, Init, LoadError, MoeTransformer, MoeTransformerConfig, SeededInit, WeightSource,
};
use serde_json::{Value, json};

use crate::CheckpointError;
use crate::hf::{ExpertLayout, HfTensor, hf_tensors};

/// Options of [`upcycle`].
#[derive(Debug, Clone, PartialEq)]
pub struct UpcycleOptions {
    /// Routed experts per layer, `E ≥ 2`.
    pub experts: usize,
    /// Experts per token, `1 ≤ K ≤ E`.
    pub top_k: usize,
    /// Standard deviation of the new router weights.
    pub router_std: f32,
    /// Seed of the router initialisation.
    pub seed: u64,
}

impl Default for UpcycleOptions {
    fn default() -> Self {
        Self {
            experts: 8,
            top_k: 2,
            router_std: 0.02,
            seed: 0,
        }
    }
}

/// The Mixtral `config.json` of the upcycled model: the dense config with the family switched and
/// the MoE fields added (unknown keys such as `bos_token_id` are kept).
pub fn upcycled_config(dense: &Value, options: &UpcycleOptions) -> Result<Value, CheckpointError> {
    let mut config = dense.clone();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| CheckpointError::Unsupported {
            message: "the dense config.json is not a JSON object".into(),
        })?;
    for key in ["mlp_bias", "pretraining_tp", "attention_bias"] {
        obj.remove(key);
    }
    obj.insert("model_type".into(), json!("mixtral"));
    obj.insert("architectures".into(), json!(["MixtralForCausalLM"]));
    obj.insert("num_local_experts".into(), json!(options.experts));
    obj.insert("num_experts_per_tok".into(), json!(options.top_k));
    obj.entry("router_aux_loss_coef").or_insert(json!(0.02));
    obj.insert("router_jitter_noise".into(), json!(0.0));
    obj.insert("output_router_logits".into(), json!(false));
    obj.insert("sliding_window".into(), Value::Null);
    Ok(config)
}

/// Serves the MoE model's HF keys from the dense model: every expert of layer `L` reads the dense
/// `model.layers.L.mlp.*`, the router is seeded `N(0, std²)`, everything else is the dense tensor.
struct UpcycleSource {
    dense: HashMap<String, HfTensor>,
    router: SeededInit,
    router_std: f32,
}

impl WeightSource for UpcycleSource {
    fn tensor(&mut self, key: &str, shape: &[usize], init: Init) -> Result<Vec<f32>, LoadError> {
        if key.ends_with(".block_sparse_moe.gate.weight") {
            return self
                .router
                .tensor(key, shape, Init::Normal(self.router_std));
        }
        let source_key = hf_keys::dense_source_of_expert(key).unwrap_or_else(|| key.to_string());
        match self.dense.get(&source_key) {
            Some(t) if t.shape == shape => Ok(t.values.clone()),
            Some(t) => Err(LoadError::ShapeMismatch {
                key: source_key,
                expected: shape.to_vec(),
                found: t.shape.clone(),
            }),
            None if init == Init::Zeros => Ok(vec![0.0; shape.iter().product()]),
            None => Err(LoadError::MissingTensor {
                key: source_key,
                expected: shape.to_vec(),
            }),
        }
    }

    fn contains(&self, _key: &str) -> bool {
        // Neither fused experts nor a `mlp.gate`: the per-expert `block_sparse_moe` keys are asked.
        false
    }

    fn shape(&self, _key: &str) -> Option<Vec<usize>> {
        None
    }
}

/// Upcycles a dense Llama model into a Mixtral MoE on `device`; returns the model and its
/// `config.json`.
pub fn upcycle(
    dense: &MoeTransformer,
    dense_config: &Value,
    options: &UpcycleOptions,
    device: &Device,
) -> Result<(MoeTransformer, Value), CheckpointError> {
    let c = dense.config();
    if c.family != Family::Llama {
        return Err(CheckpointError::Unsupported {
            message: format!(
                "upcycling needs a dense llama checkpoint, this one is `{}`",
                c.family.name()
            ),
        });
    }
    if c.qkv_bias || c.o_bias {
        return Err(CheckpointError::Unsupported {
            message: "the dense model has attention biases, which Mixtral does not".into(),
        });
    }
    if options.experts < 2 {
        return Err(CheckpointError::Unsupported {
            message: format!("--experts must be at least 2, got {}", options.experts),
        });
    }
    if options.top_k == 0 || options.top_k > options.experts {
        return Err(CheckpointError::Unsupported {
            message: format!(
                "--top-k must be between 1 and --experts = {}, got {}",
                options.experts, options.top_k
            ),
        });
    }
    if !(options.router_std.is_finite() && options.router_std >= 0.0) {
        return Err(CheckpointError::Unsupported {
            message: format!(
                "router std must be finite and ≥ 0, got {}",
                options.router_std
            ),
        });
    }
    let config_json = upcycled_config(dense_config, options)?;
    let config =
        MoeTransformerConfig::from_json_str(&config_json.to_string(), "upcycled config.json")
            .map_err(|e| CheckpointError::Unsupported {
                message: format!("the upcycled config is not valid: {e}"),
            })?;
    let dense_tensors = hf_tensors(dense, ExpertLayout::PerExpert)?
        .into_iter()
        .map(|t| (t.key.clone(), t))
        .collect();
    let mut source = UpcycleSource {
        dense: dense_tensors,
        router: SeededInit::new(options.seed),
        router_std: options.router_std,
    };
    let model = MoeTransformer::build(&config, &mut source, device).map_err(|e| {
        CheckpointError::Unsupported {
            message: format!("building the upcycled model failed: {e}"),
        }
    })?;
    Ok((model, config_json))
}
