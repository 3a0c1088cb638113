//! End-to-end tests of `seqtopk train` through the binary, on the CPU backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    self, checkpoint, checkpoint_weights as weights, ok_json, repo_root, scratch, text,
};
use burn::module::Module;
use burn::tensor::Device;

/// The tiny recipe shrunk further so each step takes a fraction of a second in debug builds.
fn small_run(out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let fixed = ["schedule.warmup_steps=2", "train.eval_batches=1"];
    support::tiny_train(out, steps, &fixed, extra)
}

fn seqtopk(args: &[String]) -> Command {
    support::from_root(args)
}

fn run(args: &[String]) -> Output {
    seqtopk(args).output().expect("the binary runs")
}

#[test]
fn tiny_recipe_loss_falls_and_tensorboard_holds_the_metrics() {
    let out = scratch("falls");
    let res = run(&small_run(
        &out,
        40,
        &["train.log_every=1", "train.eval_every=20"],
    ));
    assert!(res.status.success(), "{}", text(&res));
    let files = seqtopk_tensorboard::event_files(&out.join("tensorboard")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let events = seqtopk_tensorboard::read_events(&files[0]).unwrap();
    let scalars = seqtopk_tensorboard::scalars(&events.events);
    let lm = &scalars["train/lm_loss"];
    assert_eq!(lm.len(), 40);
    let first: f64 = lm[..3].iter().map(|p| p.1).sum::<f64>() / 3.0;
    let last: f64 = lm[lm.len() - 3..].iter().map(|p| p.1).sum::<f64>() / 3.0;
    assert!(
        first > 10.0,
        "a fresh model starts near ln(50304) = 10.8, got {first}"
    );
    assert!(last < first - 2.0, "loss did not fall: {first} -> {last}");
    for tag in [
        "train/loss",
        "train/lb_loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "eval/loss/math",
        "eval/experts_per_token/math",
        "eval/at_floor/math",
        "eval/at_cap/math",
        "router/layer0/experts_per_token_mean",
        "router/layer1/fraction_at_floor",
        "router/layer1/fraction_at_cap",
        "router/layer0/load_imbalance_max_over_mean",
        "router/layer0/dead_experts",
    ] {
        assert!(
            scalars.contains_key(tag),
            "missing {tag}: {:?}",
            scalars.keys()
        );
    }
    // SeqTopK with K = 2: the mean stays at the budget, the spread is not zero.
    let mean = scalars["router/layer0/experts_per_token_mean"][0].1;
    assert!((mean - 2.0).abs() < 0.05, "mean experts per token {mean}");
    let histos = seqtopk_tensorboard::histograms(&events.events);
    assert!(histos.contains_key("router/layer0/experts_per_token"));
    assert!(histos.contains_key("router/layer1/tokens_per_expert"));
    assert_eq!(scalars["eval/loss/math"].len(), 2);
    assert!(out.join("final").join("config.json").is_file());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn f16_runs_scale_the_loss_and_log_the_scale() {
    let out = scratch("f16");
    let mut args = small_run(&out, 4, &["precision=\"f16\"", "train.log_every=1"]);
    let mut dry = args.clone();
    dry.push("--dry-run".into());
    let res = run(&dry);
    assert!(res.status.success(), "{}", text(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("[loss_scale]"),
        "the resolved recipe shows the scaling: {stdout}"
    );
    args.extend(["--set".into(), "loss_scale.growth_interval=1".into()]);
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    let files = seqtopk_tensorboard::event_files(&out.join("tensorboard")).unwrap();
    let events = seqtopk_tensorboard::read_events(&files[0]).unwrap();
    let scalars = seqtopk_tensorboard::scalars(&events.events);
    let scales: Vec<f64> = scalars["train/loss_scale"].iter().map(|p| p.1).collect();
    assert_eq!(scales.len(), 4);
    assert_eq!(scales[0], 65536.0, "PyTorch GradScaler's initial scale");
    // Each step either grew the scale (finite gradients) or halved it (skipped).
    for w in scales.windows(2) {
        assert!(w[1] == 2.0 * w[0] || w[1] == 0.5 * w[0], "{scales:?}");
    }
    assert!(scalars["train/lm_loss"].iter().all(|p| p.1.is_finite()));
    assert!(out.join("final").join("config.json").is_file());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn dry_run_prints_the_resolved_recipe_and_budget() {
    let out = scratch("dry");
    let mut args = small_run(&out, 10, &["optimizer.lr=5e-4"]);
    args.push("--dry-run".into());
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(stdout.contains("lr = 0.0005"), "{stdout}");
    assert!(stdout.contains("tokens_per_step = 128"), "{stdout}");
    assert!(stdout.contains("tokens_total = 1280"), "{stdout}");
    assert!(stdout.contains("parameters_total = "), "{stdout}");
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn malformed_recipes_name_the_field() {
    let out = scratch("bad");
    let cases: [(&str, &str); 7] = [
        ("optimizer.lrr=0.1", "lrr"),
        ("precision=\"fp8\"", "precision"),
        ("loss_scale.init=4.0", "loss_scale"),
        ("train.steps=\"ten\"", "steps"),
        ("optimizer.lr=-1.0", "optimizer.lr"),
        ("router.mode=\"sometimes\"", "sometimes"),
        ("schedule.min_lr_ratio=2.0", "schedule.min_lr_ratio"),
    ];
    for (set, needle) in cases {
        let res = run(&small_run(&out, 5, &[set]));
        assert!(!res.status.success(), "{set} was accepted");
        let err = text(&res);
        assert!(
            err.contains(needle),
            "{set}: error does not name `{needle}`: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let dir = scratch("bad-file");
    let recipe = dir.join("broken.toml");
    std::fs::write(&recipe, "name = \"x\"\n[train\nsteps = 3\n").unwrap();
    let res = run(&[
        "train".into(),
        "--recipe".into(),
        recipe.display().to_string(),
    ]);
    assert!(!res.status.success());
    assert!(text(&res).contains("broken.toml"), "{}", text(&res));
}

#[test]
fn missing_checkpoint_is_a_clear_error() {
    let out = scratch("missing");
    let res = run(&small_run(
        &out,
        5,
        &[
            "model.config={}",
            "model.checkpoint=\"checkpoints/does-not-exist\"",
        ],
    ));
    // `model.config={}` plus a checkpoint is refused as ambiguous; drop the config instead.
    assert!(!res.status.success());
    let recipe =
        std::fs::read_to_string(repo_root().join("recipes/tiny-seqtopk-math.toml")).unwrap();
    let start = recipe.find("[model.config]").unwrap();
    let end = recipe[start..].find("\n\n").unwrap() + start;
    let edited = format!(
        "{}[model]\ncheckpoint = \"checkpoints/does-not-exist\"\n{}",
        &recipe[..start],
        &recipe[end..]
    );
    let path = out.join("recipe.toml");
    std::fs::write(&path, edited).unwrap();
    let res = run(&[
        "train".into(),
        "--recipe".into(),
        path.display().to_string(),
        "--set".into(),
        format!("output_dir=\"{}\"", out.join("run").display()),
    ]);
    assert!(!res.status.success());
    let err = text(&res);
    assert!(err.contains("checkpoints/does-not-exist"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn wait_for(path: &Path, child: &mut std::process::Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended ({status}) before {} appeared", path.display());
        }
        assert!(start.elapsed() < Duration::from_secs(300), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killed_and_interrupted_runs_resume_bit_identically() {
    let steps = 8;
    let cadence = ["train.checkpoint_every=2", "train.eval_every=0"];
    // Uninterrupted reference.
    let reference = scratch("ref");
    let res = run(&small_run(&reference, steps, &cadence));
    assert!(res.status.success(), "{}", text(&res));
    let expected = weights(&checkpoint(&reference, steps));

    // SIGKILL right after the first checkpoint, then resume.
    let killed = scratch("killed");
    let mut child = seqtopk(&small_run(&killed, steps, &cadence))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&checkpoint(&killed, 2), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut args = small_run(&killed, steps, &cadence);
    args.push("--resume".into());
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    assert!(text(&res).contains("resumed"), "{}", text(&res));
    assert!(
        expected == weights(&checkpoint(&killed, steps)),
        "killed + resumed run differs"
    );

    // Ctrl-C (SIGINT): saves a checkpoint, exits 130, resumes to the same weights.
    let interrupted = scratch("sigint");
    let mut child = seqtopk(&small_run(&interrupted, steps, &cadence))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&checkpoint(&interrupted, 2), &mut child);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        text(&out).contains("continue with --resume"),
        "{}",
        text(&out)
    );
    let mut args = small_run(&interrupted, steps, &cadence);
    args.push("--resume".into());
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    assert!(
        expected == weights(&checkpoint(&interrupted, steps)),
        "interrupted + resumed run differs"
    );

    // A second run into the same output without --resume is refused, not overwritten.
    let res = run(&small_run(&reference, steps, &cadence));
    assert!(!res.status.success());
    assert!(text(&res).contains("--resume"), "{}", text(&res));
    for dir in [reference, killed, interrupted] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let out = scratch("nan");
    let res = run(&small_run(
        &out,
        6,
        &[
            "optimizer.lr=1e30",
            "schedule.kind=\"constant\"",
            "schedule.warmup_steps=0",
            "optimizer.max_grad_norm=0.0",
            "train.checkpoint_every=1",
        ],
    ));
    assert!(!res.status.success());
    let err = text(&res);
    assert!(err.contains("not finite"), "{err}");
    assert!(err.contains("step-000001"), "{err}");
    assert!(checkpoint(&out, 1).is_dir());
    assert!(!out.join("final").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn two_replicas_train_exactly_as_accumulation_on_one_device() {
    let steps = 3;
    let single = scratch("dp-single");
    let res = run(&small_run(&single, steps, &["batch.grad_accum_steps=2"]));
    assert!(res.status.success(), "{}", text(&res));
    let parallel = scratch("dp-two");
    let res = run(&small_run(&parallel, steps, &["devices=[0, 1]"]));
    assert!(res.status.success(), "{}", text(&res));
    // The same micro-batches, the same per-replica gradients, summed in the same order.
    assert!(
        weights(&checkpoint(&single, steps)) == weights(&checkpoint(&parallel, steps)),
        "two replicas with one micro-batch each must equal one device accumulating two"
    );
    let dry = run(&[
        "train".into(),
        "--dry-run".into(),
        "--set".into(),
        "devices=[0, 1]".into(),
    ]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("tokens_per_step = 1024"),
        "4 rows × 128 tokens × 2 replicas: {}",
        text(&dry)
    );
    let dup = run(&small_run(&scratch("dp-dup"), 1, &["devices=[0, 0]"]));
    assert!(!dup.status.success());
    assert!(
        text(&dup).contains("devices: index 0 appears more than once"),
        "{}",
        text(&dup)
    );
    for dir in [single, parallel] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Flips one bit in the middle of `file` (inside the tensor data of a burnpack): the size stays,
/// only the checksum can tell.
fn flip_a_bit(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_second_train_on_the_same_output_is_refused_naming_the_holder() {
    let out = scratch("lock");
    let cadence = [
        "train.checkpoint_every=1",
        "train.eval_every=0",
        "schedule.warmup_steps=0",
    ];
    let mut first = seqtopk(&small_run(&out, 1000, &cadence))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&checkpoint(&out, 1), &mut first);
    let holder = format!("pid {}", first.id());
    let second = run(&small_run(&out, 1000, &cadence));
    let mut resume = small_run(&out, 1000, &cadence);
    resume.push("--resume".into());
    let resumed = run(&resume);
    first.kill().unwrap();
    first.wait().unwrap();
    for res in [second, resumed] {
        assert!(!res.status.success(), "{}", text(&res));
        let err = text(&res);
        assert!(
            err.contains("is in use by another seqtopk process"),
            "{err}"
        );
        assert!(err.contains(&holder), "{err}");
        assert!(!err.contains("final model"), "{err}");
    }
    // The lock dies with its holder: a kill -9 leaves nothing stale behind (one step planned, so
    // this resume only exports).
    let mut resume = small_run(&out, 1, &cadence);
    resume.push("--resume".into());
    let res = run(&resume);
    assert!(res.status.success(), "{}", text(&res));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_damaged_or_incomplete_checkpoint_stops_resume_and_is_kept() {
    let out = scratch("damaged");
    let cadence = [
        "train.checkpoint_every=1",
        "train.eval_every=0",
        "train.keep_checkpoints=5",
        "schedule.warmup_steps=0",
    ];
    let res = run(&small_run(&out, 2, &cadence));
    assert!(res.status.success(), "{}", text(&res));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint(&out, 2).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let files: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "model.bpk",
            "optimizer.bpk",
            "recipe.toml",
            "trainer_state.json"
        ]
    );
    let mut resume = small_run(&out, 4, &cadence);
    resume.push("--resume".into());

    // A flipped byte of the right size.
    let model = checkpoint(&out, 2).join("model.bpk");
    let pristine = std::fs::read(&model).unwrap();
    flip_a_bit(&model);
    let res = run(&resume);
    assert!(!res.status.success(), "{}", text(&res));
    let err = text(&res);
    assert!(err.contains("step-000002/model.bpk"), "{err}");
    assert!(err.contains("corrupt: its sha256"), "{err}");
    assert!(!err.contains("resumed"), "{err}");
    std::fs::write(&model, pristine).unwrap();

    // A step missing its trainer state is reported, not passed over for step 1.
    std::fs::remove_file(checkpoint(&out, 2).join("trainer_state.json")).unwrap();
    let res = run(&resume);
    assert!(!res.status.success(), "{}", text(&res));
    assert!(
        text(&res).contains("step-000002/trainer_state.json"),
        "{}",
        text(&res)
    );
    // Nor is one without a manifest (a crash before its commit point, or an older writer).
    std::fs::remove_file(checkpoint(&out, 2).join("manifest.json")).unwrap();
    let res = run(&resume);
    assert!(!res.status.success(), "{}", text(&res));
    let err = text(&res);
    assert!(
        err.contains("step-000002: has no manifest.json") && err.contains("--no-verify"),
        "{err}"
    );
    assert!(checkpoint(&out, 2).is_dir() && checkpoint(&out, 1).is_dir());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_trained_checkpoint_carries_its_routing_and_is_verified_on_use() {
    let out = scratch("routing");
    let res = run(&small_run(
        &out,
        2,
        &["train.eval_every=0", "schedule.warmup_steps=0"],
    ));
    assert!(res.status.success(), "{}", text(&res));
    let fin = out.join("final");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fin.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["seqtopk_routing"]["mode"], "seqtopk", "{config}");
    let ids = out.join("ids.json");
    std::fs::write(&ids, "[[1, 5, 9, 20], [1, 7, 3]]").unwrap();
    let loss = |dir: &Path, extra: &[&str]| {
        let mut args: Vec<String> = ["eval", "loss", "--checkpoint"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(dir.display().to_string());
        args.push("--input-ids".into());
        args.push(ids.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        run(&args)
    };
    let res = loss(&fin, &[]);
    assert!(res.status.success(), "{}", text(&res));
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(report["router"]["mode"], "seqtopk", "{report}");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("routing: seqtopk K=2 (recorded in the checkpoint's config.json)"),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in piped logs: {err:?}"
    );

    // The record survives export to HF and import back.
    let hf = out.join("hf");
    let back = out.join("back");
    for args in [
        vec![
            "convert",
            "export",
            "--checkpoint",
            fin.to_str().unwrap(),
            "--hf-out",
            hf.to_str().unwrap(),
        ],
        vec![
            "convert",
            "import",
            "--hf",
            hf.to_str().unwrap(),
            "--out",
            back.to_str().unwrap(),
        ],
    ] {
        let res = run(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(res.status.success(), "{}", text(&res));
    }
    for dir in [&hf, &back] {
        let res = loss(dir, &[]);
        let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
        assert_eq!(report["router"]["mode"], "seqtopk", "{}", dir.display());
    }

    // One flipped bit of the final weights: every consumer refuses it, naming the file.
    flip_a_bit(&fin.join("model.bpk"));
    let gen_ids = out.join("prompt.json");
    std::fs::write(&gen_ids, "[[1, 5, 9]]").unwrap();
    let generate: Vec<String> = [
        "generate",
        "--checkpoint",
        fin.to_str().unwrap(),
        "--input-ids",
        gen_ids.to_str().unwrap(),
        "--max-new-tokens",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let export: Vec<String> = [
        "convert",
        "export",
        "--checkpoint",
        fin.to_str().unwrap(),
        "--hf-out",
        out.join("hf2").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for res in [loss(&fin, &[]), run(&generate), run(&export)] {
        assert!(!res.status.success(), "{}", text(&res));
        let err = text(&res);
        assert!(
            err.contains("final/model.bpk") && err.contains("corrupt: its sha256"),
            "{err}"
        );
    }
    assert!(!out.join("hf2").exists());
    let res = loss(&fin, &["--no-verify"]);
    assert!(res.status.success(), "--no-verify loads it: {}", text(&res));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn temporary_directories_of_a_killed_run_are_swept_on_resume() {
    let out = scratch("sweep");
    let quick = ["train.eval_every=0", "schedule.warmup_steps=0"];
    let res = run(&small_run(&out, 1, &quick));
    assert!(res.status.success(), "{}", text(&res));
    let leftovers = [
        out.join(".final.tmp-999999-000000001"),
        out.join(".final.old-999999-000000001"),
        out.join("checkpoints/.step-000002.tmp-999999"),
    ];
    for dir in &leftovers {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("model.bpk"), "partial").unwrap();
    }
    let mut resume = small_run(&out, 1, &quick);
    resume.push("--resume".into());
    let res = run(&resume);
    assert!(res.status.success(), "{}", text(&res));
    for dir in &leftovers {
        assert!(!dir.exists(), "{} survived", dir.display());
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn dry_run_plans_a_recipe_this_machine_cannot_run_yet() {
    // The README's planning command: no checkpoint, no corpora, perhaps no CUDA here.
    let res = run(&[
        "train".into(),
        "--recipe".into(),
        "recipes/olmoe-seqtopk-math.toml".into(),
        "--dry-run".into(),
    ]);
    assert!(res.status.success(), "{}", text(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    for needle in [
        "mode = \"seqtopk\"",
        "tokens_per_step = ",
        "# missing to run",
    ] {
        assert!(stdout.contains(needle), "lacks {needle:?}: {stdout}");
    }
    for (path, needle) in [
        (
            "checkpoints/olmoe-1b-7b-0125/config.json",
            "checkpoint checkpoints/olmoe-1b-7b-0125: no config.json",
        ),
        (
            "data/math/math_train.jsonl",
            "data source data/math/math_train.jsonl",
        ),
    ] {
        if !repo_root().join(path).exists() {
            assert!(stdout.contains(needle), "lacks {needle:?}: {stdout}");
        }
    }
    assert_eq!(
        stdout.contains("backend `cuda`: not compiled"),
        !cfg!(feature = "cuda"),
        "{stdout}"
    );
    // With the checkpoint's config.json alone, the budget is counted from it, and it is the
    // budget of the built model (weights at hand, CPU backend, the shipped sample corpus):
    // parameters and predicted memory, for full fine-tuning and for LoRA.
    let trained = scratch("plan-trained");
    let res = run(&small_run(&trained, 3, &[]));
    assert!(res.status.success(), "{}", text(&res));
    let fixture = trained.join("final");
    let out = scratch("plan");
    std::fs::copy(fixture.join("config.json"), out.join("config.json")).unwrap();
    let budget = |checkpoint: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "train",
            "--recipe",
            "recipes/olmoe-seqtopk-math.toml",
            "--dry-run",
            "--set",
            "backend=\"cpu\"",
            "--set",
            "data.tokenizer=\"data/samples/tokenizers/olmoe/tokenizer.json\"",
            "--set",
            "data.sources=[{path=\"data/samples/math/math_train.jsonl\", format=\"prompt_completion\", domain=\"math\"}]",
            "--set",
            "data.seq_len=256",
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "--set".into(),
            format!("model.checkpoint=\"{}\"", checkpoint.display()),
        ]);
        for e in extra {
            args.extend(["--set".into(), (*e).to_owned()]);
        }
        let res = run(&args);
        assert!(res.status.success(), "{}", text(&res));
        let stdout = String::from_utf8_lossy(&res.stdout).into_owned();
        let planned = stdout.contains("the model was not built");
        let lines: BTreeMap<String, String> = stdout
            .lines()
            .skip_while(|l| !l.starts_with("# budget"))
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.to_owned(), v.split(" #").next().unwrap().to_owned()))
            .collect();
        (planned, lines)
    };
    let model = seqtopk_checkpoint::load(&fixture, &Device::flex())
        .unwrap()
        .model;
    let gb = |lines: &BTreeMap<String, String>, key: &str| -> f64 { lines[key].parse().unwrap() };
    let mut full_state = 0.0;
    for extra in [&[][..], &["lora.r=16"][..]] {
        let (planned, from_config) = budget(&out, extra);
        let (built_too, built) = budget(&fixture, extra);
        assert!(planned && !built_too, "{extra:?}");
        assert_eq!(from_config, built, "{extra:?}");
        for key in [
            "parameters_total",
            "parameters_trainable",
            "training_memory_gb",
            "activation_memory_gb",
            "peak_memory_gb",
        ] {
            assert!(built.contains_key(key), "{extra:?} lacks {key}: {built:?}");
        }
        assert!(gb(&built, "peak_memory_gb") > gb(&built, "training_memory_gb"));
        match extra {
            [] => {
                assert_eq!(built["parameters_total"], model.num_params().to_string());
                full_state = gb(&built, "training_memory_gb");
            }
            _ => assert!(gb(&built, "training_memory_gb") < full_state, "{built:?}"),
        }
    }
    // A LoRA target that names nothing in the model is refused from the config alone too.
    let res = run(&[
        "train".into(),
        "--recipe".into(),
        "recipes/olmoe-seqtopk-math.toml".into(),
        "--dry-run".into(),
        "--set".into(),
        format!("model.checkpoint=\"{}\"", out.display()),
        "--set".into(),
        "lora.target_modules=[\"w1\"]".into(),
    ]);
    assert!(!res.status.success());
    assert!(
        text(&res).contains("lora target `w1` selects nothing"),
        "{}",
        text(&res)
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&trained).unwrap();
}

#[test]
fn a_missing_tokenizer_is_named_with_the_directory_it_was_looked_up_from() {
    let elsewhere = scratch("elsewhere");
    let recipe = repo_root().join("recipes/tiny-seqtopk-math.toml");
    let out = seqtopk(&[
        "train".into(),
        "--recipe".into(),
        recipe.display().to_string(),
        "--set".into(),
        format!("output_dir=\"{}\"", elsewhere.join("run").display()),
    ])
    .current_dir(&elsewhere)
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = text(&out);
    let cwd = std::fs::canonicalize(&elsewhere).unwrap();
    assert!(
        err.contains("tokenizer data/"),
        "not called a data source: {err}"
    );
    assert!(
        err.contains(&format!("(looked up from {})", cwd.display())),
        "{err}"
    );
    std::fs::remove_dir_all(&elsewhere).unwrap();
}

#[test]
fn eval_only_scores_the_checkpoint_as_training_did_and_under_another_router() {
    let out = scratch("eval-only");
    let res = run(&small_run(&out, 3, &["train.eval_every=0"]));
    assert!(res.status.success(), "{}", text(&res));
    // The run's own evaluation after its last step, from TensorBoard.
    let files = seqtopk_tensorboard::event_files(&out.join("tensorboard")).unwrap();
    let events = seqtopk_tensorboard::read_events(&files[0]).unwrap();
    let scalars = seqtopk_tensorboard::scalars(&events.events);
    let logged = scalars["eval/loss/math"][0].1;
    let logged_experts = scalars["eval/experts_per_token/math"][0].1;

    let mut args = small_run(&out, 3, &[]);
    args.push("--eval-only".into());
    args.push("--resume".into());
    let report = ok_json(&run(&args));
    assert_eq!(report["checkpoint_step"], 3);
    assert_eq!(report["router"]["mode"], "seqtopk");
    assert_eq!(report["router"]["causal"], false);
    let math = &report["domains"][0];
    assert_eq!(math["domain"], "math");
    // Reloaded from the checkpoint, the model scores the same batches the same way.
    let loss = math["loss"].as_f64().unwrap();
    assert!((loss - logged).abs() < 1e-5, "{loss} vs {logged} logged");
    let experts = math["experts_per_token"].as_f64().unwrap();
    assert!((experts - logged_experts).abs() < 1e-5);
    // SeqTopK at K = 2 spends the whole budget (2 per token on average) unevenly.
    assert!(
        experts >= 2.0 && math["at_floor"].as_f64().unwrap() > 0.0,
        "{math}"
    );

    // Another router on the same checkpoint: TopK at K = 1 gives every token one expert.
    args.extend(["--set", "router.mode=\"topk\"", "--set", "router.top_k=1"].map(String::from));
    let report = ok_json(&run(&args));
    let math = &report["domains"][0];
    assert_eq!(report["router"]["mode"], "topk");
    assert_eq!(math["experts_per_token"], 1.0);
    assert_ne!(math["loss"].as_f64().unwrap(), loss);

    // Nothing to resume is an error, not a score of a fresh model.
    let empty = scratch("eval-only-empty");
    let mut args = small_run(&empty, 3, &[]);
    args.extend(["--eval-only", "--resume"].map(String::from));
    let res = run(&args);
    assert!(!res.status.success());
    assert!(text(&res).contains("no checkpoint"), "{}", text(&res));
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn a_tokenizer_trained_on_a_recipe_runs_that_recipe_from_scratch() {
    let dir = scratch("bpe");
    let tokenizer = dir.join("bpe").join("tokenizer.json");
    let data = [
        format!("data.tokenizer=\"{}\"", tokenizer.display()),
        "data.eos_token=\"<|endoftext|>\"".into(),
        "data.pad_token=\"<|padding|>\"".into(),
        "data.sources=[{path=\"data/samples/math/math_train.jsonl\", format=\"prompt_completion\", \
         domain=\"math\"}, {path=\"data/samples/writing/austen.jsonl\", format=\"text_jsonl\", \
         domain=\"writing\"}]"
            .into(),
    ];
    let with_data = |mut args: Vec<String>| {
        for d in &data {
            args.extend(["--set".to_string(), d.clone()]);
        }
        args
    };
    let train_tokenizer = |vocab: &str| {
        run(&with_data(
            [
                "tokenizer",
                "--recipe",
                "recipes/tiny-seqtopk-math.toml",
                "--vocab-size",
                vocab,
            ]
            .map(String::from)
            .to_vec(),
        ))
    };
    // Too small for the byte alphabet: refused, nothing written.
    let res = train_tokenizer("200");
    assert!(!res.status.success());
    assert!(text(&res).contains("more than 258"), "{}", text(&res));
    assert!(!tokenizer.exists());

    let report = ok_json(&train_tokenizer("600"));
    assert_eq!(report["vocab_size"], 600);
    assert_eq!(
        report["special_tokens"],
        serde_json::json!(["<|endoftext|>", "<|padding|>"])
    );
    let tok = tokenizers::Tokenizer::from_file(&tokenizer).unwrap();
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.token_to_id("<|padding|>"), Some(1));
    // Byte-level: any text round-trips, and the learnt merges compress English.
    let text_in = "It is a truth universally acknowledged — 𝔼[x²] ≠ 0.";
    let ids = tok.encode(text_in, false).unwrap();
    assert_eq!(tok.decode(ids.get_ids(), false).unwrap(), text_in);
    let plain = tok
        .encode("the single man in possession of a good fortune", false)
        .unwrap();
    assert!(plain.get_ids().len() < 30, "{:?}", plain.get_ids());

    // An existing tokenizer is never overwritten.
    let before = std::fs::read(&tokenizer).unwrap();
    let res = train_tokenizer("700");
    assert!(!res.status.success());
    assert!(text(&res).contains("already exists"), "{}", text(&res));
    assert_eq!(std::fs::read(&tokenizer).unwrap(), before);

    // The recipe trains from scratch on it, with the vocabulary sized to it.
    let out = dir.join("run");
    let mut args = small_run(
        &out,
        3,
        &[
            "model.config.vocab_size=600",
            "model.config.eos_token_id=0",
            "model.config.pad_token_id=1",
            "train.eval_every=0",
        ],
    );
    args = with_data(args);
    let res = run(&args);
    assert!(res.status.success(), "{}", text(&res));
    assert!(out.join("final").join("tokenizer.json").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
