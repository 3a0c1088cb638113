//! The native checkpoint directory: Burn's own record format for the weights plus what is needed
//! to use and export them again.
//!
//! ```text
//! checkpoints/NAME/
//!   manifest.json        format, source, dtype, family, parameter count, sha256 of every file
//!   model.bpk            weights (burnpack), Burn module paths, stored in the manifest's dtype
//!   config.json          the Hugging Face config.json, verbatim apart from its dtype entry
//!   tokenizer.json …     tokenizer files copied from the source, when it had them
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{BurnpackStore, FloatCastAdapter, ModuleSnapshot};
use burn::tensor::{Device, FloatDType};
use seqtopk_model::{Init, LoadError, MoeTransformer, MoeTransformerConfig, WeightSource};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::CheckpointError;
use crate::dtype::StorageDtype;
use crate::files::{copy_tokenizer_files, write_json};
use crate::hf::config_for_dtype;
use crate::staging::Staging;

/// `format` value of a native manifest.
pub const NATIVE_FORMAT: &str = "seqtopk-native";
/// Manifest schema version.
pub const NATIVE_VERSION: u32 = 1;
/// The manifest's file name; its presence marks a native checkpoint.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The weights' file name.
pub const WEIGHTS_FILE: &str = "model.bpk";

/// One file of a native checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the contents.
    pub sha256: String,
}

/// `manifest.json` of a native checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`NATIVE_FORMAT`].
    pub format: String,
    /// Schema version, [`NATIVE_VERSION`].
    pub version: u32,
    /// Where the weights came from (an HF directory, a training run, an upcycling).
    pub source: String,
    /// Storage dtype of the weights.
    pub dtype: String,
    /// `model_type` of the config.
    pub family: String,
    /// Number of scalar parameters.
    pub parameter_count: u64,
    /// Program that wrote it.
    pub created_by: String,
    /// Every other file of the directory with its size and checksum.
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// The storage dtype.
    pub fn storage_dtype(&self) -> Result<StorageDtype, String> {
        self.dtype.parse()
    }
}

/// Options of [`save_native`].
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Storage dtype of the weights (f32 values are rounded to nearest even).
    pub dtype: StorageDtype,
    /// Provenance recorded in the manifest.
    pub source: String,
    /// Replace an existing output (written beside it first, then swapped in).
    pub force: bool,
}

/// Whether `dir` holds a native checkpoint (has a manifest).
pub fn is_native(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file()
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    let mut file = std::fs::File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes `model` as a native checkpoint directory at `out`.
///
/// The model's parameters may live on any device, autodiff included. Everything is written into a
/// temporary sibling directory which is renamed onto `out` at the end; an existing `out` is left
/// alone unless `options.force`, in which case it is replaced only after the new one is complete.
/// Tokenizer files (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`,
/// `generation_config.json`) present in `tokenizer_dir` are copied.
pub fn save_native(
    model: &MoeTransformer,
    hf_config: &Value,
    tokenizer_dir: Option<&Path>,
    out: &Path,
    options: &SaveOptions,
) -> Result<Manifest, CheckpointError> {
    let staging = Staging::new(out, options.force)?;
    let dir = staging.dir();
    let weights = dir.join(WEIGHTS_FILE);
    let mut store = BurnpackStore::from_file(&weights)
        .auto_extension(false)
        .metadata("seqtopk_format", NATIVE_FORMAT)
        .metadata("dtype", options.dtype.name())
        .with_to_adapter(FloatCastAdapter::to(options.dtype.burn()));
    model
        .save_into(&mut store)
        .map_err(|e| CheckpointError::Output {
            path: weights.clone(),
            message: format!("writing burnpack failed: {e}"),
        })?;
    write_json(
        &dir.join("config.json"),
        &config_for_dtype(hf_config, options.dtype),
    )?;
    if let Some(src) = tokenizer_dir {
        copy_tokenizer_files(src, dir)?;
    }
    let files = describe_files(dir)?;
    let manifest = Manifest {
        format: NATIVE_FORMAT.into(),
        version: NATIVE_VERSION,
        source: options.source.clone(),
        dtype: options.dtype.name().into(),
        family: model.config().family.name().into(),
        parameter_count: model.num_params() as u64,
        created_by: format!("seqtopk-checkpoint {}", env!("CARGO_PKG_VERSION")),
        files,
    };
    let value = serde_json::to_value(&manifest).map_err(|e| CheckpointError::Output {
        path: dir.join(MANIFEST_FILE),
        message: e.to_string(),
    })?;
    write_json(&dir.join(MANIFEST_FILE), &value)?;
    staging.publish()?;
    tracing::info!(
        out = %out.display(),
        dtype = options.dtype.name(),
        params = manifest.parameter_count,
        "wrote native checkpoint"
    );
    Ok(manifest)
}

/// Reads and validates `manifest.json` of a native checkpoint.
pub fn read_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    let path = dir.join(MANIFEST_FILE);
    let value = crate::files::read_json(&path)?;
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| CheckpointError::Manifest {
            path: path.clone(),
            message: format!("not a seqtopk manifest: {e}"),
        })?;
    if manifest.format != NATIVE_FORMAT {
        return Err(CheckpointError::Manifest {
            path,
            message: format!(
                "format is `{}`, expected `{NATIVE_FORMAT}`",
                manifest.format
            ),
        });
    }
    if manifest.version != NATIVE_VERSION {
        return Err(CheckpointError::Manifest {
            path,
            message: format!(
                "version {} is not supported (this build reads version {NATIVE_VERSION})",
                manifest.version
            ),
        });
    }
    if let Err(e) = manifest.storage_dtype() {
        return Err(CheckpointError::Manifest {
            path,
            message: format!("dtype: {e}"),
        });
    }
    Ok(manifest)
}

