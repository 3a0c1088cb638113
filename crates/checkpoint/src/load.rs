//! Loading a checkpoint directory of either format, refusing quantised and non-finite weights.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType};
use seqtopk_model::{MoeTransformer, load_checkpoint_in};
use seqtopk_router::RouterConfig;
use serde_json::Value;

use crate::files::read_json;
use crate::inspect::{TensorInfo, safetensors_tensors};
use crate::native::{self, Manifest, load_native};
use crate::routing::{ROUTING_KEY, recorded_routing};
use crate::{CheckpointError, StorageDtype, check_finite};

/// Which on-disk layout a checkpoint directory has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `config.json` + `model*.safetensors` as transformers writes them.
    HuggingFace,
    /// `manifest.json` + `model.bpk` + `config.json` written by seqtopk.
    Native,
}

impl CheckpointFormat {
    /// `huggingface` or `native`.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointFormat::HuggingFace => "huggingface",
            CheckpointFormat::Native => "native",
        }
    }
}

/// A loaded checkpoint: the model plus what commands need beside it.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The model, f32 parameters on the requested device.
    pub model: MoeTransformer,
    /// The HF `config.json` as JSON (kept verbatim so exports round-trip unknown keys).
    pub hf_config: Value,
    /// `tokenizer.json` beside the weights, if there is one.
    pub tokenizer: Option<PathBuf>,
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its layout.
    pub format: CheckpointFormat,
    /// Dtype of the weights on disk (a mixed-dtype HF checkpoint reports f32, which holds all).
    pub dtype: StorageDtype,
    /// The manifest of a native checkpoint.
    pub manifest: Option<Manifest>,
    /// The routing `config.json` records (see [`ROUTING_KEY`]), already applied to `model`.
    pub routing: Option<RouterConfig>,
}

/// Loads a checkpoint directory of either format onto `device`, verifying a native checkpoint's
/// checksums (see [`load_with`]).
pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<LoadedCheckpoint, CheckpointError> {
    load_with(dir, device, true)
}

/// Loads a checkpoint directory of either format onto `device`.
///
/// Native directories are recognised by their `manifest.json`; with `verify` every file's SHA-256
/// is checked against it first (sizes always are). Anything else is read as a Hugging Face
/// directory; quantised ones are refused with [`CheckpointError::Quantized`]. Every weight must
/// be finite, and a routing recorded under [`ROUTING_KEY`] is applied to the model.
pub fn load_with(
    dir: impl AsRef<Path>,
    device: &Device,
    verify: bool,
) -> Result<LoadedCheckpoint, CheckpointError> {
    load_in(dir, device, verify, None)
}

/// [`load_with`] with the weights stored in `stored_in` as they are read (f32 when `None`): a
/// half-precision model is loaded at half the memory, never whole in f32.
pub fn load_in(
    dir: impl AsRef<Path>,
    device: &Device,
    verify: bool,
    stored_in: Option<FloatDType>,
) -> Result<LoadedCheckpoint, CheckpointError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(CheckpointError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let config_path = dir.join("config.json");
    let hf_config = read_json(&config_path)?;
    let routing = recorded_routing(&config_path, &hf_config)?;
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    let (mut model, format, dtype, manifest) = if native::is_native(dir) {
        let (model, manifest) = load_native(dir, device, verify, stored_in)?;
        let dtype = manifest
            .storage_dtype()
            .map_err(|message| CheckpointError::Manifest {
                path: dir.join(native::MANIFEST_FILE),
                message,
            })?;
        (model, CheckpointFormat::Native, dtype, Some(manifest))
    } else {
        refuse_quantized(dir, &hf_config)?;
        let tensors = safetensors_tensors(dir).map_err(|source| CheckpointError::Load {
            path: dir.to_path_buf(),
            source,
        })?;
        refuse_quantized_tensors(dir, &tensors)?;
        let dtype = uniform_dtype(&tensors);
        let model =
            load_checkpoint_in(dir, device, stored_in).map_err(|source| CheckpointError::Load {
                path: dir.to_path_buf(),
                source,
            })?;
        (model, CheckpointFormat::HuggingFace, dtype, None)
    };
    check_finite(&model, dir)?;
    if let Some(router) = &routing {
        model
            .set_routing(router)
            .map_err(|e| CheckpointError::Config {
                path: config_path.clone(),
                message: format!("`{ROUTING_KEY}`: {e}"),
            })?;
    }
    Ok(LoadedCheckpoint {
        model,
        hf_config,
        tokenizer,
        dir: dir.to_path_buf(),
        format,
        dtype,
        manifest,
        routing,
    })
}

/// The one float dtype all tensors share, else f32 (which represents bf16 and f16 exactly).
fn uniform_dtype(tensors: &[TensorInfo]) -> StorageDtype {
    let mut found = tensors
        .iter()
        .map(|t| t.dtype.parse::<StorageDtype>().unwrap_or(StorageDtype::F32));
    match found.next() {
        Some(first) if found.all(|d| d == first) => first,
        _ => StorageDtype::F32,
    }
}

/// Refuses quantised HF checkpoints by their config (`quantization_config`, or AutoGPTQ's
/// `quantize_config.json` beside it).
fn refuse_quantized(dir: &Path, hf_config: &Value) -> Result<(), CheckpointError> {
    if let Some(q) = hf_config.get("quantization_config") {
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .or_else(|| q.get("load_in_4bit").map(|_| "bitsandbytes"))
            .unwrap_or("unknown method");
        return Err(CheckpointError::Quantized {
            path: dir.join("config.json"),
            method: format!("quantization_config.quant_method = {method}"),
        });
    }
    for name in ["quantize_config.json", "quant_config.json"] {
        let path = dir.join(name);
        if path.is_file() {
            return Err(CheckpointError::Quantized {
                path,
                method: format!("{name} present (GPTQ/AWQ)"),
            });
        }
    }
    Ok(())
}

/// Refuses checkpoints whose tensors are not f32/bf16/f16 or carry quantisation side tensors.
fn refuse_quantized_tensors(dir: &Path, tensors: &[TensorInfo]) -> Result<(), CheckpointError> {
    const MARKERS: [&str; 8] = [
        ".qweight",
        ".qzeros",
        ".g_idx",
        ".weight_scale",
        ".weight_scale_inv",
        ".SCB",
        ".absmax",
        "_blocks",
    ];
    for t in tensors {
        let marker = MARKERS.iter().find(|m| t.name.ends_with(*m));
        if marker.is_none() && t.dtype == "F64" {
            return Err(CheckpointError::Unsupported {
                message: format!(
                    "{}: tensor `{}` is f64; seqtopk reads f32/bf16/f16 weights (save the model in float32 first, e.g. `model.to(torch.float32).save_pretrained(...)`)",
                    dir.join(&t.file).display(),
                    t.name
                ),
            });
        }
        if t.dtype.parse::<StorageDtype>().is_err() || marker.is_some() {
            return Err(CheckpointError::Quantized {
                path: dir.join(&t.file),
                method: format!("tensor `{}` has dtype {}", t.name, t.dtype),
            });
        }
    }
    Ok(())
}
