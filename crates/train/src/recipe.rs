//! Training recipes: the TOML file `train --recipe` reads, validated before anything runs.
//!
//! Every section denies unknown fields, so a typo is an error naming the field instead of a
//! silently ignored setting. Relative paths are taken from the working directory (as in
//! transformers / LLaMA-Factory configs), so the shipped recipes run from the repository root.

use std::path::{Path, PathBuf};

use seqtopk_backend::Backend;
use seqtopk_data::DataConfig;
use seqtopk_model::{LoraSpec, ModuleTargets, hf_keys};
use seqtopk_router::RouterConfig;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::precision::{LossScaleSection, Precision};

/// The default recipe, embedded so `seqtopk train` runs with nothing but the repository.
pub const DEFAULT_RECIPE: &str = include_str!("../../../recipes/tiny-seqtopk-math.toml");
/// Name under which the embedded recipe is reported.
pub const DEFAULT_RECIPE_NAME: &str = "recipes/tiny-seqtopk-math.toml (embedded)";

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Run name (default output directory `runs/<name>`).
    pub name: String,
    /// Seed of model initialisation (from scratch) and data order.
    #[serde(default)]
    pub seed: u64,
    /// Backend: cpu, wgpu or cuda (must be compiled in).
    #[serde(default)]
    pub backend: Backend,
    /// Device indices; more than one trains data-parallel: one model replica per device, each
    /// running its share of the micro-batches, gradients summed on the first. On the CPU the
    /// index is ignored and every replica runs on the host (this exercises the same path).
    #[serde(default = "default_devices")]
    pub devices: Vec<usize>,
    /// Where checkpoints and the final export go (default `runs/<name>`).
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// TensorBoard log directory (default `<output_dir>/tensorboard`).
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// What to train.
    pub model: ModelSection,
    /// Routing; default: the checkpoint's own per-token top-K.
    #[serde(default)]
    pub router: Option<RouterConfig>,
    /// Data: sources, domains, mixture, sequence length, packing, SFT or pretraining. Its
    /// `batch_size` is set from `[batch] micro_batch_size`.
    pub data: DataConfig,
    /// AdamW.
    #[serde(default)]
    pub optimizer: OptimizerSection,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// Micro-batch and gradient accumulation.
    #[serde(default)]
    pub batch: BatchSection,
    /// Compute precision: `f32`, or mixed `bf16`/`f16` (f32 master weights and optimiser
    /// state, passes in the half type) where the device supports it.
    #[serde(default)]
    pub precision: Precision,
    /// Dynamic loss scaling of `precision = "f16"` (PyTorch's defaults when absent).
    #[serde(default)]
    pub loss_scale: Option<LossScaleSection>,
    /// Length and cadences.
    pub train: TrainSection,
    /// LoRA fine-tuning: base frozen, adapters (and `modules_to_save`) trained.
    #[serde(default)]
    pub lora: Option<LoraSection>,
}

/// LoRA adapters with Hugging Face PEFT's meaning (see `seqtopk_model::LoraSpec`); the run's
/// export carries them as a PEFT adapter directory beside the merged model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank of every adapter.
    #[serde(default = "default_lora_rank")]
    pub r: usize,
    /// `lora_alpha` (default `2·r`, LLaMA-Factory's choice): the update is `alpha/r · A·B`.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Dropout on the linear adapters' input while training (PEFT `lora_dropout`); 0 when
    /// the stacked experts are adapted, as PEFT requires.
    #[serde(default)]
    pub dropout: f64,
    /// rsLoRA scaling `alpha/√r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Linear modules to adapt: HF names (`["q_proj", "v_proj"]`), or one regex over whole
    /// module paths (`"model\\.layers\\.[0-3]\\..*_proj"`), as PEFT reads `target_modules`.
    #[serde(default = "default_lora_modules")]
    pub target_modules: ModuleTargets,
    /// Stacked expert parameters to adapt.
    #[serde(default = "default_lora_parameters")]
    pub target_parameters: Vec<String>,
    /// Modules trained in full (the router `gate` by default: SeqTopK fine-tuning moves it).
    #[serde(default = "default_modules_to_save")]
    pub modules_to_save: Vec<String>,
}

fn default_lora_rank() -> usize {
    8
}

fn default_lora_modules() -> ModuleTargets {
    ModuleTargets::Names(hf_keys::ATTENTION.map(String::from).to_vec())
}

