//! Errors of the model crate: reading configs, loading weights, running the model.

use std::path::PathBuf;

use seqtopk_router::RoutingError;

/// Why an HF `config.json` could not be turned into a [`crate::MoeTransformerConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON or a field has the wrong JSON type.
    #[error("{path}: invalid config.json: {source}")]
    Json {
        /// The config file.
        path: PathBuf,
        /// The parse error (it names the field and line).
        source: serde_json::Error,
    },
    /// `model_type` names a family this crate does not implement.
    #[error(
        "{path}: model_type `{model_type}` is not supported (supported: olmoe, qwen2_moe, qwen3_moe, mixtral, llama)"
    )]
    UnknownModelType {
        /// The config file.
        path: PathBuf,
        /// The value found.
        model_type: String,
    },
    /// The checkpoint is quantised; only f32/bf16/f16 weights are read.
    #[error(
        "{path}: quantization_config (quant_method `{method}`) is present; quantised checkpoints are not supported, use the unquantised f32/bf16/f16 weights"
    )]
    Quantized {
        /// The config file.
        path: PathBuf,
        /// `quantization_config.quant_method`, or `unknown`.
        method: String,
    },
    /// A field the family needs is absent.
    #[error("{path}: field `{field}` is required for model_type `{model_type}`")]
    Missing {
        /// The config file.
        path: PathBuf,
        /// The missing field.
        field: &'static str,
        /// The family.
        model_type: String,
    },
    /// A field has a value the model cannot use.
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why a checkpoint directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A safetensors file is malformed or truncated.
    #[error("{path}: not a valid safetensors file (truncated or corrupt?): {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// `model.safetensors.index.json` is malformed or points at a missing shard.
    #[error("{path}: {reason}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Neither `model.safetensors` nor an index was found.
    #[error("{dir}: no model.safetensors or model.safetensors.index.json")]
    NoWeights {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A tensor the config implies is absent.
    #[error("missing tensor `{key}` (expected shape {expected:?})")]
    MissingTensor {
        /// The HF key.
        key: String,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor's shape disagrees with the config.
    #[error("tensor `{key}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The HF key.
        key: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape on disk.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype other than f32/bf16/f16.
    #[error("tensor `{key}` has dtype {dtype}; only F32, BF16 and F16 are supported")]
    UnsupportedDtype {
        /// The HF key.
        key: String,
        /// The dtype on disk.
        dtype: String,
    },
    /// Building the model from the config failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Why the model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The router rejected its configuration or input.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// Inputs disagree with each other or with the model.
    #[error("invalid input: {0}")]
    Input(String),
}
