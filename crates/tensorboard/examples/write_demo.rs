//! Writes a small demo event file: `cargo run -p seqtopk-tensorboard --example write_demo -- DIR`.
//!
//! Look at it with `tensorboard --logdir DIR`, or check it with
//! `tools/tensorboard/.venv/bin/python tools/tensorboard/check_events.py DIR`.

use std::path::PathBuf;

use seqtopk_tensorboard::{EventWriter, Histogram, TensorboardError, read_events, scalars};

/// Deterministic normal samples (xorshift64* + Box–Muller), so the demo needs no RNG crate.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn main() -> Result<(), TensorboardError> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("runs/tensorboard-demo"));
    let mut tb = EventWriter::create(&dir)?;
    let mut rng = Normal(0x5EED);
    let experts = 8;
    for step in 1..=20i64 {
        let t = step as f64;
        tb.add_scalar("train/loss", step, 4.0 * (-t / 8.0).exp() + 1.0)?;
        tb.add_scalar("train/lr", step, 1e-3 * (t / 20.0).min(1.0))?;
        // Router logits drifting and sharpening over training.
        let logits: Vec<f64> = (0..512)
            .map(|_| rng.sample() * (2.0 - t / 20.0) + t / 10.0)
            .collect();
        tb.add_histogram("router/logits", step, &logits)?;
        // SeqTopK spends a per-sequence budget: tokens use 0..=4 experts, centred on k = 2.
        let per_token = [4.0, 20.0 + t, 60.0, (20 - step / 2) as f64, 8.0];
        tb.add_histogram_data(
            "routing/experts_per_token",
            step,
            Histogram::from_integer_counts(&per_token)?,
        )?;
        let per_expert: Vec<f64> = (0..experts)
            .map(|e| {
                (100.0 + 10.0 * rng.sample() + 5.0 * e as f64)
                    .max(0.0)
                    .round()
            })
            .collect();
        tb.add_histogram_data(
            "routing/tokens_per_expert",
            step,
            Histogram::from_integer_counts(&per_expert)?,
        )?;
    }
    tb.flush()?;
    let path = tb.path().to_path_buf();
    drop(tb);
    let outcome = read_events(&path)?;
    let series = scalars(&outcome.events);
    println!(
        "wrote {} ({} events; scalar tags: {:?})",
        path.display(),
        outcome.events.len(),
        series.keys().collect::<Vec<_>>()
    );
    Ok(())
}
