//! `seqtopk generate` through the binary: HF's greedy continuations from token ids, text prompts
//! with a tokenizer, seeded sampling independent of batching, stop ids and stop texts, failures.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{self, failure, fixture, i64s, scratch};
use burn::tensor::Device;
use safetensors::SafeTensors;
use seqtopk_model::{GenerationConfig, load_checkpoint};
use serde_json::Value;

/// Runs `seqtopk generate args…` (see [`support::seqtopk`]).
fn seqtopk(args: &[&str]) -> Output {
    support::seqtopk(&[&["generate"], args].concat())
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "seqtopk generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A copy of `olmoe-tiny` with a word-level tokenizer: `<pad>`, `<s>`, `</s>` (ids 0-2, special,
/// `</s>` being the config's eos) and `w3` … `w255`; decoding joins words with spaces.
fn checkpoint_with_tokenizer(dir: &Path) -> PathBuf {
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("olmoe-tiny").join(f), ckpt.join(f)).unwrap();
    }
    let specials = ["<pad>", "<s>", "</s>"];
    let mut vocab = serde_json::Map::new();
    for id in 0..256u32 {
        let word = specials
            .get(id as usize)
            .map_or(format!("w{id}"), |s| (*s).to_owned());
        vocab.insert(word, id.into());
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(id, s)| {
            serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}
    });
    std::fs::write(ckpt.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    ckpt
}

