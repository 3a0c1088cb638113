//! Conversion through the library API on the parity fixtures: HF → native → HF round trips,
//! native logits, dtype handling, upcycling, inspection, and every refusal.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, FloatDType};
use seqtopk_checkpoint::{
    CheckpointError, CheckpointFormat, ExpertLayout, ExportOptions, ImportOptions, SaveOptions,
    StorageDtype, UpcycleOptions, export_dir, export_hf, import_hf, inspect, load, load_in,
    save_native, upcycle, verify,
};
use seqtopk_model::{Ffn, LoadError, MoeTransformer};
use seqtopk_router::TokenLayout;

use crate::support::{all_logits, fixture, scratch};

const FIXTURES: [&str; 8] = [
    "llama-tiny",
    "mixtral-tiny",
    "mixtral-tiny-bf16",
    "olmoe-tiny",
    "olmoe-tiny-fused",
    "qwen2_moe-tiny",
    "qwen2_moe-tiny-sharded",
    "qwen3_moe-tiny",
];

/// `{key: (dtype, shape, raw bytes)}` of every safetensors file of an HF directory.
fn raw_tensors(dir: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                out.insert(
                    name,
                    (
                        format!("{:?}", view.dtype()),
                        view.shape().to_vec(),
                        view.data().to_vec(),
                    ),
                );
            }
        }
    }
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Logits of the valid positions of a padded two-row batch (padding rows are not computed by
/// MoE layers, so only real tokens are comparable across architectures).
fn logits(model: &MoeTransformer, device: &Device) -> Vec<f32> {
    let vocab = model.config().vocab_size;
    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 37 + 11) % vocab as u32).collect();
    let layout = TokenLayout::from_lengths(9, &[9, 6]).unwrap();
    all_logits(model, &ids, &layout, device)
        .chunks(vocab)
        .zip(layout.valid())
        .filter(|&(_, &valid)| valid)
        .flat_map(|(row, _)| row.iter().copied())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn no_leftovers(parent: &Path) {
    let stray: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "temporary directories left: {stray:?}");
}

/// HF → native → HF is bit-identical (keys, dtypes, shapes, bytes) and keeps config.json, for
/// every fixture; the native checkpoint computes the same logits as the HF directory.
#[test]
fn round_trip_every_fixture() {
    let device = Device::flex();
    let root = scratch("round-trip");
    for name in FIXTURES {
        let src = fixture(name);
        let native = root.join(format!("{name}-native"));
        let manifest = import_hf(&src, &native, &ImportOptions::default(), &device).unwrap();
        let want_dtype = if name.ends_with("bf16") {
            "bf16"
        } else {
            "f32"
        };
        assert_eq!(manifest.dtype, want_dtype, "{name}");
        let hf = load(&src, &device).unwrap();
        let nat = load(&native, &device).unwrap();
        assert_eq!(nat.format, CheckpointFormat::Native);
        assert_eq!(manifest.parameter_count, hf.model.num_params() as u64);
        assert_eq!(
            max_diff(&logits(&hf.model, &device), &logits(&nat.model, &device)),
            0.0,
            "{name}: native logits differ"
        );
        for file in ["generation_config.json", "config.json"] {
            assert!(native.join(file).is_file(), "{name}: {file} not copied");
        }

        let layout = if name.ends_with("fused") {
            ExpertLayout::Fused
        } else {
            ExpertLayout::PerExpert
        };
        let back = root.join(format!("{name}-hf"));
        export_dir(&native, &back, layout, None, false, &device).unwrap();
        let (want, got) = (raw_tensors(&src), raw_tensors(&back));
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "{name}: key sets differ"
        );
        for (key, w) in &want {
            let g = &got[key];
            assert_eq!((&w.0, &w.1), (&g.0, &g.1), "{name}: {key} dtype/shape");
            assert!(w.2 == g.2, "{name}: {key} bytes differ");
        }
        assert_eq!(
            json(&src.join("config.json")),
            json(&back.join("config.json")),
            "{name}: config.json changed"
        );
        assert_eq!(
            std::fs::read(src.join("generation_config.json")).unwrap(),
            std::fs::read(back.join("generation_config.json")).unwrap()
        );
        // The exported directory is a loadable HF checkpoint with the same logits.
        let again = load(&back, &device).unwrap();
        assert_eq!(
            max_diff(&logits(&hf.model, &device), &logits(&again.model, &device)),
            0.0
        );
    }
    no_leftovers(&root);
}

