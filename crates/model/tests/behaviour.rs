//! Model behaviour beyond HF parity: packed documents, routing modes, the HF load-balancing loss,
//! and clear loading errors.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use safetensors::SafeTensors;
use seqtopk_model::{LoadError, causal_lm_loss, load_checkpoint};
use seqtopk_router::{LbConvention, RouterConfig, RoutingMode, TokenLayout, load_balancing_loss};

use crate::support::fixture;

fn to_vec(t: burn::tensor::Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

#[test]
fn packed_documents_equal_separate_rows() {
    // Attention never crosses documents and positions restart per document, so a packed row
    // [A | B] gives the logits of A and B run alone (per-token routing is per-token anyway).
    let device = Device::flex();
    for name in ["olmoe-tiny", "qwen2_moe-tiny", "llama-tiny"] {
        let model = load_checkpoint(fixture(name), &device).unwrap();
        let a: Vec<u32> = vec![5, 17, 99, 3, 250, 8];
        let b: Vec<u32> = vec![42, 7, 7, 180, 33];
        let packed: Vec<u32> = a.iter().chain(&b).copied().collect();
        let docs: Vec<u32> = [vec![0; a.len()], vec![1; b.len()]].concat();
        let layout = TokenLayout::new(1, packed.len(), vec![true; packed.len()], docs).unwrap();
        let together = to_vec(model.forward(&packed, &layout, &device).unwrap().logits);
        let alone_a = to_vec(
            model
                .forward(&a, &TokenLayout::dense(1, a.len()), &device)
                .unwrap()
                .logits,
        );
        let alone_b = to_vec(
            model
                .forward(&b, &TokenLayout::dense(1, b.len()), &device)
                .unwrap()
                .logits,
        );
        let alone: Vec<f32> = alone_a.into_iter().chain(alone_b).collect();
        let max = together
            .iter()
            .zip(&alone)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-4, "{name}: packed vs separate max diff {max}");
    }
}

