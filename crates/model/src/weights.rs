//! Where parameters come from when a model is built: a checkpoint or a seeded initialisation.
//!
//! Every tensor is asked for by its HF key and HF shape (`[out, in]` for projections), so one
//! builder serves loading and fresh initialisation, and shape errors name the HF key. Each layer
//! reads its own weights through a [`Weights`] view under its HF module path.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, TensorData};
use seqtopk_rng::SplitMix64;

use crate::LoadError;
use crate::hf_keys::join;

/// How a parameter is initialised when no checkpoint provides it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
    /// `N(0, std²)`.
    Normal(f32),
}

/// A provider of f32 tensors in HF layout.
pub trait WeightSource {
    /// The tensor `key` with shape `shape`, row-major f32.
    fn tensor(&mut self, key: &str, shape: &[usize], init: Init) -> Result<Vec<f32>, LoadError>;
    /// Whether `key` is present (a seeded source has nothing, so per-expert keys are used).
    fn contains(&self, key: &str) -> bool;
    /// Shape of `key` when present.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
}

/// A [`WeightSource`] seen from one HF module path: a layer's builder asks for `weight`, not
/// `model.layers.3.self_attn.q_proj.weight`.
pub struct Weights<'a> {
    source: &'a mut dyn WeightSource,
    prefix: String,
    device: &'a Device,
}

impl<'a> Weights<'a> {
    /// The whole of `source`, building on `device`.
    pub fn new(source: &'a mut dyn WeightSource, device: &'a Device) -> Self {
        Self {
            source,
            prefix: String::new(),
            device,
        }
    }

    /// The view of sub-module `path` (dots allowed).
    pub fn pp(&mut self, path: &str) -> Weights<'_> {
        Weights {
            prefix: join(&self.prefix, path),
            source: &mut *self.source,
            device: self.device,
        }
    }

    /// The device parameters are built on.
    pub fn device(&self) -> &Device {
        self.device
    }

    /// The full key of `name` under this view.
    pub fn key(&self, name: &str) -> String {
        join(&self.prefix, name)
    }

    /// [`WeightSource::tensor`] of `name` under this view.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
    ) -> Result<Vec<f32>, LoadError> {
        let key = self.key(name);
        self.source.tensor(&key, shape, init)
    }

    /// Whether `name` is present under this view.
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.key(name))
    }

    /// Shape of `name` under this view, when present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.source.shape(&self.key(name))
    }

    /// This module as a `Linear`: HF `weight` `[out, in]` (transposed to Burn's `[in, out]`) and,
    /// when `bias`, `bias`.
    pub fn linear(&mut self, d_in: usize, d_out: usize, bias: bool) -> Result<Linear, LoadError> {
        let w = self.tensor(
            "weight",
            &[d_out, d_in],
            Init::Normal(1.0 / (d_in as f32).sqrt()),
        )?;
        let bias = match bias {
            true => Some(self.tensor("bias", &[d_out], Init::Zeros)?),
            false => None,
        };
        Ok(Linear {
            weight: Param::from_data(
                TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]),
                self.device,
            ),
            bias: bias.map(|b| Param::from_data(TensorData::new(b, [d_out]), self.device)),
        })
    }
}

/// Seeded random parameters (SplitMix64 + Box–Muller): reproducible models for tests and
/// training from scratch.
#[derive(Debug, Clone)]
pub struct SeededInit {
    rng: SplitMix64,
}

impl SeededInit {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
        }
    }

    /// Uniform in `(0, 1)`: the half-step offset keeps Box–Muller's `ln` finite.
    fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// One standard normal draw.
    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

impl WeightSource for SeededInit {
    fn tensor(&mut self, _key: &str, shape: &[usize], init: Init) -> Result<Vec<f32>, LoadError> {
        let n = shape.iter().product();
        Ok(match init {
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
            Init::Normal(std) => (0..n).map(|_| self.normal() * std).collect(),
        })
    }

    fn contains(&self, _key: &str) -> bool {
        false
    }

    fn shape(&self, _key: &str) -> Option<Vec<usize>> {
        None
    }
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major (HF `[out, in]` → Burn `Linear` `[in, out]`).
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
