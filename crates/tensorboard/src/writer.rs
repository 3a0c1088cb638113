//! [`EventWriter`]: appends scalar and histogram events to a new tfevents file.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::TensorboardError;
use crate::event::{Event, SummaryValue, Value, What};
use crate::histogram::Histogram;
use crate::record::write_record;

/// Version string of the first record, which TensorBoard checks.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Default time between automatic flushes.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// Writes one TensorBoard event file: `events.out.tfevents.{unix_seconds}.{hostname}.{pid}.seqtopk`.
///
/// Events are buffered and flushed to the OS when at least the flush interval (default
/// [`DEFAULT_FLUSH_INTERVAL`]) has passed since the last flush, on [`EventWriter::flush`], and on
/// drop, so a live TensorBoard sees new points within seconds. A crash can at worst leave a
/// partial last record, which TensorBoard (and [`crate::read_events`]) tolerate.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    last_flush: Instant,
    flush_interval: Duration,
}

impl EventWriter {
    /// Creates `logdir` (and parents) if needed and starts a new event file in it.
    ///
    /// Never overwrites: if the name is taken (two writers in the same second and process), a
    /// `.1`, `.2`, ... suffix is appended (TensorBoard reads any file whose name contains `tfevents`).
    pub fn create(logdir: &Path) -> Result<Self, TensorboardError> {
        fs::create_dir_all(logdir).map_err(|source| TensorboardError::CreateDir {
            path: logdir.to_path_buf(),
            source,
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let base = format!(
            "events.out.tfevents.{now}.{}.{}.seqtopk",
            hostname(),
            std::process::id()
        );
        let mut attempt = 0u32;
        let (path, file) = loop {
            let name = match attempt {
                0 => base.clone(),
                n => format!("{base}.{n}"),
            };
            let path = logdir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
                Err(source) => return Err(TensorboardError::CreateFile { path, source }),
            }
        };
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
            last_flush: Instant::now(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        };
        writer.write_event(&Event {
            wall_time: wall_time(),
            step: 0,
            what: What::FileVersion(FILE_VERSION.to_owned()),
        })?;
        // Flush the header at once so TensorBoard sees the run as soon as it starts.
        writer.flush()?;
        tracing::debug!(path = %writer.path.display(), "TensorBoard event file created");
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the minimum time between automatic flushes (`Duration::ZERO` flushes every event).
    pub fn set_flush_interval(&mut self, interval: Duration) {
        self.flush_interval = interval;
    }

    /// Appends a scalar (stored as a 32-bit float, as TensorBoard's `simple_value` is).
    pub fn add_scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<(), TensorboardError> {
        self.add_value(tag, step, Value::Scalar(value as f32))
    }

    /// Appends a histogram of raw values with TensorFlow's exponential buckets
    /// (see [`Histogram::from_values`] for why, and for how non-finite values are handled).
    pub fn add_histogram(
        &mut self,
        tag: &str,
        step: i64,
        values: &[f64],
    ) -> Result<(), TensorboardError> {
        self.add_histogram_data(tag, step, Histogram::from_values(values))
    }

    /// Appends an already-bucketed histogram: `counts[i]` items in `[edges[i], edges[i+1])`
    /// (see [`Histogram::from_buckets`]; for integer data use [`Histogram::from_integer_counts`]
    /// with [`EventWriter::add_histogram_data`]).
    pub fn add_histogram_buckets(
        &mut self,
        tag: &str,
        step: i64,
        edges: &[f64],
        counts: &[f64],
    ) -> Result<(), TensorboardError> {
        self.add_histogram_data(tag, step, Histogram::from_buckets(edges, counts)?)
    }

    /// Appends a histogram built by the caller.
    pub fn add_histogram_data(
        &mut self,
        tag: &str,
        step: i64,
        histogram: Histogram,
    ) -> Result<(), TensorboardError> {
        self.add_value(tag, step, Value::Histogram(histogram))
    }

    /// Writes buffered events to the file.
    pub fn flush(&mut self) -> Result<(), TensorboardError> {
        self.last_flush = Instant::now();
        self.out.flush().map_err(|source| self.write_error(source))
    }

    fn add_value(&mut self, tag: &str, step: i64, value: Value) -> Result<(), TensorboardError> {
        self.write_event(&Event {
            wall_time: wall_time(),
            step,
            what: What::Summary(vec![SummaryValue {
                tag: tag.to_owned(),
                value,
            }]),
        })?;
        if self.last_flush.elapsed() >= self.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    fn write_event(&mut self, event: &Event) -> Result<(), TensorboardError> {
        write_record(&mut self.out, &event.encode()).map_err(|source| self.write_error(source))
    }

    fn write_error(&self, source: std::io::Error) -> TensorboardError {
        TensorboardError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("{e}");
        }
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The host name from `/etc/hostname` (or `localhost`), reduced to file-name-safe characters.
fn hostname() -> String {
    let raw = fs::read_to_string("/etc/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}