/// Checks that every file the manifest lists exists with its recorded size, and with
/// `checksums` also its SHA-256.
pub fn verify_native(
    dir: &Path,
    manifest: &Manifest,
    checksums: bool,
) -> Result<(), CheckpointError> {
    verify_files(dir, &manifest.files, checksums)
}

/// Size and SHA-256 of every file directly inside `dir` except [`MANIFEST_FILE`], by name: what a
/// manifest records before it is written as the directory's last file (its commit point).
pub fn describe_files(dir: &Path) -> Result<Vec<ManifestFile>, CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE && entry.file_type().map_err(io(dir))?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let bytes = path.metadata().map_err(io(&path))?.len();
            Ok(ManifestFile {
                sha256: sha256_file(&path)?,
                name,
                bytes,
            })
        })
        .collect()
}

/// Checks that each of `files` exists in `dir` with its recorded size, and with `checksums` also
/// its SHA-256 (streamed, so the cost is one read of the checkpoint). All sizes are checked
/// before any checksum: a truncated file is named as such, whatever else is damaged.
pub fn verify_files(
    dir: &Path,
    files: &[ManifestFile],
    checksums: bool,
) -> Result<(), CheckpointError> {
    for file in files {
        let path = dir.join(&file.name);
        let meta = path.metadata().map_err(|source| CheckpointError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.len() != file.bytes {
            return Err(CheckpointError::Corrupt {
                path,
                message: format!(
                    "{} bytes on disk, {MANIFEST_FILE} records {} (truncated or replaced?)",
                    meta.len(),
                    file.bytes
                ),
            });
        }
    }
    if !checksums {
        return Ok(());
    }
    for file in files {
        let path = dir.join(&file.name);
        let found = sha256_file(&path)?;
        if found != file.sha256 {
            return Err(CheckpointError::Corrupt {
                path,
                message: format!(
                    "corrupt: its sha256 is {found}, {MANIFEST_FILE} records {} (restore the file from a copy or write the checkpoint again; --no-verify skips this check)",
                    file.sha256
                ),
            });
        }
    }
    Ok(())
}

/// Parameters of the skeleton model the burnpack is applied to: zeros, nothing "present", so the
/// model takes its default (per-expert) structure.
struct Zeros;

impl WeightSource for Zeros {
    fn tensor(&mut self, _key: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>, LoadError> {
        Ok(vec![0.0; shape.iter().product()])
    }

    fn contains(&self, _key: &str) -> bool {
        false
    }

    fn shape(&self, _key: &str) -> Option<Vec<usize>> {
        None
    }
}

/// Loads the model of a native checkpoint (f32 parameters on `device`) and its manifest.
///
/// File sizes are always checked against the manifest (a truncated file is refused), checksums
/// with `checksums` (a flipped byte of the right-sized file is refused too).
pub fn load_native(
    dir: &Path,
    device: &Device,
    checksums: bool,
    dtype: Option<FloatDType>,
) -> Result<(MoeTransformer, Manifest), CheckpointError> {
    let manifest = read_manifest(dir)?;
    verify_native(dir, &manifest, checksums)?;
    let config_path = dir.join("config.json");
    let config =
        MoeTransformerConfig::from_file(&config_path).map_err(|e| CheckpointError::Load {
            path: dir.to_path_buf(),
            source: LoadError::Config(e),
        })?;
    let mut model =
        MoeTransformer::build_stored_in(&config, &mut Zeros, device, dtype).map_err(|source| {
            CheckpointError::Load {
                path: dir.to_path_buf(),
                source,
            }
        })?;
    let weights = dir.join(WEIGHTS_FILE);
    let mut store = BurnpackStore::from_file(&weights)
        .auto_extension(false)
        .with_from_adapter(FloatCastAdapter::to(
            dtype.map_or(burn::tensor::DType::F32, burn::tensor::DType::from),
        ));
    let result = model
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Corrupt {
            path: weights.clone(),
            message: burnpack_problem(&e),
        })?;
    if !result.unused.is_empty() {
        return Err(CheckpointError::Corrupt {
            path: weights,
            message: format!(
                "holds tensors config.json has no place for: {}",
                preview(&result.unused)
            ),
        });
    }
    Ok((model, manifest))
}

/// What a burnpack read failure means for the user: a file that is not (or no longer) a burnpack,
/// or one whose tensors do not fit the model `config.json` describes (kept short: Burn's own
/// message lists every tensor).
fn burnpack_problem(e: &burn::store::burn_pack::Error) -> String {
    use burn::store::burn_pack::Error as E;
    match e {
        E::TensorNotFound(_) | E::TensorBytesSizeMismatch(_) | E::ValidationError(_) => {
            let text = e.to_string();
            let short: String = text.chars().take(300).collect();
            let more = if short.len() < text.len() { " …" } else { "" };
            // Checkpoints written before the experts were stacked hold one tensor per expert.
            let hint = if text.contains("experts.gate_up") {
                " (a checkpoint written before seqtopk stacked each layer's experts into \
                 `experts.gate_up`/`experts.down` holds one tensor per expert: export it to Hugging \
                 Face format with the seqtopk that wrote it and `convert import` that)"
            } else {
                ""
            };
            format!("its tensors do not match the model config.json describes{hint}: {short}{more}")
        }
        _ => format!(
            "not a readable burnpack file ({e}): damaged, truncated or not written by seqtopk"
        ),
    }
}

fn preview(items: &[String]) -> String {
    let mut s = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(&format!(", … ({} in all)", items.len()));
    }
    s
}

/// The weights file of a native checkpoint directory.
pub fn weights_path(dir: &Path) -> PathBuf {
    dir.join(WEIGHTS_FILE)
}
