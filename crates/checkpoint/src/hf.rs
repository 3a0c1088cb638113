//! The inverse of the model loader: a model's parameters under Hugging Face key names and shapes,
//! and writing them as a directory `from_pretrained` loads.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Tensor;
use safetensors::tensor::TensorView;
use seqtopk_model::hf_keys::{self, ATTENTION, MoeKeys, SWIGLU};
use seqtopk_model::{Family, Ffn, MoeTransformer, SparseMoe, SwiGlu, transpose};
use serde_json::Value;

use crate::CheckpointError;
use crate::dtype::StorageDtype;
use crate::files::{copy_tokenizer_files, write_json};
use crate::staging::Staging;

/// One tensor in HF layout (`[out, in]` projections), f32 values row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// HF key, e.g. `model.layers.0.mlp.experts.3.up_proj.weight`.
    pub key: String,
    /// HF shape.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f32>,
}

/// How routed experts are laid out in an exported checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertLayout {
    /// One key per expert and projection (`experts.{e}.gate_proj.weight`, Mixtral
    /// `block_sparse_moe.experts.{e}.w1.weight`): what transformers 4.x wrote and 5.x still loads.
    #[default]
    PerExpert,
    /// transformers 5.x fused layout: `mlp.experts.gate_up_proj [E, 2I, H]` (gate rows first) and
    /// `mlp.experts.down_proj [E, H, I]`.
    Fused,
}

/// Options of [`export_hf`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Dtype of the written tensors.
    pub dtype: StorageDtype,
    /// Expert layout.
    pub layout: ExpertLayout,
    /// Replace an existing output directory.
    pub force: bool,
    /// Largest shard in bytes; bigger models are split into `model-0000N-of-0000M.safetensors`
    /// with `model.safetensors.index.json` (transformers' own default is 5 GB).
    pub max_shard_bytes: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: StorageDtype::F32,
            layout: ExpertLayout::PerExpert,
            force: false,
            max_shard_bytes: 5_000_000_000,
        }
    }
}

fn values<const D: usize>(
    param: &Param<Tensor<D>>,
    what: &str,
) -> Result<Vec<f32>, CheckpointError> {
    param
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| CheckpointError::Tensor {
            key: what.to_string(),
            message: format!("reading the parameter back failed: {e:?}"),
        })
}

/// A Burn `Linear` (`[in, out]`) as HF `{prefix}.weight` `[out, in]` (+ `{prefix}.bias`).
fn push_linear(
    out: &mut Vec<HfTensor>,
    prefix: &str,
    linear: &Linear,
) -> Result<(), CheckpointError> {
    let key = format!("{prefix}.weight");
    let [d_in, d_out] = linear.weight.val().dims();
    let w = values(&linear.weight, &key)?;
    out.push(HfTensor {
        key,
        shape: vec![d_out, d_in],
        values: transpose(&w, d_in, d_out),
    });
    if let Some(bias) = &linear.bias {
        let key = format!("{prefix}.bias");
        out.push(HfTensor {
            values: values(bias, &key)?,
            key,
            shape: vec![d_out],
        });
    }
    Ok(())
}

fn push_vector(
    out: &mut Vec<HfTensor>,
    key: String,
    param: &Param<Tensor<1>>,
) -> Result<(), CheckpointError> {
    let v = values(param, &key)?;
    out.push(HfTensor {
        shape: vec![v.len()],
        values: v,
        key,
    });
    Ok(())
}

fn push_swiglu(out: &mut Vec<HfTensor>, prefix: &str, mlp: &SwiGlu) -> Result<(), CheckpointError> {
    for (name, linear) in SWIGLU
        .iter()
        .zip([&mlp.gate_proj, &mlp.up_proj, &mlp.down_proj])
    {
        push_linear(out, &format!("{prefix}.{name}"), linear)?;
    }
    Ok(())
}

/// Every parameter of `model` under its HF key, in the order transformers lists them.
///
/// Tied embeddings give no `lm_head.weight`. Mixtral's per-expert layout uses the
/// `block_sparse_moe` prefix and `w1`/`w3`/`w2`; its fused layout uses `mlp`, as transformers 5
/// writes it.
pub fn hf_tensors(
    model: &MoeTransformer,
    layout: ExpertLayout,
) -> Result<Vec<HfTensor>, CheckpointError> {
    let family = model.config().family;
    let mut out = Vec::new();
    let [v, h] = model.embed_tokens.weight.val().dims();
    let embed_key = format!("{}.weight", hf_keys::EMBED_TOKENS);
    out.push(HfTensor {
        shape: vec![v, h],
        values: values(&model.embed_tokens.weight, &embed_key)?,
        key: embed_key,
    });
    for (i, layer) in model.layers.iter().enumerate() {
        let p = hf_keys::layer(i);
        let attn = hf_keys::self_attn(&p);
        push_vector(
            &mut out,
            format!("{p}.input_layernorm.weight"),
            &layer.input_layernorm.weight,
        )?;
        let a = &layer.self_attn;
        for (name, linear) in ATTENTION
            .iter()
            .zip([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj])
        {
            push_linear(&mut out, &format!("{attn}.{name}"), linear)?;
        }
        if let Some(n) = &a.q_norm {
            push_vector(&mut out, format!("{attn}.q_norm.weight"), &n.weight)?;
        }
        if let Some(n) = &a.k_norm {
            push_vector(&mut out, format!("{attn}.k_norm.weight"), &n.weight)?;
        }
        push_vector(
            &mut out,
            format!("{p}.post_attention_layernorm.weight"),
            &layer.post_attention_layernorm.weight,
        )?;
        match &layer.mlp {
            Ffn::Dense(mlp) => push_swiglu(&mut out, &hf_keys::dense_mlp(&p), mlp)?,
            Ffn::Moe(moe) => {
                let mixtral_per_expert =
                    family == Family::Mixtral && layout == ExpertLayout::PerExpert;
                push_moe(&mut out, &MoeKeys::new(&p, mixtral_per_expert), moe, layout)?;
            }
        }
    }
    let norm_key = format!("{}.weight", hf_keys::FINAL_NORM);
    push_vector(&mut out, norm_key, &model.norm.weight)?;
    if let Some(head) = &model.lm_head {
        push_linear(&mut out, hf_keys::LM_HEAD, head)?;
    }
    Ok(out)
}

