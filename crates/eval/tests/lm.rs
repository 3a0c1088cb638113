//! The model side on the tiny OLMoE fixture (vocab 256) with a byte-level tokenizer: generation
//! equals the model's own greedy generation, log-likelihoods equal an independent computation
//! from `forward`, multiple choice picks the most likely option, perplexity matches the loss.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::Device;
use seqtopk_eval::{EvalOptions, Lm, TaskId, byte_level_tokenizer_json, evaluate};
use seqtopk_model::{MoeTransformer, causal_lm_loss, load_checkpoint};
use seqtopk_router::{RouterConfig, RoutingMode, TokenLayout};
use tokenizers::Tokenizer;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../checkpoints/fixtures/olmoe-tiny")
}

/// The committed task samples, `data/samples`.
fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/samples")
}

/// The items of the generation task `task` read from `data` (at most `limit`).
fn generation_items(
    task: TaskId,
    data: &Path,
    limit: Option<usize>,
) -> Vec<seqtopk_eval::tasks::GenItem> {
    match seqtopk_eval::load_task(task, data, limit).unwrap() {
        seqtopk_eval::TaskData::Generate(items) => items,
        _ => panic!("{task} is not a generation task"),
    }
}

/// The first three records of the JSON-lines file `path`.
fn first_three(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(3)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn setup() -> (MoeTransformer, Tokenizer, Device) {
    let device = Device::flex();
    let model = load_checkpoint(fixture(), &device).unwrap();
    let tok = Tokenizer::from_str(&byte_level_tokenizer_json()).unwrap();
    (model, tok, device)
}

/// `ln softmax(row)[id]`, in f64, from one row of logits.
fn log_prob(row: &[f32], id: u32) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row[id as usize] as f64 - lse
}

/// Log-probability of each next token of `ids`, computed on the host from one forward pass.
fn host_logprobs(model: &MoeTransformer, ids: &[u32], device: &Device) -> Vec<f64> {
    let out = model
        .forward(ids, &TokenLayout::dense(1, ids.len()), device)
        .unwrap();
    let [_, t, v] = out.logits.dims();
    let logits: Vec<f32> = out.logits.into_data().try_into_vec_as::<f32>().unwrap();
    (0..t - 1)
        .map(|i| log_prob(&logits[i * v..(i + 1) * v], ids[i + 1]))
        .collect()
}

#[test]
fn generation_equals_the_models_greedy_generation_in_every_mode() {
    let (mut model, tok, device) = setup();
    let prompts: Vec<Vec<u32>> = ["Question: 1+1?\nAnswer:", "Hi", "The law says"]
        .iter()
        .map(|s| s.bytes().map(u32::from).collect())
        .collect();
    for mode in [
        RoutingMode::Topk,
        RoutingMode::Seqtopk,
        RoutingMode::OnlineSeqtopk,
    ] {
        model.set_routing(&RouterConfig::new(mode, 2)).unwrap();
        let mut lm = Lm::new(&model, &tok, &device);
        lm.batch_size = 2; // two batches, one of them mixed-length
        let ours = lm.generate(&prompts, 12, &[]).unwrap();
        // Ours sorts rows by length and batches two at a time: [p0, p2] then [p1]. The model's
        // own generation with the same batches must give the same tokens.
        let pair = [prompts[0].clone(), prompts[2].clone()];
        let a = model
            .generate_greedy(&pair, 12, &lm.stop_ids, &device)
            .unwrap();
        let b = model
            .generate_greedy(&prompts[1..2], 12, &lm.stop_ids, &device)
            .unwrap();
        assert_eq!(ours[0].ids, a[0], "{mode:?}");
        assert_eq!(ours[2].ids, a[1], "{mode:?}");
        assert_eq!(ours[1].ids, b[0], "{mode:?}");
        for g in &ours {
            assert_eq!(g.text, tok.decode(&g.ids, true).unwrap());
        }
    }
}

#[test]
fn stop_sequences_end_rows_and_are_cut() {
    let (model, tok, device) = setup();
    let lm = Lm::new(&model, &tok, &device);
    let prompt: Vec<u32> = "Once upon".bytes().map(u32::from).collect();
    let free = lm.generate(std::slice::from_ref(&prompt), 20, &[]).unwrap();
    let text = free[0].text.clone();
    assert!(text.len() >= 4, "fixture generated too little: {text:?}");
    // Stop at the text the model generates from its third byte on.
    let stop: String = text.chars().skip(2).take(2).collect();
    let cut = lm
        .generate(&[prompt], 20, std::slice::from_ref(&stop))
        .unwrap();
    assert!(!cut[0].text.contains(&stop));
    assert!(text.starts_with(&cut[0].text));
    assert!(cut[0].ids.len() < free[0].ids.len());
}

