//! Checkpoint directories: what `train`, `eval` and `generate` load, and what `convert` writes.
//!
//! A checkpoint is either a Hugging Face directory (`config.json` + safetensors) or a native one
//! written by `convert import` / `train`. [`load`] tells them apart so every command accepts both.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use seqtopk_model::{LoadError, MoeTransformer, load_checkpoint};

/// Why a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The path does not exist or is not a directory.
    #[error("checkpoint {path}: not a directory (expected a Hugging Face or seqtopk checkpoint directory)")]
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
}

/// Which on-disk layout a checkpoint directory has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `config.json` + `model*.safetensors` as transformers writes them.
    HuggingFace,
}

/// A loaded checkpoint: the model plus what commands need beside it.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The model, f32 parameters on the requested device.
    pub model: MoeTransformer,
    /// The HF `config.json` as JSON (kept verbatim so exports round-trip unknown keys).
    pub hf_config: serde_json::Value,
    /// `tokenizer.json` beside the weights, if there is one.
    pub tokenizer: Option<PathBuf>,
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its layout.
    pub format: CheckpointFormat,
}

/// Loads a checkpoint directory of either format onto `device`.
pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<LoadedCheckpoint, CheckpointError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(CheckpointError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let config_path = dir.join("config.json");
    let hf_config = read_json(&config_path)?;
    let model = load_checkpoint(dir, device).map_err(|source| CheckpointError::Load {
        path: dir.to_path_buf(),
        source,
    })?;
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(LoadedCheckpoint {
        model,
        hf_config,
        tokenizer,
        dir: dir.to_path_buf(),
        format: CheckpointFormat::HuggingFace,
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}
