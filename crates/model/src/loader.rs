//! Loading Hugging Face checkpoint directories: `config.json` plus `model.safetensors` or sharded
//! `model-0000N-of-0000M.safetensors` with `model.safetensors.index.json`; per-expert or fused
//! expert layouts; F32/BF16/F16 converted to f32.
//!
//! The `safetensors` crate is used directly: stacked/fused experts need splitting and transposing
//! that burn-store's one-to-one key remapping cannot express.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType};
use safetensors::tensor::{Dtype, Metadata};

use crate::config::MoeTransformerConfig;
use crate::model::MoeTransformer;
use crate::weights::{Init, WeightSource};
use crate::{LoadError, ModelError};

/// A tensor read from a checkpoint, converted to f32 (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape on disk.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f32>,
}

/// One safetensors file held in memory with its parsed header.
struct Shard {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of a checkpoint directory, by HF key.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsSource")
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

/// The safetensors files of an HF checkpoint directory: `model.safetensors`, else the shards
/// that `model.safetensors.index.json` lists (sorted, each once), which must all exist.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return Ok(vec![single]);
    }
    if !index_path.is_file() {
        return Err(LoadError::NoWeights {
            dir: dir.to_path_buf(),
        });
    }
    let index_error = |reason: String| LoadError::Index {
        path: index_path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&index_path).map_err(|source| LoadError::Io {
        path: index_path.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| index_error(format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| index_error("no `weight_map` object".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| index_error(format!("weight_map[{key}] is not a file name")))?;
        let path = dir.join(file);
        if !path.is_file() {
            return Err(index_error(format!(
                "shard `{file}` listed in weight_map is missing"
            )));
        }
        if !files.contains(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl SafetensorsSource {
    /// Opens the weights of `dir`: `model.safetensors`, else the shards listed by
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::open_files(&weight_files(dir.as_ref())?)
    }

    /// Opens the given safetensors files (keys must not repeat across files).
    pub fn open_files(files: &[PathBuf]) -> Result<Self, LoadError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for path in files {
            let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let (n, metadata) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
                LoadError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            for key in metadata.tensors().keys() {
                if index.insert(key.clone(), shards.len()).is_some() {
                    return Err(LoadError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{key}` appears in more than one file"),
                    });
                }
            }
            shards.push(Shard {
                path: path.clone(),
                bytes,
                data_start: 8 + n,
                metadata,
            });
        }
        Ok(Self { shards, index })
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.index.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The tensor `key` converted to f32, whatever its shape; `Ok(None)` when absent.
    pub fn read_any(&self, key: &str) -> Result<Option<HostTensor>, LoadError> {
        let Some(&at) = self.index.get(key) else {
            return Ok(None);
        };
        let shard = &self.shards[at];
        let Some(info) = shard.metadata.info(key) else {
            return Ok(None);
        };
        let (start, end) = info.data_offsets;
        let bytes = &shard.bytes[shard.data_start + start..shard.data_start + end];
        let values = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(LoadError::UnsupportedDtype {
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(Some(HostTensor {
            shape: info.shape.clone(),
            values,
        }))
    }
}

impl WeightSource for SafetensorsSource {
    fn tensor(&mut self, key: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>, LoadError> {
        if let Some(found) = self.shape(key)
            && found != shape
        {
            return Err(LoadError::ShapeMismatch {
                key: key.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        let tensor = self
            .read_any(key)?
            .ok_or_else(|| LoadError::MissingTensor {
                key: key.to_string(),
                expected: shape.to_vec(),
            })?;
        Ok(tensor.values)
    }

    fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let shard = &self.shards[*self.index.get(key)?];
        shard.metadata.info(key).map(|i| i.shape.clone())
    }
}

/// Loads an HF checkpoint directory (`config.json` + weights) as f32 parameters on `device`.
pub fn load_checkpoint(
    dir: impl AsRef<Path>,
    device: &Device,
) -> Result<MoeTransformer, LoadError> {
    load_checkpoint_in(dir, device, None)
}

/// [`load_checkpoint`] with the weights stored in `dtype` as they are read (f32 when `None`).
pub fn load_checkpoint_in(
    dir: impl AsRef<Path>,
    device: &Device,
    dtype: Option<FloatDType>,
) -> Result<MoeTransformer, LoadError> {
    let dir = dir.as_ref();
    let config = MoeTransformerConfig::from_file(dir.join("config.json"))?;
    let mut source = SafetensorsSource::open_dir(dir)?;
    MoeTransformer::build_stored_in(&config, &mut source, device, dtype)
}

impl From<seqtopk_router::RoutingError> for LoadError {
    fn from(e: seqtopk_router::RoutingError) -> Self {
        LoadError::Model(ModelError::Routing(e))
    }
}
