//! The decoder-only MoE transformer, one implementation for every supported family.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::module::linear;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use seqtopk_router::{ExpertCache, Router, RouterConfig, RouterOutput, RoutingMode, TokenLayout};

use crate::attention::{Attention, AttentionMask, LayerKvCache, attention_mask};
use crate::config::{FfnKind, MoeTransformerConfig};
use crate::hf_keys;
use crate::mlp::SwiGlu;
use crate::moe::{RouteCall, SparseMoe};
use crate::norm::RmsNorm;
use crate::precision::stored_in;
use crate::rope;
use crate::weights::{Init, WeightSource, Weights};
use crate::{LoadError, ModelError};

/// The feed-forward half of a decoder layer.
// A model has a handful of layers built once; boxing would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Ffn {
    /// Dense SwiGLU (Llama, Qwen dense layers).
    Dense(SwiGlu),
    /// Sparse MoE block.
    Moe(SparseMoe),
}

/// Pre-norm decoder layer: `h += attn(norm₁(h))`, `h += ffn(norm₂(h))`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the feed-forward.
    pub post_attention_layernorm: RmsNorm,
    /// Dense MLP or MoE block.
    pub mlp: Ffn,
}

impl DecoderLayer {
    /// The layer under `w` (HF `model.layers.L`) with feed-forward part `kind`.
    pub fn load(
        c: &MoeTransformerConfig,
        w: &mut Weights<'_>,
        kind: &FfnKind,
    ) -> Result<Self, LoadError> {
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        // Fields evaluate in HF order, so the first missing key is the first on disk.
        Ok(Self {
            input_layernorm: RmsNorm::load(&mut w.pp("input_layernorm"), h, eps)?,
            self_attn: Attention::load(c, &mut w.pp(&hf_keys::self_attn("")))?,
            post_attention_layernorm: RmsNorm::load(&mut w.pp("post_attention_layernorm"), h, eps)?,
            mlp: match kind {
                FfnKind::Dense { intermediate_size } => Ffn::Dense(SwiGlu::load(
                    &mut w.pp(&hf_keys::dense_mlp("")),
                    h,
                    *intermediate_size,
                )?),
                FfnKind::Moe => Ffn::Moe(SparseMoe::load(c, w)?),
            },
        })
    }

    /// One layer's two residual steps over `hidden` `[B, T, H]`, with the attention's `cos`,
    /// `sin` and `mask`, the layer's KV cache when decoding, and, for an MoE layer, the router,
    /// the layout and how to ask for a plan. Returns the new hidden states and, for an MoE layer,
    /// its router output.
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        kv: Option<&mut LayerKvCache>,
        routing: Option<(&Router, &TokenLayout, RouteCall<'_>)>,
    ) -> Result<(Tensor<3>, Option<RouterOutput>), ModelError> {
        let x = self.input_layernorm.forward(hidden.clone());
        let hidden = hidden + self.self_attn.forward(x, cos, sin, mask, kv);
        let x = self.post_attention_layernorm.forward(hidden.clone());
        let (y, out) = match (&self.mlp, routing) {
            (Ffn::Dense(mlp), _) => (mlp.forward(x), None),
            (Ffn::Moe(moe), Some((router, layout, call))) => {
                let (y, out) = moe.forward(x, router, layout, call)?;
                (y, Some(out))
            }
            (Ffn::Moe(_), None) => {
                return Err(ModelError::Input("MoE layer without a router".into()));
            }
        };
        Ok((hidden + y, out))
    }
}

/// The causal LM: embedding, decoder layers, final norm, LM head (tied or not).
#[derive(Module, Debug)]
pub struct MoeTransformer {
    /// Token embedding `[V, H]`.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Untied head `[H, V]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// Resolved configuration.
    #[module(skip)]
    config: MoeTransformerConfig,
    /// The router every MoE layer uses (layers share a shape, so one validated router serves all).
    #[module(skip)]
    router: Option<Router>,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// Next-token logits `[B, T, V]` (f32).
    pub logits: Tensor<3>,
    /// One router output per MoE layer, in layer order.
    pub router_outputs: Vec<RouterOutput>,
    /// Decoder index of each entry of `router_outputs`.
    pub moe_layers: Vec<usize>,
}

/// What [`MoeTransformer::forward_hidden`] returns.
#[derive(Debug, Clone)]
pub struct HiddenOutput {
    /// Final-norm hidden states `[B, T, H]` (the compute dtype).
    pub hidden: Tensor<3>,
    /// One router output per MoE layer, in layer order.
    pub router_outputs: Vec<RouterOutput>,
    /// Decoder index of each entry of `router_outputs`.
    pub moe_layers: Vec<usize>,
}

