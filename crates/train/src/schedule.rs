//! Learning-rate schedule: linear warm-up to the peak, then cosine, linear or constant decay to
//! `min_lr_ratio · peak` at the last step.

use crate::recipe::{ScheduleKind, ScheduleSection};

/// A schedule resolved for a run of `total_steps` optimiser steps.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    peak: f64,
    min: f64,
    warmup: u64,
    total: u64,
    kind: ScheduleKind,
}

impl LrSchedule {
    /// A schedule with the recipe's shape and peak `lr` over `total_steps`.
    pub fn new(section: &ScheduleSection, lr: f64, total_steps: u64) -> Self {
        Self {
            peak: lr,
            min: lr * section.min_lr_ratio,
            warmup: section.warmup_steps,
            total: total_steps.max(1),
            kind: section.kind,
        }
    }

    /// Learning rate of optimiser step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).saturating_sub(1);
        let progress = if span == 0 {
            1.0
        } else {
            ((step - self.warmup) as f64 / span as f64).min(1.0)
        };
        let decay = match self.kind {
            ScheduleKind::Constant => return self.peak,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.min + (self.peak - self.min) * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(kind: ScheduleKind, warmup: u64) -> ScheduleSection {
        ScheduleSection {
            kind,
            warmup_steps: warmup,
            min_lr_ratio: 0.1,
        }
    }

    #[test]
    fn warmup_then_cosine_reaches_the_floor_at_the_last_step() {
        let s = LrSchedule::new(&section(ScheduleKind::Cosine, 10), 1.0, 110);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.55).abs() < 1e-2);
        assert!((s.lr(109) - 0.1).abs() < 1e-12);
        for step in 10..109 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }

    #[test]
    fn linear_and_constant() {
        let l = LrSchedule::new(&section(ScheduleKind::Linear, 0), 2.0, 11);
        assert!((l.lr(0) - 2.0).abs() < 1e-12);
        assert!((l.lr(5) - 1.1).abs() < 1e-12);
        assert!((l.lr(10) - 0.2).abs() < 1e-12);
        let c = LrSchedule::new(&section(ScheduleKind::Constant, 2), 2.0, 11);
        assert!((c.lr(0) - 1.0).abs() < 1e-12);
        assert_eq!(c.lr(7), 2.0);
    }
}
