//! Checkpoint directories: what `train`, `eval` and `generate` load, and what `convert` writes.
//!
//! A checkpoint is either a Hugging Face directory (`config.json` + safetensors) or a native one
//! written by `convert import` / `train` (see [`native`]). [`load`] tells them apart so every
//! command accepts both.
//!
//! - [`import_hf`]: HF directory → native directory (burnpack weights, config, tokenizer,
//!   manifest with checksums).
//! - [`export_hf`] / [`export_dir`]: model or checkpoint → HF directory `from_pretrained` loads
//!   (per-expert or fused expert keys).
//! - [`upcycle()`]: dense Llama → Mixtral-style MoE computing the same function.
//! - [`inspect()`]: what a checkpoint directory or safetensors file holds.
//!
//! Quantised sources (GPTQ, AWQ, FP8, MXFP4, bitsandbytes, …) are refused; every output is written
//! to a temporary directory and renamed when complete, and an existing output is never replaced
//! without `force`.

mod dtype;
mod hf;
mod inspect;
pub mod native;
pub mod peft;
mod staging;
mod upcycle;

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, FloatDType, Tensor};
use seqtopk_model::{LoadError, MoeTransformer, load_checkpoint_in};
use seqtopk_router::RouterConfig;
use serde_json::Value;

pub use dtype::StorageDtype;
pub use hf::{
    ExpertLayout, ExportOptions, HfTensor, config_for_dtype, export_hf, hf_tensors,
    write_safetensors,
};
pub use inspect::{
    ExpertSummary, Inspection, ModelSummary, TensorInfo, inspect, safetensors_tensors, verify,
};
pub use native::{
    Manifest, ManifestFile, SaveOptions, describe_files, load_native, save_native, verify_files,
    verify_native,
};
pub use staging::remove_unfinished_outputs;
pub use upcycle::{UpcycleOptions, upcycle, upcycled_config};

/// Tokenizer and generation files copied beside converted weights when the source has them.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Why a checkpoint could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The path does not exist or is not a directory.
    #[error(
        "checkpoint {path}: not a directory (expected a Hugging Face or seqtopk checkpoint directory)"
    )]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The model loader refused the directory.
    #[error("checkpoint {path}: {source}")]
    Load {
        /// The directory.
        path: PathBuf,
        /// What the loader said.
        #[source]
        source: LoadError,
    },
    /// `config.json` could not be read as JSON.
    #[error("checkpoint {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The source is quantised; only f32/bf16/f16 weights can be converted.
    #[error(
        "{path}: quantised checkpoint ({method}) refused: seqtopk converts only unquantised f32/bf16/f16 weights; use the original (unquantised) release of this model"
    )]
    Quantized {
        /// The file that shows it (config.json, quantize_config.json or a safetensors file).
        path: PathBuf,
        /// The quantisation method or the offending tensor.
        method: String,
    },
    /// The output exists and `force` was not given.
    #[error("{path} already exists; pass --force to replace it")]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// The output could not be written.
    #[error("{path}: {message}")]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `manifest.json` of a native checkpoint is malformed.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file of a native checkpoint disagrees with its manifest or config.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A parameter could not be read back from the model.
    #[error("tensor `{key}`: {message}")]
    Tensor {
        /// HF key.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// A weight holds NaN or ±Inf.
    #[error(
        "checkpoint {path}: tensor `{key}` holds {count} non-finite values (NaN or ±Inf); the checkpoint is unusable (training diverged or the file was damaged)"
    )]
    NonFinite {
        /// The directory.
        path: PathBuf,
        /// Module path of the tensor.
        key: String,
        /// How many of its values are not finite.
        count: u64,
    },
    /// The requested conversion does not apply to this checkpoint.
    #[error("{message}")]
    Unsupported {
        /// Why.
        message: String,
    },
}

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

/// `config.json` key holding the routing a checkpoint was trained with, as a recipe's `[router]`
/// section spells it. Hugging Face loaders keep unknown config keys as inert attributes, so the
/// record survives `from_pretrained`/`save_pretrained` and seqtopk's export and import.
pub const ROUTING_KEY: &str = "seqtopk_routing";

/// Records `router` in an HF config (replacing an earlier record).
pub fn record_routing(hf_config: &mut Value, router: &RouterConfig) {
    if let (Value::Object(map), Ok(value)) = (hf_config, serde_json::to_value(router)) {
        map.insert(ROUTING_KEY.to_owned(), value);
    }
}

