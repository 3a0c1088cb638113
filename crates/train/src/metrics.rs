//! What a step reports: losses, learning rate, gradient norm, throughput, and per MoE layer the
//! routing statistics SeqTopK changes (experts per token, floor/cap fractions, expert load).

use std::path::Path;

use seqtopk_router::RoutingStats;
use seqtopk_tensorboard::{EventWriter, Histogram};

use crate::TrainError;

/// Routing of one MoE layer over all micro-batches of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRouting {
    /// Decoder layer index.
    pub layer: usize,
    /// Experts given to each valid token.
    pub experts_per_token: Vec<u32>,
    /// Tokens sent to each expert.
    pub tokens_per_expert: Vec<u64>,
    /// The router's per-token floor.
    pub floor: usize,
    /// The router's per-token cap.
    pub cap: usize,
}

impl LayerRouting {
    /// Empty statistics for decoder layer `layer`.
    pub fn new(layer: usize, stats: &RoutingStats) -> Self {
        Self {
            layer,
            experts_per_token: Vec::new(),
            tokens_per_expert: vec![0; stats.tokens_per_expert.len()],
            floor: stats.floor,
            cap: stats.cap,
        }
    }

    /// Adds one micro-batch's statistics (valid positions only).
    pub fn add(&mut self, stats: &RoutingStats) {
        self.experts_per_token.extend(
            stats
                .experts_per_token
                .iter()
                .zip(&stats.valid)
                .filter(|(_, v)| **v)
                .map(|(&c, _)| c),
        );
        for (total, &c) in self
            .tokens_per_expert
            .iter_mut()
            .zip(&stats.tokens_per_expert)
        {
            *total += u64::from(c);
        }
    }

    /// Mean and standard deviation of experts per token.
    pub fn mean_std(&self) -> (f64, f64) {
        let n = self.experts_per_token.len().max(1) as f64;
        let mean = self
            .experts_per_token
            .iter()
            .map(|&c| f64::from(c))
            .sum::<f64>()
            / n;
        let var = self
            .experts_per_token
            .iter()
            .map(|&c| (f64::from(c) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    /// Fraction of tokens at the floor and at the cap.
    pub fn floor_cap_fractions(&self) -> (f64, f64) {
        let n = self.experts_per_token.len().max(1) as f64;
        let at = |pred: &dyn Fn(usize) -> bool| {
            self.experts_per_token
                .iter()
                .filter(|&&c| pred(c as usize))
                .count() as f64
                / n
        };
        (at(&|c| c <= self.floor), at(&|c| c >= self.cap))
    }

    /// Max over mean expert load (1 = balanced) and the number of experts that got no token.
    pub fn imbalance_and_dead(&self) -> (f64, usize) {
        let total: u64 = self.tokens_per_expert.iter().sum();
        let dead = self.tokens_per_expert.iter().filter(|&&c| c == 0).count();
        if total == 0 {
            return (0.0, dead);
        }
        let mean = total as f64 / self.tokens_per_expert.len() as f64;
        let max = *self.tokens_per_expert.iter().max().unwrap_or(&0) as f64;
        (max / mean, dead)
    }
}

/// Held-out loss of one domain, and how the router spent experts on its tokens: what tells a
/// TopK model from a SeqTopK one on the same text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DomainEval {
    /// The recipe's domain tag.
    pub domain: String,
    /// Mean next-token cross-entropy over the scored targets.
    pub loss: f64,
    /// Scored target tokens.
    pub tokens: usize,
    /// Experts per valid token, over every MoE layer (`None` for a dense model).
    pub experts_per_token: Option<f64>,
    /// Fraction of (token, layer) pairs given the router's floor (1 for SeqTopK).
    pub at_floor: Option<f64>,
    /// Fraction of (token, layer) pairs given the router's cap (K + 2 for SeqTopK).
    pub at_cap: Option<f64>,
}

/// Running sums behind [`DomainEval`].
#[derive(Debug, Clone, Default)]
pub(crate) struct DomainTally {
    loss_sum: f64,
    tokens: usize,
    experts: u64,
    routed: u64,
    at_floor: u64,
    at_cap: u64,
}

impl DomainTally {
    /// Adds one scored target's loss.
    pub(crate) fn add_loss(&mut self, loss: f64) {
        self.loss_sum += loss;
        self.tokens += 1;
    }

    /// Adds one valid token's allocation in one MoE layer.
    pub(crate) fn add_routing(&mut self, experts: u32, stats: &RoutingStats) {
        self.experts += u64::from(experts);
        self.routed += 1;
        self.at_floor += u64::from(experts as usize <= stats.floor);
        self.at_cap += u64::from(experts as usize >= stats.cap);
    }

    /// The figures, `None` when no target was scored.
    pub(crate) fn finish(self, domain: String) -> Option<DomainEval> {
        if self.tokens == 0 {
            return None;
        }
        let per_routed = |v: u64| (self.routed > 0).then(|| v as f64 / self.routed as f64);
        Some(DomainEval {
            domain,
            loss: self.loss_sum / self.tokens as f64,
            tokens: self.tokens,
            experts_per_token: per_routed(self.experts),
            at_floor: per_routed(self.at_floor),
            at_cap: per_routed(self.at_cap),
        })
    }
}

/// Everything one optimiser step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// The step just completed (1-based).
    pub step: u64,
    /// Total loss (LM + weighted LB + weighted z).
    pub loss: f64,
    /// Next-token cross-entropy per target token.
    pub lm_loss: f64,
    /// Load-balancing loss, weighted by its coefficient.
    pub lb_loss: f64,
    /// Router z-loss, weighted by its coefficient.
    pub z_loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens of the step.
    pub target_tokens: usize,
    /// Non-padding tokens processed.
    pub tokens: usize,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
    /// Routing per MoE layer.
    pub routing: Vec<LayerRouting>,
    /// The f16 loss scale the step used (`None` for f32 and bf16).
    pub loss_scale: Option<f64>,
    /// Whether the f16 gradients overflowed and the update was skipped.
    pub skipped: bool,
}

/// TensorBoard logging with a bounded set of tags: a few training scalars, one eval scalar per
/// domain, and eight per MoE layer.
pub struct Monitor {
    writer: EventWriter,
    failed: bool,
}

/// Logs the first failed write (a full disk must not stop training, nor flood the log).
fn ok(failed: &mut bool, result: Result<(), seqtopk_tensorboard::TensorboardError>) {
    if let Err(e) = result
        && !std::mem::replace(failed, true)
    {
        tracing::warn!("writing TensorBoard events failed (further failures not shown): {e}");
    }
}

impl Monitor {
    /// Opens (creates) the log directory.
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let writer = EventWriter::create(dir).map_err(|e| TrainError::Output {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            writer,
            failed: false,
        })
    }

