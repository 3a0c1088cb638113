//! Next-token negative log-likelihood through the LM head, in row chunks.
//!
//! With a 50 k vocabulary the `[N, V]` logits dominate a small model's step: autodiff would keep
//! the logits, their log-softmax and a gradient of each alive at once (≈ 0.4 GB apiece for
//! `[4, 512]` tokens). Here the head runs on chunks of rows outside the graph; for each chunk the
//! loss and its exact gradient with respect to the chunk's logits (`softmax − one_hot`) are
//! computed at once and turned into the gradients of the hidden states and of the head weight,
//! so no more than one chunk of logits is alive at a time. The graph then carries a linear
//! surrogate, `Σ h ⊙ ∂h + Σ W ⊙ ∂W`, whose backward delivers exactly those gradients (and its
//! value is replaced by the loss): the same three matmuls as an ordinary forward and backward,
//! none of them `[N, V]`-sized on the graph. This is the idea of Liger's fused linear
//! cross-entropy, written with plain tensor ops so every backend runs it.

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData};

use seqtopk_router::TokenLayout;

use crate::ModelError;
use crate::experts::int_tensor;
use crate::model::MoeTransformer;

/// Logit elements per chunk (64 MiB of f32): big enough for efficient matmuls, small next to the
/// whole `[N, V]`.
const CHUNK_ELEMENTS: usize = 16 << 20;

/// Positions per chunk of the loss over a vocabulary of `vocab` (the memory estimate reads it).
pub fn loss_chunk_rows(vocab: usize) -> usize {
    (CHUNK_ELEMENTS / vocab.max(1)).max(16)
}

/// The loss of the positions that have a target.
#[derive(Debug, Clone)]
pub struct TargetNll {
    /// `Σ −log p(target)` over the positions with a target (f32). Differentiable with respect
    /// to the hidden states and the LM head when they are on an autodiff graph.
    pub sum: Tensor<1>,
    /// `−log p(target)` of each scored position, in position order (f32, detached).
    pub per_target: Tensor<1>,
    /// Flat positions (`b·T + t`) of `per_target`'s entries.
    pub positions: Vec<usize>,
}

impl MoeTransformer {
    /// Negative log-likelihood of `targets` (`[B·T]`, `-1` = no target) given the final hidden
    /// states `[B, T, H]` of [`Self::forward_hidden`]. Logits are computed in the hidden states'
    /// dtype and the softmax in f32, as [`Self::logits`] does.
    pub fn target_nll(&self, hidden: Tensor<3>, targets: &[i32]) -> Result<TargetNll, ModelError> {
        let rows = loss_chunk_rows(self.config().vocab_size);
        self.target_nll_in_chunks(hidden, targets, rows)
    }

