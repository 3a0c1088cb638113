//! What a checkpoint holds, read from headers only (no weights are loaded).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::store::{BurnpackStore, ModuleStore};
use seqtopk_model::{FfnKind, LoadError, MoeTransformerConfig, weight_files};
use serde::Serialize;

use crate::files::read_json;
use crate::native::{self, Manifest};
use crate::{CheckpointError, CheckpointFormat};

/// One stored tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    /// Key (HF key, or Burn module path in a native checkpoint).
    pub name: String,
    /// Dtype as the file names it (`F32`, `BF16`, `I32`, …; lower-case for burnpack).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// File holding it, relative to the checkpoint directory.
    pub file: String,
}

/// Summary of a checkpoint directory or safetensors file.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// What was inspected.
    pub path: PathBuf,
    /// `huggingface`, `native` or `safetensors-file`.
    pub format: String,
    /// `model_type` of `config.json`, when there is one.
    pub model_type: Option<String>,
    /// Summary of the resolved config (`None` when there is no usable config).
    pub model: Option<ModelSummary>,
    /// Why the config could not be resolved (unknown family, quantised, …).
    pub config_error: Option<String>,
    /// The manifest of a native checkpoint.
    pub manifest: Option<Manifest>,
    /// Number of tensors per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// Scalars stored.
    pub parameter_count: u64,
    /// Every tensor, sorted by name.
    pub tensors: Vec<TensorInfo>,
}

/// The sizes that matter, from the resolved config.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// Family.
    pub family: String,
    /// Decoder layers.
    pub layers: usize,
    /// Of which MoE.
    pub moe_layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Attention / key-value heads and head width.
    pub heads: [usize; 3],
    /// Vocabulary.
    pub vocab_size: usize,
    /// Dense intermediate width (first dense layer), if any.
    pub dense_intermediate: Option<usize>,
    /// Routed experts, experts per token, expert width, shared-expert width.
    pub experts: Option<ExpertSummary>,
    /// Tied embeddings.
    pub tie_word_embeddings: bool,
}

/// The MoE block.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertSummary {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Expert intermediate width.
    pub intermediate: usize,
    /// Shared expert width.
    pub shared_intermediate: Option<usize>,
    /// Renormalised top-k weights.
    pub norm_topk_prob: bool,
}

fn summarise(c: &MoeTransformerConfig) -> ModelSummary {
    ModelSummary {
        family: c.family.name().into(),
        layers: c.layers.len(),
        moe_layers: c.moe_layers().len(),
        hidden_size: c.hidden_size,
        heads: [c.num_attention_heads, c.num_key_value_heads, c.head_dim],
        vocab_size: c.vocab_size,
        dense_intermediate: c.layers.iter().find_map(|l| match l {
            FfnKind::Dense { intermediate_size } => Some(*intermediate_size),
            FfnKind::Moe => None,
        }),
        experts: c.moe.as_ref().map(|m| ExpertSummary {
            num_experts: m.num_experts,
            top_k: m.num_experts_per_tok,
            intermediate: m.expert_intermediate_size,
            shared_intermediate: m.shared_expert_intermediate_size,
            norm_topk_prob: m.norm_topk_prob,
        }),
        tie_word_embeddings: c.tie_word_embeddings,
    }
}

/// Tensors listed in the header of one safetensors file (only the header is read).
fn header(path: &Path, file: &str) -> Result<Vec<TensorInfo>, LoadError> {
    let bad = |message: String| LoadError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let size = f
        .metadata()
        .map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad("shorter than the 8-byte header length".into()))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || 8 + n > size {
        return Err(bad(format!(
            "header length {n} does not fit in a {size}-byte file"
        )));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let mut out = Vec::new();
    let mut end = 0u64;
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad(format!("tensor `{name}` has no dtype")))?;
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(format!("tensor `{name}` has no valid shape")))?;
        if let Some(stop) = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|o| o.as_u64())
        {
            end = end.max(stop);
        }
        out.push(TensorInfo {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            file: file.to_string(),
        });
    }
    if 8 + n + end != size {
        return Err(bad(format!(
            "the header describes {} bytes of data but the file holds {} (truncated?)",
            end,
            size.saturating_sub(8 + n)
        )));
    }
    Ok(out)
}