/// The fused fixture exported per expert holds exactly the per-expert fixture's layout, and the
/// per-expert fixture exported fused holds the fused fixture's tensors.
#[test]
fn expert_layouts_convert_both_ways() {
    let device = Device::flex();
    let root = scratch("layouts");
    let per_expert = root.join("per-expert");
    export_dir(
        &fixture("olmoe-tiny-fused"),
        &per_expert,
        ExpertLayout::PerExpert,
        None,
        false,
        &device,
    )
    .unwrap();
    let keys: Vec<String> = raw_tensors(&per_expert).into_keys().collect();
    let want: Vec<String> = raw_tensors(&fixture("olmoe-tiny")).into_keys().collect();
    assert_eq!(keys, want);
    let fused = root.join("fused");
    export_dir(
        &fixture("mixtral-tiny"),
        &fused,
        ExpertLayout::Fused,
        None,
        false,
        &device,
    )
    .unwrap();
    let t = raw_tensors(&fused);
    assert_eq!(
        t["model.layers.0.mlp.experts.gate_up_proj"].1,
        vec![5, 80, 96]
    );
    assert_eq!(t["model.layers.0.mlp.experts.down_proj"].1, vec![5, 96, 40]);
    assert!(t.contains_key("model.layers.0.mlp.gate.weight"));
    let a = load(fixture("mixtral-tiny"), &device).unwrap();
    let b = load(&fused, &device).unwrap();
    assert_eq!(
        max_diff(&logits(&a.model, &device), &logits(&b.model, &device)),
        0.0
    );
}

/// `--dtype bf16` stores bf16 and exports bf16 values rounded to nearest even from the f32 source.
#[test]
fn dtype_conversion_rounds_to_nearest_even() {
    let device = Device::flex();
    let root = scratch("dtype");
    let native = root.join("native");
    let options = ImportOptions {
        dtype: Some(StorageDtype::Bf16),
        force: false,
    };
    let m = import_hf(&fixture("qwen3_moe-tiny"), &native, &options, &device).unwrap();
    assert_eq!(m.dtype, "bf16");
    let report = inspect(&native).unwrap();
    assert_eq!(report.dtypes.keys().collect::<Vec<_>>(), vec!["bf16"]);
    let out = root.join("hf");
    export_dir(&native, &out, ExpertLayout::PerExpert, None, false, &device).unwrap();
    assert_eq!(json(&out.join("config.json"))["dtype"], "bfloat16");
    let src = raw_tensors(&fixture("qwen3_moe-tiny"));
    let got = raw_tensors(&out);
    for (key, (dtype, _, bytes)) in &got {
        assert_eq!(dtype, "BF16");
        let want: Vec<u8> = src[key]
            .2
            .chunks_exact(4)
            .flat_map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                half::bf16::from_f32(v).to_bits().to_le_bytes()
            })
            .collect();
        assert!(&want == bytes, "{key}");
    }
}

/// Existing outputs survive without `force`, are replaced with it, and nothing temporary is left.
#[test]
fn outputs_are_never_overwritten_without_force() {
    let device = Device::flex();
    let root = scratch("force");
    let out = root.join("ckpt");
    let src = fixture("llama-tiny");
    import_hf(&src, &out, &ImportOptions::default(), &device).unwrap();
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let err = import_hf(&src, &out, &ImportOptions::default(), &device).unwrap_err();
    assert!(matches!(err, CheckpointError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);
    // save_native on its own refuses as well.
    let loaded = load(&src, &device).unwrap();
    let err = save_native(
        &loaded.model,
        &loaded.hf_config,
        None,
        &out,
        &SaveOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Exists { .. }));
    // An HF export onto an existing directory too.
    let err = export_hf(
        &loaded.model,
        &loaded.hf_config,
        None,
        &out,
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Exists { .. }));
    let options = ImportOptions {
        dtype: Some(StorageDtype::F16),
        force: true,
    };
    let m = import_hf(&src, &out, &options, &device).unwrap();
    assert_eq!(m.dtype, "f16");
    assert_eq!(json(&out.join("manifest.json"))["dtype"], "f16");
    no_leftovers(&root);
}