/// Generation state: the KV cache of every layer, the online-SeqTopK expert cache of every MoE
/// layer, and per row the key validity and next position.
#[derive(Debug, Clone)]
pub struct DecodeState {
    kv: Vec<LayerKvCache>,
    experts: Vec<Option<ExpertCache>>,
    key_valid: Vec<Vec<bool>>,
    pub(crate) next_position: Vec<usize>,
}

impl DecodeState {
    /// Positions cached so far (per row, padding included).
    pub fn len(&self) -> usize {
        self.kv.first().map_or(0, LayerKvCache::len)
    }

    /// Whether nothing has been cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The expert cache of decoder layer `layer` (online SeqTopK only).
    pub fn expert_cache(&self, layer: usize) -> Option<&ExpertCache> {
        self.experts.get(layer).and_then(Option::as_ref)
    }
}

/// Positions for RoPE: each valid token's index among the valid tokens of its own document in its
/// row (so packed documents restart at 0 and left padding is skipped, as HF `generate` does);
/// padding gets 0.
pub fn default_positions(layout: &TokenLayout) -> Vec<usize> {
    let (b, t) = (layout.batch(), layout.seq_len());
    let mut out = vec![0; b * t];
    for row in 0..b {
        let mut seen: Vec<(u32, usize)> = Vec::new();
        for i in 0..t {
            let p = row * t + i;
            if !layout.valid()[p] {
                continue;
            }
            let doc = layout.doc_ids()[p];
            match seen.iter_mut().find(|(d, _)| *d == doc) {
                Some((_, n)) => {
                    out[p] = *n;
                    *n += 1;
                }
                None => seen.push((doc, 1)),
            }
        }
    }
    out
}

impl MoeTransformer {
    /// A model with seeded random weights (HF-like scales), routed with per-token top-K.
    pub fn init(
        config: &MoeTransformerConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut source = crate::weights::SeededInit::new(seed);
        Self::build(config, &mut source, device).map_err(|e| match e {
            LoadError::Model(m) => m,
            other => ModelError::Input(other.to_string()),
        })
    }

    /// Builds the model from `source`, asking for every tensor by its HF key and shape.
    pub fn build(
        config: &MoeTransformerConfig,
        source: &mut dyn WeightSource,
        device: &Device,
    ) -> Result<Self, LoadError> {
        Self::build_stored_in(config, source, device, None)
    }

