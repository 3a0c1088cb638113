//! Options and helpers shared by several commands: device choice, router overrides, checkpoint
//! verification, logging.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::Args;
use seqtopk_backend::Backend;
use seqtopk_router::{OnlineBudget, RouterConfig, RoutingMode};

/// Logs go to stderr so stdout stays machine-readable (JSON results); colour codes only when
/// stderr is a terminal, so redirected logs stay plain text.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Whether a native checkpoint's files are checked against its manifest before use.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Skip the SHA-256 check of a native checkpoint's files against its manifest (sizes are
    /// still checked). The check reads the checkpoint once; skip it only when you must.
    #[arg(long)]
    pub no_verify: bool,
}

impl VerifyArgs {
    /// Loads `dir`, verified unless `--no-verify`.
    pub fn load(
        &self,
        dir: &Path,
        device: &Device,
    ) -> Result<seqtopk_checkpoint::LoadedCheckpoint> {
        Ok(seqtopk_checkpoint::load_with(dir, device, !self.no_verify)?)
    }
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

/// Router overrides for inference commands; without `--router` the checkpoint's own routing is
/// used: the one recorded in its config.json by `seqtopk train`, else per-token top-K with its
/// `num_experts_per_tok`.
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
    /// Whether any router option was given.
    pub fn is_set(&self) -> bool {
        self.router.is_some()
            || self.k.is_some()
            || self.cap.is_some()
            || self.floor.is_some()
            || self.top_p_mass.is_some()
            || self.online_budget.is_some()
    }

    /// The router configuration to apply, or `None` to keep the checkpoint's own.
    pub fn resolve(&self, checkpoint_k: Option<usize>) -> Result<Option<RouterConfig>> {
        if !self.is_set() {
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
