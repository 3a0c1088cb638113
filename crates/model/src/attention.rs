//! Causal self-attention with GQA, HF rotate-half RoPE, optional QK-norm and a KV cache.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use crate::config::QkNorm;
use crate::norm::RmsNorm;
use crate::rope;

/// Keys and values of past positions for one layer, after RoPE and before the GQA repeat.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache {
    /// `[B, kv_heads, T_past, d]`.
    k: Option<Tensor<4>>,
    /// `[B, kv_heads, T_past, d]`.
    v: Option<Tensor<4>>,
}

impl LayerKvCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Multi-head attention as HF Llama/OLMoE/Qwen/Mixtral compute it (eager path):
/// `softmax(q·kᵀ/√d + mask)·v` with the softmax in f32 and masked scores set to `f32::MIN`, so a
/// fully masked row (a left-padding query) averages uniformly instead of producing NaN.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[H, heads·d]`.
    pub q_proj: Linear,
    /// `[H, kv_heads·d]`.
    pub k_proj: Linear,
    /// `[H, kv_heads·d]`.
    pub v_proj: Linear,
    /// `[heads·d, H]`.
    pub o_proj: Linear,
    /// QK-norm of q: width `heads·d` (full width) or `d` (per head).
    pub q_norm: Option<RmsNorm>,
    /// QK-norm of k: width `kv_heads·d` (full width) or `d` (per head).
    pub k_norm: Option<RmsNorm>,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Whether the QK-norm is per head (else full width when present).
    pub per_head_norm: bool,
    /// Clamp bound for q/k/v, 0 for none.
    pub clip_qkv: f64,
}

impl Attention {
    /// Where `q_norm`/`k_norm` apply.
    pub fn qk_norm(&self) -> QkNorm {
        match (&self.q_norm, self.per_head_norm) {
            (None, _) => QkNorm::None,
            (Some(_), true) => QkNorm::PerHead,
            (Some(_), false) => QkNorm::FullWidth,
        }
    }

    /// Attends `x` over the cached keys plus its own, appending its keys to `cache` when given.
    ///
    /// # Shapes
    /// `x`: `[B, T, H]`; `cos`/`sin`: `[B, 1, T, d]`; `mask`: `[B, 1, T, T_past + T]`,
    /// `true` = not attended. Returns `[B, T, H]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &Tensor<4, Bool>,
        cache: Option<&mut LayerKvCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut q = self.q_proj.forward(x.clone());
        let mut k = self.k_proj.forward(x.clone());
        let mut v = self.v_proj.forward(x);
        if !self.per_head_norm {
            if let Some(n) = &self.q_norm {
                q = n.forward(q);
            }
            if let Some(n) = &self.k_norm {
                k = n.forward(k);
            }
        }
        if self.clip_qkv > 0.0 {
            let c = self.clip_qkv;
            q = q.clamp(-c, c);
            k = k.clamp(-c, c);
            v = v.clamp(-c, c);
        }
        let mut q = q.reshape([b, t, nh, d]).swap_dims(1, 2);
        let mut k = k.reshape([b, t, nkv, d]).swap_dims(1, 2);
        let v = v.reshape([b, t, nkv, d]).swap_dims(1, 2);
        if self.per_head_norm {
            if let Some(n) = &self.q_norm {
                q = n.forward(q);
            }
            if let Some(n) = &self.k_norm {
                k = n.forward(k);
            }
        }
        let q = rope::apply(q, cos, sin);
        let k = rope::apply(k, cos, sin);
        let (k, v) = match cache {
            Some(cache) => {
                let (k, v) = match (cache.k.take(), cache.v.take()) {
                    (Some(pk), Some(pv)) => {
                        (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2))
                    }
                    _ => (k, v),
                };
                cache.k = Some(k.clone());
                cache.v = Some(v.clone());
                (k, v)
            }
            None => (k, v),
        };
        let k = repeat_kv(k, nh / nkv);
        let v = repeat_kv(v, nh / nkv);
        let dtype = q.dtype();
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
        let scores = if dtype == DType::F32 || dtype == DType::F64 {
            scores
        } else {
            scores.cast(DType::F32)
        };
        let [_, _, tq, tk] = scores.dims();
        let scores = scores.mask_fill(mask.clone().expand([b, nh, tq, tk]), f32::MIN);
        let probs = softmax(scores, 3);
        let probs = if probs.dtype() == dtype {
            probs
        } else {
            probs.cast(dtype)
        };
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, t, nh * d]);
        self.o_proj.forward(out)
    }
}

/// GQA: key/value head `j` serves query heads `j·g .. (j+1)·g` (HF `repeat_kv`).
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, groups, t, d])
        .reshape([b, h * groups, t, d])
}

/// The attention mask `[B, 1, T_q, T_k]` (`true` = masked): a query at absolute position
/// `past + i` sees key `j` when `j ≤ past + i`, the key is a real token, and both belong to the
/// same document of the row (packed rows never attend across documents).
///
/// `key_valid`/`key_doc` are `[B·T_k]`, `query_doc` is `[B·T_q]`, row-major. Built on the device
/// from `O(B·T)` host data, never a host `B·T²` array.
pub fn attention_mask(
    key_valid: &[bool],
    key_doc: &[u32],
    query_doc: &[u32],
    batch: usize,
    past: usize,
    device: &Device,
) -> Tensor<4, Bool> {
    let tk = key_valid.len() / batch.max(1);
    let tq = query_doc.len() / batch.max(1);
    let causal = Tensor::<2, Bool>::tril_mask([tq, tk], past as i64, device)
        .reshape([1, 1, tq, tk])
        .expand([batch, 1, tq, tk]);
    let key_pad: Vec<bool> = key_valid.iter().map(|v| !v).collect();
    let key_pad = Tensor::<2, Bool>::from_data(TensorData::new(key_pad, [batch, tk]), device)
        .reshape([batch, 1, 1, tk])
        .expand([batch, 1, tq, tk]);
    let as_int = |ids: &[u32], n: usize| {
        Tensor::<2, Int>::from_data(
            TensorData::new(
                ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
                [batch, n],
            ),
            device,
        )
    };
    let kd = as_int(key_doc, tk)
        .reshape([batch, 1, 1, tk])
        .expand([batch, 1, tq, tk]);
    let qd = as_int(query_doc, tq)
        .reshape([batch, 1, tq, 1])
        .expand([batch, 1, tq, tk]);
    let other_doc = kd.not_equal(qd);
    causal.bool_or(key_pad).bool_or(other_doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_padded_and_per_document() {
        let device = Device::flex();
        // One row: docs [0, 0, 1, 1], last position padding.
        let mask = attention_mask(
            &[true, true, true, false],
            &[0, 0, 1, 1],
            &[0, 0, 1, 1],
            1,
            0,
            &device,
        );
        let m: Vec<bool> = mask.into_data().try_into_vec::<bool>().unwrap();
        #[rustfmt::skip]
        let allowed = [
            true, false, false, false,
            true, true, false, false,
            false, false, true, false,
            false, false, true, false,
        ];
        let got: Vec<bool> = m.iter().map(|x| !x).collect();
        assert_eq!(got, allowed);
    }

    #[test]
    fn decode_mask_sees_the_past() {
        let device = Device::flex();
        let mask = attention_mask(&[false, true, true], &[0, 0, 0], &[0], 1, 2, &device);
        let m: Vec<bool> = mask.into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(m, vec![true, false, false]);
    }
}
