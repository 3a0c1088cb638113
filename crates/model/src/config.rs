//! Hugging Face `config.json` of each supported family, resolved into one [`MoeTransformerConfig`].
//!
//! The raw struct is plain serde with HF field names (Burn's `#[derive(Config)]` cannot take
//! `alias`/`default`), and it does not deny unknown fields: HF keeps adding keys. Resolution
//! turns each family's quirks into switches of the one model.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::ConfigError;

/// The model families this crate implements (`model_type` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `olmoe`: full-width QK-norm, no renormalisation, no biases.
    Olmoe,
    /// `qwen2_moe`: q/k/v biases, shared expert with a sigmoid gate, dense layers by step/list.
    Qwen2Moe,
    /// `qwen3_moe`: per-head QK-norm, explicit `head_dim`.
    Qwen3Moe,
    /// `mixtral`: always renormalised top-k, `block_sparse_moe` keys.
    Mixtral,
    /// `llama`: dense; the seed of upcycling.
    Llama,
}

impl Family {
    /// The `model_type` string.
    pub fn name(self) -> &'static str {
        match self {
            Family::Olmoe => "olmoe",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Mixtral => "mixtral",
            Family::Llama => "llama",
        }
    }
}

/// Where the QK-norm is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// No QK-norm.
    None,
    /// RMSNorm over the whole q (`heads·head_dim`) / k (`kv_heads·head_dim`) projection before the
    /// head split (OLMoE).
    FullWidth,
    /// RMSNorm over each head's `head_dim` values (Qwen3).
    PerHead,
}

/// The feed-forward part of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// Dense SwiGLU MLP of this intermediate width.
    Dense {
        /// Intermediate width.
        intermediate_size: usize,
    },
    /// Sparse MoE block as described by [`MoeConfig`].
    Moe,
}

/// The sparse MoE block shared by every MoE layer.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Routed experts, `E`.
    pub num_experts: usize,
    /// Experts per token, `K`.
    pub num_experts_per_tok: usize,
    /// Each routed expert's intermediate width, `I`.
    pub expert_intermediate_size: usize,
    /// Renormalise the selected weights of a token to sum to one.
    pub norm_topk_prob: bool,
    /// Width of the always-on shared expert, gated by `sigmoid(shared_expert_gate(x))` (Qwen2-MoE).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Load-balancing coefficient of the checkpoint (`router_aux_loss_coef`).
    pub router_aux_loss_coef: f64,
}

/// Everything the model needs, for every family.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeTransformerConfig {
    /// Source family (decides checkpoint key names).
    pub family: Family,
    /// Vocabulary size, `V`.
    pub vocab_size: usize,
    /// Hidden size, `H`.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than the attention heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest position the checkpoint was trained for.
    pub max_position_embeddings: usize,
    /// QK-norm placement.
    pub qk_norm: QkNorm,
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`).
    pub o_bias: bool,
    /// Clamp q, k, v to `±clip_qkv` after the QK-norm (OLMoE option).
    pub clip_qkv: Option<f64>,
    /// One entry per decoder layer.
    pub layers: Vec<FfnKind>,
    /// The MoE block, present when any layer is MoE.
    pub moe: Option<MoeConfig>,
    /// The head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Padding token id, if any.
    pub pad_token_id: Option<u32>,
    /// End-of-sequence token ids.
    pub eos_token_ids: Vec<u32>,
}

impl MoeTransformerConfig {
    /// Reads and resolves `path` (an HF `config.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Resolves the JSON text of a `config.json`; `path` only names the source in errors.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let raw: HfConfig = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            path: path.clone(),
            source,
        })?;
        raw.resolve(path)
    }

    /// Layers: `L`.
    pub fn num_hidden_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether layer `i` is a sparse MoE layer.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        matches!(self.layers.get(i), Some(FfnKind::Moe))
    }

    /// Indices of the MoE layers.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.is_moe_layer(i))
            .collect()
    }

    /// Widths of the attention's query and of its key/value projections (heads × head_dim).
    pub fn attention_widths(&self) -> (usize, usize) {
        (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        )
    }

    /// Scalar parameters of the model this config describes, counted without building it (what a
    /// dry run reports when the weights are not at hand). Equals `MoeTransformer::num_params`.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let (q, kv) = self.attention_widths();
        let qkv_bias = if self.qkv_bias { q + 2 * kv } else { 0 };
        let qk_norm = match self.qk_norm {
            QkNorm::None => 0,
            QkNorm::FullWidth => q + kv,
            QkNorm::PerHead => 2 * self.head_dim,
        };
        let attention =
            h * (q + 2 * kv) + qkv_bias + q * h + usize::from(self.o_bias) * h + qk_norm;
        let moe = self.moe.as_ref().map_or(0, |m| {
            let shared = m
                .shared_expert_intermediate_size
                .map_or(0, |i| 3 * h * i + h);
            m.num_experts * h + m.num_experts * 3 * h * m.expert_intermediate_size + shared
        });
        let layers: usize = self
            .layers
            .iter()
            .map(|ffn| {
                2 * h
                    + attention
                    + match ffn {
                        FfnKind::Dense { intermediate_size } => 3 * h * intermediate_size,
                        FfnKind::Moe => moe,
                    }
            })
            .sum();
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + head + layers + h
    }
}