#[test]
fn loglikelihoods_equal_an_independent_computation_and_do_not_depend_on_batching() {
    let (model, tok, device) = setup();
    let mut lm = Lm::new(&model, &tok, &device);
    let pairs = [
        ("The court held that", " the contract"),
        ("2 + 2 =", " 4"),
        (
            "A much longer context, so that rows are padded in a batch:",
            " yes",
        ),
    ];
    let requests: Vec<_> = pairs
        .iter()
        .map(|(c, x)| lm.encode_pair(c, x).unwrap())
        .collect();
    lm.batch_size = 3;
    let batched = lm.loglikelihood(&requests).unwrap();
    lm.batch_size = 1;
    let single = lm.loglikelihood(&requests).unwrap();
    for (i, (ctx, cont)) in requests.iter().enumerate() {
        let ids: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        let lp = host_logprobs(&model, &ids, &device);
        let expected: f64 = lp[ctx.len() - 1..].iter().sum();
        assert!(
            (single[i].logprob - expected).abs() < 1e-3,
            "{i}: {} vs {expected}",
            single[i].logprob
        );
        assert!(
            (batched[i].logprob - expected).abs() < 1e-3,
            "{i}: batched {} vs {expected}",
            batched[i].logprob
        );
        assert_eq!(single[i].tokens, cont.len());
        assert_eq!(single[i].greedy, batched[i].greedy);
    }
    // The greedy flag is exactly "the model's own greedy continuation".
    let prompt: Vec<u32> = "The court".bytes().map(u32::from).collect();
    let g = lm.generate(std::slice::from_ref(&prompt), 3, &[]).unwrap();
    let ll = lm
        .loglikelihood(&[(prompt.clone(), g[0].ids.clone())])
        .unwrap();
    assert!(ll[0].greedy);
    let mut other = g[0].ids.clone();
    other[0] = (other[0] + 1) % 256;
    assert!(!lm.loglikelihood(&[(prompt, other)]).unwrap()[0].greedy);
}

/// Log-probability of each token of `cont` as generation computes it: the context prefilled,
/// then the continuation fed one token at a time through the KV and expert caches.
fn generation_logprobs(
    model: &MoeTransformer,
    ctx: &[u32],
    cont: &[u32],
    device: &Device,
) -> Vec<f64> {
    let mut state = model.new_decode_state(1);
    let positions: Vec<usize> = (0..ctx.len()).collect();
    let mut last = model
        .forward_with(
            ctx,
            &TokenLayout::dense(1, ctx.len()),
            &positions,
            Some(&mut state),
            device,
        )
        .unwrap()
        .logits;
    let mut out = Vec::new();
    for (i, &id) in cont.iter().enumerate() {
        let [_, t, v] = last.dims();
        let row: Vec<f32> = last
            .clone()
            .narrow(1, t - 1, 1)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert_eq!(row.len(), v);
        out.push(log_prob(&row, id));
        last = model
            .forward_with(
                &[id],
                &TokenLayout::dense(1, 1),
                &[ctx.len() + i],
                Some(&mut state),
                device,
            )
            .unwrap()
            .logits;
    }
    out
}

#[test]
fn online_seqtopk_loglikelihoods_equal_prefill_then_decode() {
    // Under online_seqtopk the context is routed as a prefilled prompt and the continuation
    // causally: the scores equal generation's, batched or not, and differ from routing the whole
    // row causally from an empty history.
    let (mut model, tok, device) = setup();
    model
        .set_routing(&RouterConfig::new(RoutingMode::OnlineSeqtopk, 2))
        .unwrap();
    let mut lm = Lm::new(&model, &tok, &device);
    let requests: Vec<_> = [
        (
            "The court held that the parties",
            " had agreed to the terms",
        ),
        ("2 + 2 =", " 4, and 3 + 3 = 6"),
    ]
    .iter()
    .map(|(c, x)| lm.encode_pair(c, x).unwrap())
    .collect();
    lm.batch_size = 2;
    let scored = lm.loglikelihood(&requests).unwrap();
    let mut causal_differs = false;
    for (i, (ctx, cont)) in requests.iter().enumerate() {
        let expected: f64 = generation_logprobs(&model, ctx, cont, &device).iter().sum();
        assert!(
            (scored[i].logprob - expected).abs() < 1e-3,
            "{i}: {} vs generation {expected}",
            scored[i].logprob
        );
        let ids: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        let whole: f64 = host_logprobs(&model, &ids, &device)[ctx.len() - 1..]
            .iter()
            .sum();
        causal_differs |= (whole - expected).abs() > 1e-6;
    }
    assert!(causal_differs, "the prompt's routing made no difference");
}