    /// Logs one step.
    pub fn step(&mut self, m: &StepMetrics) {
        let s = m.step as i64;
        let w = &mut self.writer;
        let failed = &mut self.failed;
        ok(failed, w.add_scalar("train/loss", s, m.loss));
        ok(failed, w.add_scalar("train/lm_loss", s, m.lm_loss));
        ok(failed, w.add_scalar("train/lb_loss", s, m.lb_loss));
        ok(failed, w.add_scalar("train/z_loss", s, m.z_loss));
        ok(failed, w.add_scalar("train/lr", s, m.lr));
        ok(failed, w.add_scalar("train/grad_norm", s, m.grad_norm));
        if let Some(scale) = m.loss_scale {
            ok(failed, w.add_scalar("train/loss_scale", s, scale));
        }
        if m.seconds > 0.0 {
            ok(
                failed,
                w.add_scalar("train/tokens_per_s", s, m.tokens as f64 / m.seconds),
            );
        }
        for r in &m.routing {
            let p = format!("router/layer{}", r.layer);
            let (mean, std) = r.mean_std();
            let (floor, cap) = r.floor_cap_fractions();
            let (imbalance, dead) = r.imbalance_and_dead();
            for (name, value) in [
                ("experts_per_token_mean", mean),
                ("experts_per_token_std", std),
                ("fraction_at_floor", floor),
                ("fraction_at_cap", cap),
                ("load_imbalance_max_over_mean", imbalance),
                ("dead_experts", dead as f64),
            ] {
                ok(failed, w.add_scalar(&format!("{p}/{name}"), s, value));
            }
            // Integer x-axes, one bucket per value: experts given to a token (height = tokens), and
            // expert index (height = tokens routed to that expert).
            let counts = histogram(r.experts_per_token.iter().map(|&c| c as usize), r.cap);
            let load: Vec<f64> = r.tokens_per_expert.iter().map(|&c| c as f64).collect();
            for (name, data) in [("experts_per_token", counts), ("tokens_per_expert", load)] {
                match Histogram::from_integer_counts(&data) {
                    Ok(h) => ok(failed, w.add_histogram_data(&format!("{p}/{name}"), s, h)),
                    Err(e) => ok(failed, Err(e)),
                }
            }
        }
    }

    /// Logs held-out loss per domain and overall, and each domain's experts per token and
    /// floor/cap fractions.
    pub fn eval(&mut self, step: u64, per_domain: &[DomainEval]) {
        let (mut sum, mut n) = (0.0, 0usize);
        let s = step as i64;
        for d in per_domain {
            let routing = [
                ("experts_per_token", d.experts_per_token),
                ("at_floor", d.at_floor),
                ("at_cap", d.at_cap),
            ];
            let scalars = std::iter::once(("loss", Some(d.loss))).chain(routing);
            for (name, value) in scalars {
                if let Some(v) = value {
                    let tag = format!("eval/{name}/{}", d.domain);
                    ok(&mut self.failed, self.writer.add_scalar(&tag, s, v));
                }
            }
            sum += d.loss * d.tokens as f64;
            n += d.tokens;
        }
        if n > 0 {
            ok(
                &mut self.failed,
                self.writer.add_scalar("eval/loss/all", s, sum / n as f64),
            );
        }
    }

    /// Writes buffered events to disk.
    pub fn flush(&mut self) {
        if let Err(e) = self.writer.flush() {
            tracing::warn!("flushing TensorBoard events failed: {e}");
        }
    }
}

fn histogram(values: impl Iterator<Item = usize>, max: usize) -> Vec<f64> {
    let mut counts = vec![0.0; max + 1];
    for v in values {
        counts[v.min(max)] += 1.0;
    }
    counts
}