#[test]
fn long_causal_attention_in_blocks_equals_the_single_pass() {
    // 300 tokens alone run the attention in causal query blocks with `−∞` fill; the same tokens
    // after one left-padding token (whose query sees no key) run HF's single pass with
    // `f32::MIN`. Positions start at the first real token in both, so the logits of the real
    // tokens, the loss and the gradients must agree.
    let device = Device::flex().autodiff();
    let model = load_checkpoint(fixture("olmoe-tiny"), &device).unwrap();
    let t = 300;
    let ids: Vec<u32> = (0..t)
        .map(|i| ((i * 37 + i * i) % 251) as u32 + 3)
        .collect();
    let run = |ids: &[u32], layout: &TokenLayout| {
        let out = model.forward(ids, layout, &device).unwrap();
        let (loss, pairs) = causal_lm_loss(out.logits.clone(), ids, layout).unwrap();
        let grads = loss.clone().backward();
        let grad = |p: &burn::module::Param<burn::tensor::Tensor<2>>| {
            p.grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let q = grad(&model.layers[0].self_attn.q_proj.weight);
        let k = grad(&model.layers[1].self_attn.k_proj.weight);
        (to_vec(out.logits), loss.into_scalar::<f32>(), pairs, q, k)
    };
    let alone = run(&ids, &TokenLayout::dense(1, t));
    let padded_ids: Vec<u32> = std::iter::once(0).chain(ids.iter().copied()).collect();
    let valid: Vec<bool> = (0..=t).map(|i| i > 0).collect();
    let padded = run(
        &padded_ids,
        &TokenLayout::new(1, t + 1, valid, vec![0; t + 1]).unwrap(),
    );
    let vocab = alone.0.len() / t;
    let max_diff = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let logits = max_diff(&alone.0, &padded.0[vocab..]);
    assert!(logits < 1e-4, "logits differ by {logits}");
    assert_eq!(alone.2, padded.2);
    assert!(
        (alone.1 - padded.1).abs() < 1e-5,
        "{} vs {}",
        alone.1,
        padded.1
    );
    for (what, a, b) in [
        ("q_proj", &alone.3, &padded.3),
        ("k_proj", &alone.4, &padded.4),
    ] {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = max_diff(a, b);
        assert!(
            scale > 0.0 && diff <= 1e-4 * scale,
            "{what} gradient differs by {diff}"
        );
    }
}

#[test]
fn hf_load_balancing_loss_matches_golden() {
    let device = Device::flex();
    for name in [
        "olmoe-tiny",
        "qwen2_moe-tiny",
        "qwen3_moe-tiny",
        "mixtral-tiny",
    ] {
        let model = load_checkpoint(fixture(name), &device).unwrap();
        let bytes = std::fs::read(fixture(name).join("golden.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let i64s = |k: &str| -> Vec<i64> {
            st.tensor(k)
                .unwrap()
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let ids: Vec<u32> = i64s("input_ids").iter().map(|&i| i as u32).collect();
        let valid: Vec<bool> = i64s("attention_mask").iter().map(|&m| m == 1).collect();
        let layout = TokenLayout::new(3, 13, valid, vec![0; 39]).unwrap();
        let out = model.forward(&ids, &layout, &device).unwrap();
        let aux = load_balancing_loss(&out.router_outputs, &layout, LbConvention::Hf);
        let aux = aux.into_data().try_into_vec_as::<f32>().unwrap()[0];
        let want = f32::from_le_bytes(st.tensor("aux_loss").unwrap().data().try_into().unwrap());
        assert!((aux - want).abs() < 1e-5, "{name}: aux {aux} vs HF {want}");
    }
}

#[test]
fn seqtopk_routing_changes_allocation_not_budget() {
    let device = Device::flex();
    let mut model = load_checkpoint(fixture("olmoe-tiny"), &device).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 256) as u32).collect();
    let layout = TokenLayout::from_lengths(12, &[12, 9]).unwrap();
    let topk = model.forward(&ids, &layout, &device).unwrap();
    model
        .set_routing(&RouterConfig::new(RoutingMode::Seqtopk, 2))
        .unwrap();
    let out = model.forward(&ids, &layout, &device).unwrap();
    let mut moved = 0;
    for (r, t) in out.router_outputs.iter().zip(&topk.router_outputs) {
        // Budget T_valid·K per sequence plus one pair per token rescued by the floor (a rescued
        // token ends with exactly one expert), cap K+2, floor 1.
        let counts = &r.plan.stats.experts_per_token;
        let at_one = counts.iter().filter(|&&c| c == 1).count();
        assert!(
            ((12 + 9) * 2..=(12 + 9) * 2 + at_one).contains(&r.plan.num_pairs()),
            "{} pairs",
            r.plan.num_pairs()
        );
        assert!(counts.iter().all(|&c| c <= 4));
        // The allocation is not TopK's: some valid tokens get other than K, or other experts.
        let sets = |o: &seqtopk_router::RouterOutput| -> Vec<Vec<u32>> {
            o.plan
                .per_token()
                .into_iter()
                .map(|l| {
                    let mut s: Vec<u32> = l.into_iter().map(|(e, _)| e).collect();
                    s.sort_unstable();
                    s
                })
                .collect()
        };
        moved += sets(r)
            .iter()
            .zip(sets(t))
            .filter(|(a, b)| **a != *b)
            .count();
        assert!(
            counts
                .iter()
                .zip(layout.valid())
                .any(|(&c, &v)| v && c != 2)
        );
    }
    assert!(moved > 0, "SeqTopK routed exactly as TopK");
    let logits = to_vec(out.logits);
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn scoring_routes_a_continuation_the_way_generation_does() {
    // `forward_scoring` with the prompt length routes the prompt with offline SeqTopK and the
    // continuation causally: the same experts and logits as prefilling the prompt and decoding
    // the continuation through the KV and expert caches.
    let device = Device::flex();
    let mut model = load_checkpoint(fixture("qwen3_moe-tiny"), &device).unwrap();
    model
        .set_routing(&RouterConfig::new(RoutingMode::OnlineSeqtopk, 2))
        .unwrap();
    let prompt: Vec<u32> = vec![5, 9, 13, 200, 17];
    let cont: Vec<u32> = vec![40, 7, 99, 3, 120, 64];
    let all: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
    let n = all.len();
    let scored = model
        .forward_scoring(&all, &TokenLayout::dense(1, n), &[prompt.len()], &device)
        .unwrap();

    let mut state = model.new_decode_state(1);
    let positions: Vec<usize> = (0..prompt.len()).collect();
    let mut steps = vec![
        model
            .forward_with(
                &prompt,
                &TokenLayout::dense(1, prompt.len()),
                &positions,
                Some(&mut state),
                &device,
            )
            .unwrap(),
    ];
    for (i, &id) in cont.iter().enumerate() {
        steps.push(
            model
                .forward_with(
                    &[id],
                    &TokenLayout::dense(1, 1),
                    &[prompt.len() + i],
                    Some(&mut state),
                    &device,
                )
                .unwrap(),
        );
    }
    let generated_logits: Vec<f32> = steps
        .iter()
        .flat_map(|s| to_vec(s.logits.clone()))
        .collect();
    let scored_logits = to_vec(scored.logits.clone());
    let max = scored_logits
        .iter()
        .zip(&generated_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-4, "scoring vs generation logits max diff {max}");
    for (j, out) in scored.router_outputs.iter().enumerate() {
        let want: Vec<u32> = steps
            .iter()
            .flat_map(|s| s.router_outputs[j].plan.stats.experts_per_token.clone())
            .collect();
        assert_eq!(out.plan.stats.experts_per_token, want, "MoE layer {j}");
    }
    // A plain forward routes every token causally from an empty history instead: a different
    // allocation for the prompt.
    let plain = model
        .forward(&all, &TokenLayout::dense(1, n), &device)
        .unwrap();
    assert!(
        plain
            .router_outputs
            .iter()
            .zip(&scored.router_outputs)
            .any(|(a, b)| a.plan.stats.experts_per_token != b.plan.stats.experts_per_token)
    );
}

#[test]
fn online_seqtopk_generation_fills_expert_caches() {
    let device = Device::flex();
    let mut model = load_checkpoint(fixture("qwen3_moe-tiny"), &device).unwrap();
    model
        .set_routing(&RouterConfig::new(RoutingMode::OnlineSeqtopk, 2))
        .unwrap();
    let prompts = vec![vec![5, 9, 13, 200], vec![77, 3]];
    let out = model.generate_greedy(&prompts, 5, &[], &device).unwrap();
    assert!(out.iter().all(|row| row.len() == 5));
    // The state API: prefill then decode keeps the expert cache beside the KV cache.
    let mut state = model.new_decode_state(1);
    let layout = TokenLayout::dense(1, 3);
    model
        .forward_with(&[5, 9, 13], &layout, &[0, 1, 2], Some(&mut state), &device)
        .unwrap();
    model
        .forward_with(
            &[40],
            &TokenLayout::dense(1, 1),
            &[3],
            Some(&mut state),
            &device,
        )
        .unwrap();
    assert_eq!(state.len(), 4);
    for layer in model.config().moe_layers() {
        let cache = state.expert_cache(layer).unwrap();
        assert_eq!((cache.len(), cache.valid_tokens(0)), (4, 4));
    }
}

/// The fixture's config and weights (one file or shards with their index), without goldens.
fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let f = entry.unwrap().file_name();
        let f = f.to_str().unwrap();
        if f == "config.json"
            || f.ends_with(".safetensors") && !f.starts_with("golden")
            || f.ends_with(".index.json")
        {
            std::fs::copy(fixture(name).join(f), to.join(f)).unwrap();
        }
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("seqtopk-model-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn loading_errors_name_the_key_and_shape() {
    let device = Device::flex();

    let dir = scratch("missing");
    copy_fixture("olmoe-tiny", &dir);
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let err = load_checkpoint(&dir, &device).unwrap_err();
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err}");
    assert!(
        err.to_string().contains("model.layers.2.") && err.to_string().contains("expected shape ["),
        "{err}"
    );

    let dir = scratch("shape");
    copy_fixture("olmoe-tiny", &dir);
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 40", "\"intermediate_size\": 41"),
    )
    .unwrap();
    let err = load_checkpoint(&dir, &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("experts.0.gate_proj.weight")
            && msg.contains("[41, 96]")
            && msg.contains("[40, 96]"),
        "{msg}"
    );

    let dir = scratch("truncated");
    copy_fixture("olmoe-tiny", &dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_checkpoint(&dir, &device).unwrap_err();
    assert!(matches!(err, LoadError::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    let dir = scratch("noweights");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("olmoe-tiny").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    assert!(matches!(
        load_checkpoint(&dir, &device).unwrap_err(),
        LoadError::NoWeights { .. }
    ));

    let err = load_checkpoint(scratch("nothing"), &device).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");

    // A sharded checkpoint missing a shard its index lists: named before anything is read.
    let dir = scratch("missing-shard");
    copy_fixture("qwen2_moe-tiny-sharded", &dir);
    std::fs::remove_file(dir.join("model-00003-of-00004.safetensors")).unwrap();
    let err = load_checkpoint(&dir, &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Index { .. }), "{msg}");
    assert!(
        msg.contains("model-00003-of-00004.safetensors") && msg.contains("index.json"),
        "{msg}"
    );
}