fn default_lora_parameters() -> Vec<String> {
    hf_keys::FUSED_EXPERTS.map(String::from).to_vec()
}

fn default_modules_to_save() -> Vec<String> {
    vec!["gate".into()]
}

impl LoraSection {
    /// The adapters this section asks for.
    pub fn spec(&self) -> LoraSpec {
        LoraSpec {
            rank: self.r,
            alpha: self.alpha.unwrap_or(2.0 * self.r as f64),
            use_rslora: self.use_rslora,
            target_modules: self.target_modules.clone(),
            target_parameters: self.target_parameters.clone(),
            modules_to_save: self.modules_to_save.clone(),
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            dropout: self.dropout,
        }
    }

    fn validate(&self, devices: usize) -> Result<(), String> {
        if self.r == 0 {
            return Err("lora.r: expected a rank of at least 1".into());
        }
        if let Some(a) = self.alpha
            && !(a.is_finite() && a > 0.0)
        {
            return Err(format!("lora.alpha: expected a positive number, got {a}"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "lora.dropout: expected a probability in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.dropout > 0.0 && !self.target_parameters.is_empty() {
            return Err(format!(
                "lora.dropout: got {}, but the stacked experts are adapted (target_parameters = \
                 {:?}), and PEFT has no dropout for them (its adapter would not load); set \
                 lora.target_parameters = [] to adapt the linear modules with dropout, or use 0",
                self.dropout, self.target_parameters
            ));
        }
        if self.dropout > 0.0 && devices > 1 {
            return Err(format!(
                "lora.dropout: got {} with {devices} devices; masks drawn on several devices at \
                 once would depend on thread timing and resume would not be exact: use one \
                 device or 0",
                self.dropout
            ));
        }
        if self.target_modules.is_empty() && self.target_parameters.is_empty() {
            return Err("lora: target_modules and target_parameters are both empty".into());
        }
        Ok(())
    }
}

fn default_devices() -> Vec<usize> {
    vec![0]
}

/// The model to train: a checkpoint to continue, or a Hugging Face style config to start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF or native checkpoint directory.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// From scratch: the keys of an HF `config.json` (`model_type`, `hidden_size`, …).
    #[serde(default)]
    pub config: Option<toml::Table>,
}

/// AdamW settings and what not to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam betas.
    pub betas: [f64; 2],
    /// Adam epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Parameters to freeze, as module-path prefixes (`embed_tokens`, `layers.0.self_attn`, …).
    pub freeze: Vec<String>,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            freeze: Vec::new(),
        }
    }
}

/// Shape of the learning-rate curve after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine decay from the peak to `min_lr_ratio · lr`.
    #[default]
    Cosine,
    /// Linear decay from the peak to `min_lr_ratio · lr`.
    Linear,
    /// Constant at the peak.
    Constant,
}

/// Learning-rate schedule: linear warm-up, then decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// Decay shape.
    pub kind: ScheduleKind,
    /// Optimiser steps of linear warm-up from 0.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
        }
    }
}

/// Batching: one optimiser step sees `micro_batch_size · grad_accum_steps · devices` rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Rows per forward/backward pass.
    pub micro_batch_size: usize,
    /// Micro-batches per optimiser step (per device).
    pub grad_accum_steps: usize,
}

impl Default for BatchSection {
    fn default() -> Self {
        Self {
            micro_batch_size: 4,
            grad_accum_steps: 1,
        }
    }
}

/// Run length and cadences (in optimiser steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimiser steps; exactly one of `steps` and `epochs`.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Passes over the training tokens; exactly one of `steps` and `epochs`.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Log scalars every N steps.
    #[serde(default = "one")]
    pub log_every: u64,
    /// Held-out evaluation every N steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Validation batches per domain and evaluation (every domain gets its own loss).
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Checkpoint every N steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Checkpoints kept (oldest deleted first); at least 1.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Activation recomputation in the backward pass.
    #[serde(default)]
    pub recompute: Recompute,
}

/// What the backward pass recomputes instead of keeping from the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Recompute {
    /// Keep every activation the backward pass needs.
    #[default]
    None,
    /// Burn's balanced gradient checkpointing: outputs of memory-bound operations (element-wise
    /// ops, activations, norms) are recomputed from their inputs during backward; those of
    /// compute-bound ones (matmuls) are kept. Same gradients, less activation memory.
    Balanced,
}