fn words(ids: &[u32]) -> String {
    ids.iter()
        .filter(|&&i| i > 2)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// HF's greedy continuations, f32 and bf16 alike: `--precision bf16` on the bf16 checkpoint gives
/// what transformers computes in bf16 (its row 0 leaves the f32 continuation after 5 tokens),
/// and f32 on the same weights what it computes upcast to f32.
#[test]
fn input_ids_give_hf_greedy_continuations() {
    let dir = scratch("hf");
    for (name, golden, precision) in [
        ("mixtral-tiny", "gen_output_ids", "f32"),
        ("qwen2_moe-tiny", "gen_output_ids", "f32"),
        ("mixtral-tiny-bf16", "gen_output_ids", "bf16"),
        ("mixtral-tiny-bf16", "f32_upcast.gen_output_ids", "f32"),
    ] {
        let bytes = std::fs::read(fixture(name).join("golden.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (shape, prompt_ids) = i64s(&st, "gen_prompt_ids");
        let (_, mask) = i64s(&st, "gen_attention_mask");
        let (oshape, out) = i64s(&st, golden);
        let (b, t, to) = (shape[0], shape[1], oshape[1]);
        let rows: Vec<Vec<i64>> = (0..b)
            .map(|r| {
                (0..t)
                    .filter(|&i| mask[r * t + i] == 1)
                    .map(|i| prompt_ids[r * t + i])
                    .collect()
            })
            .collect();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string(&rows).unwrap()).unwrap();
        let got = lines(&seqtopk(&[
            "--checkpoint",
            fixture(name).to_str().unwrap(),
            "--input-ids",
            path.to_str().unwrap(),
            "--max-new-tokens",
            &(to - t).to_string(),
            "--precision",
            precision,
        ]));
        assert_eq!(got.len(), b);
        for (r, line) in got.iter().enumerate() {
            let want: Vec<u32> = out[r * to + t..(r + 1) * to]
                .iter()
                .map(|&i| i as u32)
                .collect();
            assert_eq!(ids(&line["ids"]), want, "{name} {precision} row {r}");
            assert_eq!(line["index"], r);
            assert_eq!(
                ids(&line["prompt_ids"]),
                rows[r].iter().map(|&i| i as u32).collect::<Vec<_>>()
            );
            assert!(line["prompt"].is_null() && line["completion"].is_null());
            let stopped = want.last() == Some(&2);
            assert_eq!(
                line["finish_reason"],
                if stopped { "stop" } else { "length" }
            );
        }
    }
}

#[test]
fn text_prompts_sampling_and_batching() {
    let dir = scratch("text");
    let ckpt = checkpoint_with_tokenizer(&dir);
    let ckpt_s = ckpt.to_str().unwrap();
    let prompts = ["w5 w9 w13 w200", "w77 w3", "w120 w250 w18"];
    let file = dir.join("prompts.txt");
    std::fs::write(
        &file,
        format!("{}\n\n{}\n{}\n", prompts[0], prompts[1], prompts[2]),
    )
    .unwrap();
    let sample = |batch: &str| {
        lines(&seqtopk(&[
            "--checkpoint",
            ckpt_s,
            "--prompts",
            file.to_str().unwrap(),
            "--temperature",
            "0.9",
            "--top-p",
            "0.9",
            "--seed",
            "11",
            "--max-new-tokens",
            "6",
            "--batch-size",
            batch,
            "--stop",
            "7",
        ]))
    };
    let all = sample("8");
    assert_eq!(all.len(), 3);
    assert_eq!(
        all,
        sample("1"),
        "a prompt's sample does not depend on batching"
    );
    assert_eq!(all, sample("2"));

    // Equal to the library's sampling of the same ids with seed 11 + index.
    let device = Device::flex();
    let model = load_checkpoint(&ckpt, &device).unwrap();
    for (i, line) in all.iter().enumerate() {
        assert_eq!(line["prompt"], prompts[i]);
        let prompt_ids: Vec<u32> = prompts[i]
            .split(' ')
            .map(|w| w[1..].parse().unwrap())
            .collect();
        assert_eq!(ids(&line["prompt_ids"]), prompt_ids);
        assert_eq!(line["seed"], 11 + i as u64);
        let config = GenerationConfig::sampled(6, 0.9, 0.9, 11 + i as u64).with_stop(&[7]);
        let want = model.generate(&[prompt_ids], &config, &device).unwrap();
        let got = ids(&line["ids"]);
        assert_eq!(got, want.tokens[0], "prompt {i}");
        assert_eq!(line["finish_reason"], want.finish[0].name());
        assert_eq!(line["completion"], words(&got));
    }
    let greedy = |extra: &[&str]| {
        let mut args = vec![
            "--checkpoint",
            ckpt_s,
            "--prompt",
            prompts[0],
            "--prompt",
            prompts[1],
            "--max-new-tokens",
            "8",
        ];
        args.extend_from_slice(extra);
        lines(&seqtopk(&args))
    };
    let free = greedy(&["--stop", "1"]);
    let free_ids: Vec<Vec<u32>> = free.iter().map(|l| ids(&l["ids"])).collect();
    let lib = model
        .generate_greedy(&[vec![5, 9, 13, 200], vec![77, 3]], 8, &[1], &device)
        .unwrap();
    assert_eq!(free_ids, lib);

    // A stop word that is a vocabulary entry stops at that token (kept, as HF keeps eos).
    let word = format!("w{}", free_ids[0][2]);
    let stopped = greedy(&["--stop", &word]);
    let first = ids(&stopped[0]["ids"]);
    let cut = free_ids[0]
        .iter()
        .position(|&x| x == free_ids[0][2])
        .unwrap();
    assert_eq!(first, free_ids[0][..=cut]);
    assert_eq!(stopped[0]["finish_reason"], "stop");

    // A stop text spanning two tokens stops once the completion contains it.
    let (a, b) = (free_ids[1][3], free_ids[1][4]);
    assert!(a > 2 && b > 2, "pick two word tokens: {:?}", free_ids[1]);
    let text = format!("w{a} w{b}");
    let stopped = greedy(&["--stop", &text, "--stop", "1"]);
    let second = ids(&stopped[1]["ids"]);
    let full = words(&free_ids[1]);
    let at = full.find(&text).unwrap();
    assert!(words(&second).contains(&text), "{second:?}");
    assert_eq!(
        words(&second).len(),
        at + text.len(),
        "ends right after the stop text"
    );
    assert_eq!(stopped[1]["finish_reason"], "stop");

    // JSONL prompts: strings or {"prompt": …} objects.
    let jsonl = dir.join("prompts.jsonl");
    std::fs::write(
        &jsonl,
        format!("\"{}\"\n{{\"prompt\": \"{}\"}}\n", prompts[0], prompts[1]),
    )
    .unwrap();
    let from_jsonl = lines(&seqtopk(&[
        "--checkpoint",
        ckpt_s,
        "--prompts",
        jsonl.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--stop",
        "1",
    ]));
    assert_eq!(from_jsonl, free);
}

#[test]
fn online_seqtopk_router_override_runs() {
    let dir = scratch("online");
    let path = dir.join("ids.json");
    std::fs::write(&path, "[[5, 9, 13, 200], [77, 3]]").unwrap();
    let run = |router: &str| {
        lines(&seqtopk(&[
            "--checkpoint",
            fixture("qwen3_moe-tiny").to_str().unwrap(),
            "--input-ids",
            path.to_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--router",
            router,
            "--stop",
            "255",
        ]))
    };
    let online = run("online_seqtopk");
    let device = Device::flex();
    let mut model = load_checkpoint(fixture("qwen3_moe-tiny"), &device).unwrap();
    model
        .set_routing(&seqtopk_router::RouterConfig::new(
            seqtopk_router::RoutingMode::OnlineSeqtopk,
            2,
        ))
        .unwrap();
    let want = model
        .generate_greedy(&[vec![5, 9, 13, 200], vec![77, 3]], 6, &[255], &device)
        .unwrap();
    let got: Vec<Vec<u32>> = online.iter().map(|l| ids(&l["ids"])).collect();
    assert_eq!(got, want);
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let dir = scratch("errors");
    let plain = fixture("olmoe-tiny");
    let plain = plain.to_str().unwrap();
    let ids = dir.join("ids.json");
    std::fs::write(&ids, "[[5, 9], [7]]").unwrap();
    let ids = ids.to_str().unwrap();

    let err = failure(&seqtopk(&["--checkpoint", plain, "--prompt", "hello"]));
    assert!(
        err.contains("tokenizer.json") && err.contains("--input-ids"),
        "{err}"
    );
    let err = failure(&seqtopk(&["--checkpoint", plain]));
    assert!(err.contains("nothing to generate"), "{err}");
    let missing = dir.join("nope");
    let err = failure(&seqtopk(&[
        "--checkpoint",
        missing.to_str().unwrap(),
        "--input-ids",
        ids,
    ]));
    assert!(err.contains("nope"), "{err}");
    for (flag, value, want) in [
        ("--top-p", "0", "top_p"),
        ("--top-p", "1.5", "top_p"),
        ("--temperature", "-0.5", "temperature"),
        ("--stop", "300", "outside the model's vocabulary"),
        ("--stop", "</s>", "tokenizer.json"),
        ("--batch-size", "0", "--batch-size"),
    ] {
        let arg = format!("{flag}={value}");
        let err = failure(&seqtopk(&["--checkpoint", plain, "--input-ids", ids, &arg]));
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[[5, 9], [7, 999]]").unwrap();
    let err = failure(&seqtopk(&[
        "--checkpoint",
        plain,
        "--input-ids",
        bad.to_str().unwrap(),
    ]));
    assert!(err.contains("row 1, position 1"), "{err}");

    let ckpt = checkpoint_with_tokenizer(&dir);
    let jsonl = dir.join("bad.jsonl");
    std::fs::write(&jsonl, "\"w5 w6\"\n[1, 2]\n").unwrap();
    let err = failure(&seqtopk(&[
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompts",
        jsonl.to_str().unwrap(),
    ]));
    assert!(err.contains("bad.jsonl: line 2"), "{err}");
    let err = failure(&seqtopk(&[
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "   ",
    ]));
    assert!(
        err.contains("prompt 0") && err.contains("no tokens"),
        "{err}"
    );
}

#[test]
fn generation_stops_at_the_context_length_with_a_warning() {
    let dir = scratch("context");
    let path = dir.join("ids.json");
    std::fs::write(&path, "[[5, 9, 13], [77, 3, 4, 5, 6]]").unwrap();
    let out = seqtopk(&[
        "--checkpoint",
        fixture("olmoe-tiny").to_str().unwrap(),
        "--input-ids",
        path.to_str().unwrap(),
        "--max-new-tokens",
        "100000000",
        "--stop",
        "255",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("--max-new-tokens 100000000 capped at 123")
            && err.contains("max_position_embeddings"),
        "{err}"
    );
    for line in lines(&out) {
        assert!(ids(&line["ids"]).len() <= 123, "{line}");
    }
    let long = dir.join("long.json");
    std::fs::write(&long, format!("[{:?}]", vec![5; 128])).unwrap();
    let err = failure(&seqtopk(&[
        "--checkpoint",
        fixture("olmoe-tiny").to_str().unwrap(),
        "--input-ids",
        long.to_str().unwrap(),
    ]));
    assert!(err.contains("prompt 0 has 128 tokens"), "{err}");
}
