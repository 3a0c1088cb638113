//! The run loop: steps, logging, evaluation and checkpoints on their cadences, Ctrl-C.

use std::path::Path;
use std::sync::atomic::Ordering;

use indicatif::{ProgressBar, ProgressStyle};

use super::{RunOutcome, Trainer, TrainerOptions};
use crate::metrics::Monitor;
use crate::resume;
use crate::{DomainEval, TrainError};

impl Trainer {
    /// Runs the remaining steps: logging, evaluation and checkpoints on their cadences, a
    /// checkpoint and an export at the end.
    pub fn run(mut self, options: &TrainerOptions) -> Result<RunOutcome, TrainError> {
        let output = self.recipe.output_dir();
        let _lock = self.open_output(&output, options)?;
        let mut monitor = Monitor::open(&self.recipe.log_dir())?;
        let bar = progress_bar(options.progress, self.total_steps, self.step);
        let t = self.recipe.train.clone();
        while self.step < self.total_steps {
            let m = self.step_once()?;
            let tokens_per_s = m.tokens as f64 / m.seconds.max(1e-9);
            bar.set_position(m.step);
            bar.set_message(format!("loss {:.4} | {:.0} tok/s", m.loss, tokens_per_s));
            if m.step.is_multiple_of(t.log_every) || m.step == 1 {
                monitor.step(&m);
                bar.suspend(|| {
                    tracing::info!(
                        step = m.step,
                        loss = format!("{:.4}", m.loss),
                        lm = format!("{:.4}", m.lm_loss),
                        lb = format!("{:.4}", m.lb_loss),
                        lr = format!("{:.2e}", m.lr),
                        grad_norm = format!("{:.3}", m.grad_norm),
                        tokens_per_s = format!("{tokens_per_s:.0}"),
                        "train"
                    )
                });
            }
            let last = self.step == self.total_steps;
            if (t.eval_every > 0 && self.step.is_multiple_of(t.eval_every)) || last {
                let eval = self.evaluate()?;
                monitor.eval(self.step, &eval);
                bar.suspend(|| log_eval(self.step, &eval));
            }
            let interrupted = options
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst));
            if (t.checkpoint_every > 0 && self.step.is_multiple_of(t.checkpoint_every))
                || last
                || interrupted
            {
                let dir = self.save_checkpoint()?;
                monitor.flush();
                bar.suspend(|| tracing::info!(step = self.step, checkpoint = %dir.display(), "checkpoint saved"));
                if interrupted && !last {
                    bar.abandon();
                    return Ok(RunOutcome::Interrupted {
                        steps: self.step,
                        checkpoint: dir,
                    });
                }
            }
        }
        bar.finish();
        monitor.flush();
        let final_dir = self.export(&output.join("final"))?;
        Ok(RunOutcome::Completed {
            steps: self.step,
            final_dir,
        })
    }
    /// Creates and locks `output`, clears what an interrupted save left, and resumes from its
    /// latest checkpoint when asked (refusing to train over one otherwise).
    fn open_output(
        &mut self,
        output: &Path,
        options: &TrainerOptions,
    ) -> Result<resume::RunLock, TrainError> {
        std::fs::create_dir_all(output).map_err(|e| TrainError::Output {
            path: output.to_path_buf(),
            message: e.to_string(),
        })?;
        let lock = resume::lock_output(output)?;
        resume::clean_leftovers(output);
        if options.resume {
            match self.resume_latest_with(!options.no_verify)? {
                Some(step) => tracing::info!("continuing from step {step}"),
                None => tracing::warn!(
                    "--resume: no checkpoint in {}; starting from step 0",
                    output.display()
                ),
            }
        } else if let Some(found) = resume::latest_checkpoint(output) {
            return Err(TrainError::Output {
                path: output.to_path_buf(),
                message: format!(
                    "already holds checkpoint {}; pass --resume to continue it or choose another output_dir",
                    found.dir.display()
                ),
            });
        }
        Ok(lock)
    }
}

/// Logs one evaluation's per-domain losses.
fn log_eval(step: u64, eval: &[DomainEval]) {
    for d in eval {
        tracing::info!(
            step,
            domain = d.domain,
            loss = format!("{:.4}", d.loss),
            tokens = d.tokens,
            experts_per_token = d.experts_per_token.map(|e| format!("{e:.3}")),
            "eval"
        )
    }
}

fn progress_bar(enabled: bool, total: u64, position: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_position(position);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {msg} | {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}
