//! The same training steps on every compiled backend give the same losses (CI runs wgpu on
//! Mesa's software Vulkan driver).

use seqtopk_backend::test_devices;
use seqtopk_train::Trainer;

use crate::support;

/// Relative tolerance between backends. f32 reductions run in different orders (wgpu's matmul
/// tiles differently), and at random initialisation the router's probabilities are nearly
/// uniform, so those last-bit differences can flip a near-tie in expert selection: measured on
/// lavapipe, the step-1 loss differs by 1.6e-4 relative and the gradient norm by 2.6e-4.
const TOLERANCE: f64 = 1e-3;

fn losses(backend: &str) -> Vec<(f64, f64)> {
    let mut trainer = Trainer::new(support::recipe(
        backend,
        &["batch.grad_accum_steps=1".into()],
    ))
    .unwrap();
    (0..3)
        .map(|_| {
            let m = trainer.step_once().unwrap();
            (m.lm_loss, m.grad_norm)
        })
        .collect()
}

#[test]
fn training_steps_agree_across_backends() {
    let reference = losses("cpu");
    for (backend, _) in test_devices() {
        let name = backend.to_string();
        if name == "cpu" {
            continue;
        }
        let got = losses(&name);
        for (step, (a, b)) in reference.iter().zip(&got).enumerate() {
            let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-12);
            assert!(
                rel(a.0, b.0) < TOLERANCE && rel(a.1, b.1) < 10.0 * TOLERANCE,
                "step {}: cpu (loss {}, grad norm {}) vs {name} (loss {}, grad norm {})",
                step + 1,
                a.0,
                a.1,
                b.0,
                b.1
            );
        }
        eprintln!("{name}: {got:?} vs cpu {reference:?}");
    }
}
