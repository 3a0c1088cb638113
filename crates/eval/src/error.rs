//! Errors of the evaluation crate.

use std::path::PathBuf;

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A task name that is not in the registry.
    #[error("unknown task `{name}` (known tasks: {known})")]
    UnknownTask {
        /// The name given.
        name: String,
        /// The registry's names, comma separated.
        known: String,
    },
    /// A data file is missing or unreadable.
    #[error("{path}: cannot read: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        message: String,
    },
    /// A data line is malformed.
    #[error("{path}:{line}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected.
        message: String,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model refused an input or failed.
    #[error("model: {0}")]
    Model(#[from] seqtopk_model::ModelError),
    /// Reading a tensor back to the host failed.
    #[error("reading results back from the device failed: {0}")]
    Readback(String),
    /// The code sandbox could not be set up or run.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// Invalid options.
    #[error("{0}")]
    Options(String),
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        EvalError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }
}
