//! `seqtopk eval --tasks …` end to end on a tiny checkpoint: the OLMoE fixture (vocab 256) plus a
//! byte-level `tokenizer.json` written at test time, on the committed data samples.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{self, fixture, repo_root};
use serde_json::Value;

/// A checkpoint directory: the fixture's config and weights, and a byte-level tokenizer.
fn tiny_checkpoint(dir: &Path, with_tokenizer: bool) -> PathBuf {
    let ck = dir.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    let src = fixture("olmoe-tiny");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), ck.join(f)).unwrap();
    }
    if with_tokenizer {
        std::fs::write(
            ck.join("tokenizer.json"),
            seqtopk_eval::byte_level_tokenizer_json(),
        )
        .unwrap();
    }
    ck
}

/// Runs `seqtopk args… --data-dir data/samples` (the committed task samples); see
/// [`support::seqtopk`].
fn seqtopk(args: &[&str]) -> Output {
    let data = repo_root().join("data/samples");
    support::seqtopk(&[args, &["--data-dir", data.to_str().unwrap()]].concat())
}

/// Runs `seqtopk eval --checkpoint ck args… --data-dir data/samples`: every run here but one.
fn eval(ck: &Path, args: &[&str]) -> Output {
    seqtopk(&[&["eval", "--checkpoint", ck.to_str().unwrap()], args].concat())
}

fn check_result(r: &Value, n: u64) {
    let task = r["task"].as_str().unwrap();
    let score = r["score"].as_f64().unwrap();
    assert_eq!(r["n"].as_u64().unwrap(), n, "{task}");
    assert_eq!(r["items"].as_array().unwrap().len() as u64, n, "{task}");
    assert!(!r["setup"].as_str().unwrap().is_empty());
    if r["higher_is_better"].as_bool().unwrap() {
        assert!((0.0..=1.0).contains(&score), "{task}: {score}");
    } else {
        // A perplexity: finite and above 1.
        assert!(score.is_finite() && score > 1.0, "{task}: {score}");
        let bpb = r["extra"]["bits_per_byte"].as_f64().unwrap();
        assert!(bpb.is_finite() && bpb > 0.0, "{task}: bpb {bpb}");
    }
}

#[test]
fn eval_writes_json_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny_checkpoint(dir.path(), true);
    let out = dir.path().join("results.json");
    let o = eval(
        &ck,
        &[
            "--tasks",
            "gsm8k,mmlu_law,lambada,ppl",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let tasks: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        [
            "gsm8k",
            "mmlu_law",
            "lambada",
            "ppl_math",
            "ppl_code",
            "ppl_law",
            "ppl_writing"
        ]
    );
    for r in report["results"].as_array().unwrap() {
        check_result(r, 2);
    }
    // The checkpoint's own routing (top-K, K=2) was used.
    assert_eq!(report["router"], "topk");
    assert_eq!(report["k"], 2);
    assert_eq!(report["router_from_checkpoint"], true);
    // The average covers the three accuracy tasks only.
    let avg = report["average"].as_f64().unwrap();
    let mean: f64 = report["results"].as_array().unwrap()[..3]
        .iter()
        .map(|r| r["score"].as_f64().unwrap() * 100.0)
        .sum::<f64>()
        / 3.0;
    assert!((avg - mean).abs() < 1e-9);
    // Each gsm8k item records its generation and the extracted answer against the gold one.
    let item = &report["results"][0]["items"][0];
    assert_eq!(item["reference"], "18");
    assert!(item["generation"].is_string() && item["extracted"].is_string());
    // The readable table is on stdout.
    for t in &tasks {
        assert!(stdout.contains(t), "{t} missing from\n{stdout}");
    }
    assert!(stdout.contains("average"));
    // The output is not replaced without --overwrite.
    let before = std::fs::read_to_string(&out).unwrap();
    let o = eval(
        &ck,
        &[
            "--tasks",
            "lambada",
            "--limit",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), before);
}

