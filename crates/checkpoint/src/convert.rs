//! Whole-directory conversions: HF → native import and checkpoint → HF export.

use std::path::Path;

use burn::tensor::Device;

use crate::hf::{ExpertLayout, ExportOptions, export_hf};
use crate::load::{CheckpointFormat, load, load_with};
use crate::native::{Manifest, SaveOptions, save_native};
use crate::{CheckpointError, StorageDtype};

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