    /// [`Self::build`] with every weight stored in `dtype` (f32 when `None`) as soon as its part
    /// of the model is built: a half-precision model never holds more than one layer in f32.
    pub fn build_stored_in(
        config: &MoeTransformerConfig,
        source: &mut dyn WeightSource,
        device: &Device,
        dtype: Option<FloatDType>,
    ) -> Result<Self, LoadError> {
        let c = config;
        let (h, v) = (c.hidden_size, c.vocab_size);
        let mut w = Weights::new(source, device);
        let embed = w
            .pp(hf_keys::EMBED_TOKENS)
            .tensor("weight", &[v, h], Init::Normal(0.02))?;
        let embed_tokens = stored_in(
            Embedding {
                weight: Param::from_data(TensorData::new(embed, [v, h]), device),
            },
            dtype,
        );
        let mut layers = Vec::with_capacity(c.layers.len());
        for (i, kind) in c.layers.iter().enumerate() {
            let layer = DecoderLayer::load(c, &mut w.pp(&hf_keys::layer(i)), kind)?;
            layers.push(stored_in(layer, dtype));
        }
        let final_norm = RmsNorm::load(&mut w.pp(hf_keys::FINAL_NORM), h, c.rms_norm_eps)?;
        let final_norm = stored_in(final_norm, dtype);
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            let head = w.pp(hf_keys::LM_HEAD).linear(h, v, false)?;
            Some(stored_in(head, dtype))
        };
        let mut model = Self {
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            config: c.clone(),
            router: None,
        };
        if let Some(moe) = &c.moe {
            model.set_routing(&RouterConfig::new(
                RoutingMode::Topk,
                moe.num_experts_per_tok,
            ))?;
        }
        Ok(model)
    }

    /// The resolved configuration.
    pub fn config(&self) -> &MoeTransformerConfig {
        &self.config
    }

    /// The router MoE layers use, `None` for a dense model.
    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    /// Replaces the routing of every MoE layer (e.g. `topk` → `seqtopk`). The checkpoint's
    /// `norm_topk_prob` applies unless `config.renormalize` overrides it.
    pub fn set_routing(&mut self, config: &RouterConfig) -> Result<(), ModelError> {
        if let Some(moe) = &self.config.moe {
            self.router = Some(Router::new(config, moe.num_experts, moe.norm_topk_prob)?);
        }
        Ok(())
    }

    /// An empty generation state for `batch` rows.
    pub fn new_decode_state(&self, batch: usize) -> DecodeState {
        let online = self
            .router
            .as_ref()
            .is_some_and(|r| r.mode() == RoutingMode::OnlineSeqtopk);
        let e = self.config.moe.as_ref().map_or(0, |m| m.num_experts);
        DecodeState {
            kv: vec![LayerKvCache::default(); self.layers.len()],
            experts: (0..self.layers.len())
                .map(|i| {
                    (online && self.config.is_moe_layer(i)).then(|| ExpertCache::new(batch, e))
                })
                .collect(),
            key_valid: vec![Vec::new(); batch],
            next_position: vec![0; batch],
        }
    }

    /// Forward pass over a batch (training / evaluation); positions from [`default_positions`].
    ///
    /// `input_ids` is `[B·T]` row-major; `layout` gives padding and packed documents. Attention
    /// never crosses documents or attends to padding.
    pub fn forward(
        &self,
        input_ids: &[u32],
        layout: &TokenLayout,
        device: &Device,
    ) -> Result<ModelOutput, ModelError> {
        let positions = default_positions(layout);
        self.forward_with(input_ids, layout, &positions, None, device)
    }

    /// Forward pass that routes each row the way generation would route a prompt of
    /// `prompt_lens[b]` valid tokens followed by the rest of the row: under `online_seqtopk` the
    /// prompt gets offline SeqTopK and every later token the causal rule against what came
    /// before it ([`Router::route_prompted`]); other modes route as [`Self::forward`] does.
    /// For scoring continuations with the allocation generation would use. Rows hold one
    /// document each.
    pub fn forward_scoring(
        &self,
        input_ids: &[u32],
        layout: &TokenLayout,
        prompt_lens: &[usize],
        device: &Device,
    ) -> Result<ModelOutput, ModelError> {
        let positions = default_positions(layout);
        let out = self.forward_hidden_with(
            input_ids,
            layout,
            &positions,
            None,
            Some(prompt_lens),
            device,
        )?;
        Ok(ModelOutput {
            logits: self.logits(out.hidden),
            router_outputs: out.router_outputs,
            moe_layers: out.moe_layers,
        })
    }

    /// Forward pass with explicit positions (`[B·T]`) and optionally a generation state (the new
    /// tokens then attend to the cached ones, which they extend).
    pub fn forward_with(
        &self,
        input_ids: &[u32],
        layout: &TokenLayout,
        positions: &[usize],
        state: Option<&mut DecodeState>,
        device: &Device,
    ) -> Result<ModelOutput, ModelError> {
        let out = self.forward_hidden_with(input_ids, layout, positions, state, None, device)?;
        Ok(ModelOutput {
            logits: self.logits(out.hidden),
            router_outputs: out.router_outputs,
            moe_layers: out.moe_layers,
        })
    }

    /// Forward pass up to the final norm, without the LM head: what training feeds to
    /// [`Self::target_nll`], which never materialises the whole `[B, T, V]` logits.
    pub fn forward_hidden(
        &self,
        input_ids: &[u32],
        layout: &TokenLayout,
        device: &Device,
    ) -> Result<HiddenOutput, ModelError> {
        let positions = default_positions(layout);
        self.forward_hidden_with(input_ids, layout, &positions, None, None, device)
    }

    /// Next-token logits `[B, T, V]` in f32 from the final hidden states `[B, T, H]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => linear(hidden, self.embed_tokens.weight.val().transpose(), None),
        };
        if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.cast(DType::F32)
        }
    }

    /// The LM head as `[H, V]` weight and optional `[V]` bias (tied: the embedding, transposed).
    pub(crate) fn head(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        match &self.lm_head {
            Some(head) => (head.weight.val(), head.bias.as_ref().map(Param::val)),
            None => (self.embed_tokens.weight.val().transpose(), None),
        }
    }

    /// Ids and positions fill `layout`, ids are in the vocabulary, the batch is not empty.
    fn check_inputs(
        &self,
        input_ids: &[u32],
        layout: &TokenLayout,
        positions: &[usize],
    ) -> Result<(), ModelError> {
        let (b, t) = (layout.batch(), layout.seq_len());
        if input_ids.len() != b * t || positions.len() != b * t {
            return Err(ModelError::Input(format!(
                "layout is [{b}, {t}] but got {} ids and {} positions",
                input_ids.len(),
                positions.len()
            )));
        }
        let vocab = self.config.vocab_size;
        if let Some(&bad) = input_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        if b == 0 || t == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        Ok(())
    }

    fn forward_hidden_with(
        &self,
        input_ids: &[u32],
        layout: &TokenLayout,
        positions: &[usize],
        mut state: Option<&mut DecodeState>,
        prompt_lens: Option<&[usize]>,
        device: &Device,
    ) -> Result<HiddenOutput, ModelError> {
        let (b, t) = (layout.batch(), layout.seq_len());
        let c = &self.config;
        self.check_inputs(input_ids, layout, positions)?;
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(
                input_ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
                [b, t],
            ),
            device,
        );
        let (cos, sin) = rope::cos_sin(positions, b, t, c.head_dim, c.rope_theta, device);
        let mask = layout_mask(layout, state.as_deref_mut(), device)?;
        let mut hidden = self.embed_tokens.forward(ids);
        // HF casts the f32 tables to the activations' dtype before rotating.
        let (cos, sin) = match hidden.dtype() {
            DType::F32 => (cos, sin),
            dtype => (cos.cast(dtype), sin.cast(dtype)),
        };
        let mut router_outputs = Vec::new();
        let mut moe_layers = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let (kv, expert_cache) = match state.as_deref_mut() {
                Some(st) => (Some(&mut st.kv[i]), st.experts[i].as_mut()),
                None => (None, None),
            };
            // An MoE layer without a router is refused by the layer.
            let routing = match (&layer.mlp, &self.router) {
                (Ffn::Moe(_), Some(router)) => Some((
                    router,
                    layout,
                    route_call(router, expert_cache, prompt_lens),
                )),
                _ => None,
            };
            let (h, out) = layer.forward(hidden, &cos, &sin, &mask, kv, routing)?;
            hidden = h;
            if let Some(out) = out {
                router_outputs.push(out);
                moe_layers.push(i);
            }
        }
        if let Some(st) = state {
            for row in 0..b {
                if let Some(last) = (0..t).rev().find(|&i| layout.valid()[row * t + i]) {
                    st.next_position[row] = positions[row * t + last] + 1;
                }
            }
        }
        Ok(HiddenOutput {
            hidden: self.norm.forward(hidden),
            router_outputs,
            moe_layers,
        })
    }
}