    fn target_nll_in_chunks(
        &self,
        hidden: Tensor<3>,
        targets: &[i32],
        rows: usize,
    ) -> Result<TargetNll, ModelError> {
        let [b, t, h] = hidden.dims();
        if targets.len() != b * t {
            return Err(ModelError::Input(format!(
                "hidden states are [{b}, {t}, {h}] but got {} targets",
                targets.len()
            )));
        }
        let vocab = self.config().vocab_size;
        if let Some(bad) = targets.iter().find(|&&x| x >= 0 && x as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "target id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let positions: Vec<usize> = (0..b * t).filter(|&p| targets[p] >= 0).collect();
        let device = hidden.device();
        if positions.is_empty() {
            // Still on the graph (with zero gradients), so a caller may always call backward.
            return Ok(TargetNll {
                sum: hidden.cast(DType::F32).sum().mul_scalar(0.0),
                per_target: Tensor::zeros([0], &device),
                positions,
            });
        }
        let (weight, bias) = self.head();
        let hidden = hidden.reshape([b * t, h]).select(
            0,
            int_tensor(positions.iter().map(|&p| p as i64).collect(), &device),
        );
        // Only what takes a gradient gets one: a frozen head (a LoRA run) skips the `[H, V]`
        // weight gradient, a matmul as large as the head's forward.
        let wants = Wants {
            hidden: hidden.is_tracked(),
            head: weight.is_tracked() || bias.as_ref().is_some_and(Tensor::is_tracked),
        };
        let ids: Vec<i64> = positions.iter().map(|&p| i64::from(targets[p])).collect();
        let rows = rows.clamp(1, positions.len());
        // Off the graph (and off autodiff's dispatch): the graph only gets the surrogate.
        let chunks = head_chunks(
            hidden.clone().inner(),
            weight.clone().inner(),
            bias.clone().map(Tensor::inner),
            &ids,
            rows,
            wants,
        );
        let value = chunks.nll.clone().sum();
        // Summed in f32: half-precision sums of N·H products would overflow.
        let f32_sum = |t: Tensor<2>| t.cast(DType::F32).sum();
        let mut terms = Vec::new();
        if let Some(grad) = chunks.grads.hidden {
            terms.push(f32_sum(hidden * grad));
        }
        if let Some(grad) = chunks.grads.weight {
            terms.push(f32_sum(weight * grad));
        }
        if let (Some(bias), Some(grad)) = (bias, chunks.grads.bias) {
            let grad = grad.cast(bias.dtype());
            terms.push((bias * grad).cast(DType::F32).sum());
        }
        let sum = match terms.into_iter().reduce(|a, b| a + b) {
            // Zero in value, the exact gradients in backward; the loss is a constant to it.
            Some(surrogate) => (surrogate.clone() - surrogate.detach()) + value,
            None => value,
        };
        Ok(TargetNll {
            sum,
            per_target: chunks.nll,
            positions,
        })
    }
}

/// Per-row losses and, where asked, the gradients of their sum.
struct HeadChunks {
    nll: Tensor<1>,
    grads: HeadGrads,
}

/// Which gradients the loss's sum must deliver.
#[derive(Clone, Copy)]
struct Wants {
    hidden: bool,
    head: bool,
}

struct HeadGrads {
    hidden: Option<Tensor<2>>,
    weight: Option<Tensor<2>>,
    bias: Option<Tensor<1>>,
}

/// The head over `hidden` (`[M, H]`, detached) in chunks of `rows`: `−log softmax(h·W + b)[id]`
/// per row, and with `grads` the gradients of their sum with respect to `h`, `W` and `b`.
fn head_chunks(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    ids: &[i64],
    rows: usize,
    wants: Wants,
) -> HeadChunks {
    let m = ids.len();
    let device = &hidden.device();
    let dtype = hidden.dtype();
    let mut nll = Vec::new();
    let mut d_hidden = Vec::new();
    let mut d_weight: Option<Tensor<2>> = None;
    let mut d_bias: Option<Tensor<1>> = None;
    for start in (0..m).step_by(rows) {
        let len = rows.min(m - start);
        let h = hidden.clone().narrow(0, start, len);
        let mut logits = h.clone().matmul(weight.clone());
        if let Some(bias) = &bias {
            logits = logits + bias.clone().unsqueeze_dim::<2>(0);
        }
        let logits = if dtype == DType::F32 {
            logits
        } else {
            logits.cast(DType::F32)
        };
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(ids[start..start + len].to_vec(), [len, 1]),
            device,
        );
        // −log p_t = max − x_t + log Σ exp(x − max), and Σ exp(x − max) = 1 / max p: the fused
        // softmax gives both the loss and the gradient without a separate log-sum-exp pass.
        let picked = logits.clone().gather(1, targets.clone());
        let max = logits.clone().max_dim(1);
        let probs = crate::softmax::softmax_rows(logits);
        let log_norm = probs.clone().max_dim(1).log().neg();
        nll.push((max - picked + log_norm).reshape([len]));
        if wants.hidden || wants.head {
            let g = probs.scatter(
                1,
                targets,
                Tensor::full([len, 1], -1.0, device),
                IndexingUpdateOp::Add,
            );
            if bias.is_some() && wants.head {
                let part = g.clone().sum_dim(0).reshape([g.dims()[1]]);
                d_bias = Some(accumulate(d_bias.take(), part));
            }
            let g = if dtype == DType::F32 {
                g
            } else {
                g.cast(dtype)
            };
            if wants.hidden {
                d_hidden.push(g.clone().matmul(weight.clone().transpose()));
            }
            if wants.head {
                d_weight = Some(accumulate(d_weight.take(), h.transpose().matmul(g)));
            }
        }
    }
    HeadChunks {
        nll: Tensor::cat(nll, 0),
        grads: HeadGrads {
            hidden: (!d_hidden.is_empty()).then(|| Tensor::cat(d_hidden, 0)),
            weight: d_weight,
            bias: d_bias,
        },
    }
}

