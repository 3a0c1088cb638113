//! Errors of the data pipeline.
//!
//! Every problem with user data is reported before training starts (at [`crate::Pipeline::new`])
//! and names the file (and line) at fault, so a bad recipe fails in seconds rather than after hours.

use std::path::{Path, PathBuf};

/// For a relative path, which directory it was looked up in (a command run from elsewhere
/// otherwise reports a path that exists).
fn relative_note(path: &Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => format!(" (looked up from {})", cwd.display()),
        _ => String::new(),
    }
}

/// Everything that can go wrong while loading, tokenising or resuming data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A source path does not exist.
    #[error(
        "source {path} does not exist{} (did you run tools/fetch-corpora.sh, or mean data/samples/...?)",
        relative_note(.path)
    )]
    MissingFile {
        /// The missing path.
        path: PathBuf,
    },
    /// The tokenizer file does not exist.
    #[error("tokenizer {path} does not exist{}", relative_note(.path))]
    MissingTokenizer {
        /// The missing path.
        path: PathBuf,
    },
    /// A line of a JSONL source is not what its format requires.
    #[error("{path}:{line}: {message}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected and what was found.
        message: String,
    },
    /// A source yielded no usable document.
    #[error("source {path} (domain {domain}) contains no usable documents{detail}")]
    EmptySource {
        /// The source path.
        path: PathBuf,
        /// Its domain tag.
        domain: String,
        /// Extra context, e.g. how many lines were skipped as bad.
        detail: String,
    },
    /// The tokenizer file could not be loaded.
    #[error("cannot load tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer path.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// The recipe and the tokenizer disagree (e.g. an EOS token that is not in the vocabulary).
    #[error("tokenizer mismatch: {0}")]
    TokenizerMismatch(String),
    /// Encoding a document failed inside the tokenizers crate.
    #[error("tokenisation failed for a document of {path}: {message}")]
    Encode {
        /// The source path of the document.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// The configuration is inconsistent.
    #[error("invalid data config: {0}")]
    Config(String),
    /// A saved iterator state does not belong to this configuration and data.
    #[error("cannot restore data state: {0}")]
    StateMismatch(String),
}

/// Result alias for the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
