//! The MoE transformer: one parametrised Burn implementation of OLMoE, Qwen2-MoE, Qwen3-MoE and
//! Mixtral (plus dense Llama), matching Hugging Face transformers, with routing delegated to
//! `seqtopk-router` so any routing mode (TopK, SeqTopK, online SeqTopK, …) drives the same model.
//!
//! - [`MoeTransformerConfig`] resolves each family's own `config.json`.
//! - [`MoeTransformer`] computes experts sparsely: only the selected (token, expert) pairs run,
//!   all experts of a layer in one batched dispatch ([`Experts`]).
//! - [`load_checkpoint`] reads HF checkpoint directories (single file or sharded, per-expert or
//!   fused expert layout, f32/bf16/f16).
//! - [`MoeTransformer::generate`] decodes batches of left-padded prompts through the KV cache
//!   (and the online-SeqTopK expert caches), greedy or sampled ([`GenerationConfig`]).

mod attention;
mod config;
mod error;
mod experts;
mod fused;
mod generate;
pub mod hf_keys;
mod loader;
mod lora;
mod mlp;
mod model;
mod moe;
mod norm;
mod objective;
mod precision;
pub mod rope;
mod softmax;
mod weights;

pub use attention::{Attention, AttentionMask, LayerKvCache, attention_mask, causal_blocks};
pub use config::{Family, FfnKind, MoeConfig, MoeTransformerConfig, QkNorm};
pub use error::{ConfigError, LoadError, ModelError};
pub use experts::{Experts, HfExperts, Tier, plan_tiers};
pub use generate::{FinishReason, Generated, GenerationConfig, Generator, Step, sample_token};
pub use loader::{
    HostTensor, SafetensorsSource, load_checkpoint, load_checkpoint_in, weight_files,
};
pub use lora::{
    AdapterSite, FactorValues, LoraFactors, LoraParams, LoraSpec, ModuleTargets, adapter_sites,
    from_peft, saved_by, to_peft, unmatched_target,
};
pub use mlp::SwiGlu;
pub use model::{
    DecodeState, DecoderLayer, Ffn, HiddenOutput, ModelOutput, MoeTransformer, default_positions,
};
pub use moe::{RouteCall, SparseMoe};
pub use norm::RmsNorm;
pub use objective::{TargetNll, causal_lm_loss, loss_chunk_rows, next_token_targets};
pub use softmax::attention_probs;
pub use weights::{Init, SeededInit, WeightSource, transpose};