fn accumulate<const D: usize>(acc: Option<Tensor<D>>, part: Tensor<D>) -> Tensor<D> {
    match acc {
        Some(acc) => acc + part,
        None => part,
    }
}

/// Next-token targets of a layout, `[B·T]` in position order: position `t` is scored on the
/// token at `t + 1` when both are real tokens of the same document (HF `ForCausalLMLoss` puts
/// `-100` elsewhere), `-1` otherwise. The data pipeline's batches carry the same targets.
pub fn next_token_targets(input_ids: &[u32], layout: &TokenLayout) -> Vec<i32> {
    let (b, t) = (layout.batch(), layout.seq_len());
    let (valid, docs) = (layout.valid(), layout.doc_ids());
    let mut targets = vec![-1; b * t];
    for row in 0..b {
        for i in 0..t.saturating_sub(1) {
            let (p, q) = (row * t + i, row * t + i + 1);
            if valid[p] && valid[q] && docs[p] == docs[q] {
                targets[p] = input_ids[q] as i32;
            }
        }
    }
    targets
}

/// Mean next-token cross-entropy over the pairs `(t, t+1)` that are both real tokens of the same
/// document (HF `ForCausalLMLoss` with `-100` at padding), and the number of such pairs, from
/// logits the caller already has. Training goes through [`MoeTransformer::target_nll`] on the
/// hidden states instead, which never holds the whole `[B, T, V]` logits.
///
/// # Shapes
/// `logits`: `[B, T, V]`; `input_ids`: `[B·T]`.
pub fn causal_lm_loss(
    logits: Tensor<3>,
    input_ids: &[u32],
    layout: &TokenLayout,
) -> Result<(Tensor<1>, usize), ModelError> {
    let [b, t, v] = logits.dims();
    if [b, t] != [layout.batch(), layout.seq_len()] || input_ids.len() != b * t {
        return Err(ModelError::Input(format!(
            "logits [{b}, {t}, {v}] do not match the layout or the ids"
        )));
    }
    let device = logits.device();
    let targets = next_token_targets(input_ids, layout);
    let count = targets.iter().filter(|&&x| x >= 0).count();
    if count == 0 {
        return Err(ModelError::Input("no next-token pairs to score".into()));
    }
    let weights: Vec<f32> = targets
        .iter()
        .map(|&x| if x >= 0 { 1.0 } else { 0.0 })
        .collect();
    let targets: Vec<i64> = targets.iter().map(|&x| i64::from(x.max(0))).collect();
    let logits = logits.reshape([b * t, v]);
    let logits = if logits.dtype() == DType::F32 {
        logits
    } else {
        logits.cast(DType::F32)
    };
    let logp = log_softmax(logits, 1);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [b * t, 1]), &device);
    let picked = logp.gather(1, targets).reshape([b * t]);
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [b * t]), &device);
    let loss = (picked * weights).sum().neg() / count as f64;
    Ok((loss, count))
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Int, Tensor, TensorData};
    use seqtopk_router::TokenLayout;

    use crate::{Ffn, MoeTransformer, MoeTransformerConfig};

    fn config(tied: bool) -> MoeTransformerConfig {
        MoeTransformerConfig::from_json_str(
            &format!(
                r#"{{"model_type":"olmoe","vocab_size":37,"hidden_size":16,"intermediate_size":8,
                "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,
                "rope_theta":10000.0,"num_experts":4,"num_experts_per_tok":2,
                "tie_word_embeddings":{tied}}}"#
            ),
            "test",
        )
        .unwrap()
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// `tol` is relative to the largest reference value (at least 1): the two sides sum the
    /// same terms in different orders, and the GEMM kernel (AVX2 or AVX-512) picks the order.
    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}");
        let max = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = want.iter().fold(1f32, |m, w| m.max(w.abs()));
        assert!(max <= tol * scale, "{what}: max diff {max} (scale {scale})");
    }

    /// The chunked loss and its surrogate gradients equal autodiff through the whole
    /// `log_softmax`, for tied and untied heads, with unscored positions and ragged chunks.
    #[test]
    fn chunked_nll_equals_log_softmax_in_value_and_gradients() {
        let device = Device::flex().autodiff();
        // A frozen head (a LoRA run) gets no gradient; everything before it gets the same.
        for (tied, frozen_head) in [(false, false), (true, false), (false, true)] {
            let mut model = MoeTransformer::init(&config(tied), 5, &device).unwrap();
            if frozen_head {
                model.lm_head = model.lm_head.map(Module::no_grad);
            }
            let ids: Vec<u32> = (0..14).map(|i| (i * 11 % 37) as u32).collect();
            let layout = TokenLayout::dense(2, 7);
            let mut targets: Vec<i32> = (0..14).map(|i| (i * 5 + 3) % 37).collect();
            targets[6] = -1;
            targets[13] = -1;
            targets[2] = -1;

            let hidden = model.forward_hidden(&ids, &layout, &device).unwrap().hidden;
            let nll = model.target_nll_in_chunks(hidden, &targets, 4).unwrap();
            let got_loss = values(nll.sum.clone())[0];
            let got_grads = nll.sum.backward();

            let logits = model.forward(&ids, &layout, &device).unwrap().logits;
            let logp = log_softmax(logits.reshape([14, 37]), 1);
            let picked = logp.gather(
                1,
                Tensor::<2, Int>::from_data(
                    TensorData::new(
                        targets.iter().map(|&x| i64::from(x.max(0))).collect(),
                        [14, 1],
                    ),
                    &device,
                ),
            );
            let mask = Tensor::<2>::from_data(
                TensorData::new(
                    targets
                        .iter()
                        .map(|&x| f32::from(u8::from(x >= 0)))
                        .collect(),
                    [14, 1],
                ),
                &device,
            );
            let reference = (picked * mask).sum().neg();
            let want_loss = values(reference.clone())[0];
            let want_grads = reference.backward();

            assert!(
                (got_loss - want_loss).abs() < 1e-4,
                "{got_loss} vs {want_loss}"
            );
            assert_eq!(nll.positions.len(), 11);
            let per_target: f32 = values(nll.per_target).iter().sum();
            assert!((per_target - want_loss).abs() < 1e-4);
            let embed = &model.embed_tokens.weight;
            assert_close(
                "embedding grad",
                &values(embed.grad(&got_grads).unwrap()),
                &values(embed.grad(&want_grads).unwrap()),
                1e-5,
            );
            match &model.lm_head {
                Some(head) if frozen_head => assert!(head.weight.grad(&got_grads).is_none()),
                Some(head) => assert_close(
                    "head grad",
                    &values(head.weight.grad(&got_grads).unwrap()),
                    &values(head.weight.grad(&want_grads).unwrap()),
                    1e-5,
                ),
                None => {}
            }
            let Ffn::Moe(moe) = &model.layers[0].mlp else {
                panic!("layer 0 is MoE");
            };
            assert_close(
                "expert grad",
                &values(moe.experts.gate_up.grad(&got_grads).unwrap()),
                &values(moe.experts.gate_up.grad(&want_grads).unwrap()),
                1e-5,
            );
            assert_close(
                "router grad",
                &values(moe.gate.weight.grad(&got_grads).unwrap()),
                &values(moe.gate.weight.grad(&want_grads).unwrap()),
                1e-5,
            );
        }
    }

    /// Out-of-vocabulary targets and a target count that does not match are errors.
    #[test]
    fn bad_targets_are_errors() {
        let device = Device::flex();
        let model = MoeTransformer::init(&config(false), 5, &device).unwrap();
        let layout = TokenLayout::dense(1, 3);
        let hidden = model
            .forward_hidden(&[1, 2, 3], &layout, &device)
            .unwrap()
            .hidden;
        let err = model.target_nll(hidden.clone(), &[1, 37, -1]).unwrap_err();
        assert!(err.to_string().contains("target id 37"), "{err}");
        let err = model.target_nll(hidden, &[1, 2]).unwrap_err();
        assert!(err.to_string().contains("2 targets"), "{err}");
    }
}
