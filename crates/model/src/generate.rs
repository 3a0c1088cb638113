//! Autoregressive generation: greedy or sampled (temperature, nucleus top-p) decoding of a batch
//! of left-padded prompts through the KV cache and, in `online_seqtopk` mode, the expert caches.
//!
//! [`MoeTransformer::generate`] runs to completion; [`MoeTransformer::generator`] hands out a
//! [`Generator`] that advances one token per [`Generator::step`] and exposes the decode state and
//! each step's model output (router plans included), for streaming and inspection.
//!
//! # Reproducibility
//! Sampling draws from a small counter-based generator (SplitMix64) owned by each row: row `i`
//! of a batch uses the stream of seed `seed + i`. A row's tokens therefore depend only on its
//! prompt, the model and its own seed, never on the other rows, so the batch `[a, b]` with seed
//! `s` gives what `a` alone with seed `s` and `b` alone with seed `s + 1` give.

use burn::tensor::{Device, Tensor};
use seqtopk_rng::SplitMix64;
use seqtopk_router::TokenLayout;

use crate::ModelError;
use crate::model::{DecodeState, ModelOutput, MoeTransformer, default_positions};

/// How to pick each new token and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens generated per row (the stop token included).
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` means greedy (argmax), and then `top_p` and `seed` are unused.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability (after
    /// temperature) reaches `top_p`, at least one token. `1` keeps the whole vocabulary.
    pub top_p: f64,
    /// Seed of row 0's sampling stream; row `i` uses `seed + i`.
    pub seed: u64,
    /// Token ids that end a row; the stop token is kept in the output.
    pub stop: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of at most `max_new_tokens` tokens, stopping a row at any of `stop`.
    pub fn greedy(max_new_tokens: usize, stop: &[u32]) -> Self {
        Self {
            max_new_tokens,
            stop: stop.to_vec(),
            ..Self::default()
        }
    }

    /// Sampling at `temperature` from the nucleus of mass `top_p`, seeded with `seed`.
    pub fn sampled(max_new_tokens: usize, temperature: f64, top_p: f64, seed: u64) -> Self {
        Self {
            max_new_tokens,
            temperature,
            top_p,
            seed,
            stop: Vec::new(),
        }
    }

    /// The same configuration with `stop` as its stop tokens.
    pub fn with_stop(mut self, stop: &[u32]) -> Self {
        self.stop = stop.to_vec();
        self
    }

    /// Whether tokens are picked by argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the ranges: `temperature ≥ 0` and finite, `0 < top_p ≤ 1`.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(ModelError::Input(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::Input(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced one of the stop tokens (kept as its last token).
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

impl FinishReason {
    /// `"stop"` or `"length"`.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What [`MoeTransformer::generate`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// New tokens of each row (prompts excluded, stop token included).
    pub tokens: Vec<Vec<u32>>,
    /// Why each row ended.
    pub finish: Vec<FinishReason>,
}

/// One decoding step of a [`Generator`].
#[derive(Debug, Clone)]
pub struct Step {
    /// The token each row gained at this step, `None` for rows that had already finished.
    pub tokens: Vec<Option<u32>>,
    /// The forward pass that fed those tokens back through the caches (to predict the next
    /// ones), with its router outputs; `None` when every row has finished with this step.
    pub output: Option<ModelOutput>,
    /// The `[B, 1]` layout of that forward pass: a row is valid while it is still generating.
    pub layout: TokenLayout,
}

/// Step-by-step generation over a batch of prompts; see [`MoeTransformer::generator`].
#[derive(Debug)]
pub struct Generator<'m> {
    model: &'m MoeTransformer,
    config: GenerationConfig,
    device: Device,
    state: DecodeState,
    rngs: Vec<SplitMix64>,
    /// The token each unfinished row takes at the next step.
    pending: Vec<u32>,
    generated: Vec<Vec<u32>>,
    finish: Vec<Option<FinishReason>>,
    prefill: Option<ModelOutput>,
}

impl MoeTransformer {
    /// Generates continuations of `prompts` (any lengths, left padded internally) to completion.
    ///
    /// Routing: `online_seqtopk` prefills and decodes through each MoE layer's expert cache; any
    /// other mode routes each decode step on its own (for `seqtopk` that is a per-step budget).
    /// Rows that have finished are fed as padding, so they take no expert budget.
    ///
    /// Host synchronisation per step: the next tokens (greedy: the `[B]` argmax; sampling: the
    /// `[B, V]` last-position logits), which the next step's input needs.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        device: &Device,
    ) -> Result<Generated, ModelError> {
        let mut generator = self.generator(prompts, config, device)?;
        while generator.step()?.is_some() {}
        Ok(generator.into_generated())
    }

    /// Greedy generation (see [`Self::generate`]): at most `max_new_tokens` new tokens per row,
    /// a row stopping at a token of `stop` (which is kept). Returns only the new tokens.
    pub fn generate_greedy(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        stop: &[u32],
        device: &Device,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        Ok(self
            .generate(
                prompts,
                &GenerationConfig::greedy(max_new_tokens, stop),
                device,
            )?
            .tokens)
    }

    /// Starts generating: validates the inputs and runs the prefill of the left-padded prompts
    /// (skipped when `max_new_tokens` is 0).
    pub fn generator(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        device: &Device,
    ) -> Result<Generator<'_>, ModelError> {
        config.validate()?;
        let b = prompts.len();
        if b == 0 {
            return Err(ModelError::Input("no prompts to generate from".into()));
        }
        if let Some(row) = prompts.iter().position(Vec::is_empty) {
            return Err(ModelError::Input(format!(
                "prompt {row} is empty; every prompt needs at least one token"
            )));
        }
        let vocab = self.config().vocab_size;
        for (row, p) in prompts.iter().enumerate() {
            if let Some(i) = p.iter().position(|&id| id as usize >= vocab) {
                return Err(ModelError::Input(format!(
                    "prompt {row}, position {i}: token id {} is outside the vocabulary of {vocab}",
                    p[i]
                )));
            }
        }
        let mut generator = Generator {
            model: self,
            config: config.clone(),
            device: device.clone(),
            state: self.new_decode_state(b),
            rngs: (0..b as u64)
                .map(|i| SplitMix64::new(config.seed.wrapping_add(i)))
                .collect(),
            pending: vec![0; b],
            generated: vec![Vec::with_capacity(config.max_new_tokens); b],
            finish: vec![None; b],
            prefill: None,
        };
        if config.max_new_tokens == 0 {
            generator.finish = vec![Some(FinishReason::Length); b];
            return Ok(generator);
        }
        let t0 = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad = generator.pad();
        let mut ids = Vec::with_capacity(b * t0);
        let mut valid = Vec::with_capacity(b * t0);
        for p in prompts {
            ids.extend(std::iter::repeat_n(pad, t0 - p.len()).chain(p.iter().copied()));
            valid.extend(
                std::iter::repeat_n(false, t0 - p.len()).chain(std::iter::repeat_n(true, p.len())),
            );
        }
        let layout = TokenLayout::new(b, t0, valid, vec![0; b * t0])?;
        let positions = default_positions(&layout);
        let out = self.forward_with(
            &ids,
            &layout,
            &positions,
            Some(&mut generator.state),
            device,
        )?;
        generator.pending = generator.choose(&out.logits, &vec![true; b])?;
        generator.prefill = Some(out);
        Ok(generator)
    }
}

impl Generator<'_> {
    /// Appends one token to every unfinished row and, unless all rows have now finished, runs
    /// those tokens through the model to pick the next ones. `None` once every row has finished.
    pub fn step(&mut self) -> Result<Option<Step>, ModelError> {
        let b = self.finish.len();
        if self.is_finished() {
            return Ok(None);
        }
        let mut tokens = vec![None; b];
        for row in 0..b {
            if self.finish[row].is_some() {
                continue;
            }
            let token = self.pending[row];
            self.generated[row].push(token);
            tokens[row] = Some(token);
            if self.config.stop.contains(&token) {
                self.finish[row] = Some(FinishReason::Stop);
            } else if self.generated[row].len() >= self.config.max_new_tokens {
                self.finish[row] = Some(FinishReason::Length);
            }
        }
        let active: Vec<bool> = self.finish.iter().map(Option::is_none).collect();
        let layout = TokenLayout::new(b, 1, active.clone(), vec![0; b])?;
        if self.is_finished() {
            return Ok(Some(Step {
                tokens,
                output: None,
                layout,
            }));
        }
        let pad = self.pad();
        let input: Vec<u32> = (0..b)
            .map(|r| if active[r] { self.pending[r] } else { pad })
            .collect();
        let positions = self.state.next_position.clone();
        let out = self.model.forward_with(
            &input,
            &layout,
            &positions,
            Some(&mut self.state),
            &self.device,
        )?;
        self.pending = self.choose(&out.logits, &active)?;
        Ok(Some(Step {
            tokens,
            output: Some(out),
            layout,
        }))
    }

    /// Ends `row` now, for stop criteria the caller checks itself (a stop string found in the
    /// decoded text); its later steps are padding. Rows already finished keep their reason.
    pub fn finish_row(&mut self, row: usize, reason: FinishReason) -> Result<(), ModelError> {
        let b = self.finish.len();
        let slot = self
            .finish
            .get_mut(row)
            .ok_or_else(|| ModelError::Input(format!("row {row} is outside the batch of {b}")))?;
        slot.get_or_insert(reason);
        Ok(())
    }

    /// Whether every row has finished.
    pub fn is_finished(&self) -> bool {
        self.finish.iter().all(Option::is_some)
    }

    /// The decode state: KV caches and, in `online_seqtopk` mode, the expert caches.
    pub fn state(&self) -> &DecodeState {
        &self.state
    }

    /// The output of the prefill pass (`None` when `max_new_tokens` is 0).
    pub fn prefill_output(&self) -> Option<&ModelOutput> {
        self.prefill.as_ref()
    }

    /// Tokens generated so far per row.
    pub fn tokens(&self) -> &[Vec<u32>] {
        &self.generated
    }

    /// Why each row ended so far (`None` while it is still generating).
    pub fn finish_reasons(&self) -> &[Option<FinishReason>] {
        &self.finish
    }

    /// The generated tokens; rows still running count as stopped by length.
    pub fn into_generated(self) -> Generated {
        Generated {
            tokens: self.generated,
            finish: self
                .finish
                .into_iter()
                .map(|f| f.unwrap_or(FinishReason::Length))
                .collect(),
        }
    }

    fn pad(&self) -> u32 {
        self.model.config().pad_token_id.unwrap_or(0)
    }

    /// Picks the next token of each `active` row from the last position of `logits` `[B, T, V]`
    /// (rows not active get 0 and draw nothing from their stream).
    fn choose(&mut self, logits: &Tensor<3>, active: &[bool]) -> Result<Vec<u32>, ModelError> {
        let [b, t, v] = logits.dims();
        let last = logits.clone().narrow(1, t - 1, 1).reshape([b, v]);
        if self.config.is_greedy() {
            let ids = last
                .argmax(1)
                .reshape([b])
                .into_data()
                .try_into_vec_as::<i64>()
                .map_err(|e| {
                    ModelError::Input(format!("reading next tokens back failed: {e:?}"))
                })?;
            return Ok(ids.into_iter().map(|i| i as u32).collect());
        }
        let host = last
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Input(format!("reading logits back failed: {e:?}")))?;
        let mut out = vec![0; b];
        for row in 0..b {
            if active[row] {
                let u = self.rngs[row].next_f64();
                out[row] = sample_token(
                    &host[row * v..(row + 1) * v],
                    self.config.temperature,
                    self.config.top_p,
                    u,
                );
            }
        }
        Ok(out)
    }
}

/// The token that the uniform draw `u ∈ [0, 1)` selects from `logits` at `temperature > 0`
/// within the nucleus of mass `top_p`.
///
/// Tokens are ordered by descending probability (ties: lower id first); the nucleus is the
/// shortest prefix whose probability reaches `top_p` (at least one token), renormalised; `u`
/// picks by inverse CDF. Non-finite logits (e.g. `-inf` masks) get probability 0.
pub fn sample_token(logits: &[f32], temperature: f64, top_p: f64, u: f64) -> u32 {
    let max = logits
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return 0;
    }
    let mut probs: Vec<(f64, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let p = if x.is_finite() {
                ((f64::from(x) - f64::from(max)) / temperature).exp()
            } else {
                0.0
            };
            (p, i as u32)
        })
        .collect();
    let total: f64 = probs.iter().map(|(p, _)| p).sum();
    probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept = 0;
    let mut mass = 0.0;
    for &(p, _) in &probs {
        kept += 1;
        mass += p / total;
        if mass >= top_p {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let nucleus_total: f64 = nucleus.iter().map(|(p, _)| p).sum();
    let target = u * nucleus_total;
    let mut acc = 0.0;
    for &(p, id) in nucleus {
        acc += p;
        if target < acc {
            return id;
        }
    }
    nucleus[kept - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_keeps_the_shortest_prefix_reaching_top_p() {
        // Probabilities ∝ [4, 3, 2, 1] / 10 at temperature 1 (logits = ln p).
        let logits: Vec<f32> = [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        // top_p 0.65: {0, 1} (0.4 < 0.65 ≤ 0.7), renormalised to [4/7, 3/7].
        assert_eq!(sample_token(&logits, 1.0, 0.65, 0.0), 0);
        assert_eq!(sample_token(&logits, 1.0, 0.65, 0.57), 0);
        assert_eq!(sample_token(&logits, 1.0, 0.65, 0.58), 1);
        assert_eq!(sample_token(&logits, 1.0, 0.65, 0.999), 1);
        // top_p 1: the whole vocabulary by inverse CDF.
        assert_eq!(sample_token(&logits, 1.0, 1.0, 0.69), 1);
        assert_eq!(sample_token(&logits, 1.0, 1.0, 0.71), 2);
        assert_eq!(sample_token(&logits, 1.0, 1.0, 0.95), 3);
        // A tiny nucleus is the argmax whatever the draw.
        assert_eq!(sample_token(&logits, 1.0, 1e-9, 0.999), 0);
        // Masked logits never win.
        let masked = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        assert_eq!(sample_token(&masked, 0.7, 1.0, 0.999), 1);
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits: Vec<f32> = [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        // At T → 0 the argmax takes nearly all mass; at large T the draw is near-uniform.
        assert_eq!(sample_token(&logits, 0.05, 1.0, 0.99), 0);
        assert_eq!(sample_token(&logits, 100.0, 1.0, 0.26), 1);
        assert_eq!(sample_token(&logits, 100.0, 1.0, 0.99), 3);
    }
}