#[test]
fn every_task_runs_including_code_in_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny_checkpoint(dir.path(), true);
    let o = eval(
        &ck,
        &[
            "--tasks",
            "all",
            "--limit",
            "1",
            "--max-new-tokens",
            "6",
            "--router",
            "online_seqtopk",
            "--k",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Without --out the JSON is on stdout and the table on stderr.
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["router"], "online_seqtopk");
    assert_eq!(report["k"], 1);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 8 + 4);
    for r in results {
        check_result(r, 1);
    }
    let code: Vec<&Value> = results
        .iter()
        .filter(|r| r["domain"] == "code" && r["metric"] == "pass@1")
        .collect();
    assert_eq!(code.len(), 2);
    for r in code {
        // The generated program was run and its outcome recorded.
        let outcomes: f64 = r["extra"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("outcome_"))
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        assert_eq!(outcomes, 1.0, "{r}");
        assert!(
            r["items"][0]["extracted"]
                .as_str()
                .unwrap()
                .contains("check(")
                || r["task"] == "mbpp"
        );
    }
    // The ESFT caveat is stated.
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("ROUGE-L") && notes.contains("LLM judge"),
        "{notes}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("esft_summary"));
}

#[test]
fn compare_prints_and_writes_the_router_table() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny_checkpoint(dir.path(), true);
    let out = dir.path().join("study.json");
    let md = dir.path().join("table.md");
    let o = eval(
        &ck,
        &[
            "--tasks",
            "mmlu_law,lambada",
            "--limit",
            "2",
            "--compare",
            "topk:2,seqtopk:2,online_seqtopk:1",
            "--out",
            out.to_str().unwrap(),
            "--markdown",
            md.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let study: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let runs = study["runs"].as_array().unwrap();
    let settings: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["router"].as_str().unwrap().to_string(),
                r["k"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        settings,
        [
            ("topk".to_string(), 2),
            ("seqtopk".to_string(), 2),
            ("online_seqtopk".to_string(), 1)
        ]
    );
    for r in runs {
        for t in r["results"].as_array().unwrap() {
            check_result(t, 2);
        }
    }
    let table = std::fs::read_to_string(&md).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "| router | K | mmlu_law | lambada | average |");
    assert!(lines[2].starts_with("| topk | 2 | "));
    assert!(lines[3].starts_with("| seqtopk | 2 | "));
    assert!(lines[4].starts_with("| online_seqtopk | 1 | "));
    assert!(String::from_utf8_lossy(&o.stdout).contains("| router | K |"));
}

#[test]
fn bad_invocations_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let no_tok = tiny_checkpoint(&dir.path().join("a"), false);
    let ck = tiny_checkpoint(&dir.path().join("b"), true);
    let missing = dir.path().join("missing");
    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        (&no_tok, vec!["--tasks", "lambada"], "tokenizer.json"),
        (&ck, vec!["--tasks", "gsm8k,nope"], "unknown task `nope`"),
        (
            &ck,
            vec!["--compare", "topk:2", "--router", "seqtopk"],
            "--compare",
        ),
        (
            &ck,
            vec!["--compare", "fastest:2"],
            "unknown routing mode `fastest`",
        ),
        (
            &ck,
            vec!["--compare", "topk:x"],
            "K must be a positive integer",
        ),
        (&missing, vec![], "not a directory"),
    ];
    for (checkpoint, args, expected) in cases {
        let o = eval(checkpoint, &args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let run = format!("{} {args:?}", checkpoint.display());
        assert!(!o.status.success(), "{run} succeeded");
        assert!(stderr.contains(expected), "{run}: {stderr}");
    }
    // No checkpoint at all.
    let args = ["eval", "--tasks", "gsm8k"];
    let o = seqtopk(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(stderr.contains("--checkpoint"), "{args:?}: {stderr}");
    // A data directory without the task's file names the file and the option.
    let o = support::command([
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--tasks",
        "gsm8k",
    ])
    .arg("--data-dir")
    .arg(dir.path())
    .output()
    .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("gsm8k_test.jsonl") && stderr.contains("--data-dir"),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_out_fails_before_the_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny_checkpoint(&dir.path().join("b"), true);
    let out_dir = dir.path().join("results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = eval(
        &ck,
        &[
            "--tasks",
            "lambada",
            "--limit",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
            "--overwrite",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a directory; give the path of a file"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
