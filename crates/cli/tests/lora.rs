//! LoRA through the binary: `train` with a `[lora]` table trains only the adapters and the router
//! gate, resumes exactly and exports the merged model with a PEFT adapter; `convert merge` folds
//! an adapter PEFT made into its base as PEFT's `merge_and_unload` does.

use std::path::Path;
use std::process::Output;

use crate::support::{
    self, checkpoint, checkpoint_weights as weights, failure, fixture, ok_json, scratch, text,
};
use burn::tensor::Device;
use safetensors::SafeTensors;
use seqtopk_model::{MoeTransformer, MoeTransformerConfig};
use seqtopk_router::TokenLayout;
use seqtopk_train::Recipe;

/// The tiny recipe, shrunk, with LoRA rank 4 on attention and experts (the defaults).
fn lora_run(out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let fixed = [
        "train.eval_every=0",
        "train.checkpoint_every=2",
        "schedule.warmup_steps=1",
        "lora.r=4",
    ];
    support::tiny_train(out, steps, &fixed, extra)
}

fn run(args: &[String]) -> Output {
    support::from_root(args).output().expect("the binary runs")
}

/// The model of a from-scratch recipe, seeded as `train` seeds it.
fn scratch_model(recipe: &Recipe) -> MoeTransformer {
    let json = serde_json::to_string(recipe.model.config.as_ref().unwrap()).unwrap();
    let config = MoeTransformerConfig::from_json_str(&json, "recipe").unwrap();
    MoeTransformer::init(&config, recipe.seed, &Device::flex()).unwrap()
}

/// The logits rows of the real (unpadded) positions of `all` `[B·T, V]` under `layout`.
fn real_rows(all: &[f32], vocab: usize, layout: &TokenLayout) -> Vec<f32> {
    all.chunks(vocab)
        .zip(layout.valid())
        .filter(|(_, v)| **v)
        .flat_map(|(row, _)| row.to_vec())
        .collect()
}

/// `model`'s logits at the real positions of `ids` under `layout`.
fn real_logits(model: &MoeTransformer, ids: &[u32], layout: &TokenLayout) -> Vec<f32> {
    let all = model
        .forward(ids, layout, &Device::flex())
        .unwrap()
        .logits
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    real_rows(&all, model.config().vocab_size, layout)
}

