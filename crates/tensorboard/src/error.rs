//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong writing or reading TensorBoard event files.
#[derive(Debug, thiserror::Error)]
pub enum TensorboardError {
    /// The log directory could not be created.
    #[error("cannot create TensorBoard log directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A new event file could not be created.
    #[error("cannot create TensorBoard event file {path}: {source}")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Writing or flushing an event file failed.
    #[error("cannot write TensorBoard event file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// An event file or log directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A record's framing is damaged: a length or payload checksum does not match.
    #[error("corrupt TFRecord in {path} at byte {offset}: {reason}")]
    CorruptRecord {
        /// The file.
        path: PathBuf,
        /// Byte offset of the start of the damaged record.
        offset: u64,
        /// What did not match.
        reason: String,
    },
    /// A record's checksums are fine but its payload is not a valid `Event` protobuf.
    #[error("undecodable Event in {path}, record at byte {offset}: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Byte offset of the start of the record.
        offset: u64,
        /// What was malformed.
        reason: String,
    },
    /// Histogram input is inconsistent (shape mismatch, non-finite or negative counts, unsorted edges).
    #[error("invalid histogram: {0}")]
    InvalidHistogram(String),
}