/// The routing recorded in an HF config, if any; `path` names the file in errors.
pub fn recorded_routing(
    path: &Path,
    hf_config: &Value,
) -> Result<Option<RouterConfig>, CheckpointError> {
    match hf_config.get(ROUTING_KEY) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| CheckpointError::Config {
                path: path.to_path_buf(),
                message: format!("`{ROUTING_KEY}` is not a router configuration: {e}"),
            }),
    }
}

/// Finds the first float parameter holding NaN or ±Inf, by module path.
#[derive(Default)]
struct NonFinite {
    path: Vec<String>,
    found: Option<(String, u64)>,
    unreadable: Option<String>,
}

impl ModuleVisitor for NonFinite {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.found.is_some() || self.unreadable.is_some() {
            return;
        }
        // Counted on the device: one scalar comes back per parameter, not the weights.
        let bad = param
            .val()
            .is_finite()
            .bool_not()
            .int()
            .sum()
            .try_into_scalar::<i64>();
        match bad {
            Ok(0) => {}
            Ok(n) => self.found = Some((self.path.join("."), n as u64)),
            Err(e) => self.unreadable = Some(format!("{}: {e:?}", self.path.join("."))),
        }
    }
}

/// Refuses a model with a NaN or infinite weight, naming the tensor: such a model evaluates to
/// `null` losses and generates token 0 forever instead of failing.
pub fn check_finite(model: &MoeTransformer, dir: &Path) -> Result<(), CheckpointError> {
    let mut visitor = NonFinite::default();
    model.visit(&mut visitor);
    if let Some((key, count)) = visitor.found {
        return Err(CheckpointError::NonFinite {
            path: dir.to_path_buf(),
            key,
            count,
        });
    }
    if let Some(message) = visitor.unreadable {
        return Err(CheckpointError::Tensor {
            key: message,
            message: "reading the non-finite count back failed".into(),
        });
    }
    Ok(())
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

/// Options of [`import_hf`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Storage dtype of the native weights; `None` keeps the source's.
    pub dtype: Option<StorageDtype>,
    /// Replace an existing output.
    pub force: bool,
}

/// Converts the HF checkpoint directory `hf_dir` into a native checkpoint at `out`.
pub fn import_hf(
    hf_dir: &Path,
    out: &Path,
    options: &ImportOptions,
    device: &Device,
) -> Result<Manifest, CheckpointError> {
    if !options.force && out.symlink_metadata().is_ok() {
        return Err(CheckpointError::Exists {
            path: out.to_path_buf(),
        });
    }
    let loaded = load(hf_dir, device)?;
    if loaded.format == CheckpointFormat::Native {
        return Err(CheckpointError::Unsupported {
            message: format!(
                "{} is already a native checkpoint (it has a manifest.json)",
                hf_dir.display()
            ),
        });
    }
    let dtype = options.dtype.unwrap_or(loaded.dtype);
    let source = std::fs::canonicalize(hf_dir).unwrap_or_else(|_| hf_dir.to_path_buf());
    save_native(
        &loaded.model,
        &loaded.hf_config,
        Some(hf_dir),
        out,
        &SaveOptions {
            dtype,
            source: format!("huggingface:{}", source.display()),
            force: options.force,
        },
    )
}

/// Exports the checkpoint directory `dir` (native or HF) as an HF directory at `out`; the dtype is
/// the checkpoint's own unless `dtype` is given. A native source's checksums are checked first,
/// so a damaged file is not copied into the export.
pub fn export_dir(
    dir: &Path,
    out: &Path,
    layout: ExpertLayout,
    dtype: Option<StorageDtype>,
    force: bool,
    device: &Device,
) -> Result<usize, CheckpointError> {
    export_dir_with(dir, out, layout, dtype, force, true, device)
}

/// [`export_dir`], with checksum verification of a native source optional.
pub fn export_dir_with(
    dir: &Path,
    out: &Path,
    layout: ExpertLayout,
    dtype: Option<StorageDtype>,
    force: bool,
    verify: bool,
    device: &Device,
) -> Result<usize, CheckpointError> {
    if !force && out.symlink_metadata().is_ok() {
        return Err(CheckpointError::Exists {
            path: out.to_path_buf(),
        });
    }
    let loaded = load_with(dir, device, verify)?;
    export_hf(
        &loaded.model,
        &loaded.hf_config,
        Some(dir),
        out,
        &ExportOptions {
            dtype: dtype.unwrap_or(loaded.dtype),
            layout,
            force,
            ..ExportOptions::default()
        },
    )
}

/// Copies the [`TOKENIZER_FILES`] present in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name))
                .map_err(|source| CheckpointError::Io { path: src, source })?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}

pub(crate) fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<(), CheckpointError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| CheckpointError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}
