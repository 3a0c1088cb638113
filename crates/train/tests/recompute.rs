//! `train.recompute = "balanced"` (Burn's gradient checkpointing) changes what the backward pass
//! keeps, never what it computes: the weights after training equal those without it, bit for
//! bit, for a full run and a LoRA run.

use crate::support::{recipe, steps, weights};
use seqtopk_train::Trainer;

#[test]
fn balanced_recomputation_trains_bit_identically() {
    for extra in [vec![], vec!["lora.r=4".to_string()]] {
        let run = |recompute: &str| {
            let mut sets = extra.clone();
            sets.push(format!("train.recompute=\"{recompute}\""));
            let mut trainer = Trainer::new(recipe("cpu", &sets)).unwrap();
            let device = trainer.model().embed_tokens.weight.val().device();
            let strategy = device.gradient_checkpointing_strategy().unwrap();
            assert_eq!(
                format!("{strategy:?}"),
                if recompute == "none" {
                    "Disabled"
                } else {
                    "Balanced"
                }
            );
            let losses: Vec<f64> = steps(&mut trainer, 2).iter().map(|m| m.loss).collect();
            (losses, weights(&trainer))
        };
        let (plain, recomputed) = (run("none"), run("balanced"));
        assert_eq!(plain.0, recomputed.0, "losses differ ({extra:?})");
        assert!(plain.1 == recomputed.1, "weights differ ({extra:?})");
    }
}