/// An MoE block's tensors under `keys`: router, experts in `layout`, shared expert and its gate.
fn push_moe(
    out: &mut Vec<HfTensor>,
    keys: &MoeKeys,
    moe: &SparseMoe,
    layout: ExpertLayout,
) -> Result<(), CheckpointError> {
    push_linear(out, &keys.gate(), &moe.gate)?;
    let experts = moe
        .experts
        .to_hf()
        .map_err(|message| CheckpointError::Tensor {
            key: keys.experts(),
            message,
        })?;
    let (e, h, i) = (experts.num_experts, experts.hidden, experts.intermediate);
    match layout {
        ExpertLayout::PerExpert => {
            for x in 0..e {
                let shapes = [[i, h], [i, h], [h, i]];
                for (j, (shape, values)) in shapes.into_iter().zip(experts.expert(x)).enumerate() {
                    out.push(HfTensor {
                        key: keys.expert_weight(x, j),
                        shape: shape.to_vec(),
                        values: values.to_vec(),
                    });
                }
            }
        }
        ExpertLayout::Fused => {
            out.push(HfTensor {
                key: keys.fused(0),
                shape: vec![e, 2 * i, h],
                values: experts.gate_up,
            });
            out.push(HfTensor {
                key: keys.fused(1),
                shape: vec![e, h, i],
                values: experts.down,
            });
        }
    }
    if let Some(shared) = &moe.shared_expert {
        push_swiglu(out, &keys.shared_expert(), shared)?;
    }
    if let Some(gate) = &moe.shared_expert_gate {
        push_linear(out, &keys.shared_expert_gate(), gate)?;
    }
    Ok(())
}

/// `config.json` for an export in `dtype`: the given config with its `dtype` / `torch_dtype`
/// entries (where present) set to `dtype`, everything else verbatim.
pub fn config_for_dtype(hf_config: &Value, dtype: StorageDtype) -> Value {
    let mut config = hf_config.clone();
    if let Some(obj) = config.as_object_mut() {
        for key in ["dtype", "torch_dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), Value::String(dtype.hf_name().into()));
            }
        }
    }
    config
}

/// Writes `model` as an HF checkpoint directory at `out`: `config.json` (from `hf_config`),
/// `model.safetensors` (or shards plus index), and the tokenizer files of `tokenizer_dir`.
///
/// The directory is assembled under a temporary name and renamed when complete; an existing `out`
/// is replaced only with `options.force`. Returns the number of tensors written.
pub fn export_hf(
    model: &MoeTransformer,
    hf_config: &Value,
    tokenizer_dir: Option<&Path>,
    out: &Path,
    options: &ExportOptions,
) -> Result<usize, CheckpointError> {
    let staging = Staging::new(out, options.force)?;
    let tensors = hf_tensors(model, options.layout)?;
    let count = tensors.len();
    write_safetensors(
        staging.dir(),
        &tensors,
        options.dtype,
        options.max_shard_bytes,
    )?;
    write_json(
        &staging.dir().join("config.json"),
        &config_for_dtype(hf_config, options.dtype),
    )?;
    if let Some(dir) = tokenizer_dir {
        copy_tokenizer_files(dir, staging.dir())?;
    }
    staging.publish()?;
    Ok(count)
}

/// Writes `tensors` into `dir` as `model.safetensors`, or as shards of at most `max_shard_bytes`
/// with `model.safetensors.index.json` when they do not fit one.
pub fn write_safetensors(
    dir: &Path,
    tensors: &[HfTensor],
    dtype: StorageDtype,
    max_shard_bytes: usize,
) -> Result<(), CheckpointError> {
    let encoded: Vec<(&HfTensor, Vec<u8>)> = tensors
        .iter()
        .map(|t| (t, dtype.encode(&t.values)))
        .collect();
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, (_, bytes)) in encoded.iter().enumerate() {
        if size > 0 && size + bytes.len() > max_shard_bytes.max(1) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes.len();
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let total: usize = encoded.iter().map(|(_, b)| b.len()).sum();
    for (s, members) in shards.iter().enumerate() {
        let name = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", s + 1)
        };
        let path = dir.join(&name);
        let mut views = Vec::with_capacity(members.len());
        for &i in members {
            let (t, bytes) = &encoded[i];
            let view =
                TensorView::new(dtype.safetensors(), t.shape.clone(), bytes).map_err(|e| {
                    CheckpointError::Tensor {
                        key: t.key.clone(),
                        message: format!("shape {:?} does not match its data: {e}", t.shape),
                    }
                })?;
            weight_map.insert(t.key.clone(), Value::String(name.clone()));
            views.push((t.key.clone(), view));
        }
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        safetensors::tensor::serialize_to_file(views, Some(metadata), &path).map_err(|e| {
            CheckpointError::Output {
                path: path.clone(),
                message: format!("writing safetensors failed: {e}"),
            }
        })?;
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}