/// How an MoE layer asks the router for its plan: from the layer's expert cache when generating
/// (prefill when empty, else a decode step), as generation would for prompted online SeqTopK,
/// else over whole sequences.
fn route_call<'a>(
    router: &Router,
    expert_cache: Option<&'a mut ExpertCache>,
    prompt_lens: Option<&'a [usize]>,
) -> RouteCall<'a> {
    match (expert_cache, prompt_lens) {
        (Some(cache), _) if cache.is_empty() => RouteCall::Prefill(cache),
        (Some(cache), _) => RouteCall::Decode(cache),
        (None, Some(lens)) if router.mode() == RoutingMode::OnlineSeqtopk => {
            RouteCall::Prompted(lens)
        }
        (None, _) => RouteCall::Full,
    }
}

/// The attention mask of a forward over `layout`: within-document causal attention, or, when
/// decoding, attention over the cached keys too (whose validity `state` records, extended by
/// this step's tokens).
fn layout_mask(
    layout: &TokenLayout,
    state: Option<&mut DecodeState>,
    device: &Device,
) -> Result<AttentionMask, ModelError> {
    let (b, t) = (layout.batch(), layout.seq_len());
    let Some(st) = state else {
        return Ok(attention_mask(
            layout.valid(),
            layout.doc_ids(),
            layout.doc_ids(),
            b,
            0,
            device,
        ));
    };
    if st.key_valid.len() != b {
        return Err(ModelError::Input(format!(
            "decode state has {} rows, batch has {b}",
            st.key_valid.len()
        )));
    }
    if layout.doc_ids().iter().any(|&d| d != 0) {
        return Err(ModelError::Input(
            "generation rows must hold one document each".into(),
        ));
    }
    let past = st.len();
    let mut key_valid = Vec::with_capacity(b * (past + t));
    for row in 0..b {
        st.key_valid[row].extend_from_slice(&layout.valid()[row * t..(row + 1) * t]);
        key_valid.extend_from_slice(&st.key_valid[row]);
    }
    let tk = past + t;
    Ok(attention_mask(
        &key_valid,
        &vec![0; b * tk],
        &vec![0; b * t],
        b,
        past,
        device,
    ))
}
