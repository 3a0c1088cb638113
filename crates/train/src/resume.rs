//! Exact-resume checkpoints: `step-NNNNNN/` holds the model (burnpack, parameter ids kept so the
//! optimiser state matches), the AdamW state, the data position, the step and, written last, a
//! manifest with the size and SHA-256 of every other file. Each is written into a temporary
//! directory that is renamed only when complete, so a crash never leaves a half-written
//! checkpoint under a real name; the manifest catches what the rename cannot (a damaged or
//! hand-edited file). An output directory is held by one run at a time ([`RunLock`]).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use seqtopk_checkpoint::{ManifestFile, describe_files, verify_files};
use seqtopk_data::PipelineState;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::precision::LossScaler;

/// Model weights file inside a checkpoint.
pub const MODEL_FILE: &str = "model.bpk";
/// Optimiser state file inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// Trainer state file inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The resolved recipe, for reference.
pub const RECIPE_FILE: &str = "recipe.toml";
/// Checksums of the other files, written last.
pub const MANIFEST_FILE: &str = seqtopk_checkpoint::native::MANIFEST_FILE;
/// `format` of a training checkpoint's manifest.
pub const STEP_FORMAT: &str = "seqtopk-train-checkpoint";
/// The lock file in a run's output directory.
pub const LOCK_FILE: &str = "run.lock";

/// `manifest.json` of a training checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepManifest {
    /// Always [`STEP_FORMAT`].
    pub format: String,
    /// Steps completed when it was written.
    pub step: u64,
    /// Every other file of the directory with its size and checksum.
    pub files: Vec<ManifestFile>,
}

/// Exclusive hold on a run's output directory: an OS file lock on [`LOCK_FILE`], released when
/// this is dropped or the process dies however it dies (no stale marker to clean up).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Locks `output` for this process, or says which process holds it.
pub fn lock_output(output: &Path) -> Result<RunLock, TrainError> {
    let path = output.join(LOCK_FILE);
    let err = |message: String| TrainError::Output {
        path: output.to_path_buf(),
        message,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| err(format!("cannot open the lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("another seqtopk process (pid {pid})"),
            };
            return Err(err(format!(
                "is in use by {holder}; two runs must not write one output directory: wait for it to finish, stop it, or set another output_dir"
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(err(format!("cannot lock {}: {e}", path.display())));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.flush())
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
    Ok(RunLock { _file: file })
}

/// Everything besides tensors that resuming needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: u64,
    /// Steps the run was planned for.
    pub total_steps: u64,
    /// Data position after the last completed step.
    pub pipeline: PipelineState,
    /// Run name (a checkpoint of another run is refused).
    pub name: String,
    /// The f16 loss scaler (absent for f32 and bf16 runs).
    #[serde(default)]
    pub loss_scaler: Option<LossScaler>,
}

/// A checkpoint found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// Its directory.
    pub dir: PathBuf,
    /// Steps completed when it was written.
    pub step: u64,
}

/// Directory holding a run's checkpoints.
pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Every checkpoint directory of a run, oldest first, complete or not (temporary leftovers of the
/// writer are ignored): a damaged one is reported when used, never silently passed over.
pub fn list_checkpoints(output: &Path) -> Vec<CheckpointInfo> {
    let mut found: Vec<CheckpointInfo> = std::fs::read_dir(checkpoints_dir(output))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            let dir = entry.path();
            dir.is_dir().then_some(CheckpointInfo { dir, step })
        })
        .collect();
    found.sort_by_key(|c| c.step);
    found
}

/// The newest checkpoint directory of a run.
pub fn latest_checkpoint(output: &Path) -> Option<CheckpointInfo> {
    list_checkpoints(output).pop()
}

/// Writes a checkpoint through `write` into a temporary directory, then renames it to
/// `step-NNNNNN` (replacing an older one of the same step only after the new one is complete),
/// and deletes the oldest so that `keep` remain.
pub fn write_checkpoint(
    output: &Path,
    step: u64,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, TrainError> {
    let root = checkpoints_dir(output);
    let final_dir = root.join(step_name(step));
    let err = |path: &Path, message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(&root).map_err(|e| err(&root, format!("cannot create: {e}")))?;
    let tmp = root.join(format!(".{}.tmp-{}", step_name(step), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| err(&tmp, format!("cannot clear: {e}")))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, format!("cannot create: {e}")))?;
    if let Err(message) = write(&tmp).and_then(|()| write_manifest(&tmp, step)) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(err(&final_dir, message));
    }
    if final_dir.exists() {
        let old = root.join(format!(".{}.old-{}", step_name(step), std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(|e| err(&final_dir, e.to_string()))?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| err(&final_dir, e.to_string()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &final_dir).map_err(|e| err(&final_dir, e.to_string()))?;
    }
    let all = list_checkpoints(output);
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        if let Err(e) = std::fs::remove_dir_all(&old.dir) {
            tracing::warn!("could not delete old checkpoint {}: {e}", old.dir.display());
        }
    }
    Ok(final_dir)
}

/// Writes the manifest of the files already in `dir`: the checkpoint's commit point.
fn write_manifest(dir: &Path, step: u64) -> Result<(), String> {
    let manifest = StepManifest {
        format: STEP_FORMAT.into(),
        step,
        files: describe_files(dir).map_err(|e| e.to_string())?,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(MANIFEST_FILE), json + "\n")
        .map_err(|e| format!("writing {MANIFEST_FILE}: {e}"))
}

/// Checks a checkpoint against its manifest: present, for this step, every file of the recorded
/// size and (with `checksums`) SHA-256.
pub fn verify_checkpoint(found: &CheckpointInfo, checksums: bool) -> Result<(), TrainError> {
    let path = found.dir.join(MANIFEST_FILE);
    let err = |path: &Path, message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(
                &found.dir,
                format!(
                    "has no {MANIFEST_FILE}: it was not completely written, or by a seqtopk without checksums. It is not skipped: move it aside to resume from the checkpoint before it, or pass --no-verify to use it as it is"
                ),
            ));
        }
        Err(e) => return Err(err(&path, format!("cannot read: {e}"))),
    };
    let manifest: StepManifest = serde_json::from_str(&text)
        .map_err(|e| err(&path, format!("not a training checkpoint manifest: {e}")))?;
    if manifest.format != STEP_FORMAT {
        return Err(err(
            &path,
            format!("format is `{}`, expected `{STEP_FORMAT}`", manifest.format),
        ));
    }
    if manifest.step != found.step {
        return Err(err(
            &path,
            format!(
                "records step {}, but the directory is named for step {} (renamed by hand?)",
                manifest.step, found.step
            ),
        ));
    }
    verify_files(&found.dir, &manifest.files, checksums).map_err(|e| err(&found.dir, e.to_string()))
}