impl OptimizerSection {
    fn validate(&self) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!(
                "optimizer.lr: expected a finite value > 0, got {}",
                self.lr
            ));
        }
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return Err(format!(
                    "optimizer.betas[{i}]: expected a value in [0, 1), got {b}"
                ));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!(
                "optimizer.eps: expected a value > 0, got {}",
                self.eps
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "optimizer.weight_decay: expected a value >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(format!(
                "optimizer.max_grad_norm: expected a value >= 0 (0 disables clipping), got {}",
                self.max_grad_norm
            ));
        }
        Ok(())
    }
}

impl BatchSection {
    fn validate(&self) -> Result<(), String> {
        if self.micro_batch_size == 0 {
            return Err("batch.micro_batch_size: expected at least 1".into());
        }
        if self.grad_accum_steps == 0 {
            return Err("batch.grad_accum_steps: expected at least 1".into());
        }
        Ok(())
    }
}

impl TrainSection {
    /// The run's length and cadences, and the schedule that must fit in it.
    fn validate(&self, schedule: &ScheduleSection) -> Result<(), String> {
        if !(0.0..=1.0).contains(&schedule.min_lr_ratio) {
            return Err(format!(
                "schedule.min_lr_ratio: expected a value in [0, 1], got {}",
                schedule.min_lr_ratio
            ));
        }
        match (self.steps, self.epochs) {
            (Some(_), Some(_)) => return Err("train: give either `steps` or `epochs`".into()),
            (None, None) => return Err("train: expected `steps` or `epochs`".into()),
            (Some(0), _) => return Err("train.steps: expected at least 1".into()),
            (_, Some(e)) if !(e.is_finite() && e > 0.0) => {
                return Err(format!("train.epochs: expected a value > 0, got {e}"));
            }
            _ => {}
        }
        if let Some(steps) = self.steps
            && schedule.warmup_steps >= steps
            && schedule.warmup_steps > 0
        {
            return Err(format!(
                "schedule.warmup_steps: {} warm-up steps leave nothing of a {steps}-step run",
                schedule.warmup_steps
            ));
        }
        if self.log_every == 0 {
            return Err("train.log_every: expected at least 1".into());
        }
        if self.keep_checkpoints == 0 {
            return Err("train.keep_checkpoints: expected at least 1".into());
        }
        Ok(())
    }
}

fn one() -> u64 {
    1
}
fn default_eval_batches() -> usize {
    8
}
fn default_keep() -> usize {
    2
}

impl Recipe {
    /// Parses recipe text; `origin` names the file in errors. `overrides` are `key=value` pairs
    /// (`optimizer.lr=3e-4`, `router.mode="topk"`) applied before validation.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::Recipe {
            origin: origin.to_owned(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for item in overrides {
            apply_override(&mut table, item).map_err(|m| bad(format!("--set {item}: {m}")))?;
        }
        if table
            .get("data")
            .and_then(|d| d.as_table())
            .is_some_and(|d| d.contains_key("batch_size"))
        {
            return Err(bad(
                "data.batch_size: set the rows per pass as batch.micro_batch_size".into(),
            ));
        }
        let mut recipe: Recipe =
            Recipe::deserialize(toml::Value::Table(table)).map_err(|e| bad(e.to_string()))?;
        recipe.data.batch_size = recipe.batch.micro_batch_size;
        recipe.validate().map_err(bad)?;
        if recipe.precision == Precision::F16 && recipe.loss_scale.is_none() {
            // Resolved so that `--dry-run` and checkpoints show the scaling in effect.
            recipe.loss_scale = Some(LossScaleSection::default());
        }
        Ok(recipe)
    }

