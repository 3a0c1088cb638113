//! LoRA adapters in Hugging Face PEFT's format, checked against PEFT itself on the committed
//! fixtures (`checkpoints/fixtures/*-lora`, made by `tools/fixtures/make_lora_fixtures.py` with
//! peft 0.21.2): logits of the adapted and the merged model, the bytes we write back, and every
//! refusal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use safetensors::SafeTensors;
use seqtopk_checkpoint::peft::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, read_adapter_spec, save_adapter,
};
use seqtopk_checkpoint::{CheckpointError, load};
use seqtopk_model::{MoeTransformer, MoeTransformerConfig};
use seqtopk_router::TokenLayout;

use crate::support::{self, all_logits, fixture};

/// (base, adapter) fixtures: an adapter per family with listed targets, and two whose
/// `target_modules` is a regex (OLMoE's, which PEFT widens to the matched modules' last path
/// component, and Qwen2-MoE's, which it applies to whole paths).
const ADAPTED: [(&str, &str); 5] = [
    ("olmoe-tiny", "olmoe-tiny-lora"),
    ("qwen2_moe-tiny-sharded", "qwen2_moe-tiny-sharded-lora"),
    ("mixtral-tiny", "mixtral-tiny-lora"),
    ("olmoe-tiny", "olmoe-tiny-lora-regex"),
    (
        "qwen2_moe-tiny-sharded",
        "qwen2_moe-tiny-sharded-lora-regex",
    ),
];

fn scratch(name: &str) -> PathBuf {
    support::scratch(&format!("peft-{name}"))
}

/// `{key: (shape, f32 values)}` of a safetensors file.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(k, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k, (v.shape().to_vec(), values))
        })
        .collect()
}

fn i64s(path: &Path, key: &str) -> (Vec<usize>, Vec<i64>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let values = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), values)
}

