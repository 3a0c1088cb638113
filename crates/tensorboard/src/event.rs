//! The `tensorflow.Event` message and the parts of `Summary` this crate writes and reads.
//!
//! ```text
//! Event          { double wall_time = 1; int64 step = 2;
//!                  oneof what { string file_version = 3; Summary summary = 5; ... } }
//! Summary        { repeated Value value = 1; }
//! Summary.Value  { string tag = 1; oneof value { float simple_value = 2; HistogramProto histo = 5; ... } }
//! HistogramProto { double min = 1; max = 2; num = 3; sum = 4; sum_squares = 5;
//!                  repeated double bucket_limit = 6 [packed]; repeated double bucket = 7 [packed]; }
//! ```
//!
//! Scalars and histograms use the classic `simple_value`/`histo` fields, which every TensorBoard
//! version reads (it migrates them to its tensor form on load), so no plugin metadata is needed.

use crate::histogram::Histogram;
use crate::proto::{Encoder, Fields};

/// One event record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    pub wall_time: f64,
    /// Training step the event belongs to.
    pub step: i64,
    /// The payload.
    pub what: What,
}

/// The payload of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// File header, e.g. `brain.Event:2`.
    FileVersion(String),
    /// Tagged values (scalars, histograms).
    Summary(Vec<SummaryValue>),
    /// Anything else (graphs, session logs, ...) or no payload: skipped.
    Other,
}

/// One tagged value inside a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValue {
    /// The series name, e.g. `train/loss`.
    pub tag: String,
    /// The value.
    pub value: Value,
}

/// The value of a [`SummaryValue`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar (`simple_value`; stored as a 32-bit float).
    Scalar(f32),
    /// A histogram (`histo`).
    Histogram(Histogram),
    /// A kind this crate does not decode (images, audio, tensors, ...).
    Other,
}

impl Event {
    /// Encodes the event as protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.double(1, self.wall_time);
        e.int64(2, self.step);
        match &self.what {
            What::FileVersion(v) => e.string(3, v),
            What::Summary(values) => {
                let mut summary = Encoder::new();
                for v in values {
                    summary.bytes(1, &encode_value(v));
                }
                e.bytes(5, &summary.into_bytes());
            }
            What::Other => {}
        }
        e.into_bytes()
    }

    /// Decodes an event from protobuf bytes; unknown fields are skipped.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut event = Event {
            wall_time: 0.0,
            step: 0,
            what: What::Other,
        };
        for field in Fields::new(bytes) {
            match field? {
                (1, w) => event.wall_time = w.as_double("Event.wall_time")?,
                (2, w) => event.step = w.as_int64("Event.step")?,
                (3, w) => {
                    event.what = What::FileVersion(w.as_str("Event.file_version")?.to_owned())
                }
                (5, w) => event.what = What::Summary(decode_summary(w.as_bytes("Event.summary")?)?),
                _ => {}
            }
        }
        Ok(event)
    }
}

fn encode_value(v: &SummaryValue) -> Vec<u8> {
    let mut e = Encoder::new();
    e.string(1, &v.tag);
    match &v.value {
        Value::Scalar(x) => e.float(2, *x),
        Value::Histogram(h) => e.bytes(5, &encode_histogram(h)),
        Value::Other => {}
    }
    e.into_bytes()
}

fn encode_histogram(h: &Histogram) -> Vec<u8> {
    let mut e = Encoder::new();
    e.double(1, h.min);
    e.double(2, h.max);
    e.double(3, h.num);
    e.double(4, h.sum);
    e.double(5, h.sum_squares);
    e.packed_doubles(6, &h.bucket_limit);
    e.packed_doubles(7, &h.bucket);
    e.into_bytes()
}

fn decode_summary(bytes: &[u8]) -> Result<Vec<SummaryValue>, String> {
    let mut values = Vec::new();
    for field in Fields::new(bytes) {
        if let (1, w) = field? {
            values.push(decode_value(w.as_bytes("Summary.value")?)?);
        }
    }
    Ok(values)
}

fn decode_value(bytes: &[u8]) -> Result<SummaryValue, String> {
    let mut out = SummaryValue {
        tag: String::new(),
        value: Value::Other,
    };
    for field in Fields::new(bytes) {
        match field? {
            (1, w) => out.tag = w.as_str("Summary.Value.tag")?.to_owned(),
            (2, w) => out.value = Value::Scalar(w.as_float("Summary.Value.simple_value")?),
            (5, w) => {
                out.value = Value::Histogram(decode_histogram(w.as_bytes("Summary.Value.histo")?)?)
            }
            _ => {}
        }
    }
    Ok(out)
}

fn decode_histogram(bytes: &[u8]) -> Result<Histogram, String> {
    let mut h = Histogram {
        min: 0.0,
        max: 0.0,
        num: 0.0,
        sum: 0.0,
        sum_squares: 0.0,
        bucket_limit: Vec::new(),
        bucket: Vec::new(),
    };
    for field in Fields::new(bytes) {
        match field? {
            (1, w) => h.min = w.as_double("HistogramProto.min")?,
            (2, w) => h.max = w.as_double("HistogramProto.max")?,
            (3, w) => h.num = w.as_double("HistogramProto.num")?,
            (4, w) => h.sum = w.as_double("HistogramProto.sum")?,
            (5, w) => h.sum_squares = w.as_double("HistogramProto.sum_squares")?,
            (6, w) => w.push_doubles("HistogramProto.bucket_limit", &mut h.bucket_limit)?,
            (7, w) => w.push_doubles("HistogramProto.bucket", &mut h.bucket)?,
            _ => {}
        }
    }
    if h.bucket_limit.len() != h.bucket.len() {
        return Err(format!(
            "HistogramProto has {} bucket limits but {} buckets",
            h.bucket_limit.len(),
            h.bucket.len()
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_version_event_bytes() {
        let e = Event {
            wall_time: 0.0,
            step: 0,
            what: What::FileVersion("brain.Event:2".into()),
        };
        let bytes = e.encode();
        let mut expected = vec![0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00, 0x1a, 13];
        expected.extend_from_slice(b"brain.Event:2");
        assert_eq!(bytes, expected);
        assert_eq!(Event::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn summary_round_trip() {
        let e = Event {
            wall_time: 1_700_000_000.25,
            step: -7,
            what: What::Summary(vec![
                SummaryValue {
                    tag: "loss".into(),
                    value: Value::Scalar(2.5),
                },
                SummaryValue {
                    tag: "h".into(),
                    value: Value::Histogram(Histogram::from_values(&[0.1, 0.2, 5.0])),
                },
            ]),
        };
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn unknown_fields_are_skipped_and_garbage_is_reported() {
        let mut enc = Encoder::new();
        enc.int64(2, 3);
        enc.string(99, "future field");
        enc.bytes(4, b"graph_def bytes");
        let e = Event::decode(&enc.into_bytes()).unwrap();
        assert_eq!((e.step, e.what), (3, What::Other));
        // wall_time with the wrong wire type names the field.
        let mut enc = Encoder::new();
        enc.int64(1, 3);
        assert!(
            Event::decode(&enc.into_bytes())
                .unwrap_err()
                .contains("Event.wall_time")
        );
    }
}
