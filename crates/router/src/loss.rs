//! Router losses: load balancing (three conventions) and z-loss.
//!
//! Every load-balancing convention is `Σ_e f_e·P_e` up to normalisation, where `f_e` is the
//! (detached) fraction of pairs sent to expert `e` and `P_e` the mean router probability of `e`
//! over valid tokens; gradients flow through `P` only. `f_e` counts the dispatch the active mode
//! really made, or a virtual per-token top-K ([`crate::LbDispatch`]). Padding is excluded
//! everywhere.

use burn::tensor::{IndexingUpdateOp, Tensor, TensorData};

use crate::plan::int_tensor;
use crate::{LbConvention, RouterOutput, TokenLayout};

/// The load-balancing loss over all MoE layers of one forward pass (unscaled: the trainer
/// multiplies by the coefficient). Shape `[1]`.
///
/// - `hf`: layers pooled, `E·Σ_e f_e·P_e`; `K` at perfect balance (transformers' value).
/// - `normalized`: per layer `E/K·Σ_e f_e·P_e`, averaged over layers; 1 at balance.
/// - `sequence`: the normalised loss per document, averaged over documents and layers.
pub fn load_balancing_loss(
    outputs: &[RouterOutput],
    layout: &TokenLayout,
    convention: LbConvention,
) -> Tensor<1> {
    let Some(first) = outputs.first() else {
        panic!("load_balancing_loss needs at least one layer's router output");
    };
    let device = first.probs.device();
    let dtype = first.probs.dtype();
    let docs = layout.documents();
    let (s, nv) = (docs.len(), docs.tokens.len());
    if convention == LbConvention::None || nv == 0 {
        return Tensor::zeros([1], (&device, dtype));
    }
    let [_, _, e] = first.probs.dims();
    let layers = outputs.len() as f64;
    let k = first.top_k as f64;
    let valid_pos = int_tensor(docs.tokens.iter().map(|&p| i64::from(p)).collect(), &device);
    let seg_of_valid: Vec<i64> = (0..s)
        .flat_map(|seg| std::iter::repeat_n(seg as i64, docs.tokens_of(seg).len()))
        .collect();
    let seg_index = int_tensor(seg_of_valid, &device);
    let doc_len: Vec<f64> = (0..s).map(|seg| docs.tokens_of(seg).len() as f64).collect();
    let pooled: Vec<f64> = match convention {
        LbConvention::Hf => {
            let mut f = vec![0.0; e];
            for out in outputs {
                for (i, &c) in out.balance_counts.iter().enumerate() {
                    f[i % e] += f64::from(c);
                }
            }
            f.iter().map(|&c| c / (layers * nv as f64)).collect()
        }
        _ => Vec::new(),
    };
    let mut total: Option<Tensor<1>> = None;
    for out in outputs {
        let [b, t, _] = out.probs.dims();
        let probs = out
            .probs
            .clone()
            .reshape([b * t, e])
            .select(0, valid_pos.clone());
        let seg_sum = Tensor::<2>::zeros([s, e], (&device, dtype)).select_assign(
            0,
            seg_index.clone(),
            probs,
            IndexingUpdateOp::Add,
        );
        let w = layer_weights(
            convention,
            &out.balance_counts,
            &pooled,
            &doc_len,
            e,
            k,
            layers,
        );
        let w = Tensor::<2>::from_data(TensorData::new(w, [s, e]), (&device, dtype));
        let layer = (w * seg_sum).sum();
        total = Some(match total {
            Some(acc) => acc + layer,
            None => layer,
        });
    }
    total.expect("at least one layer")
}

/// One layer's weights `[S, E]` on its per-document expert probability sums: the pooled
/// fractions (`Hf`), this layer's fractions (`Normalized`) or each document's own
/// (`Sequence`), scaled so that the sum is the convention's loss.
fn layer_weights(
    convention: LbConvention,
    counts: &[u32],
    pooled: &[f64],
    doc_len: &[f64],
    e: usize,
    k: f64,
    layers: f64,
) -> Vec<f64> {
    let s = doc_len.len();
    let nv: f64 = doc_len.iter().sum();
    let mut w = vec![0.0f64; s * e];
    match convention {
        LbConvention::Hf => {
            for (i, wi) in w.iter_mut().enumerate() {
                *wi = e as f64 * pooled[i % e] / (layers * nv);
            }
        }
        LbConvention::Normalized => {
            let mut per_expert = vec![0.0; e];
            for (i, &c) in counts.iter().enumerate() {
                per_expert[i % e] += f64::from(c);
            }
            for (i, wi) in w.iter_mut().enumerate() {
                *wi = e as f64 / k * per_expert[i % e] / nv.powi(2) / layers;
            }
        }
        LbConvention::Sequence => {
            for (i, wi) in w.iter_mut().enumerate() {
                let n = doc_len[i / e];
                *wi = e as f64 / k * f64::from(counts[i]) / (n * n) / (s as f64 * layers);
            }
        }
        LbConvention::None => {}
    }
    w
}

/// Router z-loss (ST-MoE): mean over valid tokens of `logsumexp(logits)²`, averaged over layers
/// (unscaled). Shape `[1]`.
pub fn z_loss(outputs: &[RouterOutput], layout: &TokenLayout) -> Tensor<1> {
    let Some(first) = outputs.first() else {
        panic!("z_loss needs at least one layer's router output");
    };
    let device = first.logits.device();
    let dtype = first.logits.dtype();
    let valid: Vec<i64> = (0..layout.num_positions())
        .filter(|&p| layout.valid()[p])
        .map(|p| p as i64)
        .collect();
    if valid.is_empty() {
        return Tensor::zeros([1], (&device, dtype));
    }
    let valid = int_tensor(valid, &device);
    let mut total: Option<Tensor<1>> = None;
    for out in outputs {
        let [b, t, _] = out.logits.dims();
        let max = out.logits.clone().detach().max_dim(2);
        let lse = (out.logits.clone() - max.clone()).exp().sum_dim(2).log() + max;
        let layer = lse
            .reshape([b * t])
            .select(0, valid.clone())
            .powi_scalar(2)
            .mean();
        total = Some(match total {
            Some(acc) => acc + layer,
            None => layer,
        });
    }
    total.expect("at least one layer") / outputs.len() as f64
}