/// max |ours − golden| over the real (unpadded) positions of the golden batch.
fn logit_error(model: &MoeTransformer, golden_dir: &Path, key: &str, device: &Device) -> f32 {
    let golden = golden_dir.join("golden.safetensors");
    let (shape, ids) = i64s(&golden, "input_ids");
    let (_, mask) = i64s(&golden, "attention_mask");
    let valid: Vec<bool> = mask.iter().map(|&m| m == 1).collect();
    let layout = TokenLayout::new(shape[0], shape[1], valid.clone(), vec![0; ids.len()]).unwrap();
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let ours = all_logits(model, &ids, &layout, device);
    let theirs = &tensors(&golden)[key].1;
    let vocab = model.config().vocab_size;
    ours.chunks(vocab)
        .zip(theirs.chunks(vocab))
        .zip(&valid)
        .filter(|(_, v)| **v)
        .flat_map(|((a, b), _)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

/// An adapter PEFT wrote gives PEFT's logits, and PEFT's merged logits once merged.
#[test]
fn peft_adapters_give_peft_logits() {
    let device = Device::flex();
    for (base, name) in ADAPTED {
        let adapter = fixture(name);
        let model = load(fixture(base), &device).unwrap().model;
        let plain = logit_error(&model, &adapter, "logits", &device);
        assert!(
            plain > 1.0,
            "{name}: the adapter must matter (base differs by {plain})"
        );
        let (adapted, spec) = load_adapter(model, &adapter).unwrap();
        assert_eq!((spec.rank, spec.alpha), (4, 8.0), "{name}");
        let err = logit_error(&adapted, &adapter, "logits", &device);
        assert!(err < 1e-4, "{name}: adapted logits off by {err}");
        let merged = adapted.merge_lora();
        let err = logit_error(&merged, &adapter, "merged_logits", &device);
        assert!(err < 1e-4, "{name}: merged logits off by {err}");
    }
}

/// A dry run counts LoRA's parameters from the model's config alone (a 7 B model is not built
/// to plan its run): the adapters' and `modules_to_save`'s, exactly as many as PEFT saved.
#[test]
fn lora_parameters_counted_from_the_config_are_those_peft_saved() {
    for (base, name) in ADAPTED {
        let adapter = fixture(name);
        let spec = read_adapter_spec(&adapter).unwrap();
        let config = MoeTransformerConfig::from_file(fixture(base).join("config.json")).unwrap();
        let counted = spec.params(&config).unwrap();
        let (mut lora, mut whole) = (0, 0);
        for (key, (_, values)) in tensors(&adapter.join(ADAPTER_WEIGHTS)) {
            match key.contains(".lora_") {
                true => lora += values.len(),
                false => whole += values.len(),
            }
        }
        assert_eq!((counted.adapters, counted.saved), (lora, whole), "{name}");
        assert!(lora > 0 && whole > 0, "{name}");
        // PEFT's Mixtral adapter names the dense MLP projections, which Mixtral lacks.
        let unmatched: &[&str] = match base {
            "mixtral-tiny" => &["down_proj", "gate_proj", "up_proj"],
            _ => &[],
        };
        assert_eq!(counted.unmatched, unmatched, "{name}");
    }
}

/// What we write is what PEFT wrote: the same keys, shapes and values, and a config whose
/// targets PEFT reads as the same modules.
#[test]
fn saved_adapters_match_what_peft_wrote() {
    let device = Device::flex();
    for (base, name) in ADAPTED {
        let adapter = fixture(name);
        let model = load(fixture(base), &device).unwrap().model;
        let (adapted, spec) = load_adapter(model, &adapter).unwrap();
        let out = scratch(name).join("adapter");
        save_adapter(&adapted, &spec, base, &out, false).unwrap();
        let ours = tensors(&out.join(ADAPTER_WEIGHTS));
        let theirs = tensors(&adapter.join(ADAPTER_WEIGHTS));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(ours, theirs, "{name}: tensors differ");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(ADAPTER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(config["r"], 4);
        assert_eq!(config["modules_to_save"], serde_json::json!(["gate"]));
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(adapter.join(ADAPTER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(
            config["target_modules"], written["target_modules"],
            "{name}"
        );
        // Written without --force, an existing adapter stays.
        let again = save_adapter(&adapted, &spec, base, &out, false).unwrap_err();
        assert!(matches!(again, CheckpointError::Exists { .. }), "{again}");
    }
}

fn copy_adapter(name: &str, tag: &str) -> PathBuf {
    let dir = scratch(tag).join("adapter");
    std::fs::create_dir_all(&dir).unwrap();
    for file in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        std::fs::copy(fixture(name).join(file), dir.join(file)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(ADAPTER_CONFIG);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

fn refusal(base: &str, adapter: &Path) -> String {
    let model = load(fixture(base), &Device::flex()).unwrap().model;
    load_adapter(model, adapter).unwrap_err().to_string()
}

/// Adapters that do not fit the model, or use PEFT features we would compute wrongly, are
/// refused with the file and the reason.
#[test]
fn bad_adapters_are_refused_with_the_reason() {
    let olmoe = "olmoe-tiny-lora";
    let missing = scratch("missing").join("adapter");
    std::fs::create_dir_all(&missing).unwrap();
    let e = refusal("olmoe-tiny", &missing);
    assert!(e.contains(ADAPTER_CONFIG) && e.contains("missing"), "{e}");

    let no_weights = copy_adapter(olmoe, "no-weights");
    std::fs::remove_file(no_weights.join(ADAPTER_WEIGHTS)).unwrap();
    let e = refusal("olmoe-tiny", &no_weights);
    assert!(e.contains(ADAPTER_WEIGHTS), "{e}");

    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 9] = [
        ("dora", |c| c["use_dora"] = true.into(), "DoRA"),
        ("ia3", |c| c["peft_type"] = "IA3".into(), "only LORA"),
        (
            "regex",
            |c| c["target_modules"] = "model.*(q_proj".into(),
            "is not a regex",
        ),
        (
            "all-linear",
            |c| c["target_modules"] = "all-linear".into(),
            "all-linear",
        ),
        (
            "rank-pattern",
            |c| c["rank_pattern"] = serde_json::json!({"q_proj": "eight"}),
            "not a number",
        ),
        ("rank", |c| c["r"] = 0.into(), "`r`"),
        ("bias", |c| c["bias"] = "all".into(), "biases"),
        (
            "fan-in",
            |c| c["fan_in_fan_out"] = true.into(),
            "fan_in_fan_out",
        ),
        (
            "layers",
            |c| c["layers_to_transform"] = serde_json::json!([0]),
            "layer selection",
        ),
    ];
    for (tag, edit, expected) in cases {
        let dir = copy_adapter(olmoe, tag);
        edit_config(&dir, edit);
        let e = refusal("olmoe-tiny", &dir);
        assert!(
            e.contains(expected) && e.contains(ADAPTER_CONFIG),
            "{tag}: {e}"
        );
    }

    // Made for OLMoE, applied to Mixtral (other widths): the first mismatching tensor is named.
    let e = refusal("mixtral-tiny", &fixture(olmoe));
    assert!(e.contains(".lora_") && e.contains("has shape"), "{e}");

    // A tensor the config does not account for.
    let dir = copy_adapter(olmoe, "extra");
    edit_config(&dir, |c| {
        c["target_modules"] = serde_json::json!(["q_proj"])
    });
    let e = refusal("olmoe-tiny", &dir);
    assert!(e.contains("belong to no adapted module"), "{e}");
}
