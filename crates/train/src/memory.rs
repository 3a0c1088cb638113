//! Predicted peak memory of a training step on one device, from the model's config and the
//! recipe's shapes: what `train --dry-run` prints before anything is allocated.
//!
//! The peak is the persistent state (weights, gradients, AdamW moments: [`Budget::state_bytes`]) plus what autodiff keeps from the forward pass for backward (the
//! activations, counted tensor by tensor from this project's forward), plus the largest
//! short-lived working set on top of them: the loss's logit chunks at the end of the forward
//! pass, or the attention's score-sized gradients at the start of the backward pass. The counts
//! follow Burn 0.22's autodiff, which keeps an operation's inputs (or output) only when its
//! backward needs them: a matmul keeps both operands, `exp` its output, a product both factors,
//! a cast or a sum nothing. The model's tensors are in the compute dtype (`a` bytes: 4, or 2 in
//! a half-precision run); norm statistics, softmaxes and the router run in f32.

use seqtopk_backend::Backend;
use seqtopk_model::{
    FfnKind, MoeTransformerConfig, QkNorm, causal_blocks, hf_keys, loss_chunk_rows, saved_by,
};

use crate::recipe::{Recipe, Recompute};
use crate::trainer::Budget;

/// Rows the batched expert dispatch runs per routed pair: it pads each pass's experts to a
/// common count. Measured 1.2–1.5 on a freshly upcycled SmolLM2 (8 experts, top-2), whose
/// router is far from balanced; a trained router pads less.
const DISPATCH_PADDING: f64 = 1.3;

/// The shapes of one micro-batch on one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepShape {
    /// Sequences per micro-batch on each device.
    pub rows: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Experts per token on average (the router's budget K; SeqTopK keeps the same total).
    pub experts_per_token: usize,
    /// Whether passes compute in bf16/f16.
    pub half: bool,
    /// Activation recomputation.
    pub recompute: Recompute,
    /// LoRA rank, when linear layers are adapted (their adapted weight is formed each pass).
    pub lora_rank: Option<usize>,
    /// Whether LoRA adapts the stacked experts (their low-rank branch runs on the activations).
    pub lora_on_experts: bool,
    /// Whether the LM head trains (not under LoRA unless `modules_to_save` names it): the loss
    /// then keeps its weight gradient from the forward pass.
    pub head_trains: bool,
    /// Whether the backend is the CPU's, whose fused ops keep less: attention's softmax
    /// (`seqtopk_model::attention_probs`) only its f32 probabilities, the experts' f32
    /// `silu(gate) ⊙ up` only its input. GPU backends run Burn's compositions.
    pub fused_ops: bool,
}

impl StepShape {
    /// The shape `recipe` trains `config` at.
    pub fn of(recipe: &Recipe, config: &MoeTransformerConfig) -> Self {
        let k = recipe
            .router
            .as_ref()
            .map(|r| r.top_k)
            .or(config.moe.as_ref().map(|m| m.num_experts_per_tok))
            .unwrap_or(0);
        Self {
            rows: recipe.batch.micro_batch_size,
            seq_len: recipe.data.seq_len,
            experts_per_token: k,
            half: recipe.precision.compute_dtype().is_some(),
            recompute: recipe.train.recompute,
            lora_rank: recipe.lora.as_ref().map(|l| l.r),
            lora_on_experts: recipe
                .lora
                .as_ref()
                .is_some_and(|l| !l.target_parameters.is_empty()),
            head_trains: recipe.lora.as_ref().is_none_or(|l| {
                let head = match config.tie_word_embeddings {
                    true => hf_keys::EMBED_TOKENS,
                    false => hf_keys::LM_HEAD,
                };
                saved_by(&l.modules_to_save, head)
            }),
            fused_ops: recipe.backend == Backend::Cpu,
        }
    }
}

/// Predicted bytes of one training step's peak on one device, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Weights ([`Budget::weight_bytes`]).
    pub weights: f64,
    /// Gradients and AdamW moments of the trainable parameters.
    pub optimizer: f64,
    /// What the forward pass keeps for backward.
    pub activations: f64,
    /// The largest working set alive on top of the activations.
    pub transient: f64,
}