/// Removes temporary directories a killed run left behind: a checkpoint's, and a final export's
/// (its `.old` copy only once the new `final/` is in place). Call it holding the [`RunLock`],
/// so that no live writer owns them.
pub fn clean_leftovers(output: &Path) {
    let swept = |dir: &Path, prefix: &str, keep_old: bool| {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let tmp = name.contains(".tmp-");
            let old = name.contains(".old-") && !keep_old;
            if name.starts_with(prefix) && (tmp || old) {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        tracing::info!("removed {} left by an earlier run", entry.path().display())
                    }
                    Err(e) => tracing::warn!("could not remove {}: {e}", entry.path().display()),
                }
            }
        }
    };
    swept(&checkpoints_dir(output), ".step-", false);
    swept(output, ".final.", !output.join("final").is_dir());
}

/// Reads a checkpoint's trainer state.
pub fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path,
        message: format!("not a trainer state: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_no_checkpoint_and_keep_prunes_oldest() {
        let out = std::env::temp_dir().join(format!("seqtopk-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let ok = |dir: &Path| std::fs::write(dir.join(STATE_FILE), "{}").map_err(|e| e.to_string());
        for step in 1..=3 {
            write_checkpoint(&out, step, 2, ok).unwrap();
        }
        let steps: Vec<u64> = list_checkpoints(&out).iter().map(|c| c.step).collect();
        assert_eq!(steps, vec![2, 3]);
        let err = write_checkpoint(&out, 4, 2, |_| Err("disk full".into())).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(latest_checkpoint(&out).unwrap().step, 3);
        assert!(std::fs::read_dir(checkpoints_dir(&out)).unwrap().count() == 2);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
