//! `seqtopk eval loss` through the binary: HF parity of the loss and the dumped logits on the
//! committed fixtures, router overrides, batching, and failure modes.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{f32s, failure, fixture, i64s, ok_json, scratch, seqtopk};
use safetensors::SafeTensors;
use serde_json::Value;

/// `seqtopk eval loss --checkpoint ckpt --input-ids ids extra…`: the run every test here makes.
fn eval_loss(ckpt: &Path, ids: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "eval",
        "loss",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--input-ids",
        ids.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    seqtopk(&args)
}

/// HF's unpadded rows of the golden batch, written as `ids.json` in `dir`; and HF's loss.
fn golden_rows(name: &str, dir: &Path) -> (PathBuf, Vec<Vec<i64>>, f64) {
    let bytes = std::fs::read(fixture(name).join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, ids) = i64s(&st, "input_ids");
    let (_, mask) = i64s(&st, "attention_mask");
    let t = shape[1];
    let rows: Vec<Vec<i64>> = (0..shape[0])
        .map(|r| {
            (0..t)
                .filter(|&i| mask[r * t + i] == 1)
                .map(|i| ids[r * t + i])
                .collect()
        })
        .collect();
    let path = dir.join(format!("{name}-ids.json"));
    std::fs::write(&path, serde_json::to_string(&rows).unwrap()).unwrap();
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("golden.json")).unwrap())
            .unwrap();
    (path, rows, golden["loss_ce"].as_f64().unwrap())
}

#[test]
fn loss_equals_hf_on_every_family() {
    let dir = scratch("parity");
    for name in [
        "olmoe-tiny",
        "qwen2_moe-tiny",
        "qwen3_moe-tiny",
        "mixtral-tiny",
        "llama-tiny",
    ] {
        let (ids, _, want) = golden_rows(name, &dir);
        let ckpt = fixture(name);
        let report = ok_json(&eval_loss(&ckpt, &ids, &[]));
        let loss = report["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() <= 1e-5,
            "{name}: loss {loss} vs HF {want}"
        );
        assert_eq!(report["tokens"], 26, "{name}");
        assert_eq!(report["rows"], 3, "{name}");
        if name == "llama-tiny" {
            assert!(report["router"].is_null(), "dense model: {report}");
        } else {
            assert_eq!(report["router"]["mode"], "topk", "{name}");
            assert_eq!(report["router"]["top_k"], 2, "{name}");
        }
    }
}

#[test]
fn dumped_logits_equal_hf_and_batching_keeps_the_loss() {
    let dir = scratch("dump");
    let name = "qwen2_moe-tiny";
    let (ids, rows, want) = golden_rows(name, &dir);
    let ckpt = fixture(name);
    let dump = dir.join("logits.safetensors");
    let report = ok_json(&eval_loss(
        &ckpt,
        &ids,
        &["--dump-logits", dump.to_str().unwrap(), "--batch-size", "2"],
    ));
    assert!((report["loss"].as_f64().unwrap() - want).abs() <= 1e-5);

    let got_bytes = std::fs::read(&dump).unwrap();
    let got = SafeTensors::deserialize(&got_bytes).unwrap();
    let golden_bytes = std::fs::read(ckpt.join("golden.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&golden_bytes).unwrap();
    let (gshape, glogits) = f32s(&got, "logits");
    let (wshape, wlogits) = f32s(&golden, "logits");
    assert_eq!(gshape, wshape);
    let (_, gmask) = i64s(&got, "attention_mask");
    let (_, wmask) = i64s(&golden, "attention_mask");
    assert_eq!(gmask, wmask, "the dumped mask is HF's right-padding mask");
    let (_, gids) = i64s(&got, "input_ids");
    let t = gshape[1];
    for (r, row) in rows.iter().enumerate() {
        assert_eq!(&gids[r * t..r * t + row.len()], row.as_slice());
    }
    let v = gshape[2];
    let mut max = 0f32;
    for p in 0..gshape[0] * t {
        if wmask[p] == 1 {
            for j in 0..v {
                max = max.max((glogits[p * v + j] - wlogits[p * v + j]).abs());
            }
        }
    }
    assert!(max <= 1e-4, "max |Δlogit| {max}");

    // The dump is never overwritten.
    let before = std::fs::read(&dump).unwrap();
    let err = failure(&eval_loss(
        &ckpt,
        &ids,
        &["--dump-logits", dump.to_str().unwrap()],
    ));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&dump).unwrap(), before);
}

#[test]
fn router_override_changes_the_routing_and_is_reported() {
    let dir = scratch("router");
    let (ids, _, topk_loss) = golden_rows("olmoe-tiny", &dir);
    let ckpt = fixture("olmoe-tiny");
    let report = ok_json(&eval_loss(
        &ckpt,
        &ids,
        &["--router", "seqtopk", "--cap", "3"],
    ));
    assert_eq!(report["router"]["mode"], "seqtopk");
    assert_eq!(report["router"]["cap"], 3);
    assert_eq!(report["router"]["floor"], 1);
    let loss = report["loss"].as_f64().unwrap();
    assert!(loss.is_finite());
    assert!(
        (loss - topk_loss).abs() > 1e-6,
        "sequence-level routing gives other logits than top-K"
    );
    let err = failure(&eval_loss(
        &ckpt,
        &ids,
        &["--router", "seqtopk", "--k", "9"],
    ));
    assert!(err.contains("top_k") && err.contains("got 9"), "{err}");
}