/// Logits of the real positions of a two-row padded batch.
fn logits(model: &MoeTransformer) -> Vec<f32> {
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 37 + 11) % vocab).collect();
    real_logits(model, &ids, &TokenLayout::from_lengths(9, &[9, 6]).unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Only the adapters and the router gate move; the run resumes bit-identically; the export is
/// the merged model plus an adapter that, applied to the same base, gives the same logits.
#[test]
fn lora_trains_the_adapters_and_the_gate_only() {
    let out = scratch("lora-run");
    let res = run(&lora_run(&out, 4, &[]));
    assert!(res.status.success(), "{}", text(&res));
    assert!(text(&res).contains("LoRA: base frozen"), "{}", text(&res));
    let (at2, at4) = (weights(&checkpoint(&out, 2)), weights(&checkpoint(&out, 4)));
    let changed: Vec<&str> = at2
        .iter()
        .zip(&at4)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.as_str())
        .collect();
    let moved_base: Vec<&&str> = changed
        .iter()
        .filter(|p| !p.contains(".lora.") && !p.ends_with("Moe.gate.weight"))
        .collect();
    assert!(
        moved_base.is_empty(),
        "frozen weights changed: {moved_base:?}"
    );
    for part in [
        "q_proj.weight.lora.b",
        "gate_up.lora.b",
        "down.lora.a",
        "Moe.gate.weight",
    ] {
        assert!(
            changed.iter().any(|p| p.contains(part)),
            "{part} did not train: {changed:?}"
        );
    }

    // Resume from step 2 reproduces step 4 exactly.
    let resumed = scratch("lora-resumed");
    let copy = std::process::Command::new("cp")
        .args([
            "-r",
            &format!("{}/.", out.display()),
            &resumed.display().to_string(),
        ])
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::remove_dir_all(checkpoint(&resumed, 4)).unwrap();
    std::fs::remove_dir_all(resumed.join("final")).unwrap();
    let mut args = lora_run(&resumed, 4, &[]);
    args.push("--resume".into());
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    assert!(
        at4 == weights(&checkpoint(&resumed, 4)),
        "resumed LoRA run differs"
    );

    // The export: merged weights, and a PEFT adapter that rebuilds them from the base.
    let final_dir = out.join("final");
    let merged = seqtopk_checkpoint::load(&final_dir, &Device::flex())
        .unwrap()
        .model;
    let recipe = Recipe::from_file(&checkpoint(&out, 4).join("recipe.toml"), &[]).unwrap();
    let base = scratch_model(&recipe);
    let before = max_diff(&logits(&base), &logits(&merged));
    assert!(before > 1e-3, "training changed nothing ({before})");
    let (mut adapted, spec) =
        seqtopk_checkpoint::peft::load_adapter(base, &final_dir.join("adapter")).unwrap();
    // The export records the recipe's SeqTopK routing, which `load` applied.
    adapted
        .set_routing(recipe.router.as_ref().unwrap())
        .unwrap();
    assert_eq!(spec.rank, 4);
    assert_eq!(spec.alpha, 8.0);
    let err = max_diff(&logits(&adapted), &logits(&merged));
    assert!(err < 1e-5, "adapter + base vs merged export: {err}");
    for dir in [out, resumed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Two replicas (the adapters forked with the model) train exactly as one device accumulating
/// their two micro-batches.
#[test]
fn lora_on_two_replicas_equals_accumulation() {
    let single = scratch("lora-dp-single");
    let res = run(&lora_run(&single, 2, &["batch.grad_accum_steps=2"]));
    assert!(res.status.success(), "{}", text(&res));
    let parallel = scratch("lora-dp-two");
    let res = run(&lora_run(&parallel, 2, &["devices=[0, 1]"]));
    assert!(res.status.success(), "{}", text(&res));
    let (a, b) = (
        weights(&checkpoint(&single, 2)),
        weights(&checkpoint(&parallel, 2)),
    );
    assert!(a.iter().any(|(p, _)| p.contains(".lora.")));
    assert!(
        a == b,
        "two LoRA replicas differ from accumulation on one device"
    );
    for dir in [single, parallel] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// `--dry-run` counts what LoRA trains: per layer r·(in + out) for q, k, v, o (64 → 64),
/// E·r·(in + out) for the experts' gate/up (64 → 192) and down (96 → 64), and the router gate.
#[test]
fn dry_run_counts_the_trainable_adapters() {
    let out = scratch("lora-dry");
    let mut args = lora_run(&out, 4, &[]);
    args.push("--dry-run".into());
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    let per_layer = 4 * 4 * (64 + 64) + 8 * 4 * (64 + 192) + 8 * 4 * (96 + 64) + 64 * 8;
    assert!(
        stdout.contains(&format!("parameters_trainable = {}\n", 2 * per_layer)),
        "{stdout}"
    );
    assert!(stdout.contains("[lora]"), "{stdout}");
}

/// `target_modules` as one regex, read as PEFT reads it: on OLMoE (the tiny recipe's family)
/// PEFT widens it to the matched modules' last path component, so layer 0's `q_proj` names
/// every layer's; the adapter keeps the regex, which PEFT widens the same way on loading.
#[test]
fn a_regex_target_is_read_as_peft_reads_it() {
    let out = scratch("lora-regex");
    let regex = r"model\.layers\.0\.self_attn\.q_proj";
    let sets = [
        format!("lora.target_modules='{regex}'"),
        "lora.target_parameters=[]".into(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let mut args = lora_run(&out, 2, &sets);
    args.push("--dry-run".into());
    let res = run(&args);
    let stdout = String::from_utf8_lossy(&res.stdout);
    // q_proj (64 → 64, r 4) in both layers, and the router gate (64 × 8) of each.
    let trainable = 2 * 4 * (64 + 64) + 2 * 64 * 8;
    assert!(
        stdout.contains(&format!("parameters_trainable = {trainable}\n")),
        "{}",
        text(&res)
    );
    let res = run(&lora_run(&out, 2, &sets));
    assert!(res.status.success(), "{}", text(&res));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("final/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["target_modules"], regex);

    let mut args = lora_run(&out, 2, &[r"lora.target_modules='model\.layers\.9\..*'"]);
    args.push("--dry-run".into());
    let e = failure(&run(&args));
    assert!(e.contains("selects nothing") && e.contains("layers"), "{e}");
}

/// PEFT's `lora_dropout` on linear adapters: it changes what trains (the masks apply), a run
/// with it resumes bit-identically (the masks are seeded per step), and the adapter says it.
#[test]
fn lora_dropout_applies_and_resumes_exactly() {
    let linear_only = ["lora.target_parameters=[]"];
    let plain = scratch("lora-no-dropout");
    let res = run(&lora_run(&plain, 4, &linear_only));
    assert!(res.status.success(), "{}", text(&res));
    let out = scratch("lora-dropout");
    let with_dropout = ["lora.target_parameters=[]", "lora.dropout=0.3"];
    let res = run(&lora_run(&out, 4, &with_dropout));
    assert!(res.status.success(), "{}", text(&res));
    let at4 = weights(&checkpoint(&out, 4));
    assert!(
        at4 != weights(&checkpoint(&plain, 4)),
        "dropout changed nothing"
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("final/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["lora_dropout"], 0.3);

    std::fs::remove_dir_all(checkpoint(&out, 4)).unwrap();
    std::fs::remove_dir_all(out.join("final")).unwrap();
    let mut args = lora_run(&out, 4, &with_dropout);
    args.push("--resume".into());
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    assert!(at4 == weights(&checkpoint(&out, 4)), "resumed run differs");

    // Masks drawn on several devices at once would not replay.
    let mut args = lora_run(&out, 4, &with_dropout);
    args.extend(["--set".into(), "devices=[0, 1]".into(), "--dry-run".into()]);
    let e = failure(&run(&args));
    assert!(e.contains("lora.dropout") && e.contains("2 devices"), "{e}");
    for dir in [plain, out] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn bad_lora_tables_name_the_field() {
    let out = scratch("lora-bad");
    for (set, expected) in [
        ("lora.target_modules=[\"qproj\"]", "qproj"),
        ("lora.target_parameters=[\"experts.up\"]", "experts.up"),
        ("lora.modules_to_save=[\"router\"]", "router"),
        // PEFT has no dropout for the stacked experts, which the default adapts.
        ("lora.dropout=0.1", "lora.target_parameters = []"),
        ("lora.dropout=1.0", "lora.dropout"),
        ("lora.r=0", "lora.r"),
        ("lora.rank=4", "rank"),
    ] {
        let mut args = lora_run(&out, 2, &[set]);
        args.push("--dry-run".into());
        let e = failure(&run(&args));
        assert!(e.contains(expected), "{set}: {e}");
    }
}

/// The golden batch of a fixture and PEFT's logits for it.
fn golden(dir: &Path, key: &str) -> (Vec<u32>, TokenLayout, Vec<f32>) {
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, ids) = support::i64s(&st, "input_ids");
    let (_, mask) = support::i64s(&st, "attention_mask");
    let valid: Vec<bool> = mask.iter().map(|&m| m == 1).collect();
    let layout = TokenLayout::new(shape[0], shape[1], valid, vec![0; ids.len()]).unwrap();
    let ids = ids.iter().map(|&i| i as u32).collect();
    (ids, layout, support::f32s(&st, key).1)
}

fn golden_error(checkpoint: &Path, adapter: &Path) -> f32 {
    let model = seqtopk_checkpoint::load(checkpoint, &Device::flex())
        .unwrap()
        .model;
    let (ids, layout, expected) = golden(adapter, "merged_logits");
    let vocab = model.config().vocab_size;
    max_diff(
        &real_logits(&model, &ids, &layout),
        &real_rows(&expected, vocab, &layout),
    )
}

/// `convert merge` of an adapter PEFT wrote gives PEFT's merged logits, natively and as an HF
/// directory; it refuses to overwrite, and names the adapter that does not fit.
#[test]
fn convert_merge_folds_a_peft_adapter_as_peft_does() {
    let dir = scratch("merge");
    let (out, hf_out) = (dir.join("native"), dir.join("hf"));
    let adapter = fixture("qwen2_moe-tiny-sharded-lora");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "convert".to_string(),
            "merge".into(),
            "--checkpoint".into(),
            fixture("qwen2_moe-tiny-sharded").display().to_string(),
            "--adapter".into(),
            adapter.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let o = out.display().to_string();
    let h = hf_out.display().to_string();
    let report = ok_json(&run(&args(&["--out", &o, "--hf-out", &h])));
    assert_eq!(report["rank"], 4);
    for written in [&out, &hf_out] {
        let err = golden_error(written, &adapter);
        assert!(
            err < 1e-4,
            "{}: merged logits off by {err}",
            written.display()
        );
    }
    let e = failure(&run(&args(&["--out", &o])));
    assert!(e.contains("already exists"), "{e}");
    let e = failure(&run(&args(&[])));
    assert!(e.contains("--out"), "{e}");
    let wrong = vec![
        "convert".to_string(),
        "merge".into(),
        "--checkpoint".into(),
        fixture("olmoe-tiny").display().to_string(),
        "--adapter".into(),
        fixture("mixtral-tiny-lora").display().to_string(),
        "--out".into(),
        dir.join("wrong").display().to_string(),
    ];
    let e = failure(&run(&wrong));
    assert!(
        e.contains("mixtral-tiny-lora") && e.contains("shape"),
        "{e}"
    );
    assert!(!dir.join("wrong").exists());
    std::fs::remove_dir_all(dir).unwrap();
}