#[test]
fn perplexity_matches_the_training_loss_and_windows_score_every_token_once() {
    let (model, tok, device) = setup();
    let mut lm = Lm::new(&model, &tok, &device);
    let ids: Vec<u32> = "In the beginning God created the heaven and the earth."
        .bytes()
        .map(u32::from)
        .collect();
    let (nll, n) = lm.document_nll(&ids).unwrap();
    assert_eq!(n, ids.len() - 1);
    let layout = TokenLayout::dense(1, ids.len());
    let out = model.forward(&ids, &layout, &device).unwrap();
    let (loss, count) = causal_lm_loss(out.logits, &ids, &layout).unwrap();
    let loss = loss.into_data().try_into_vec_as::<f32>().unwrap()[0] as f64;
    assert_eq!(count, n);
    assert!(
        (nll / n as f64 - loss).abs() < 1e-4,
        "{} vs {loss}",
        nll / n as f64
    );
    // Short windows: still every token after the first scored once, each window on its own.
    lm.max_length = 8;
    let (nll8, n8) = lm.document_nll(&ids).unwrap();
    assert_eq!(n8, ids.len() - 1);
    let mut expected = 0.0;
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + 8).min(ids.len());
        expected -= host_logprobs(&model, &ids[start..end], &device)
            .iter()
            .sum::<f64>();
        start = end - 1;
    }
    assert!((nll8 - expected).abs() < 1e-3, "{nll8} vs {expected}");
}

/// A multiple-choice file whose gold answers are set from independently computed
/// log-likelihoods: the scorer must pick each item's most likely letter.
#[test]
fn multiple_choice_picks_the_most_likely_option() {
    let (model, tok, device) = setup();
    let lm = Lm::new(&model, &tok, &device);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("law")).unwrap();
    let questions = [
        "Which is a tort?",
        "Who decides the appeal?",
        "What does the plaintiff seek?",
    ];
    let mut lines = Vec::new();
    let mut expected_pick = Vec::new();
    for (q, question) in questions.iter().enumerate() {
        let choices = ["negligence", "a contract", "a statute", "a verdict"];
        let prompt = format!(
            "{question}\n\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
            choices[0], choices[1], choices[2], choices[3]
        );
        let lls: Vec<f64> = ["A", "B", "C", "D"]
            .iter()
            .map(|l| {
                let ids: Vec<u32> = format!("{prompt} {l}").bytes().map(u32::from).collect();
                let lp = host_logprobs(&model, &ids, &device);
                lp[lp.len() - 2..].iter().sum()
            })
            .collect();
        let best = (0..4).max_by(|&a, &b| lls[a].total_cmp(&lls[b])).unwrap();
        let worst = (0..4).min_by(|&a, &b| lls[a].total_cmp(&lls[b])).unwrap();
        assert_ne!(best, worst, "degenerate fixture log-likelihoods");
        // Item 1's gold is the least likely option: it must be scored wrong.
        let gold = if q == 1 { worst } else { best };
        expected_pick.push(["A", "B", "C", "D"][best]);
        lines.push(
            serde_json::json!({
                "question": question, "subject": "professional_law",
                "choices": choices, "answer": gold, "prompt": prompt,
            })
            .to_string(),
        );
    }
    std::fs::write(dir.path().join("law/mmlu_law_test.jsonl"), lines.join("\n")).unwrap();
    let opts = EvalOptions {
        data_dir: dir.path().to_path_buf(),
        ..EvalOptions::default()
    };
    let results = evaluate(&lm, &[TaskId::MmluLaw], &opts).unwrap();
    let r = &results[0];
    assert_eq!(r.n, 3);
    assert!((r.score - 2.0 / 3.0).abs() < 1e-12, "{}", r.score);
    let picks: Vec<&str> = r
        .items
        .iter()
        .map(|i| i.extracted.as_deref().unwrap())
        .collect();
    assert_eq!(picks, expected_pick);
    assert_eq!(r.items[1].score, 0.0);
}