/// `rope_parameters` (transformers v5) or `rope_scaling` (v4).
#[derive(Debug, Clone, Deserialize, Default)]
struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
}

/// `config.json` as written by transformers, HF field names.
#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    qkv_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    clip_qkv: Option<f64>,
    // Both spellings exist on disk (transformers 5 writes `num_local_experts` for qwen3_moe).
    #[serde(default)]
    num_experts: Option<usize>,
    #[serde(default)]
    num_local_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    moe_intermediate_size: Option<usize>,
    #[serde(default)]
    norm_topk_prob: Option<bool>,
    #[serde(default)]
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    mlp_only_layers: Option<Vec<usize>>,
    #[serde(default)]
    shared_expert_intermediate_size: Option<usize>,
    #[serde(default)]
    router_aux_loss_coef: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    quantization_config: Option<Value>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<Value>,
}

impl HfConfig {
    fn resolve(self, path: PathBuf) -> Result<MoeTransformerConfig, ConfigError> {
        let family = match self.model_type.as_str() {
            "olmoe" => Family::Olmoe,
            "qwen2_moe" => Family::Qwen2Moe,
            "qwen3_moe" => Family::Qwen3Moe,
            "mixtral" => Family::Mixtral,
            "llama" => Family::Llama,
            other => {
                return Err(ConfigError::UnknownModelType {
                    path,
                    model_type: other.to_string(),
                });
            }
        };
        if let Some(q) = &self.quantization_config {
            let method = q
                .get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            return Err(ConfigError::Quantized { path, method });
        }
        let f = Fields {
            path: &path,
            model_type: &self.model_type,
        };
        let vocab_size = f.positive(self.vocab_size, "vocab_size")?;
        let hidden_size = f.positive(self.hidden_size, "hidden_size")?;
        let num_layers = f.positive(self.num_hidden_layers, "num_hidden_layers")?;
        let (heads, kv_heads, head_dim) = self.attention_shape(&f, hidden_size)?;
        self.refuse_unsupported(&f, family)?;
        let rms_norm_eps = self.rms_norm_eps.ok_or_else(|| f.missing("rms_norm_eps"))?;
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .ok_or_else(|| f.missing("rope_theta"))?;

        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qk_norm, qkv_bias, o_bias) = match family {
            Family::Olmoe => (QkNorm::FullWidth, attention_bias, attention_bias),
            // Qwen2-MoE always has q/k/v biases (v4 hard-codes them; v5 writes `qkv_bias`).
            Family::Qwen2Moe => (QkNorm::None, self.qkv_bias.unwrap_or(true), false),
            Family::Qwen3Moe => (QkNorm::PerHead, attention_bias, attention_bias),
            Family::Mixtral => (QkNorm::None, false, false),
            Family::Llama => (QkNorm::None, attention_bias, attention_bias),
        };
        let moe = self.moe(&f, family)?;
        let layers = self.layer_kinds(&f, family, num_layers)?;
        let eos_token_ids = self.eos_token_ids(&f)?;

