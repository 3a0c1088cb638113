//! Generation through the public API: greedy equals HF, seeded sampling, nucleus and temperature,
//! stop tokens with left-padded batches, and online-SeqTopK decode routing against the router.
#![allow(missing_docs)]

use std::collections::BTreeSet;

use burn::tensor::Device;
use seqtopk_model::{FinishReason, GenerationConfig, ModelError, MoeTransformer, load_checkpoint};
use seqtopk_router::select::{Candidates, online_count};
use seqtopk_router::{RouterConfig, RoutingMode, TokenLayout};

use crate::support::{Golden, fixture};

fn model(name: &str) -> MoeTransformer {
    load_checkpoint(fixture(name), &Device::flex()).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 13, 200, 41, 7],
        vec![77, 3],
        vec![120, 250, 18, 60],
    ]
}

/// HF's left-padded prompts and greedy continuations from the golden file.
fn hf_generation(name: &str) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    Golden::open(name).generation()
}

#[test]
fn temperature_zero_is_greedy_and_equals_hf_whatever_the_seed() {
    let device = Device::flex();
    let m = model("olmoe-tiny");
    let (prompts, want) = hf_generation("olmoe-tiny");
    let new = want[0].len();
    for (seed, top_p) in [(0, 1.0), (1234, 0.3)] {
        let config = GenerationConfig {
            max_new_tokens: new,
            temperature: 0.0,
            top_p,
            seed,
            stop: vec![2],
        };
        let got = m.generate(&prompts, &config, &device).unwrap();
        assert_eq!(got.tokens, want, "seed {seed} top_p {top_p}");
    }
}