#[test]
fn malformed_data_is_reported_with_file_and_line() {
    let (model, tok, device) = setup();
    let lm = Lm::new(&model, &tok, &device);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("math")).unwrap();
    let f = dir.path().join("math/gsm8k_test.jsonl");
    std::fs::write(
        &f,
        "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{\"question\": 3, \"answer\": \"#### 1\"}\n",
    )
    .unwrap();
    let opts = EvalOptions {
        data_dir: dir.path().to_path_buf(),
        ..EvalOptions::default()
    };
    let err = evaluate(&lm, &[TaskId::Gsm8k], &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gsm8k_test.jsonl:2") && err.contains("`question`"),
        "{err}"
    );
    let err = evaluate(&lm, &[TaskId::Lambada], &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lambada_test.jsonl") && err.contains("--data-dir"),
        "{err}"
    );
}

#[test]
fn real_samples_load_for_every_task() {
    let data = samples();
    for task in TaskId::ALL {
        let d = seqtopk_eval::load_task(task, &data, Some(3)).unwrap();
        let expected = if task == TaskId::Ppl { 12 } else { 3 };
        assert_eq!(d.len(), expected, "{task}");
    }
    // MBPP: the three shots are in every prompt and are not scored.
    let items = generation_items(TaskId::Mbpp, &data, None);
    assert_eq!(items.len(), 150 - 3);
    assert_eq!(items[0].id, "14");
    assert_eq!(items[0].prompt.matches("[BEGIN]").count(), 4);
    assert_eq!(items[0].prompt.matches("[DONE]").count(), 3);
    assert!(items[0].prompt.ends_with("[BEGIN]\n"));
    // GSM8K gold answers are the numbers after ####.
    let items = generation_items(TaskId::Gsm8k, &data, Some(2));
    assert_eq!(
        items[0].reference,
        seqtopk_eval::tasks::Reference::Gsm8k("18".into())
    );
    assert!(
        items[0].prompt.starts_with("Question: Janet") && items[0].prompt.ends_with("\nAnswer:")
    );
    // MATH-500 gold answers come from the solution's last \boxed{}.
    let items = generation_items(TaskId::Math500, &data, Some(1));
    assert_eq!(
        items[0].reference,
        seqtopk_eval::tasks::Reference::Math("\\left( 3, \\frac{\\pi}{2} \\right)".into())
    );
}

#[test]
fn canonical_solutions_pass_the_sandbox() {
    // The sandbox + program assembly accept the datasets' own reference solutions.
    let data = samples();
    let sb = seqtopk_eval::Sandbox::new(seqtopk_eval::SandboxConfig::default()).unwrap();
    let he = first_three(&data.join("code/humaneval.jsonl"));
    for r in &he {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        let program = seqtopk_eval::evaluate::humaneval_program(
            &s("prompt"),
            &s("canonical_solution"),
            &s("test"),
            &s("entry_point"),
        );
        let run = sb.run(&program).unwrap();
        assert!(run.passed(), "{}: {run:?}", s("task_id"));
    }
    let mbpp = first_three(&data.join("code/mbpp_test.jsonl"));
    for r in &mbpp {
        let tests: Vec<String> = serde_json::from_value(r["test_list"].clone()).unwrap();
        let code = format!("{}\n[DONE]", r["code"].as_str().unwrap());
        let run = sb
            .run(&seqtopk_eval::evaluate::mbpp_program(&code, &tests))
            .unwrap();
        assert!(run.passed(), "{run:?}");
    }
}

#[test]
fn context_whitespace_moves_to_the_continuation() {
    let (model, tok, device) = setup();
    let lm = Lm::new(&model, &tok, &device);
    let (ctx, cont) = lm.encode_pair("Answer: \n", "B").unwrap();
    assert_eq!(
        ctx,
        b"Answer:".iter().map(|&b| u32::from(b)).collect::<Vec<_>>()
    );
    assert_eq!(
        cont,
        vec![u32::from(b' '), u32::from(b'\n'), u32::from(b'B')]
    );
    let (ctx, cont) = lm.encode_pair("Answer:", " B").unwrap();
    assert_eq!(ctx.len(), 7);
    assert_eq!(cont, vec![u32::from(b' '), u32::from(b'B')]);
}
