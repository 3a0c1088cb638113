//! Mixed precision: which float type the forward and backward passes compute in, and the dynamic
//! loss scaling f16 needs.
//!
//! Parameters and AdamW state stay f32 (the master weights); each pass runs on a copy of the
//! model cast to the compute type inside the autodiff graph
//! ([`MoeTransformer::cast_for_compute`](seqtopk_model::MoeTransformer::cast_for_compute)), so
//! the gradients arrive in f32. This is what PyTorch's autocast gives Hugging Face users.

use std::fmt;

use burn::tensor::{Device, FloatDType};
use serde::{Deserialize, Serialize};

/// The compute precision of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 throughout: every backend.
    #[default]
    F32,
    /// bf16 compute, f32 master weights: f32's exponent range, so no loss scaling (CUDA; the
    /// CPU; not WGSL, which has no bf16).
    Bf16,
    /// f16 compute, f32 master weights, dynamic loss scaling (CUDA, wgpu with `shader-f16`,
    /// the CPU).
    F16,
}

impl Precision {
    /// Every precision.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// The float type passes compute in; `None` for f32 (no cast at all).
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether `device` can compute in this precision (storage, conversion and arithmetic).
    pub fn is_supported_by(self, device: &Device) -> bool {
        self.compute_dtype()
            .is_none_or(|dtype| device.supports_dtype(dtype))
    }

    /// The precisions `device` supports, comma separated (for error messages).
    pub fn supported_by(device: &Device) -> String {
        Self::ALL
            .into_iter()
            .filter(|p| p.is_supported_by(device))
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.to_string() == s)
            .ok_or_else(|| format!("expected one of f32, bf16, f16, got {s:?}"))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

/// The recipe's `[loss_scale]` section (f16 only), PyTorch `GradScaler`'s defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossScaleSection {
    /// Initial scale the loss is multiplied by before the backward pass.
    pub init: f64,
    /// Consecutive steps with finite gradients after which the scale doubles.
    pub growth_interval: u64,
}

impl Default for LossScaleSection {
    fn default() -> Self {
        Self {
            init: 65536.0,
            growth_interval: 2000,
        }
    }
}

impl LossScaleSection {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.init.is_finite() && self.init >= 1.0) {
            return Err(format!(
                "loss_scale.init: expected a finite value >= 1, got {}",
                self.init
            ));
        }
        if self.growth_interval == 0 {
            return Err("loss_scale.growth_interval: expected at least 1".into());
        }
        Ok(())
    }
}

/// Dynamic loss scaling: f16 gradients of a small loss underflow to zero, so the loss is
/// multiplied by `scale` before the backward pass and the gradients divided by it after. A step
/// whose gradients overflowed (inf/NaN) is skipped and the scale halved; after
/// `growth_interval` good steps in a row it doubles. Scales are powers of two times `init`, so
/// scaling and unscaling are exact.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Current scale.
    pub scale: f64,
    /// Good steps since the last change.
    pub good_steps: u64,
    /// Good steps before growing.
    pub growth_interval: u64,
}

/// What the scaler decided for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleVerdict {
    /// The gradients are finite: apply the step.
    Apply,
    /// They overflowed: skip the step (the scale was halved).
    Skip,
    /// They overflow even below scale 1: the gradients themselves are not finite.
    GiveUp,
}

impl LossScaler {
    /// A scaler in its initial state.
    pub fn new(section: &LossScaleSection) -> Self {
        Self {
            scale: section.init,
            good_steps: 0,
            growth_interval: section.growth_interval,
        }
    }

    /// Updates the scale after a backward pass whose gradients were (not) all finite.
    pub fn update(&mut self, grads_finite: bool) -> ScaleVerdict {
        if grads_finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
            return ScaleVerdict::Apply;
        }
        self.good_steps = 0;
        self.scale *= 0.5;
        if self.scale < 1.0 {
            ScaleVerdict::GiveUp
        } else {
            ScaleVerdict::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScaler::new(&LossScaleSection {
            init: 8.0,
            growth_interval: 2,
        });
        assert_eq!(s.update(false), ScaleVerdict::Skip);
        assert_eq!(s.scale, 4.0);
        assert_eq!(s.update(true), ScaleVerdict::Apply);
        assert_eq!(s.scale, 4.0);
        assert_eq!(s.update(true), ScaleVerdict::Apply);
        assert_eq!(s.scale, 8.0);
        assert_eq!(s.good_steps, 0);
        assert_eq!(s.update(true), ScaleVerdict::Apply);
        assert_eq!(s.update(false), ScaleVerdict::Skip);
        assert_eq!((s.scale, s.good_steps), (4.0, 0));
        for _ in 0..2 {
            assert_eq!(s.update(false), ScaleVerdict::Skip);
        }
        assert_eq!(s.scale, 1.0);
        assert_eq!(s.update(false), ScaleVerdict::GiveUp);
    }

    #[test]
    fn the_cpu_computes_in_every_precision() {
        let device = Device::flex();
        assert_eq!(Precision::supported_by(&device), "f32, bf16, f16");
    }

    #[test]
    fn loss_scale_values_are_checked() {
        let bad = LossScaleSection {
            init: 0.5,
            growth_interval: 1,
        };
        assert!(bad.validate().unwrap_err().starts_with("loss_scale.init"));
        let bad = LossScaleSection {
            init: 2.0,
            growth_interval: 0,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("loss_scale.growth_interval")
        );
    }
}
