//! `seqtopk-train`: the trainer behind `seqtopk train --recipe …`.
//!
//! - [`Recipe`] is the validated TOML recipe (model, router, data, optimiser, schedule, batch,
//!   precision, cadences, backend and devices).
//! - [`Precision`]: f32, or mixed bf16/f16 with f32 master weights ([`LossScaler`] for f16).
//! - [`Trainer`] runs AdamW steps with gradient accumulation and global-norm clipping, evaluates
//!   held-out loss per domain, writes exact-resume checkpoints (model, optimiser, data position,
//!   step) under temporary names, stops on a non-finite loss, and logs to TensorBoard.

mod error;
mod gradients;
pub mod memory;
mod metrics;
mod precision;
pub mod recipe;
mod resume;
mod schedule;
mod trainer;

pub use error::TrainError;
pub use gradients::{GradientTools, ParamEntry, ParamPaths};
pub use metrics::{DomainEval, LayerRouting, StepMetrics};
pub use precision::{LossScaleSection, LossScaler, Precision, ScaleVerdict};
pub use recipe::{
    BatchSection, DEFAULT_RECIPE, DEFAULT_RECIPE_NAME, LoraSection, ModelSection, OptimizerSection,
    Recipe, Recompute, ScheduleKind, ScheduleSection, TrainSection,
};
pub use resume::{CheckpointInfo, latest_checkpoint};
pub use schedule::LrSchedule;
pub use trainer::{Budget, RunOutcome, Trainer, TrainerOptions};
