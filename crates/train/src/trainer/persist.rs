//! Exact-resume checkpoints of a run, resuming from them, and the final export.

use std::path::{Path, PathBuf};

use burn::store::{BurnpackStore, ModuleSnapshot};

use super::Trainer;
use crate::TrainError;
use crate::gradients::ParamPaths;
use crate::resume::{self, MODEL_FILE, OPTIMIZER_FILE, RECIPE_FILE, STATE_FILE, TrainerState};

impl Trainer {
    /// Loads the newest checkpoint of the run's output directory: model, optimiser, data
    /// position and step. Returns the step resumed from, or `None` when there is none.
    ///
    /// The checkpoint is verified against its manifest first; a damaged or incomplete newest
    /// checkpoint is an error, never passed over for an older one.
    pub fn resume_latest(&mut self) -> Result<Option<u64>, TrainError> {
        self.resume_latest_with(true)
    }

    /// [`Trainer::resume_latest`], with checksum verification optional (`verify = false` also
    /// accepts a checkpoint without manifest).
    pub fn resume_latest_with(&mut self, verify: bool) -> Result<Option<u64>, TrainError> {
        let output = self.recipe.output_dir();
        let Some(found) = resume::latest_checkpoint(&output) else {
            return Ok(None);
        };
        if verify {
            resume::verify_checkpoint(&found, true)?;
        }
        let dir = found.dir;
        let state = resume::read_state(&dir)?;
        if state.name != self.recipe.name {
            return Err(TrainError::Checkpoint {
                path: dir,
                message: format!(
                    "belongs to run `{}`, not `{}`",
                    state.name, self.recipe.name
                ),
            });
        }
        let ckpt_err = |path: PathBuf, message: String| TrainError::Checkpoint { path, message };
        let model_path = dir.join(MODEL_FILE);
        let mut store = BurnpackStore::from_file(&model_path).validate(true);
        let applied = self
            .model
            .load_from(&mut store)
            .map_err(|e| ckpt_err(model_path.clone(), e.to_string()))?;
        if !applied.missing.is_empty() || !applied.errors.is_empty() {
            let first = applied
                .missing
                .first()
                .map(|m| format!("missing {m:?}"))
                .or_else(|| applied.errors.first().map(|e| format!("{e}")))
                .unwrap_or_default();
            return Err(ckpt_err(
                model_path,
                format!(
                    "does not match the recipe's model ({} tensors missing, {} mismatched; first: {first})",
                    applied.missing.len(),
                    applied.errors.len()
                ),
            ));
        }
        let optim_path = dir.join(OPTIMIZER_FILE);
        self.optim =
            self.optim.clone().load(&optim_path).map_err(|e| {
                ckpt_err(optim_path, format!("cannot load the optimiser state: {e}"))
            })?;
        self.pipeline
            .restore(&state.pipeline)
            .map_err(|e| ckpt_err(dir.clone(), e.to_string()))?;
        // Parameter ids came from the checkpoint: recompute the path → id map.
        self.paths = ParamPaths::of(&self.model);
        self.frozen = self.paths.matching(&self.recipe.optimizer.freeze);
        if let (Some(scaler), Some(saved)) = (&mut self.loss_scaler, state.loss_scaler) {
            scaler.scale = saved.scale;
            scaler.good_steps = saved.good_steps;
        }
        self.step = state.step;
        tracing::info!(step = state.step, checkpoint = %dir.display(), "resumed");
        Ok(Some(state.step))
    }

    /// Saves an exact-resume checkpoint of the current step.
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        let state = TrainerState {
            step: self.step,
            total_steps: self.total_steps,
            pipeline: self.pipeline.state(),
            name: self.recipe.name.clone(),
            loss_scaler: self.loss_scaler,
        };
        let recipe_toml = self.recipe.to_toml();
        resume::write_checkpoint(
            &self.recipe.output_dir(),
            self.step,
            self.recipe.train.keep_checkpoints,
            |dir| {
                let mut store = BurnpackStore::from_file(dir.join(MODEL_FILE)).overwrite(true);
                self.model
                    .save_into(&mut store)
                    .map_err(|e| format!("writing the model: {e}"))?;
                self.optim
                    .save(dir.join(OPTIMIZER_FILE))
                    .map_err(|e| format!("writing the optimiser state: {e}"))?;
                let json = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
                std::fs::write(dir.join(STATE_FILE), json).map_err(|e| e.to_string())?;
                std::fs::write(dir.join(RECIPE_FILE), &recipe_toml).map_err(|e| e.to_string())?;
                Ok(())
            },
        )
    }

    /// Exports the current model as a native checkpoint (what `eval`, `generate` and
    /// `convert export` read); its config.json records the recipe's routing, which they apply.
    /// A LoRA run exports the merged model and its adapter in PEFT's format under
    /// `out/adapter`.
    pub fn export(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let options = seqtopk_checkpoint::SaveOptions {
            source: format!(
                "seqtopk train, recipe `{}`, step {}",
                self.recipe.name, self.step
            ),
            force: true,
            ..Default::default()
        };
        let mut config = self.hf_config.clone();
        if let Some(router) = &self.recipe.router {
            seqtopk_checkpoint::record_routing(&mut config, router);
        }
        let merged = self
            .recipe
            .lora
            .as_ref()
            .map(|_| self.model.clone().merge_lora());
        let failed = |path: PathBuf| {
            move |e: seqtopk_checkpoint::CheckpointError| TrainError::Checkpoint {
                path,
                message: e.to_string(),
            }
        };
        seqtopk_checkpoint::save_native(
            merged.as_ref().unwrap_or(&self.model),
            &config,
            self.tokenizer_dir.as_deref(),
            out,
            &options,
        )
        .map_err(failed(out.to_path_buf()))?;
        if let Some(lora) = &self.recipe.lora {
            let dir = out.join("adapter");
            let base = self
                .recipe
                .model
                .checkpoint
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string());
            seqtopk_checkpoint::peft::save_adapter(&self.model, &lora.spec(), &base, &dir, true)
                .map_err(failed(dir.clone()))?;
        }
        Ok(out.to_path_buf())
    }
}