        Ok(MoeTransformerConfig {
            family,
            vocab_size,
            hidden_size,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            qk_norm,
            qkv_bias,
            o_bias,
            clip_qkv: self.clip_qkv,
            layers,
            moe,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            pad_token_id: self.pad_token_id,
            eos_token_ids,
        })
    }

    /// Attention heads, key/value heads and head width.
    fn attention_shape(
        &self,
        f: &Fields<'_>,
        hidden_size: usize,
    ) -> Result<(usize, usize, usize), ConfigError> {
        let heads = f.positive(self.num_attention_heads, "num_attention_heads")?;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(f.invalid(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads = {heads}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(0) => return Err(f.invalid("head_dim", "must be positive".into())),
            Some(d) => d,
            None if hidden_size.is_multiple_of(heads) => hidden_size / heads,
            None => {
                return Err(f.invalid(
                    "num_attention_heads",
                    format!(
                        "{heads} does not divide hidden_size = {hidden_size} and no head_dim is given"
                    ),
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(f.invalid(
                "head_dim",
                format!("RoPE needs an even head_dim, got {head_dim}"),
            ));
        }
        Ok((heads, kv_heads, head_dim))
    }

    /// Refuses what the model does not implement, naming the field.
    fn refuse_unsupported(&self, f: &Fields<'_>, family: Family) -> Result<(), ConfigError> {
        if let Some(act) = &self.hidden_act
            && act != "silu"
            && act != "swish"
        {
            return Err(f.invalid(
                "hidden_act",
                format!("only silu (SwiGLU) is supported, got `{act}`"),
            ));
        }
        for (field, rope) in [
            ("rope_parameters.rope_type", &self.rope_parameters),
            ("rope_scaling.rope_type", &self.rope_scaling),
        ] {
            if let Some(kind) = rope.as_ref().and_then(|r| r.rope_type.as_deref())
                && kind != "default"
            {
                return Err(f.invalid(
                    field,
                    format!("only the default RoPE is supported, got `{kind}`"),
                ));
            }
        }
        if self.mlp_bias == Some(true) {
            return Err(f.invalid("mlp_bias", "MLP biases are not supported".into()));
        }
        let sliding = match family {
            Family::Qwen2Moe | Family::Qwen3Moe => {
                self.use_sliding_window == Some(true) && self.sliding_window.unwrap_or(0) > 0
            }
            _ => self.sliding_window.unwrap_or(0) > 0,
        };
        if sliding {
            return Err(f.invalid(
                "sliding_window",
                "sliding-window attention is not supported".into(),
            ));
        }
        if let Some(c) = self.clip_qkv
            && c <= 0.0
        {
            return Err(f.invalid("clip_qkv", format!("must be positive, got {c}")));
        }
        Ok(())
    }

    /// The MoE block's configuration (`None` for a dense family).
    fn moe(&self, f: &Fields<'_>, family: Family) -> Result<Option<MoeConfig>, ConfigError> {
        let intermediate = self.intermediate_size;
        let num_experts = self.num_experts.or(self.num_local_experts);
        Ok(match family {
            Family::Llama => None,
            _ => {
                let e = f.positive(num_experts, "num_experts")?;
                let k = f.positive(self.num_experts_per_tok, "num_experts_per_tok")?;
                if k > e {
                    return Err(f.invalid(
                        "num_experts_per_tok",
                        format!("{k} exceeds num_experts = {e}"),
                    ));
                }
                let expert_width = match family {
                    Family::Olmoe | Family::Mixtral => {
                        f.positive(intermediate, "intermediate_size")?
                    }
                    _ => f.positive(self.moe_intermediate_size, "moe_intermediate_size")?,
                };
                Some(MoeConfig {
                    num_experts: e,
                    num_experts_per_tok: k,
                    expert_intermediate_size: expert_width,
                    norm_topk_prob: match family {
                        Family::Mixtral => true,
                        _ => self.norm_topk_prob.unwrap_or(false),
                    },
                    shared_expert_intermediate_size: match family {
                        Family::Qwen2Moe => self.shared_expert_intermediate_size.filter(|&s| s > 0),
                        _ => None,
                    },
                    router_aux_loss_coef: self.router_aux_loss_coef.unwrap_or(0.0),
                })
            }
        })
    }

    /// Each layer's feed-forward kind, as transformers lays them out per family.
    fn layer_kinds(
        &self,
        f: &Fields<'_>,
        family: Family,
        num_layers: usize,
    ) -> Result<Vec<FfnKind>, ConfigError> {
        let intermediate = self.intermediate_size;
        Ok(match family {
            Family::Llama => {
                let width = f.positive(intermediate, "intermediate_size")?;
                vec![
                    FfnKind::Dense {
                        intermediate_size: width
                    };
                    num_layers
                ]
            }
            Family::Olmoe | Family::Mixtral => vec![FfnKind::Moe; num_layers],
            Family::Qwen2Moe | Family::Qwen3Moe => {
                let step = self.decoder_sparse_step.unwrap_or(1);
                if step == 0 {
                    return Err(f.invalid("decoder_sparse_step", "must be positive".into()));
                }
                let dense_only = self.mlp_only_layers.clone().unwrap_or_default();
                if let Some(&bad) = dense_only.iter().find(|&&i| i >= num_layers) {
                    return Err(f.invalid(
                        "mlp_only_layers",
                        format!("layer {bad} does not exist ({num_layers} layers)"),
                    ));
                }
                let mut layers = Vec::with_capacity(num_layers);
                for i in 0..num_layers {
                    // transformers: MoE iff not listed and (i + 1) % decoder_sparse_step == 0.
                    if !dense_only.contains(&i) && (i + 1) % step == 0 {
                        layers.push(FfnKind::Moe);
                    } else {
                        layers.push(FfnKind::Dense {
                            intermediate_size: f.positive(intermediate, "intermediate_size")?,
                        });
                    }
                }
                layers
            }
        })
    }

    /// `eos_token_id`: absent, one id or a list of ids.
    fn eos_token_ids(&self, f: &Fields<'_>) -> Result<Vec<u32>, ConfigError> {
        Ok(match &self.eos_token_id {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Number(n)) => vec![json_token(n, f.path)?],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Number(n) => json_token(n, f.path),
                    _ => Err(f.invalid("eos_token_id", format!("not a token id: {v}"))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(f.invalid(
                    "eos_token_id",
                    format!("expected an id or a list of ids, got {other}"),
                ));
            }
        })
    }
}

/// The config file being resolved, for errors that name it and the offending field.
struct Fields<'a> {
    path: &'a Path,
    model_type: &'a str,
}

impl Fields<'_> {
    fn missing(&self, field: &'static str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            field,
            model_type: self.model_type.to_owned(),
        }
    }

    fn invalid(&self, field: &'static str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field,
            reason,
        }
    }

    /// A required positive integer field.
    fn positive(&self, v: Option<usize>, field: &'static str) -> Result<usize, ConfigError> {
        match v {
            None => Err(self.missing(field)),
            Some(0) => Err(self.invalid(field, "must be positive".into())),
            Some(v) => Ok(v),
        }
    }
}

