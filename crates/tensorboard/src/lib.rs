//! TensorBoard event files, written without TensorFlow or protobuf code generation.
//!
//! A file is a sequence of TFRecord-framed ([`record`]) `tensorflow.Event` protobufs ([`event`],
//! hand-encoded by [`proto`]); the first record carries `file_version = "brain.Event:2"`, the
//! rest carry scalar (`simple_value`) and histogram (`histo`, [`Histogram`]) summaries.
//!
//! ```no_run
//! # fn main() -> Result<(), seqtopk_tensorboard::TensorboardError> {
//! use seqtopk_tensorboard::{EventWriter, read_events, scalars};
//! let mut tb = EventWriter::create(std::path::Path::new("runs/demo"))?;
//! tb.add_scalar("train/loss", 1, 2.5)?;
//! tb.add_histogram("router/logits", 1, &[0.1, -0.3, 1.7])?;
//! tb.flush()?;
//! let series = scalars(&read_events(tb.path())?.events);
//! assert_eq!(series["train/loss"], [(1, 2.5)]);
//! # Ok(()) }
//! ```
//!
//! Why not the `tensorboard-rs` crate: its `add_histogram` is `unimplemented!()`, it panics on
//! bad input, has no reader, and pulls the unmaintained protobuf 2.x and image 0.23 crates.

pub mod crc;
pub mod error;
pub mod event;
pub mod histogram;
pub mod proto;
pub mod reader;
pub mod record;
pub mod writer;

pub use error::TensorboardError;
pub use event::{Event, SummaryValue, Value, What};
pub use histogram::Histogram;
pub use reader::{ReadOutcome, event_files, histograms, read_events, scalars};
pub use writer::EventWriter;
