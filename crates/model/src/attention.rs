//! Causal self-attention with GQA, HF rotate-half RoPE, optional QK-norm and a KV cache.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use crate::LoadError;
use crate::config::{MoeTransformerConfig, QkNorm};
use crate::hf_keys::ATTENTION;
use crate::lora::linear_forward;
use crate::norm::RmsNorm;
use crate::rope;
use crate::softmax::attention_probs;
use crate::weights::Weights;

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
///
/// When no query row is fully masked (see [`AttentionMask`]) the same probabilities come out of
/// cheaper work: masked scores are `−∞` (whose `exp` is exactly 0 on the fast path, as `f32::MIN`
/// minus the row maximum is after a slow underflow), and a long causal prefill runs in query
/// blocks that each multiply only the keys up to their last query, skipping the upper triangle
/// of `q·kᵀ` and of the softmax (about 3/8 of the attention's work at four blocks).
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
    /// The block under `w` (HF `self_attn`): [`ATTENTION`] projections and, with QK-norm,
    /// `q_norm`/`k_norm`.
    pub fn load(c: &MoeTransformerConfig, w: &mut Weights<'_>) -> Result<Self, LoadError> {
        let (h, nh, nkv, d) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        let (q_width, k_width) = match c.qk_norm {
            QkNorm::FullWidth => (nh * d, nkv * d),
            _ => (d, d),
        };
        let qk = c.qk_norm != QkNorm::None;
        let [q, k, v, o] = ATTENTION;
        Ok(Self {
            q_proj: w.pp(q).linear(h, nh * d, c.qkv_bias)?,
            k_proj: w.pp(k).linear(h, nkv * d, c.qkv_bias)?,
            v_proj: w.pp(v).linear(h, nkv * d, c.qkv_bias)?,
            o_proj: w.pp(o).linear(nh * d, h, c.o_bias)?,
            q_norm: match qk {
                true => Some(RmsNorm::load(&mut w.pp("q_norm"), q_width, c.rms_norm_eps)?),
                false => None,
            },
            k_norm: match qk {
                true => Some(RmsNorm::load(&mut w.pp("k_norm"), k_width, c.rms_norm_eps)?),
                false => None,
            },
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            per_head_norm: c.qk_norm == QkNorm::PerHead,
            clip_qkv: c.clip_qkv.unwrap_or(0.0),
        })
    }

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
    /// `x`: `[B, T, H]`; `cos`/`sin`: `[B, 1, T, d]`; `mask` covers `[B, 1, T, T_past + T]`.
    /// Returns `[B, T, H]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        cache: Option<&mut LayerKvCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut q = linear_forward(&self.q_proj, x.clone());
        let mut k = linear_forward(&self.k_proj, x.clone());
        let mut v = linear_forward(&self.v_proj, x);
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
        let blocks = mask.query_blocks(t);
        let out = if blocks.len() == 1 {
            attend(q, k, v, mask.fill(), &mask.masked)
        } else {
            let parts = blocks
                .into_iter()
                .map(|(start, len)| {
                    // Keys past the block's last query are masked for all of its queries.
                    let keys = start + len;
                    attend(
                        q.clone().narrow(2, start, len),
                        k.clone().narrow(2, 0, keys),
                        v.clone().narrow(2, 0, keys),
                        mask.fill(),
                        &mask.masked.clone().narrow(2, start, len).narrow(3, 0, keys),
                    )
                })
                .collect();
            Tensor::cat(parts, 2)
        };
        let out = out.swap_dims(1, 2).reshape([b, t, nh * d]);
        linear_forward(&self.o_proj, out)
    }
}

/// `softmax(q·kᵀ/√d, masked → fill)·v` for `q` `[B, heads, T_q, d]`, `k`/`v` `[B, heads, T_k, d]`
/// and `masked` `[B, 1, T_q, T_k]`; the softmax runs in f32.
fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    fill: f32,
    masked: &Tensor<4, Bool>,
) -> Tensor<4> {
    let [b, nh, _, d] = q.dims();
    let dtype = q.dtype();
    let scores = q.matmul(k.swap_dims(2, 3));
    let scale = 1.0 / (d as f64).sqrt();
    // Half precision scales before the cast to f32, as HF does.
    let (scores, scale) = if dtype == DType::F32 || dtype == DType::F64 {
        (scores, scale)
    } else {
        ((scores * scale).cast(DType::F32), 1.0)
    };
    let [_, _, tq, tk] = scores.dims();
    let masked = masked.clone().expand([b, nh, tq, tk]);
    let probs = attention_probs(scores, masked, fill, scale);
    let probs = if probs.dtype() == dtype {
        probs
    } else {
        probs.cast(dtype)
    };
    probs.matmul(v)
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

/// Which keys each query may not attend, and what that allows the attention to skip.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    /// `[B, 1, T_q, T_k]`, `true` = not attended.
    pub masked: Tensor<4, Bool>,
    /// Whether every query attends at least one key (no left-padding query with nothing before
    /// it): then no row needs HF's uniform average over `f32::MIN` scores.
    pub every_query_sees_a_key: bool,
    /// Cached positions before the queries (`T_k = past + T_q`).
    pub past: usize,
}