fn json_token(n: &serde_json::Number, path: &Path) -> Result<u32, ConfigError> {
    n.as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "eos_token_id",
            reason: format!("not a token id: {n}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<MoeTransformerConfig, ConfigError> {
        MoeTransformerConfig::from_json_str(json, "test/config.json")
    }

    const OLMOE: &str = r#"{"model_type":"olmoe","vocab_size":256,"hidden_size":96,
        "intermediate_size":40,"num_hidden_layers":2,"num_attention_heads":6,
        "num_key_value_heads":6,"rms_norm_eps":1e-5,"rope_theta":10000.0,"num_experts":6,
        "num_experts_per_tok":2,"norm_topk_prob":false,"clip_qkv":null,"eos_token_id":2}"#;

    #[test]
    fn olmoe_v4_spelling() {
        let c = parse(OLMOE).unwrap();
        assert_eq!(c.family, Family::Olmoe);
        assert_eq!(c.qk_norm, QkNorm::FullWidth);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.layers, vec![FfnKind::Moe; 2]);
        let moe = c.moe.unwrap();
        assert_eq!((moe.num_experts, moe.expert_intermediate_size), (6, 40));
        assert!(!moe.norm_topk_prob);
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn qwen_layers_and_v5_rope() {
        let c = parse(
            r#"{"model_type":"qwen2_moe","vocab_size":256,"hidden_size":96,
            "intermediate_size":64,"moe_intermediate_size":40,"num_hidden_layers":4,
            "num_attention_heads":6,"num_key_value_heads":2,"rms_norm_eps":1e-6,
            "rope_parameters":{"rope_theta":1e6,"rope_type":"default"},"num_experts":5,
            "num_experts_per_tok":2,"decoder_sparse_step":2,"mlp_only_layers":[3],
            "shared_expert_intermediate_size":48,"sliding_window":0,"use_sliding_window":false,
            "eos_token_id":[2,7]}"#,
        )
        .unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.qkv_bias);
        let dense = FfnKind::Dense {
            intermediate_size: 64,
        };
        assert_eq!(c.layers, vec![dense, FfnKind::Moe, dense, dense]);
        assert_eq!(c.moe.unwrap().shared_expert_intermediate_size, Some(48));
        assert_eq!(c.eos_token_ids, vec![2, 7]);
    }

    #[test]
    fn qwen3_num_local_experts_and_head_dim() {
        let c = parse(
            r#"{"model_type":"qwen3_moe","vocab_size":256,"hidden_size":96,
            "moe_intermediate_size":40,"num_hidden_layers":2,"num_attention_heads":6,
            "num_key_value_heads":2,"head_dim":24,"rms_norm_eps":1e-6,"rope_theta":1e6,
            "num_local_experts":6,"num_experts_per_tok":2,"norm_topk_prob":true}"#,
        )
        .unwrap();
        assert_eq!(c.qk_norm, QkNorm::PerHead);
        assert_eq!(c.head_dim, 24);
        assert_eq!(c.moe.unwrap().num_experts, 6);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = parse(&OLMOE.replace("olmoe", "gpt_oss")).unwrap_err();
        assert!(err.to_string().contains("gpt_oss"), "{err}");
        let err = parse(&OLMOE.replace(
            r#""clip_qkv":null"#,
            r#""quantization_config":{"quant_method":"gptq"}"#,
        ))
        .unwrap_err();
        assert!(matches!(err, ConfigError::Quantized { .. }), "{err}");
        assert!(err.to_string().contains("gptq"));
        let err = parse(&OLMOE.replace(r#""num_experts":6,"#, "")).unwrap_err();
        assert!(err.to_string().contains("num_experts"), "{err}");
        assert!(err.to_string().contains("test/config.json"), "{err}");
        let err = parse(&OLMOE.replace(r#""rope_theta":10000.0,"#, "")).unwrap_err();
        assert!(err.to_string().contains("rope_theta"), "{err}");
        let err = parse(&OLMOE.replace(r#""num_key_value_heads":6"#, r#""num_key_value_heads":4"#))
            .unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        assert!(parse("{not json").is_err());
    }
}
