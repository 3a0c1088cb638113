//! Compatibility with TensorBoard's own Python code, both ways: its readers must see exactly what
//! we wrote (`tools/tensorboard/check_events.py`), and we must read what its writer wrote
//! (`tools/tensorboard/write_reference.py`).
//!
//! Uses the venv made by `tools/tensorboard/setup-venv.sh` (`.ci/run` makes it). Without it each
//! test prints a skip message and passes, except under CI (`CI=true`), where a missing venv fails.

use std::path::PathBuf;
use std::process::Command;

use seqtopk_tensorboard::{
    EventWriter, Histogram, What, event_files, histograms, read_events, scalars,
};
use serde_json::Value as Json;

fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/tensorboard")
}

/// serde_json's default float parser can be one ULP off Python's exact `repr`, so doubles are
/// compared to a relative 1e-14 (far below any encoding error, which would show as f32 rounding).
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-14 * a.abs().max(b.abs())
}

fn all_close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(*x, *y))
}

fn as_f64s(v: &Json) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The venv's Python, or `None` (after printing why the test is skipped).
fn venv_python() -> Option<PathBuf> {
    let python = tools_dir().join(".venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} not found: .ci/run must create it (tools/tensorboard/setup-venv.sh)",
        python.display()
    );
    println!(
        "SKIP: {} not found; run tools/tensorboard/setup-venv.sh to enable this check",
        python.display()
    );
    None
}

#[test]
fn we_read_tensorboards_own_writer() {
    let Some(python) = venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .arg(tools_dir().join("write_reference.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "write_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrote: Json = serde_json::from_slice(&out.stdout).unwrap();
    let files = event_files(dir.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let outcome = read_events(&files[0]).unwrap();
    assert_eq!(outcome.truncated_tail, None);
    assert_eq!(
        outcome.events[0].what,
        What::FileVersion("brain.Event:2".into())
    );
    assert!(
        matches!(outcome.events.last().unwrap().what, What::Other),
        "graph_def is skipped"
    );

    let expected: Vec<(i64, f64)> = wrote["scalars"]["ref/scalar"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(scalars(&outcome.events)["ref/scalar"], expected);

    let reference = &wrote["histograms"]["ref/histo"][0];
    let (step, h) = &histograms(&outcome.events)["ref/histo"][0];
    assert_eq!(*step, reference[0].as_i64().unwrap());
    let r = &reference[1];
    let expected = Histogram {
        min: r["min"].as_f64().unwrap(),
        max: r["max"].as_f64().unwrap(),
        num: r["num"].as_f64().unwrap(),
        sum: r["sum"].as_f64().unwrap(),
        sum_squares: r["sum_squares"].as_f64().unwrap(),
        bucket_limit: as_f64s(&r["bucket_limit"]),
        bucket: as_f64s(&r["bucket"]),
    };
    assert_eq!(h, &expected);
}

#[test]
fn tensorboard_event_accumulator_reads_our_files() {
    let Some(python) = venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut tb = EventWriter::create(dir.path()).unwrap();
    for step in 1..=4i64 {
        tb.add_scalar("train/loss", step, 3.0 / step as f64)
            .unwrap();
        let values: Vec<f64> = (0..50)
            .map(|i| (i as f64 - 20.0) * 0.1 * step as f64)
            .collect();
        tb.add_histogram("router/logits", step, &values).unwrap();
        let counts = [0.0, 5.0, 10.0 + step as f64, 0.0, 2.0];
        tb.add_histogram_data(
            "routing/experts_per_token",
            step,
            Histogram::from_integer_counts(&counts).unwrap(),
        )
        .unwrap();
    }
    let path = tb.path().to_path_buf();
    drop(tb);
    let ours = read_events(&path).unwrap().events;

    let out = Command::new(&python)
        .arg(tools_dir().join("check_events.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check_events.py failed: {stderr}");
    let seen: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["file_version"], 2.0);

    // Scalars: the same steps and (f32) values.
    let tb_loss: Vec<(i64, f64)> = seen["scalars"]["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(tb_loss, scalars(&ours)["train/loss"]);

    // Histograms: every field identical, and the server view has one [left, right, count] row
    // per bucket, starting at min and ending at max.
    let our_hists = histograms(&ours);
    for tag in ["router/logits", "routing/experts_per_token"] {
        let tb_hists = seen["histograms"][tag].as_array().unwrap();
        assert_eq!(tb_hists.len(), our_hists[tag].len(), "{tag}");
        for (tb_h, (step, h)) in tb_hists.iter().zip(&our_hists[tag]) {
            assert_eq!(tb_h["step"].as_i64().unwrap(), *step);
            for (field, ours) in [
                ("min", h.min),
                ("max", h.max),
                ("num", h.num),
                ("sum", h.sum),
                ("sum_squares", h.sum_squares),
            ] {
                let theirs = tb_h[field].as_f64().unwrap();
                assert!(close(theirs, ours), "{tag} {field}: {theirs} vs {ours}");
            }
            assert!(
                all_close(&as_f64s(&tb_h["bucket_limit"]), &h.bucket_limit),
                "{tag}"
            );
            assert_eq!(as_f64s(&tb_h["bucket"]), h.bucket, "{tag}");
        }
        let server = &seen["tensors"][tag];
        assert_eq!(server["plugin"], "histograms", "{tag}");
        let (step, h) = &our_hists[tag][0];
        let first = &server["steps"][0];
        assert_eq!(first[0].as_i64().unwrap(), *step);
        let rows = first[1].as_array().unwrap();
        assert_eq!(rows.len(), h.bucket.len(), "{tag}");
        let f32_eq = |json: &Json, x: f64| json.as_f64().unwrap() == f64::from(x as f32);
        assert!(f32_eq(&rows[0][0], h.min), "{tag}: {:?}", rows[0]);
        assert!(f32_eq(&rows[rows.len() - 1][1], h.max), "{tag}");
        let counts: Vec<f64> = rows.iter().map(|r| r[2].as_f64().unwrap()).collect();
        assert_eq!(counts, h.bucket, "{tag}");
    }
    assert_eq!(seen["tensors"]["train/loss"]["plugin"], "scalars");
    println!(
        "TensorBoard read {} events from {}",
        ours.len(),
        path.display()
    );
}
