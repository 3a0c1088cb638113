//! Options and helpers shared by several commands: device choice, router overrides, logging.

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::Args;
use seqtopk_backend::Backend;
use seqtopk_router::{OnlineBudget, RouterConfig, RoutingMode};

/// Logs go to stderr so stdout stays machine-readable (JSON results).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Which device a command runs on.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Backend among those compiled in: cpu, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: Backend,
    /// Device index for GPU backends.
    #[arg(long, default_value_t = 0)]
    pub device_index: usize,
}

impl DeviceArgs {
    /// The Burn device, or an error naming the cargo feature that would enable the backend.
    pub fn device(&self) -> Result<Device> {
        self.backend
            .device(self.device_index)
            .with_context(|| format!("selecting backend `{}`", self.backend))
    }
}

/// Router overrides for inference commands; without `--router` the checkpoint's own routing
/// (per-token top-K with its `num_experts_per_tok`) is used.
#[derive(Debug, Clone, Args)]
pub struct RouterArgs {
    /// Routing mode: topk, seqtopk, online_seqtopk, batch_topk, top_p.
    #[arg(long, value_parser = parse_mode)]
    pub router: Option<RoutingMode>,
    /// Expert budget per token (default: the checkpoint's `num_experts_per_tok`).
    #[arg(long)]
    pub k: Option<usize>,
    /// Most experts per token (SeqTopK default K+2).
    #[arg(long)]
    pub cap: Option<usize>,
    /// Fewest experts per valid token (default 1).
    #[arg(long)]
    pub floor: Option<usize>,
    /// Probability mass for `top_p`.
    #[arg(long)]
    pub top_p_mass: Option<f64>,
    /// Budget rule of `online_seqtopk`: `rank` (default, the authors' code: a token takes every
    /// candidate ranking within the cumulative budget, up to the cap) or `strict` (never more
    /// than the budget left; in practice per-token TopK).
    #[arg(long, value_parser = parse_online_budget)]
    pub online_budget: Option<OnlineBudget>,
}

impl RouterArgs {
    /// The router configuration to apply, or `None` to keep the checkpoint's own.
    pub fn resolve(&self, checkpoint_k: Option<usize>) -> Result<Option<RouterConfig>> {
        if self.router.is_none()
            && self.k.is_none()
            && self.cap.is_none()
            && self.floor.is_none()
            && self.top_p_mass.is_none()
            && self.online_budget.is_none()
        {
            return Ok(None);
        }
        let k = self
            .k
            .or(checkpoint_k)
            .context("--k is required: the checkpoint has no MoE layers to take it from")?;
        let mut config = RouterConfig::new(self.router.unwrap_or_default(), k);
        config.cap = self.cap;
        config.floor = self.floor;
        config.top_p = self.top_p_mass;
        config.online_budget = self.online_budget;
        Ok(Some(config))
    }
}

fn parse_mode(s: &str) -> Result<RoutingMode, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("unknown routing mode `{s}` (expected topk, seqtopk, online_seqtopk, batch_topk or top_p)")
    })
}

fn parse_online_budget(s: &str) -> Result<OnlineBudget, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown online budget rule `{s}` (expected rank or strict)"))
}