    /// Reads and parses a recipe file.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Recipe {
            origin: origin.clone(),
            message: format!("cannot read the recipe: {e}"),
        })?;
        Self::parse(&text, &origin, overrides)
    }

    /// The resolved recipe as TOML (what `--dry-run` prints and checkpoints keep).
    pub fn to_toml(&self) -> String {
        let rendered = toml::Table::try_from(self).and_then(|mut table| {
            // Derived from `batch.micro_batch_size`; a recipe may not set it itself, so the
            // rendered recipe (a checkpoint's recipe.toml) stays one `--recipe` accepts.
            if let Some(toml::Value::Table(data)) = table.get_mut("data") {
                data.remove("batch_size");
            }
            toml::to_string_pretty(&table)
        });
        rendered.unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// Output directory.
    pub fn output_dir(&self) -> PathBuf {
        self.output_dir
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(&self.name))
    }

    /// Token slots per optimiser step: rows × sequence length over accumulation and replicas.
    pub fn tokens_per_step(&self) -> usize {
        self.batch.micro_batch_size
            * self.batch.grad_accum_steps
            * self.devices.len()
            * self.data.seq_len
    }

    /// TensorBoard directory.
    pub fn log_dir(&self) -> PathBuf {
        self.log_dir
            .clone()
            .unwrap_or_else(|| self.output_dir().join("tensorboard"))
    }

    /// Checks that need no files: each message names the field and what it expects.
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            return Err(format!(
                "name: expected a non-empty name without slashes, got {:?}",
                self.name
            ));
        }
        if self.devices.is_empty() {
            return Err("devices: expected at least one device index".into());
        }
        if let Some(d) = self
            .devices
            .iter()
            .enumerate()
            .find_map(|(i, d)| self.devices[..i].contains(d).then_some(d))
        {
            return Err(format!("devices: index {d} appears more than once"));
        }
        if let Some(lora) = &self.lora {
            lora.validate(self.devices.len())?;
        }
        match (&self.model.checkpoint, &self.model.config) {
            (Some(_), Some(_)) => {
                return Err("model: give either `checkpoint` or `config`, not both".into());
            }
            (None, None) => {
                return Err(
                    "model: expected `checkpoint = \"DIR\"` or a `[model.config]` table".into(),
                );
            }
            _ => {}
        }
        self.optimizer.validate()?;
        self.batch.validate()?;
        self.train.validate(&self.schedule)?;
        if let Some(scale) = &self.loss_scale {
            if self.precision != Precision::F16 {
                return Err(format!(
                    "loss_scale: applies only to precision = \"f16\" (this recipe computes in {}, \
                     whose exponent range needs no loss scaling)",
                    self.precision
                ));
            }
            scale.validate()?;
        }
        self.data.validate().map_err(|e| format!("data: {e}"))?;
        Ok(())
    }
}

/// Sets `dotted.key = value` in `table`; the value is read as TOML (`3e-4`, `true`, `"topk"`,
/// `[1, 2]`) and taken as a bare string when it is not valid TOML.
fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), String> {
    let (key, raw) = item
        .split_once('=')
        .ok_or("expected key=value, e.g. optimizer.lr=3e-4")?;
    let key = key.trim();
    if key.is_empty() {
        return Err("empty key".into());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_owned()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = table;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            node.insert((*part).to_owned(), value);
            return Ok(());
        }
        let entry = node
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a table", parts[..=i].join(".")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_toml_values_and_fall_back_to_strings() {
        let mut t = toml::Table::new();
        apply_override(&mut t, "optimizer.lr=3e-4").unwrap();
        apply_override(&mut t, "router.mode=seqtopk").unwrap();
        apply_override(&mut t, "devices=[0, 1]").unwrap();
        assert_eq!(t["optimizer"]["lr"].as_float(), Some(3e-4));
        assert_eq!(t["router"]["mode"].as_str(), Some("seqtopk"));
        assert_eq!(t["devices"].as_array().map(Vec::len), Some(2));
        assert!(apply_override(&mut t, "no_equals").is_err());
        assert!(apply_override(&mut t, "optimizer.lr.x=1").is_err());
    }

    #[test]
    fn default_recipe_is_valid() {
        let r = Recipe::parse(DEFAULT_RECIPE, DEFAULT_RECIPE_NAME, &[]).unwrap();
        assert_eq!(r.data.batch_size, r.batch.micro_batch_size);
    }

    /// A checkpoint's recipe.toml is the rendered recipe: it must read back as the same recipe.
    #[test]
    fn a_rendered_recipe_reads_back_the_same() {
        let sets = ["batch.micro_batch_size=3".to_string(), "lora.r=4".into()];
        let r = Recipe::parse(DEFAULT_RECIPE, DEFAULT_RECIPE_NAME, &sets).unwrap();
        let again = Recipe::parse(&r.to_toml(), "rendered", &[]).unwrap();
        assert_eq!(again, r);
    }
}
