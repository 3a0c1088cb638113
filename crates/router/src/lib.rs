//! Routing for Mixture-of-Experts layers.
//!
//! A router turns router logits `[B, T, E]` into a [`RoutingPlan`]: the selected
//! (token, expert) pairs grouped by expert, with differentiable combine weights, which an MoE
//! layer uses to gather each expert's tokens, run only those, and scatter-add the results back.
//!
//! Modes ([`RoutingMode`]):
//! - `topk`: per-token top-K, exactly as Hugging Face OLMoE / Qwen-MoE / Mixtral compute it.
//! - `seqtopk`: SeqTopK (arXiv 2511.06494): each sequence (each document of a packed row) keeps
//!   its top `T_valid·K` (token, expert) pairs, with a per-token cap and floor.
//! - `online_seqtopk`: the causal form used for decoding, with an [`ExpertCache`] per layer.
//! - `batch_topk`: one flat top-k over the whole batch (the paper's baseline).
//! - `top_p`: per token, the smallest prefix of sorted probabilities reaching `p`.
//!
//! Selection is detached from the autodiff graph; gradients reach the router only through the
//! gathered probabilities of the selected pairs. Losses: [`load_balancing_loss`] in three
//! conventions and [`z_loss`].

mod config;
mod error;
mod layout;
mod loss;
mod online;
mod plan;
mod router;
pub mod select;

pub use config::{
    LbConvention, LbDispatch, LoadBalanceConfig, OnlineBudget, RouterConfig, RoutingMode,
};
pub use error::RoutingError;
pub use layout::{Segments, TokenLayout};
pub use loss::{load_balancing_loss, z_loss};
pub use online::ExpertCache;
pub use plan::{RoutingPlan, RoutingStats};
pub use router::{Router, RouterOutput};
