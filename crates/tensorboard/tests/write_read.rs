//! The public API end to end: write with `EventWriter`, read back with `read_events`.

use std::path::Path;
use std::time::Duration;

use seqtopk_tensorboard::record::write_record;
use seqtopk_tensorboard::{
    EventWriter, Histogram, TensorboardError, What, event_files, histograms, read_events, scalars,
};

fn write_demo(dir: &Path) -> std::path::PathBuf {
    let mut tb = EventWriter::create(dir).unwrap();
    for step in 0..5i64 {
        tb.add_scalar("loss", step, 1.0 / (step as f64 + 1.0))
            .unwrap();
        tb.add_histogram("w", step, &[step as f64, -1.5, 1e-9, 300.0])
            .unwrap();
    }
    tb.add_histogram_buckets("k", 5, &[0.0, 1.0, 2.0, 4.0], &[0.0, 3.0, 1.0])
        .unwrap();
    tb.path().to_path_buf()
}

/// Start offsets of the records in a well-formed file.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        offsets.push(at);
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 12 + len + 4;
    }
    offsets
}

#[test]
fn scalars_and_histograms_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("run/a");
    let path = write_demo(&logdir); // dropped inside: Drop flushes
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    assert!(
        name.ends_with(&format!(".{}.seqtopk", std::process::id())),
        "{name}"
    );
    assert_eq!(event_files(&logdir).unwrap(), std::slice::from_ref(&path));

    let outcome = read_events(&path).unwrap();
    assert_eq!(outcome.truncated_tail, None);
    assert_eq!(outcome.events.len(), 1 + 5 * 2 + 1);
    assert_eq!(
        outcome.events[0].what,
        What::FileVersion("brain.Event:2".into())
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        outcome
            .events
            .iter()
            .all(|e| (now - e.wall_time).abs() < 600.0)
    );

    let s = scalars(&outcome.events);
    assert_eq!(s.keys().collect::<Vec<_>>(), ["loss"]);
    let expected: Vec<(i64, f64)> = (0..5)
        .map(|i| (i, f64::from((1.0 / (i as f64 + 1.0)) as f32)))
        .collect();
    assert_eq!(s["loss"], expected);

    let h = histograms(&outcome.events);
    assert_eq!(h.keys().collect::<Vec<_>>(), ["k", "w"]);
    assert_eq!(h["w"].len(), 5);
    for (step, hist) in &h["w"] {
        let values = [*step as f64, -1.5, 1e-9, 300.0];
        assert_eq!(hist, &Histogram::from_values(&values));
        assert_eq!((hist.min, hist.max, hist.num), (-1.5, 300.0, 4.0));
    }
    let (step, k) = &h["k"][0];
    assert_eq!(*step, 5);
    assert_eq!((k.min, k.max, k.num), (1.0, 4.0, 4.0));
    assert_eq!(k.bucket_limit, [2.0, 4.0]);
    assert_eq!(k.bucket, [3.0, 1.0]);
}

#[test]
fn flushes_on_cadence_on_request_and_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = EventWriter::create(dir.path()).unwrap();
    tb.set_flush_interval(Duration::from_secs(3600));
    tb.add_scalar("a", 1, 1.0).unwrap();
    let count = |p: &Path| read_events(p).unwrap().events.len();
    assert_eq!(
        count(tb.path()),
        1,
        "only the header is on disk before a flush"
    );
    tb.flush().unwrap();
    assert_eq!(count(tb.path()), 2);
    tb.set_flush_interval(Duration::ZERO);
    tb.add_scalar("a", 2, 2.0).unwrap();
    assert_eq!(count(tb.path()), 3, "a zero interval flushes every event");
    tb.set_flush_interval(Duration::from_secs(3600));
    tb.add_scalar("a", 3, 3.0).unwrap();
    let path = tb.path().to_path_buf();
    drop(tb);
    assert_eq!(count(&path), 4, "drop flushes");
}

#[test]
fn corrupt_byte_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_demo(dir.path());
    let good = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&good);
    assert_eq!(offsets.len(), 12);
    // One byte inside the payload of the fourth record, then one inside its length.
    for (byte, what) in [(offsets[3] + 20, "payload"), (offsets[3] + 2, "length")] {
        let mut bad = good.clone();
        bad[byte] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = read_events(&path).unwrap_err();
        match &err {
            TensorboardError::CorruptRecord {
                path: p,
                offset,
                reason,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*offset, offsets[3] as u64);
                assert!(reason.contains(what), "{reason}");
            }
            other => panic!("expected CorruptRecord, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("byte {}", offsets[3])), "{msg}");
    }
}

#[test]
fn truncated_tail_is_tolerated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_demo(dir.path());
    let good = std::fs::read(&path).unwrap();
    let last = *record_offsets(&good).last().unwrap();
    for cut in [last + 1, last + 11, last + 12, good.len() - 1] {
        std::fs::write(&path, &good[..cut]).unwrap();
        let outcome = read_events(&path).unwrap();
        assert_eq!(outcome.truncated_tail, Some(last as u64), "cut at {cut}");
        assert_eq!(outcome.events.len(), 11);
    }
}

#[test]
fn undecodable_payload_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.bad");
    let mut bytes = Vec::new();
    write_record(&mut bytes, b"\x1a\x02ok").unwrap(); // file_version = "ok"
    let second = bytes.len();
    write_record(&mut bytes, b"\x2a\x10too short").unwrap(); // summary claims 16 bytes
    std::fs::write(&path, &bytes).unwrap();
    match read_events(&path).unwrap_err() {
        TensorboardError::Decode { offset, reason, .. } => {
            assert_eq!(offset, second as u64);
            assert!(reason.contains("past the end"), "{reason}");
        }
        other => panic!("expected Decode, got {other:?}"),
    }
}

#[test]
fn writers_never_overwrite_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = EventWriter::create(dir.path()).unwrap();
    let mut b = EventWriter::create(dir.path()).unwrap();
    assert_ne!(a.path(), b.path());
    a.add_scalar("x", 1, 1.0).unwrap();
    b.add_scalar("x", 1, 2.0).unwrap();
    let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
    drop((a, b));
    assert_eq!(event_files(dir.path()).unwrap().len(), 2);
    assert_eq!(scalars(&read_events(&pa).unwrap().events)["x"], [(1, 1.0)]);
    assert_eq!(scalars(&read_events(&pb).unwrap().events)["x"], [(1, 2.0)]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = EventWriter::create(&file.join("run")).unwrap_err();
    assert!(matches!(err, TensorboardError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");

    let missing = dir.path().join("missing.tfevents");
    let err = read_events(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.tfevents"), "{err}");

    let mut tb = EventWriter::create(&dir.path().join("run")).unwrap();
    let err = tb
        .add_histogram_buckets("k", 0, &[0.0, 1.0], &[1.0, 2.0])
        .unwrap_err();
    assert!(
        matches!(err, TensorboardError::InvalidHistogram(_)),
        "{err:?}"
    );
    let path = tb.path().to_path_buf();
    drop(tb);
    assert_eq!(
        read_events(&path).unwrap().events.len(),
        1,
        "nothing written"
    );
}