/// Query rows per causal block: below this, splitting the prefill saves less than the extra
/// operations cost (and decoding, one row at a time, never splits).
const MIN_QUERY_BLOCK: usize = 128;

/// Most causal blocks of one prefill: the operation count stays bounded, and four blocks already
/// skip 3/8 of the attention (eight would skip 7/16).
const MAX_QUERY_BLOCKS: usize = 4;

impl AttentionMask {
    /// The score masked keys get: `−∞` when every row keeps a key (its `exp` is 0 on the fast
    /// path), else `f32::MIN` as HF (a fully masked row then averages uniformly, not NaN).
    fn fill(&self) -> f32 {
        if self.every_query_sees_a_key {
            f32::NEG_INFINITY
        } else {
            f32::MIN
        }
    }

    /// `(first query, queries)` of the causal blocks `t` queries run in: [`causal_blocks`] when
    /// the queries start the sequence (no cache) and every row keeps a key, else one block.
    pub fn query_blocks(&self, t: usize) -> Vec<(usize, usize)> {
        match self.past == 0 && self.every_query_sees_a_key {
            true => causal_blocks(t),
            false => vec![(0, t)],
        }
    }
}

/// `(first query, queries)` of the causal blocks a prefill of `t` queries splits into, each
/// holding at least [`MIN_QUERY_BLOCK`] queries (one block below that); block `b` attends to
/// keys up to its last query only (the memory estimate reads the same split).
pub fn causal_blocks(t: usize) -> Vec<(usize, usize)> {
    let n = (t / MIN_QUERY_BLOCK).clamp(1, MAX_QUERY_BLOCKS);
    let len = t.div_ceil(n);
    (0..t)
        .step_by(len.max(1))
        .map(|start| (start, len.min(t - start)))
        .collect()
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
) -> AttentionMask {
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
    AttentionMask {
        masked: causal.bool_or(key_pad).bool_or(other_doc),
        every_query_sees_a_key: every_query_sees_a_key(key_valid, key_doc, query_doc, batch, past),
        past,
    }
}

/// Whether each query has a key it may attend: the first real key of its document in its row
/// comes at or before the query's own position. `O(B·T)` with few documents per row.
fn every_query_sees_a_key(
    key_valid: &[bool],
    key_doc: &[u32],
    query_doc: &[u32],
    batch: usize,
    past: usize,
) -> bool {
    let tk = key_valid.len() / batch.max(1);
    let tq = query_doc.len() / batch.max(1);
    (0..batch).all(|row| {
        // (document, position of its first real key), in order of first appearance.
        let mut first: Vec<(u32, usize)> = Vec::new();
        for j in 0..tk {
            let doc = key_doc[row * tk + j];
            if key_valid[row * tk + j] && !first.iter().any(|&(d, _)| d == doc) {
                first.push((doc, j));
            }
        }
        (0..tq).all(|i| {
            let doc = query_doc[row * tq + i];
            first.iter().any(|&(d, j)| d == doc && j <= past + i)
        })
    })
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
        // The trailing padding query still sees its document's first token.
        assert!(mask.every_query_sees_a_key);
        let m: Vec<bool> = mask.masked.into_data().try_into_vec::<bool>().unwrap();
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
    fn a_left_padding_query_sees_no_key_and_keeps_hf_fill() {
        let device = Device::flex();
        let mask = attention_mask(&[false, true], &[0, 0], &[0, 0], 1, 0, &device);
        assert!(!mask.every_query_sees_a_key);
        assert_eq!(mask.fill(), f32::MIN);
        // Interleaved documents: each query sees its own token.
        let mask = attention_mask(
            &[true, true, true, true],
            &[0, 1, 0, 1],
            &[0, 1, 0, 1],
            1,
            0,
            &device,
        );
        assert!(mask.every_query_sees_a_key);
        // A query of document 1 before document 1's first real token sees nothing.
        let mask = attention_mask(&[true, false, true], &[0, 1, 1], &[0, 1, 1], 1, 0, &device);
        assert!(!mask.every_query_sees_a_key);
        assert_eq!(mask.query_blocks(512), vec![(0, 512)]);
    }

    #[test]
    fn long_causal_prefills_run_in_bounded_blocks() {
        let device = Device::flex();
        let mask = attention_mask(&[true; 8], &[0; 8], &[0; 8], 1, 0, &device);
        assert_eq!(mask.fill(), f32::NEG_INFINITY);
        assert_eq!(mask.query_blocks(100), vec![(0, 100)]);
        assert_eq!(mask.query_blocks(256), vec![(0, 128), (128, 128)]);
        assert_eq!(
            mask.query_blocks(4096),
            vec![(0, 1024), (1024, 1024), (2048, 1024), (3072, 1024)]
        );
        assert_eq!(
            mask.query_blocks(513),
            vec![(0, 129), (129, 129), (258, 129), (387, 126)]
        );
    }

    #[test]
    fn decode_mask_sees_the_past() {
        let device = Device::flex();
        let mask = attention_mask(&[false, true, true], &[0, 0, 0], &[0], 1, 2, &device);
        assert!(mask.every_query_sees_a_key);
        assert_eq!(mask.query_blocks(1), vec![(0, 1)]);
        let m: Vec<bool> = mask.masked.into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(m, vec![true, false, false]);
    }
}
