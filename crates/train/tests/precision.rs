//! Mixed precision through the trainer: bf16/f16 passes with f32 master weights on every device
//! that supports them, a clear refusal on devices that do not, and f16's dynamic loss scaling
//! (skipped overflowing steps, growth, exact resume).

use crate::support::{recipe, steps, weights};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor};
use seqtopk_backend::test_devices;
use seqtopk_train::{Precision, Trainer};
use std::path::Path;

/// Relative step-loss tolerance against the f32 CPU run. Rounding activations to bf16/f16 moves
/// the step-1 loss by 9e-5 / 1e-5 relative under TopK, but at random initialisation the router's
/// probabilities are nearly uniform and SeqTopK ranks all T·K pairs of a sequence at once, so the
/// rounding flips near-ties in expert selection: measured with SeqTopK and 62 target tokens per
/// micro-batch, 7.5e-4 (bf16) and 1.0e-3 (f16) at step 1, on the CPU and on lavapipe alike.
const TOLERANCE: f64 = 5e-3;

#[test]
fn half_precision_trains_close_to_f32_where_the_device_supports_it() {
    let mut reference = Trainer::new(recipe("cpu", &[])).unwrap();
    let reference: Vec<f64> = steps(&mut reference, 3).iter().map(|m| m.lm_loss).collect();
    let mut checked = 0;
    for (backend, device) in test_devices() {
        for precision in [Precision::Bf16, Precision::F16] {
            // A small initial f16 scale so no step is skipped and the runs stay comparable.
            let extra = [
                format!("precision=\"{precision}\""),
                "loss_scale.init=1024.0".to_owned(),
            ];
            let extra = if precision == Precision::F16 {
                &extra[..]
            } else {
                &extra[..1]
            };
            let result = Trainer::new(recipe(&backend.to_string(), extra));
            if !precision.is_supported_by(&device) {
                let err = result.err().expect("an unsupported precision is refused");
                let msg = err.to_string();
                assert!(
                    msg.contains("precision") && msg.contains(&format!("\"{precision}\"")),
                    "{backend}: {msg}"
                );
                eprintln!("{backend} refuses {precision}: {msg}");
                continue;
            }
            let mut trainer = result.unwrap();
            let metrics = steps(&mut trainer, 3);
            for (m, want) in metrics.iter().zip(&reference) {
                assert!(!m.skipped, "{backend} {precision}: step {} skipped", m.step);
                let rel = (m.lm_loss - want).abs() / want;
                assert!(
                    rel < TOLERANCE,
                    "{backend} {precision} step {}: loss {} vs f32 {want} ({rel:.2e} relative)",
                    m.step,
                    m.lm_loss
                );
            }
            // The passes really ran in the half type: not the f32 losses to the last bit.
            assert_ne!(metrics[0].lm_loss, reference[0], "{backend} {precision}");
            assert_eq!(
                metrics[0].loss_scale.is_some(),
                precision == Precision::F16,
                "only f16 scales the loss"
            );
            // The master weights the optimiser updates stay f32.
            assert!(
                weights(&trainer)
                    .iter()
                    .all(|(dtype, _)| *dtype == DType::F32),
                "{backend} {precision}: master weights are not all f32"
            );
            let eval = trainer.evaluate().unwrap();
            assert!(eval.iter().all(|d| d.loss.is_finite()), "{eval:?}");
            eprintln!(
                "{backend} {precision}: losses {:?} vs f32 cpu {reference:?}",
                metrics.iter().map(|m| m.lm_loss).collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    // The CPU computes in both half types.
    assert!(checked >= 2);
}

#[test]
fn an_overflowing_f16_step_is_skipped_and_the_scale_halved() {
    // 2^60 times the loss overflows f16 (max 65504) in the backward pass.
    let huge = 2f64.powi(60);
    let mut trainer = Trainer::new(recipe(
        "cpu",
        &[
            "precision=\"f16\"".into(),
            format!("loss_scale.init={huge:e}"),
        ],
    ))
    .unwrap();
    let before = weights(&trainer);
    let m = steps(&mut trainer, 2);
    assert!(m[0].skipped && m[1].skipped);
    assert!(m[0].loss.is_finite(), "the loss itself is finite");
    assert_eq!(m[0].loss_scale, Some(huge));
    assert_eq!(m[1].loss_scale, Some(huge / 2.0));
    assert_eq!(trainer.step(), 2, "skipped steps still count");
    assert!(
        weights(&trainer) == before,
        "a skipped step changed the weights"
    );

    // A scale that fits: every step applies, and it doubles after each `growth_interval`.
    let mut trainer = Trainer::new(recipe(
        "cpu",
        &[
            "precision=\"f16\"".into(),
            "loss_scale.init=256.0".into(),
            "loss_scale.growth_interval=1".into(),
        ],
    ))
    .unwrap();
    let m = steps(&mut trainer, 3);
    let scales: Vec<Option<f64>> = m.iter().map(|m| m.loss_scale).collect();
    assert_eq!(scales, [Some(256.0), Some(512.0), Some(1024.0)]);
    assert!(m.iter().all(|m| !m.skipped));
    assert!(weights(&trainer) != before, "the steps changed nothing");
}

#[test]
fn an_f16_run_resumes_with_its_loss_scale_bit_identically() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("seqtopk-precision-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let extra = |dir: &str| {
        vec![
            "precision=\"f16\"".to_owned(),
            "loss_scale.init=256.0".into(),
            "loss_scale.growth_interval=1".into(),
            "train.steps=4".into(),
            format!("output_dir=\"{}\"", out.join(dir).display()),
        ]
    };
    let mut straight = Trainer::new(recipe("cpu", &extra("straight"))).unwrap();
    let want = steps(&mut straight, 4);

    let mut first = Trainer::new(recipe("cpu", &extra("resumed"))).unwrap();
    steps(&mut first, 2);
    first.save_checkpoint().unwrap();
    drop(first);
    let mut resumed = Trainer::new(recipe("cpu", &extra("resumed"))).unwrap();
    assert_eq!(resumed.resume_latest().unwrap(), Some(2));
    let got = steps(&mut resumed, 2);
    // The scale grew every step: a resume that forgot it would restart at 256.
    assert_eq!(got[0].loss_scale, want[2].loss_scale);
    assert_eq!(got[0].loss_scale, Some(1024.0));
    assert_eq!(got[1].lm_loss, want[3].lm_loss);
    assert!(
        weights(&resumed) == weights(&straight),
        "resumed weights differ from the uninterrupted run"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn two_f16_replicas_train_exactly_as_accumulation_on_one_device() {
    // Data parallelism in mixed precision: each replica casts its fork of the f32 model.
    let common = [
        "precision=\"f16\"".to_owned(),
        "loss_scale.init=256.0".into(),
    ];
    let run = |extra: &[&str]| {
        let mut overrides = common.to_vec();
        overrides.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut trainer = Trainer::new(recipe("cpu", &overrides)).unwrap();
        let m = steps(&mut trainer, 2);
        (m, weights(&trainer))
    };
    let (one_m, one_w) = run(&["batch.grad_accum_steps=2"]);
    let (two_m, two_w) = run(&["batch.grad_accum_steps=1", "devices=[0, 1]"]);
    assert_eq!(
        one_m.iter().map(|m| m.lm_loss).collect::<Vec<_>>(),
        two_m.iter().map(|m| m.lm_loss).collect::<Vec<_>>()
    );
    assert!(one_w == two_w, "two replicas ended with other weights");
}

/// Every float parameter's module path and dtype, LoRA factors included.
#[derive(Default)]
struct Dtypes {
    path: Vec<String>,
    found: Vec<(String, DType)>,
}

impl ModuleVisitor for Dtypes {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.found.push((self.path.join("."), param.base().dtype()));
    }
}

/// A LoRA run in bf16 keeps its frozen base in bf16 (no f32 master copy) while the adapters and
/// the router gate, which the optimiser updates, stay f32 through training; the dry-run budget
/// counts the base apart.
#[test]
fn a_half_precision_lora_run_stores_its_frozen_base_in_half() {
    let extra = ["precision=\"bf16\"".to_string(), "lora.r=4".into()];
    let mut trainer = Trainer::new(recipe("cpu", &extra)).unwrap();
    let check = |trainer: &Trainer| {
        let mut d = Dtypes::default();
        trainer.model().visit(&mut d);
        for (path, dtype) in &d.found {
            let trained = path.contains(".lora") || path.ends_with("Moe.gate.weight");
            let expected = if trained { DType::F32 } else { DType::BF16 };
            assert_eq!(*dtype, expected, "{path}");
        }
        assert!(d.found.iter().any(|(p, _)| p.contains("gate_up.lora.b")));
    };
    check(&trainer);
    let budget = trainer.budget();
    assert!(budget.params_without_gradient > 0);
    assert_eq!(
        budget.params_without_gradient + budget.params_trainable,
        budget.params_total
    );
    for m in steps(&mut trainer, 2) {
        assert!(m.loss.is_finite() && m.grad_norm > 0.0, "{m:?}");
    }
    check(&trainer);
}