#[test]
fn online_budget_rules_and_causality_are_reported() {
    let dir = scratch("online");
    let (ids, _, _) = golden_rows("olmoe-tiny", &dir);
    let ckpt = fixture("olmoe-tiny");
    let run = |extra: &[&str]| eval_loss(&ckpt, &ids, extra);
    let rank = ok_json(&run(&["--router", "online_seqtopk"]));
    assert_eq!(rank["router"]["online_budget"], "rank");
    assert_eq!(rank["router"]["causal"], true);
    assert!(rank["note"].is_null());
    let strict = ok_json(&run(&[
        "--router",
        "online_seqtopk",
        "--online-budget",
        "strict",
    ]));
    assert_eq!(strict["router"]["online_budget"], "strict");
    let seq = ok_json(&run(&["--router", "seqtopk"]));
    assert_eq!(seq["router"]["causal"], false);
    assert!(seq["router"]["online_budget"].is_null());
    assert!(
        seq["note"].as_str().unwrap().contains("non-causal"),
        "{seq}"
    );
    let err = failure(&run(&["--router", "seqtopk", "--online-budget", "strict"]));
    assert!(err.contains("online_budget"), "{err}");
    let err = failure(&run(&[
        "--router",
        "online_seqtopk",
        "--online-budget",
        "loose",
    ]));
    assert!(err.contains("rank or strict"), "{err}");
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let dir = scratch("errors");
    let ckpt = fixture("olmoe-tiny");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = write("good.json", "[[1, 5, 9], [1, 7]]");

    let missing = dir.join("no-such-checkpoint");
    let err = failure(&eval_loss(&missing, &good, &[]));
    assert!(err.contains("no-such-checkpoint"), "{err}");

    let cases = [
        (
            "string.json",
            "[[1, 5, 9], [1, 7, \"x\"]]",
            "row 1, position 2",
        ),
        ("negative.json", "[[1, -5]]", "row 0, position 1"),
        (
            "vocab.json",
            "[[1, 5], [3, 4, 256]]",
            "outside the model's vocabulary of 256",
        ),
        ("flat.json", "{\"ids\": [1, 2]}", "list of rows"),
        ("notrow.json", "[[1, 2], 3]", "row 1"),
        ("emptyrow.json", "[[1, 2], []]", "row 1 is empty"),
        ("empty.json", "[]", "empty"),
        ("broken.json", "[[1, 2", "not valid JSON"),
        ("single.json", "[[4], [5]]", "no next-token pairs"),
    ];
    for (file, text, want) in cases {
        let p = write(file, text);
        let err = failure(&eval_loss(&ckpt, &p, &[]));
        assert!(err.contains(want), "{file}: {err}");
        assert!(
            err.contains(file),
            "{file}: the message names the file: {err}"
        );
    }
    let err = failure(&eval_loss(&ckpt, &dir.join("absent.json"), &[]));
    assert!(err.contains("absent.json"), "{err}");
}

/// A copy of the `olmoe-tiny` fixture whose tensor `key` is changed by `edit`.
fn edited_fixture(dir: &Path, key: &str, edit: impl Fn(&mut [f32])) -> PathBuf {
    let src = fixture("olmoe-tiny");
    let out = dir.join(key);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    let (_, _, data) = tensors.iter_mut().find(|t| t.0 == key).unwrap();
    let mut values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    edit(&mut values);
    *data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

#[test]
fn non_finite_weights_and_logits_are_errors_not_null() {
    let dir = scratch("nonfinite");
    let rows = dir.join("rows.json");
    std::fs::write(&rows, "[[1, 5, 9], [1, 7, 3, 4]]").unwrap();
    let key = "model.layers.1.self_attn.o_proj.weight";
    let nan = edited_fixture(&dir, key, |v| v[7] = f32::NAN);
    let err = failure(&eval_loss(&nan, &rows, &[]));
    assert!(
        err.contains("layers.1.self_attn.o_proj.weight") && err.contains("1 non-finite values"),
        "{err}"
    );
    let err = failure(&seqtopk(&[
        "generate",
        "--checkpoint",
        nan.to_str().unwrap(),
        "--input-ids",
        rows.to_str().unwrap(),
    ]));
    assert!(err.contains("non-finite"), "{err}");

    // Finite weights whose logits overflow: the row and position are named.
    let huge = edited_fixture(&dir, "lm_head.weight", |v| v.fill(f32::MAX));
    let err = failure(&eval_loss(&huge, &rows, &[]));
    assert!(
        err.contains("row 0, position 0: the logits are not finite"),
        "{err}"
    );
}

/// `--precision bf16`/`f16` computes in the half type (the loss moves, a little) and an unknown
/// precision is refused naming the choices.
#[test]
fn half_precision_scores_close_to_f32() {
    let dir = scratch("precision");
    let (ids, _, want) = golden_rows("olmoe-tiny", &dir);
    let ckpt = fixture("olmoe-tiny");
    let loss = |precision: &str| {
        let report = ok_json(&eval_loss(&ckpt, &ids, &["--precision", precision]));
        report["loss"].as_f64().unwrap()
    };
    assert!((loss("f32") - want).abs() <= 1e-5);
    for precision in ["bf16", "f16"] {
        let half = loss(precision);
        assert!(half != want, "{precision}: computed in f32?");
        assert!(
            (half - want).abs() <= 2e-2 * want,
            "{precision}: loss {half} vs HF f32 {want}"
        );
    }
    let e = failure(&eval_loss(&ckpt, &ids, &["--precision", "fp8"]));
    assert!(e.contains("bf16"), "{e}");
}