/// The trainer's path: a model on an autodiff device saved (periodic snapshot, then forced
/// replacement), loaded back with identical parameters.
#[test]
fn save_native_from_an_autodiff_model() {
    let device = Device::flex().autodiff();
    let root = scratch("autodiff");
    let loaded = load(fixture("qwen2_moe-tiny"), &device).unwrap();
    let out = root.join("step-1");
    let options = SaveOptions {
        dtype: StorageDtype::F32,
        source: "train:test".into(),
        force: false,
    };
    let m = save_native(
        &loaded.model,
        &loaded.hf_config,
        Some(&fixture("qwen2_moe-tiny")),
        &out,
        &options,
    )
    .unwrap();
    assert_eq!(m.source, "train:test");
    assert_eq!(m.family, "qwen2_moe");
    let forced = SaveOptions {
        force: true,
        ..options
    };
    save_native(&loaded.model, &loaded.hf_config, None, &out, &forced).unwrap();
    let plain = Device::flex();
    let back = load(&out, &plain).unwrap();
    let want = load(fixture("qwen2_moe-tiny"), &plain).unwrap();
    assert_eq!(
        max_diff(&logits(&want.model, &plain), &logits(&back.model, &plain)),
        0.0
    );
    verify(&out).unwrap();
    no_leftovers(&root);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A truncated safetensors file, a missing shard, a wrong shape and quantised sources each give
/// their own clear error naming the file or key.
#[test]
fn bad_sources_give_clear_errors() {
    let device = Device::flex();
    let root = scratch("errors");
    let out = root.join("out");

    let truncated = root.join("truncated");
    copy_dir(&fixture("llama-tiny"), &truncated);
    let weights = truncated.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    let err = import_hf(&truncated, &out, &ImportOptions::default(), &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    let sharded = root.join("missing-shard");
    copy_dir(&fixture("qwen2_moe-tiny-sharded"), &sharded);
    std::fs::remove_file(sharded.join("model-00002-of-00004.safetensors")).unwrap();
    let msg = import_hf(&sharded, &out, &ImportOptions::default(), &device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model-00002-of-00004.safetensors") && msg.contains("missing"),
        "{msg}"
    );

    let shape = root.join("wrong-shape");
    copy_dir(&fixture("llama-tiny"), &shape);
    let mut config = json(&shape.join("config.json"));
    config["intermediate_size"] = 64.into();
    std::fs::write(shape.join("config.json"), config.to_string()).unwrap();
    let err = import_hf(&shape, &out, &ImportOptions::default(), &device).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::Load {
                source: LoadError::ShapeMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("[64, 96]"),
        "{msg}"
    );

    let quant = root.join("gptq");
    copy_dir(&fixture("llama-tiny"), &quant);
    let mut config = json(&quant.join("config.json"));
    config["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4});
    std::fs::write(quant.join("config.json"), config.to_string()).unwrap();
    let err = import_hf(&quant, &out, &ImportOptions::default(), &device).unwrap_err();
    assert!(matches!(err, CheckpointError::Quantized { .. }), "{err}");
    assert!(err.to_string().contains("gptq"), "{err}");

    // FP8 weights without a quantization_config are refused by their dtype.
    let fp8 = root.join("fp8");
    copy_dir(&fixture("llama-tiny"), &fp8);
    let data = vec![0u8; 96 * 96];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F8_E4M3, vec![96, 96], &data)
            .unwrap();
    safetensors::tensor::serialize_to_file(
        [("model.layers.0.self_attn.q_proj.weight", view)],
        None,
        &fp8.join("model.safetensors"),
    )
    .unwrap();
    let err = import_hf(&fp8, &out, &ImportOptions::default(), &device).unwrap_err();
    assert!(matches!(err, CheckpointError::Quantized { .. }), "{err}");
    assert!(err.to_string().contains("F8_E4M3"), "{err}");

    assert!(!out.exists(), "a failed import left its output");
    no_leftovers(&root);
}

/// A damaged native checkpoint is refused: truncated weights on load, changed bytes by `verify`.
#[test]
fn damaged_native_checkpoints_are_refused() {
    let device = Device::flex();
    let root = scratch("damaged");
    let native = root.join("native");
    import_hf(
        &fixture("olmoe-tiny"),
        &native,
        &ImportOptions::default(),
        &device,
    )
    .unwrap();
    verify(&native).unwrap();
    let config = native.join("generation_config.json");
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&config, &bytes).unwrap();
    let msg = verify(&native).unwrap_err().to_string();
    assert!(
        msg.contains("generation_config.json") && msg.contains("sha256"),
        "{msg}"
    );

    let weights = native.join("model.bpk");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load(&native, &device).unwrap_err().to_string();
    assert!(
        msg.contains("model.bpk") && msg.contains("truncated"),
        "{msg}"
    );
}

/// Upcycling the dense Llama fixture: a Mixtral whose experts copy the dense MLP computes the
/// dense logits (within 1e-4) through both the native and the exported HF checkpoint.
#[test]
fn upcycled_llama_matches_the_dense_model() {
    let device = Device::flex();
    let root = scratch("upcycle");
    let dense = load(fixture("llama-tiny"), &device).unwrap();
    let options = UpcycleOptions {
        experts: 4,
        top_k: 2,
        router_std: 0.02,
        seed: 5,
    };
    let (moe, config) = upcycle(&dense.model, &dense.hf_config, &options, &device).unwrap();
    assert_eq!(config["model_type"], "mixtral");
    assert_eq!(config["num_local_experts"], 4);
    let c = moe.config();
    assert_eq!(c.moe.as_ref().unwrap().num_experts, 4);
    assert!(c.moe.as_ref().unwrap().norm_topk_prob);
    let Ffn::Moe(block) = &moe.layers[0].mlp else {
        panic!("layer 0 is not MoE")
    };
    let Ffn::Dense(mlp) = &dense.model.layers[0].mlp else {
        panic!("dense layer 0 is not dense")
    };
    let router = block
        .gate
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let std = (router.iter().map(|x| x * x).sum::<f32>() / router.len() as f32).sqrt();
    assert!((0.01..0.04).contains(&std), "router std {std}");
    // Dense `up_proj` is Burn's `[H, I]`; each expert's HF `up_proj` is `[I, H]`.
    let [h, i] = mlp.up_proj.weight.val().dims();
    let want = mlp
        .up_proj
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let experts = block.experts.to_hf().unwrap();
    for e in 0..experts.num_experts {
        let up = experts.expert(e)[1];
        for r in 0..h {
            for c in 0..i {
                assert_eq!(up[c * h + r], want[r * i + c], "expert {e} up[{c}, {r}]");
            }
        }
    }
    let reference = logits(&dense.model, &device);
    let diff = max_diff(&reference, &logits(&moe, &device));
    assert!(diff < 1e-4, "upcycled vs dense {diff}");

    let native = root.join("native");
    let save = SaveOptions {
        dtype: StorageDtype::F32,
        source: "upcycle:test".into(),
        force: false,
    };
    save_native(&moe, &config, Some(&fixture("llama-tiny")), &native, &save).unwrap();
    let back = load(&native, &device).unwrap();
    assert!(max_diff(&reference, &logits(&back.model, &device)) < 1e-4);
    let hf = root.join("hf");
    export_dir(&native, &hf, ExpertLayout::PerExpert, None, false, &device).unwrap();
    assert!(raw_tensors(&hf).contains_key("model.layers.1.block_sparse_moe.experts.3.w2.weight"));
    let again = load(&hf, &device).unwrap();
    assert!(max_diff(&reference, &logits(&again.model, &device)) < 1e-4);

    // Only dense Llama checkpoints upcycle, and the options are checked.
    let moe_src = load(fixture("olmoe-tiny"), &device).unwrap();
    let err = upcycle(&moe_src.model, &moe_src.hf_config, &options, &device).unwrap_err();
    assert!(err.to_string().contains("olmoe"), "{err}");
    let bad = UpcycleOptions {
        top_k: 5,
        ..options
    };
    let err = upcycle(&dense.model, &dense.hf_config, &bad, &device).unwrap_err();
    assert!(err.to_string().contains("--top-k"), "{err}");
}

/// `inspect` reports family, sizes, experts, dtype and tensors without loading weights.
#[test]
fn inspect_reports_the_checkpoint() {
    let r = inspect(&fixture("qwen2_moe-tiny-sharded")).unwrap();
    assert_eq!(r.format, "huggingface");
    let m = r.model.as_ref().unwrap();
    assert_eq!(m.family, "qwen2_moe");
    let e = m.experts.as_ref().unwrap();
    assert_eq!(
        (e.num_experts, e.top_k, e.shared_intermediate),
        (5, 2, Some(48))
    );
    assert_eq!(r.dtypes.get("F32"), Some(&73));
    let text = r.to_string();
    assert!(
        text.contains("model.layers.0.mlp.shared_expert_gate.weight"),
        "{text}"
    );
    let r = inspect(&fixture("mixtral-tiny-bf16").join("model.safetensors")).unwrap();
    assert_eq!(r.format, "safetensors-file");
    assert_eq!(r.dtypes.keys().collect::<Vec<_>>(), vec!["BF16"]);
}

/// An HF directory written in f16 loads through the safetensors reader (the f16 → f32 path) and
/// computes what the f32 model does, to f16's precision; byte-order or exponent mistakes would
/// give logits far off.
#[test]
fn an_f16_hf_export_loads_back_close_to_the_f32_model() {
    let device = Device::flex();
    let root = scratch("f16-export");
    let loaded = load(fixture("qwen2_moe-tiny"), &device).unwrap();
    let out = root.join("hf-f16");
    let options = ExportOptions {
        dtype: StorageDtype::F16,
        ..ExportOptions::default()
    };
    export_hf(&loaded.model, &loaded.hf_config, None, &out, &options).unwrap();
    assert!(
        raw_tensors(&out)
            .values()
            .all(|(dtype, _, _)| dtype == "F16"),
        "every tensor stored as f16"
    );
    let half = seqtopk_model::load_checkpoint(&out, &device).unwrap();
    let d = max_diff(&logits(&half, &device), &logits(&loaded.model, &device));
    assert!(d > 0.0 && d < 0.05, "f16 vs f32 logits differ by {d}");
}

/// `load_in` stores the weights in half precision as it reads them, from either format: every
/// parameter is bf16 and the model computes exactly what the f32 model cast afterwards does.
#[test]
fn half_precision_loads_equal_loading_then_casting() {
    let device = Device::flex();
    let native = scratch("half-load").join("native");
    let hf = fixture("mixtral-tiny-bf16");
    import_hf(&hf, &native, &ImportOptions::default(), &device).unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 64).collect();
    let layout = TokenLayout::dense(2, 6);
    for dir in [hf.as_path(), native.as_path()] {
        let half = load_in(dir, &device, true, Some(FloatDType::BF16))
            .unwrap()
            .model;
        let mut dtypes = DtypeCount::default();
        half.visit(&mut dtypes);
        assert_eq!(
            dtypes.other,
            0,
            "{}: {} non-bf16 parameters",
            dir.display(),
            dtypes.other
        );
        assert!(dtypes.bf16 > 0);
        let cast = load(dir, &device)
            .unwrap()
            .model
            .cast_for_compute(FloatDType::BF16);
        let logits = |m: &MoeTransformer| -> Vec<f32> {
            m.forward(&ids, &layout, &device)
                .unwrap()
                .logits
                .into_data()
                .try_to_vec()
                .unwrap()
        };
        assert_eq!(logits(&half), logits(&cast), "{}", dir.display());
    }
    std::fs::remove_dir_all(&native).unwrap();
}

#[derive(Default)]
struct DtypeCount {
    bf16: usize,
    other: usize,
}

impl burn::module::ModuleVisitor for DtypeCount {
    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D>>,
    ) {
        match param.val().dtype() {
            burn::tensor::DType::BF16 => self.bf16 += 1,
            _ => self.other += 1,
        }
    }
}
