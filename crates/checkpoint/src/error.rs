//! The crate's one error type.

use std::path::PathBuf;

use seqtopk_model::LoadError;

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