/// The tensors of an HF checkpoint directory from the safetensors headers (`model.safetensors`,
/// else the shards of `model.safetensors.index.json`), sorted by name.
pub fn safetensors_tensors(dir: &Path) -> Result<Vec<TensorInfo>, LoadError> {
    let mut out = Vec::new();
    for path in weight_files(dir)? {
        // The file as the index names it, relative to the checkpoint directory.
        let name = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy();
        out.extend(header(&path, &name)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The tensors of native checkpoint `dir`, as its burnpack file lists them.
fn native_tensors(dir: &Path) -> Result<Vec<TensorInfo>, CheckpointError> {
    let weights = native::weights_path(dir);
    let mut store = BurnpackStore::from_file(&weights).auto_extension(false);
    let all = store
        .get_all_tensors()
        .map_err(|e| CheckpointError::Corrupt {
            path: weights.clone(),
            message: format!("not a readable burnpack file: {e}"),
        })?;
    Ok(all
        .values()
        .map(|t| TensorInfo {
            name: t.name.clone(),
            dtype: format!("{:?}", t.dtype).to_lowercase(),
            shape: t.shape.to_vec(),
            file: native::WEIGHTS_FILE.into(),
        })
        .collect())
}

/// `config.json`'s `model_type`, the model it resolves to, or why it does not.
fn read_config(path: &Path) -> (Option<String>, Option<ModelSummary>, Option<String>) {
    let json = match read_json(path) {
        Ok(json) => json,
        Err(e) => return (None, None, Some(e.to_string())),
    };
    let model_type = json
        .get("model_type")
        .and_then(|m| m.as_str())
        .map(String::from);
    match MoeTransformerConfig::from_json_str(&json.to_string(), path) {
        Ok(c) => (model_type, Some(summarise(&c)), None),
        Err(e) => (model_type, None, Some(e.to_string())),
    }
}

/// Inspects a checkpoint directory (HF or native) or a single `.safetensors` file.
pub fn inspect(path: &Path) -> Result<Inspection, CheckpointError> {
    let load_err = |source| CheckpointError::Load {
        path: path.to_path_buf(),
        source,
    };
    let (format, tensors, manifest, config_path) = if path.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tensors = header(path, &name).map_err(load_err)?;
        let config = path.parent().map(|p| p.join("config.json"));
        ("safetensors-file".to_string(), tensors, None, config)
    } else if path.is_dir() && native::is_native(path) {
        (
            CheckpointFormat::Native.name().to_string(),
            native_tensors(path)?,
            Some(native::read_manifest(path)?),
            Some(path.join("config.json")),
        )
    } else if path.is_dir() {
        let tensors = safetensors_tensors(path).map_err(load_err)?;
        (
            CheckpointFormat::HuggingFace.name().to_string(),
            tensors,
            None,
            Some(path.join("config.json")),
        )
    } else {
        return Err(CheckpointError::NotADirectory {
            path: path.to_path_buf(),
        });
    };
    let (model_type, model, config_error) = match config_path.filter(|p| p.is_file()) {
        Some(cp) => read_config(&cp),
        None => (None, None, None),
    };
    let mut dtypes = BTreeMap::new();
    for t in &tensors {
        *dtypes.entry(t.dtype.clone()).or_insert(0) += 1;
    }
    let parameter_count = tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    Ok(Inspection {
        path: path.to_path_buf(),
        format,
        model_type,
        model,
        config_error,
        manifest,
        dtypes,
        parameter_count,
        tensors,
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "path:       {}", self.path.display())?;
        writeln!(f, "format:     {}", self.format)?;
        if let Some(m) = &self.manifest {
            writeln!(f, "source:     {}", m.source)?;
            writeln!(f, "stored as:  {} ({} files)", m.dtype, m.files.len())?;
        }
        match (&self.model, &self.model_type) {
            (Some(m), _) => {
                writeln!(
                    f,
                    "family:     {} ({} layers, {} MoE)",
                    m.family, m.layers, m.moe_layers
                )?;
                writeln!(
                    f,
                    "sizes:      hidden {}, heads {}/{} kv × {}, vocab {}{}",
                    m.hidden_size,
                    m.heads[0],
                    m.heads[1],
                    m.heads[2],
                    m.vocab_size,
                    if m.tie_word_embeddings {
                        ", tied embeddings"
                    } else {
                        ""
                    }
                )?;
                if let Some(i) = m.dense_intermediate {
                    writeln!(f, "dense mlp:  intermediate {i}")?;
                }
                if let Some(e) = &m.experts {
                    writeln!(
                        f,
                        "experts:    {} routed, top-{}, intermediate {}{}{}",
                        e.num_experts,
                        e.top_k,
                        e.intermediate,
                        e.shared_intermediate
                            .map(|s| format!(", shared expert {s}"))
                            .unwrap_or_default(),
                        if e.norm_topk_prob {
                            ", renormalised"
                        } else {
                            ""
                        }
                    )?;
                }
            }
            (None, Some(t)) => writeln!(f, "family:     {t} (not loadable)")?,
            (None, None) => writeln!(f, "family:     unknown (no config.json)")?,
        }
        if let Some(e) = &self.config_error {
            writeln!(f, "config:     {e}")?;
        }
        let dtypes: Vec<String> = self
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} ×{n}"))
            .collect();
        writeln!(f, "dtype:      {}", dtypes.join(", "))?;
        writeln!(
            f,
            "parameters: {} in {} tensors",
            self.parameter_count,
            self.tensors.len()
        )?;
        writeln!(f, "tensors:")?;
        for t in &self.tensors {
            writeln!(f, "  {:<60} {:<5} {:?}", t.name, t.dtype, t.shape)?;
        }
        Ok(())
    }
}

/// The per-tensor check on a native checkpoint: a path for `convert inspect --verify`.
pub fn verify(path: &Path) -> Result<Manifest, CheckpointError> {
    let manifest = native::read_manifest(path)?;
    native::verify_native(path, &manifest, true)?;
    Ok(manifest)
}
