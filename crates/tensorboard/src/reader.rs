//! Reading event files back: checksum verification, decoding, and per-tag series.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::TensorboardError;
use crate::event::{Event, Value, What};
use crate::histogram::Histogram;
use crate::record::{Frame, read_record};

/// The events of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOutcome {
    /// Every complete record, decoded, in file order (including the `file_version` header).
    pub events: Vec<Event>,
    /// Byte offset of an incomplete final record, if the file ends inside one. This is what a
    /// writer that is still running or was killed mid-write leaves; TensorBoard ignores it too.
    pub truncated_tail: Option<u64>,
}

/// Reads and verifies an event file: both checksums of every record, then the `Event` protobuf.
///
/// A damaged record anywhere is an error naming the file and the record's byte offset; a file
/// that merely ends inside its last record is not (see [`ReadOutcome::truncated_tail`]).
/// The whole file is read into memory.
pub fn read_events(path: &Path) -> Result<ReadOutcome, TensorboardError> {
    let bytes = std::fs::read(path).map_err(|source| TensorboardError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut events = Vec::new();
    let mut offset = 0usize;
    loop {
        let frame =
            read_record(&bytes, offset).map_err(|reason| TensorboardError::CorruptRecord {
                path: path.to_path_buf(),
                offset: offset as u64,
                reason,
            })?;
        match frame {
            Frame::End => {
                return Ok(ReadOutcome {
                    events,
                    truncated_tail: None,
                });
            }
            Frame::TruncatedTail => {
                return Ok(ReadOutcome {
                    events,
                    truncated_tail: Some(offset as u64),
                });
            }
            Frame::Record { data, next } => {
                let event = Event::decode(data).map_err(|reason| TensorboardError::Decode {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    reason,
                })?;
                events.push(event);
                offset = next;
            }
        }
    }
}

/// The event files (names containing `tfevents`, as TensorBoard selects them) directly in
/// `logdir`, sorted by name, which orders them by creation time.
pub fn event_files(logdir: &Path) -> Result<Vec<PathBuf>, TensorboardError> {
    let read_err = |source| TensorboardError::Read {
        path: logdir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(logdir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let is_events = entry.file_name().to_string_lossy().contains("tfevents");
        if is_events && entry.file_type().map_err(read_err)?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Scalar series by tag: `(step, value)` in file order.
pub fn scalars(events: &[Event]) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for (step, tag, value) in summary_values(events) {
        if let Value::Scalar(x) = value {
            out.entry(tag.to_owned())
                .or_default()
                .push((step, f64::from(*x)));
        }
    }
    out
}

/// Histogram series by tag: `(step, histogram)` in file order.
pub fn histograms(events: &[Event]) -> BTreeMap<String, Vec<(i64, Histogram)>> {
    let mut out: BTreeMap<String, Vec<(i64, Histogram)>> = BTreeMap::new();
    for (step, tag, value) in summary_values(events) {
        if let Value::Histogram(h) = value {
            out.entry(tag.to_owned())
                .or_default()
                .push((step, h.clone()));
        }
    }
    out
}

fn summary_values(events: &[Event]) -> impl Iterator<Item = (i64, &str, &Value)> {
    events.iter().flat_map(|e| match &e.what {
        What::Summary(values) => values
            .iter()
            .map(|v| (e.step, v.tag.as_str(), &v.value))
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}
