//! Errors of the trainer; each names the file, field or step it is about.

use std::path::PathBuf;

/// Why training could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The recipe is malformed or impossible.
    #[error("recipe {origin}: {message}")]
    Recipe {
        /// The recipe file (or `--set`).
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The model could not be built or loaded.
    #[error("model: {0}")]
    Model(String),
    /// The data pipeline failed.
    #[error("data: {0}")]
    Data(#[from] seqtopk_data::DataError),
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "loss is not finite ({value}) at step {step}; stopped without updating the weights. {last_good}"
    )]
    NonFiniteLoss {
        /// Optimiser step that produced it.
        step: u64,
        /// The value.
        value: f64,
        /// Where the last good checkpoint is.
        last_good: String,
    },
    /// f16 gradients overflowed at every loss scale down to 1; the last good checkpoint is kept.
    #[error(
        "gradients are not finite at step {step} even with the f16 loss scale below 1; stopped \
         without updating the weights (precision = \"bf16\" or \"f32\" has the range f16 lacks). \
         {last_good}"
    )]
    NonFiniteGradients {
        /// Optimiser step that produced them.
        step: u64,
        /// Where the last good checkpoint is.
        last_good: String,
    },
    /// Device selection failed.
    #[error("backend: {0}")]
    Backend(#[from] seqtopk_backend::BackendError),
    /// Writing TensorBoard events or other outputs failed.
    #[error("output {path}: {message}")]
    Output {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}
