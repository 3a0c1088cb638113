//! Exact-resume checkpoints: `step-NNNNNN/` holds the model (burnpack, parameter ids kept so the
//! optimiser state matches), the AdamW state, the data position and the step. Each is written
//! into a temporary directory that is renamed only when complete, so a crash never leaves a
//! half-written checkpoint under a real name.

use std::path::{Path, PathBuf};

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

/// All complete checkpoints of a run, oldest first (temporary leftovers are ignored).
pub fn list_checkpoints(output: &Path) -> Vec<CheckpointInfo> {
    let mut found: Vec<CheckpointInfo> = std::fs::read_dir(checkpoints_dir(output))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            let dir = entry.path();
            dir.join(STATE_FILE)
                .is_file()
                .then_some(CheckpointInfo { dir, step })
        })
        .collect();
    found.sort_by_key(|c| c.step);
    found
}

/// The newest complete checkpoint of a run.
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
    if let Err(message) = write(&tmp) {
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

/// Removes temporary directories a killed run left behind.
pub fn clean_leftovers(output: &Path) {
    for entry in std::fs::read_dir(checkpoints_dir(output))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".step-") && (name.contains(".tmp-") || name.contains(".old-")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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