#[test]
fn sampling_is_reproducible_per_seed_and_differs_across_seeds() {
    let device = Device::flex();
    let m = model("qwen2_moe-tiny");
    let run = |seed| {
        m.generate(
            &prompts(),
            &GenerationConfig::sampled(12, 1.0, 0.95, seed),
            &device,
        )
        .unwrap()
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed, same tokens");
    assert!(a.tokens.iter().all(|r| r.len() == 12));
    assert!(a.finish.iter().all(|&f| f == FinishReason::Length));
    let b = run(8);
    assert_ne!(a.tokens, b.tokens, "another seed draws other tokens");
    let greedy = m.generate_greedy(&prompts(), 12, &[], &device).unwrap();
    assert_ne!(a.tokens, greedy, "temperature 1 does not reproduce argmax");
}

#[test]
fn tiny_nucleus_equals_greedy() {
    let device = Device::flex();
    for name in ["mixtral-tiny", "llama-tiny"] {
        let m = model(name);
        let greedy = m.generate_greedy(&prompts(), 10, &[2], &device).unwrap();
        for (temperature, seed) in [(0.7, 1), (1.5, 99)] {
            let config = GenerationConfig::sampled(10, temperature, 1e-7, seed).with_stop(&[2]);
            let got = m.generate(&prompts(), &config, &device).unwrap();
            assert_eq!(got.tokens, greedy, "{name}: T={temperature}");
        }
    }
}

fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits
        .iter()
        .map(|&x| ((f64::from(x) - f64::from(max)) / temperature).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[test]
fn temperature_reshapes_the_sampled_distribution() {
    // N rows of one prompt draw N independent first tokens (row i samples with seed + i). Their
    // frequencies follow softmax(logits / T) of the model's own next-token logits.
    let device = Device::flex();
    let m = model("olmoe-tiny");
    let prompt = vec![11u32, 90, 4, 230];
    let n = 400;
    let logits = m
        .forward(&prompt, &TokenLayout::dense(1, prompt.len()), &device)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let v = m.config().vocab_size;
    let last = &logits[(prompt.len() - 1) * v..];
    let top = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
    let batch = vec![prompt.clone(); n];
    let mut freq_top = Vec::new();
    for temperature in [0.25, 1.0, 4.0] {
        let p = softmax(last, temperature);
        let out = m
            .generate(
                &batch,
                &GenerationConfig::sampled(1, temperature, 1.0, 1000),
                &device,
            )
            .unwrap();
        let mut counts = vec![0usize; v];
        for row in &out.tokens {
            counts[row[0] as usize] += 1;
        }
        // The empirical mass of the 3 likeliest tokens and of the argmax, within 4.5σ.
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        for set in [&order[..1], &order[..3]] {
            let want: f64 = set.iter().map(|&i| p[i]).sum();
            let got = set.iter().map(|&i| counts[i]).sum::<usize>() as f64 / n as f64;
            let sigma = (want * (1.0 - want) / n as f64).sqrt();
            assert!(
                (got - want).abs() <= 4.5 * sigma + 1.0 / n as f64,
                "T={temperature}: empirical mass {got:.3} vs softmax {want:.3} of tokens {set:?}"
            );
        }
        freq_top.push(counts[top] as f64 / n as f64);
        let distinct = counts.iter().filter(|&&c| c > 0).count();
        println!(
            "T={temperature}: p(top)={:.3}, freq(top)={:.3}, distinct={distinct}",
            p[top],
            freq_top.last().unwrap()
        );
    }
    assert!(
        freq_top[0] > freq_top[1] + 0.1 && freq_top[1] > freq_top[2],
        "higher temperature flattens: {freq_top:?}"
    );
}

#[test]
fn stop_tokens_end_rows_independently_and_batches_equal_one_by_one() {
    let device = Device::flex();
    let m = model("qwen3_moe-tiny");
    let free = m.generate_greedy(&prompts(), 8, &[], &device).unwrap();
    // Stop at row 0's third token: row 0 ends there, the others go on unless they meet it.
    let stop = free[0][2];
    for config in [
        GenerationConfig::greedy(8, &[stop]),
        GenerationConfig::sampled(8, 0.8, 0.9, 21).with_stop(&[stop]),
    ] {
        let batch = m.generate(&prompts(), &config, &device).unwrap();
        for (row, prompt) in prompts().iter().enumerate() {
            let toks = &batch.tokens[row];
            match batch.finish[row] {
                FinishReason::Stop => {
                    assert_eq!(toks.last(), Some(&stop));
                    assert!(!toks[..toks.len() - 1].contains(&stop));
                }
                FinishReason::Length => {
                    assert_eq!(toks.len(), 8);
                    assert!(!toks.contains(&stop));
                }
            }
            // Row i of the batch samples with seed + i: alone, it needs that seed.
            let alone_config = GenerationConfig {
                seed: config.seed + row as u64,
                ..config.clone()
            };
            let alone = m
                .generate(std::slice::from_ref(prompt), &alone_config, &device)
                .unwrap();
            assert_eq!(alone.tokens[0], *toks, "row {row}: batched vs alone");
            assert_eq!(alone.finish[0], batch.finish[row]);
        }
        if config.temperature == 0.0 {
            assert_eq!(batch.tokens[0], free[0][..3]);
            assert_eq!(batch.finish[0], FinishReason::Stop);
        }
        assert!(
            batch.finish.contains(&FinishReason::Length),
            "some row runs to max_new_tokens: {:?}",
            batch.finish
        );
    }
}

#[test]
fn online_seqtopk_decode_routing_equals_the_router_on_cached_scores() {
    let device = Device::flex();
    for (name, floor) in [("qwen3_moe-tiny", 1), ("mixtral-tiny", 0)] {
        let mut m = model(name);
        m.set_routing(&RouterConfig::new(RoutingMode::OnlineSeqtopk, 2).with_floor(floor))
            .unwrap();
        let router = m.router().unwrap().clone();
        let (k, cap, e) = (
            router.config().top_k,
            router.config().cap,
            router.config().num_experts,
        );
        let moe_layers = m.config().moe_layers();
        // Sampled with a stop token from row 1's greedy run, so one row finishes early and
        // later steps carry a padding row.
        let free = m.generate_greedy(&prompts(), 10, &[], &device).unwrap();
        let config = GenerationConfig::greedy(10, &[free[1][3]]);
        let mut generator = m.generator(&prompts(), &config, &device).unwrap();

        // Prefill: offline SeqTopK over each prompt, exactly what route_prefill gives.
        let prefill = generator.prefill_output().unwrap();
        for (j, &layer) in prefill.moe_layers.iter().enumerate() {
            let out = &prefill.router_outputs[j];
            let [b, t, _] = out.logits.dims();
            let valid: Vec<bool> = prompts()
                .iter()
                .flat_map(|p| (0..t).map(move |i| i >= t - p.len()))
                .collect();
            let layout = TokenLayout::new(b, t, valid, vec![0; b * t]).unwrap();
            let mut cache = seqtopk_router::ExpertCache::new(b, e);
            let direct = router
                .route_prefill(out.logits.clone(), &layout, &mut cache)
                .unwrap();
            assert_eq!(sets(&out.plan.per_token()), sets(&direct.plan.per_token()));
            assert_eq!(Some(&cache), generator.state().expert_cache(layer));
        }

        let mut steps = 0;
        let mut padded_steps = 0;
        loop {
            let before: Vec<_> = moe_layers
                .iter()
                .map(|&l| generator.state().expert_cache(l).unwrap().clone())
                .collect();
            let Some(step) = generator.step().unwrap() else {
                break;
            };
            let Some(output) = step.output else {
                break;
            };
            steps += 1;
            padded_steps += usize::from(step.layout.valid().contains(&false));
            assert_eq!(output.moe_layers, moe_layers);
            for (j, &layer) in moe_layers.iter().enumerate() {
                let out = &output.router_outputs[j];
                let got = sets(&out.plan.per_token());
                // 1. The router crate's own decode step on a copy of the cache before the step.
                let mut cache = before[j].clone();
                let direct = router
                    .route_decode(out.logits.clone(), &step.layout, &mut cache)
                    .unwrap();
                assert_eq!(got, sets(&direct.plan.per_token()), "{name} layer {layer}");
                assert_eq!(
                    Some(&cache),
                    generator.state().expert_cache(layer),
                    "{name} layer {layer}: the model's cache grew as the router's did"
                );
                // 2. The online rule over the cached selected scores, from the probabilities.
                let probs = out
                    .probs
                    .clone()
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .unwrap();
                let cands = Candidates::from_rows(&probs, e, cap);
                for (row, set) in got.iter().enumerate() {
                    let want: BTreeSet<u32> = if step.layout.valid()[row] {
                        let m_tokens = before[j].valid_tokens(row) + 1;
                        let n = online_count(
                            before[j].selected_desc(row),
                            cands.scores_of(row),
                            m_tokens * k,
                            floor,
                            router.config().online_budget,
                        );
                        cands.experts_of(row)[..n as usize]
                            .iter()
                            .copied()
                            .collect()
                    } else {
                        BTreeSet::new()
                    };
                    assert_eq!(*set, want, "{name} layer {layer} row {row}");
                }
            }
        }
        assert!(steps >= 5, "{name}: {steps} decode steps");
        assert!(
            padded_steps > 0,
            "{name}: a finished row was carried as padding"
        );
    }
}

fn sets(per_token: &[Vec<(u32, f32)>]) -> Vec<BTreeSet<u32>> {
    per_token
        .iter()
        .map(|pairs| pairs.iter().map(|&(x, _)| x).collect())
        .collect()
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let device = Device::flex();
    let m = model("llama-tiny");
    let err = |prompts: &[Vec<u32>], config: &GenerationConfig| -> String {
        match m.generate(prompts, config, &device) {
            Err(e @ ModelError::Input(_)) => e.to_string(),
            other => panic!("expected an input error, got {other:?}"),
        }
    };
    let ok = GenerationConfig::greedy(3, &[]);
    assert!(err(&[], &ok).contains("no prompts"));
    assert!(err(&[vec![1], vec![]], &ok).contains("prompt 1 is empty"));
    let msg = err(&[vec![1, 2], vec![3, 999]], &ok);
    assert!(
        msg.contains("prompt 1, position 1") && msg.contains("999"),
        "{msg}"
    );
    assert!(err(&[vec![1]], &GenerationConfig::sampled(3, -1.0, 1.0, 0)).contains("temperature"));
    assert!(err(&[vec![1]], &GenerationConfig::sampled(3, 1.0, 0.0, 0)).contains("top_p"));
    assert!(
        err(&[vec![1]], &GenerationConfig::sampled(3, f64::NAN, 1.0, 0)).contains("temperature")
    );
    // Zero new tokens: nothing generated, no error.
    let none = m
        .generate(&[vec![1, 2]], &GenerationConfig::greedy(0, &[]), &device)
        .unwrap();
    assert_eq!(none.tokens, vec![Vec::<u32>::new()]);
    assert_eq!(none.finish, vec![FinishReason::Length]);
}