impl MemoryEstimate {
    /// Predicted peak bytes.
    pub fn peak(&self) -> f64 {
        self.weights + self.optimizer + self.activations + self.transient
    }
}

/// The predicted peak of a step of `config` at `shape`, with `budget`'s parameter split.
pub fn estimate(
    config: &MoeTransformerConfig,
    budget: &Budget,
    shape: &StepShape,
) -> MemoryEstimate {
    let acts = Activations::new(config, shape);
    let layers: f64 = config.layers.iter().map(|ffn| acts.layer(ffn)).sum();
    let head = acts.head();
    let activations = layers + head;
    // Backward of the last layer's decomposed softmax holds the gradients of its probabilities,
    // of the exponentials and of the scores at once; the fused backward holds one gradient
    // beyond what the layer's already-freed activations gave back (measured). Recomputing a
    // half-precision attention adds an f32 score-sized tensor in both.
    let recomputed = shape.half && shape.recompute == Recompute::Balanced;
    let held = match shape.fused_ops {
        true => 1.0,
        false => 3.0,
    } + f64::from(u8::from(recomputed));
    let backward = held * acts.scores_bytes();
    MemoryEstimate {
        weights: budget.weight_bytes(shape.half),
        optimizer: budget.state_bytes(shape.half) - budget.weight_bytes(shape.half),
        activations,
        transient: acts.loss_transient().max(backward),
    }
}

/// Per-layer activation counts for one step shape.
struct Activations<'a> {
    c: &'a MoeTransformerConfig,
    shape: StepShape,
    /// Tokens of the micro-batch.
    n: f64,
    /// Bytes per compute-dtype element.
    a: f64,
}

/// Bytes of an f32 element.
const F32: f64 = 4.0;

impl<'a> Activations<'a> {
    fn new(c: &'a MoeTransformerConfig, shape: &StepShape) -> Self {
        Self {
            c,
            shape: *shape,
            n: (shape.rows * shape.seq_len) as f64,
            a: if shape.half { 2.0 } else { F32 },
        }
    }

    /// An RMSNorm over `width` per token: its f32 input, the normalised values and the scaled
    /// output (a matmul's operand).
    fn norm(&self, width: usize) -> f64 {
        self.n * width as f64 * (F32 + 2.0 * self.a)
    }

    /// Score elements of one layer: `rows · heads · Σ_blocks queries · keys`, the causal blocks
    /// skipping keys past each block's last query.
    fn score_elements(&self) -> f64 {
        let area: usize = causal_blocks(self.shape.seq_len)
            .into_iter()
            .map(|(start, len)| len * (start + len))
            .sum();
        (self.shape.rows * self.c.num_attention_heads * area) as f64
    }

    fn scores_bytes(&self) -> f64 {
        self.score_elements() * F32
    }

    /// Attention: q and k keep their projection, rotated half and rotary output; v its
    /// projection; GQA materialises repeated k and v; the softmax what [`Self::softmax_kept`]
    /// says; the merged heads feed `o_proj`; the mask is one byte per score.
    fn attention(&self) -> f64 {
        let c = self.c;
        let (q, kv) = c.attention_widths();
        let (q, kv) = (q as f64, kv as f64);
        let gqa = c.num_key_value_heads < c.num_attention_heads;
        let mut elements = 3.0 * q + 3.0 * kv + kv + q;
        if gqa {
            elements += 2.0 * q;
        }
        let mut bytes = self.n * elements * self.a;
        bytes += match c.qk_norm {
            QkNorm::None => 0.0,
            _ => self.n * (q + kv) * (F32 + self.a),
        };
        if c.qkv_bias {
            bytes += self.n * (q + 2.0 * kv) * self.a;
        }
        let s = self.score_elements();
        bytes + s * self.softmax_kept() + s / c.num_attention_heads as f64
    }

    /// Bytes per attention score the softmax leaves for backward. Burn's balanced strategy keeps
    /// compute-bound outputs (matmuls, the fused softmax) and recomputes memory-bound ones from
    /// them: of the decomposed softmax only the raw scores stay. Without recomputation it keeps
    /// its f32 exponentials and its probabilities. The fused op keeps its f32 probabilities;
    /// in half precision the scaled, cast scores before it and the cast probabilities after it
    /// keep one more half-precision tensor either way.
    fn softmax_kept(&self) -> f64 {
        let half = if self.shape.half { self.a } else { 0.0 };
        match (self.shape.fused_ops, self.shape.recompute) {
            (false, Recompute::None) => F32 + self.a,
            (false, Recompute::Balanced) => self.a,
            (true, _) => F32 + half,
        }
    }

