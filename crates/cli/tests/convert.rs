//! `seqtopk convert` end to end through the binary: import, export, upcycle, inspect, compare,
//! and the refusals users meet (existing output, quantised source, truncated file).

use std::path::Path;

use crate::support::{failure, fixture, ok_json, scratch, seqtopk};

/// Runs `seqtopk args…`, which must fail with an error that names every one of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let err = failure(&seqtopk(args));
    for n in needles {
        assert!(err.contains(n), "stderr of {args:?} lacks {n:?}:\n{err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The arguments of `seqtopk convert import --hf src --out out extra…`.
fn import<'a>(src: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    [
        &["convert", "import", "--hf", s(src), "--out", s(out)],
        extra,
    ]
    .concat()
}

/// import → inspect → compare → export → compare on an MoE fixture, with the `--force` rule.
#[test]
fn import_export_compare_inspect() {
    let root = scratch("roundtrip");
    let src = fixture("qwen2_moe-tiny-sharded");
    let native = root.join("native");
    let r = ok_json(&seqtopk(&import(&src, &native, &[])));
    assert_eq!(r["family"], "qwen2_moe");
    assert_eq!(r["dtype"], "f32");
    assert!(native.join("manifest.json").is_file());

    // Existing output: refused, then replaced with --force.
    fails_with(&import(&src, &native, &[]), &["already exists", "--force"]);
    let r = ok_json(&seqtopk(&import(
        &src,
        &native,
        &["--dtype", "bf16", "--force"],
    )));
    assert_eq!(r["dtype"], "bf16");

    let out = seqtopk(&["convert", "inspect", s(&native), "--verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["native", "qwen2_moe", "5 routed, top-2", "bf16", "verified"] {
        assert!(text.contains(needle), "inspect lacks {needle:?}:\n{text}");
    }
    let r = ok_json(&seqtopk(&["convert", "inspect", s(&src), "--json"]));
    assert_eq!(r["model"]["experts"]["num_experts"], 5);
    assert_eq!(r["tensors"].as_array().unwrap().len(), 73);

    // bf16 storage: logits differ from the f32 source but stay finite (a rounded router weight
    // can flip an expert choice of this tiny random model, so the bound is loose).
    let r = ok_json(&seqtopk(&["convert", "compare", s(&src), s(&native)]));
    let d = r["max_abs_diff"].as_f64().unwrap();
    assert!(d > 0.0 && d < 10.0, "bf16 vs f32 diff {d}");

    let hf = root.join("hf");
    let r = ok_json(&seqtopk(&[
        "convert",
        "export",
        "--checkpoint",
        s(&native),
        "--hf-out",
        s(&hf),
        "--fused",
    ]));
    assert_eq!(r["layout"], "fused");
    let r = ok_json(&seqtopk(&[
        "convert",
        "compare",
        s(&native),
        s(&hf),
        "--prompt",
        "hello",
        "--max-diff",
        "0",
    ]));
    assert_eq!(r["max_abs_diff"], 0.0);
    assert_eq!(r["argmax_agreement"], 1.0);
    fails_with(
        &["convert", "compare", s(&src), s(&native), "--max-diff", "0"],
        &["exceeds --max-diff"],
    );
}

/// `upcycle` of the dense Llama fixture writes a native MoE (and an HF copy) with the dense
/// logits; a non-Llama source is refused.
#[test]
fn upcycle_llama_fixture() {
    let root = scratch("upcycle");
    let dense = fixture("llama-tiny");
    let out = root.join("moe");
    let hf = root.join("moe-hf");
    let r = ok_json(&seqtopk(&[
        "convert",
        "upcycle",
        "--hf",
        s(&dense),
        "--experts",
        "4",
        "--top-k",
        "2",
        "--out",
        s(&out),
        "--hf-out",
        s(&hf),
    ]));
    assert_eq!(r["experts"], 4);
    assert!(r["parameter_count"].as_u64().unwrap() > r["dense_parameter_count"].as_u64().unwrap());
    let report = ok_json(&seqtopk(&["convert", "inspect", s(&hf), "--json"]));
    assert_eq!(report["model"]["family"], "mixtral");
    assert_eq!(report["model"]["experts"]["top_k"], 2);
    for moe in [&out, &hf] {
        let r = ok_json(&seqtopk(&[
            "convert",
            "compare",
            s(&dense),
            s(moe),
            "--max-diff",
            "1e-4",
        ]));
        assert_eq!(r["argmax_agreement"], 1.0);
    }
    fails_with(
        &[
            "convert",
            "upcycle",
            "--hf",
            s(&fixture("mixtral-tiny")),
            "--experts",
            "4",
            "--top-k",
            "2",
            "--out",
            s(&root.join("no")),
        ],
        &["dense llama", "mixtral"],
    );
    assert!(!root.join("no").exists());
}

/// Quantised and truncated sources fail with messages naming the cause and the file.
#[test]
fn refusals() {
    let root = scratch("refusals");
    let quant = root.join("awq");
    std::fs::create_dir_all(&quant).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama-tiny").join(f), quant.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(quant.join("config.json")).unwrap()).unwrap();
    config["quantization_config"] = serde_json::json!({"quant_method": "awq"});
    std::fs::write(quant.join("config.json"), config.to_string()).unwrap();
    let out = root.join("out");
    fails_with(
        &import(&quant, &out, &[]),
        &["quantised", "awq", "config.json"],
    );
    let bytes = std::fs::read(quant.join("model.safetensors")).unwrap();
    std::fs::write(quant.join("model.safetensors"), &bytes[..100]).unwrap();
    fails_with(
        &["convert", "inspect", s(&quant.join("model.safetensors"))],
        &["model.safetensors"],
    );
    fails_with(
        &[
            "convert",
            "export",
            "--checkpoint",
            s(&root.join("nope")),
            "--hf-out",
            s(&out),
        ],
        &["not a directory"],
    );
    assert!(!out.exists());
}

/// Every file of an export gets the same mode, the one a plain file creation gives (the
/// safetensors writer creates its file 0600).
#[cfg(unix)]
#[test]
fn exported_files_share_one_mode() {
    use std::os::unix::fs::PermissionsExt;
    let root = scratch("modes");
    let hf = root.join("hf");
    ok_json(&seqtopk(&[
        "convert",
        "export",
        "--checkpoint",
        s(&fixture("olmoe-tiny")),
        "--hf-out",
        s(&hf),
    ]));
    let plain = root.join("plain");
    std::fs::write(&plain, "").unwrap();
    let want = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
    for entry in std::fs::read_dir(&hf).unwrap().flatten() {
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{:?} has mode {mode:o}", entry.file_name());
    }
}