    /// A SwiGLU MLP of width `i` on `rows` rows: the gate and up projections, the sigmoid, the
    /// SiLU and their product (the down projection's operand); `fused` (the experts' op on
    /// the CPU in f32) keeps no sigmoid or SiLU.
    fn swiglu(&self, rows: f64, i: usize, fused: bool) -> f64 {
        let kept = if fused { 3.0 } else { 5.0 };
        rows * kept * i as f64 * self.a
    }

    /// The feed-forward part of one layer.
    fn ffn(&self, ffn: &FfnKind) -> f64 {
        let h = self.c.hidden_size as f64;
        match (ffn, &self.c.moe) {
            (FfnKind::Dense { intermediate_size }, _) => {
                self.swiglu(self.n, *intermediate_size, false)
            }
            (FfnKind::Moe, None) => 0.0,
            (FfnKind::Moe, Some(moe)) => {
                let e = moe.num_experts as f64;
                // The router's f32 logits, probabilities and selection masks.
                let router = self.n * e * 4.0 * F32;
                // Each (token, expert) pair, padded as the dispatch pads: its gathered input,
                // the SwiGLU, and its output weighted in f32; with LoRA on the experts, the
                // low-rank branch holds about another input and intermediate row per pair.
                let pairs = self.n * self.shape.experts_per_token as f64 * DISPATCH_PADDING;
                let i = moe.expert_intermediate_size;
                let fused = self.shape.fused_ops && !self.shape.half;
                let mut experts =
                    pairs * h * self.a + self.swiglu(pairs, i, fused) + pairs * h * F32;
                if self.shape.lora_on_experts {
                    experts += pairs * (h + i as f64) * self.a;
                }
                let shared = moe
                    .shared_expert_intermediate_size
                    .map_or(0.0, |i| self.swiglu(self.n, i, false) + self.n * h * self.a);
                router + experts + shared
            }
        }
    }

    /// LoRA on linear layers forms `W + s·A·B` for each adapted projection every pass and keeps
    /// it for the input gradient: attention's four projections by default.
    fn lora_weights(&self) -> f64 {
        let c = self.c;
        let h = c.hidden_size as f64;
        let (q, kv) = c.attention_widths();
        let (q, kv) = (q as f64, kv as f64);
        self.shape
            .lora_rank
            .map_or(0.0, |_| (2.0 * h * q + 2.0 * h * kv) * self.a)
    }

    /// One decoder layer: two norms, the attention, the feed-forward part.
    fn layer(&self, ffn: &FfnKind) -> f64 {
        let h = self.c.hidden_size;
        2.0 * self.norm(h) + self.attention() + self.ffn(ffn) + self.lora_weights()
    }

    /// The final norm, and the loss's kept operands: the scored hidden states and their
    /// gradient, and, when the head trains, its weight's gradient (computed in the forward pass).
    fn head(&self) -> f64 {
        let h = self.c.hidden_size as f64;
        let v = self.c.vocab_size as f64;
        let weight_grad = if self.shape.head_trains {
            v * h * self.a
        } else {
            0.0
        };
        self.norm(self.c.hidden_size) + 2.0 * self.n * h * self.a + weight_grad
    }

    /// One chunk of f32 logits and its softmax (the gradient overwrites the softmax); in half
    /// precision also an f32 copy of the head weight for each of the chunk's two matmuls with
    /// it, as the CPU backend's half-precision matmul makes (a GPU's would not).
    fn loss_transient(&self) -> f64 {
        let v = self.c.vocab_size;
        let rows = loss_chunk_rows(v).min(self.n as usize);
        let head_copies = match self.shape.half {
            true => 2.0 * (v * self.c.hidden_size) as f64 * F32,
            false => 0.0,
        };
        2.0 * (rows * v) as f64 * F32 + head_copies
    }
}
