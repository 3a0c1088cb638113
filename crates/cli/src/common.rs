//! Options and helpers shared by several commands: device choice, router overrides and the
//! description of the routing in effect, checkpoint verification, token-id input files, logging.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, FloatDType};
use clap::Args;
use seqtopk_backend::Backend;
use seqtopk_model::MoeTransformer;
use seqtopk_router::{OnlineBudget, RouterConfig, RoutingMode};
use seqtopk_train::Precision;
use serde_json::{Value, json};

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
/// The options of every command that runs a checkpoint (`eval loss`, `eval tasks`, `generate`):
/// how it routes, where it runs, whether it is verified, the dtype it computes in.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub router: RouterArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub verify: VerifyArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

impl ModelArgs {
    /// Loads `dir` on `device` ([`VerifyArgs::load`]) with the router the options ask for
    /// applied and logged; returns the checkpoint and the routing as JSON.
    pub fn load_routed(
        &self,
        dir: &Path,
        device: &Device,
    ) -> Result<(seqtopk_checkpoint::LoadedCheckpoint, Value)> {
        let mut loaded = self.verify.load(dir, device, &self.precision)?;
        let router = apply_router(&mut loaded.model, &self.router)?;
        log_routing(&router, loaded.routing.is_some(), &self.router);
        Ok((loaded, router))
    }
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Skip the SHA-256 check of a native checkpoint's files against its manifest (sizes are
    /// still checked). The check reads the checkpoint once; skip it only when you must.
    #[arg(long)]
    pub no_verify: bool,
}

impl VerifyArgs {
    /// Loads `dir`, verified unless `--no-verify`, its weights stored in `precision`'s dtype as
    /// they are read (a half-precision model never sits whole in f32).
    pub fn load(
        &self,
        dir: &Path,
        device: &Device,
        precision: &PrecisionArgs,
    ) -> Result<seqtopk_checkpoint::LoadedCheckpoint> {
        let dtype = precision.dtype_on(device)?;
        Ok(seqtopk_checkpoint::load_in(
            dir,
            device,
            !self.no_verify,
            dtype,
        )?)
    }
}

/// The float type an inference command holds its weights and computes in.
#[derive(Debug, Clone, Args)]
pub struct PrecisionArgs {
    /// f32, or bf16/f16: the weights are stored in that type as they are read (half the memory)
    /// and every pass computes in it, norms, attention softmax, routing and logits in f32 as in
    /// training's mixed precision.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

impl PrecisionArgs {
    /// The half-precision dtype chosen (`None` for f32), or an error when `device` cannot
    /// compute in it.
    fn dtype_on(&self, device: &Device) -> Result<Option<FloatDType>> {
        if !self.precision.is_supported_by(device) {
            bail!(
                "--precision {}: this device computes in {} only",
                self.precision,
                Precision::supported_by(device)
            );
        }
        Ok(self.precision.compute_dtype())
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
        Ok(Some(self.config(self.router.unwrap_or_default(), k)))
    }

    /// `mode` with `k` experts per token and these options' cap, floor, top-p mass and online
    /// budget (validated when applied to a model).
    pub fn config(&self, mode: RoutingMode, k: usize) -> RouterConfig {
        let mut config = RouterConfig::new(mode, k);
        config.cap = self.cap;
        config.floor = self.floor;
        config.top_p = self.top_p_mass;
        config.online_budget = self.online_budget;
        config
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

/// Reads a JSON list of rows of token ids, checking each id against `vocab_size`; errors name
/// the file, the row and the position.
pub fn read_id_rows(path: &Path, vocab_size: usize) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let Value::Array(rows) = value else {
        bail!(
            "{}: expected a JSON list of rows of token ids, e.g. [[1, 5, 9], [1, 7]]",
            path.display()
        );
    };
    if rows.is_empty() {
        bail!("{}: the list of rows is empty", path.display());
    }
    rows.iter()
        .enumerate()
        .map(|(r, row)| {
            let Value::Array(ids) = row else {
                bail!(
                    "{}: row {r}: expected a list of token ids, got {row}",
                    path.display()
                );
            };
            if ids.is_empty() {
                bail!("{}: row {r} is empty", path.display());
            }
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    let id = id.as_u64().with_context(|| {
                        format!(
                            "{}: row {r}, position {i}: expected a non-negative integer token id, got {id}",
                            path.display()
                        )
                    })?;
                    if id >= vocab_size as u64 {
                        bail!(
                            "{}: row {r}, position {i}: token id {id} is outside the model's vocabulary of {vocab_size}",
                            path.display()
                        );
                    }
                    Ok(id as u32)
                })
                .collect()
        })
        .collect()
}

/// Applies `--router …` overrides to `model` and describes the routing in effect (`null` for a
/// dense model).
fn apply_router(model: &mut MoeTransformer, args: &RouterArgs) -> Result<Value> {
    let checkpoint_k = model.config().moe.as_ref().map(|m| m.num_experts_per_tok);
    if let Some(config) = args.resolve(checkpoint_k)? {
        if checkpoint_k.is_none() {
            tracing::warn!("the checkpoint has no MoE layers; router options have no effect");
        }
        model
            .set_routing(&config)
            .context("applying the router options")?;
    }
    Ok(describe_routing(model))
}

/// The routing `model` runs with, as JSON (`null` for a dense model): what every command that
/// reports a score prints beside it.
pub fn describe_routing(model: &MoeTransformer) -> Value {
    match model.router() {
        None => Value::Null,
        Some(r) => {
            let c = r.config();
            json!({
                "mode": c.mode.name(),
                "top_k": c.top_k,
                "cap": c.cap,
                "floor": c.floor,
                "online_budget": (c.mode == RoutingMode::OnlineSeqtopk).then(|| c.online_budget.name()),
                "renormalize": c.renormalize,
                "num_experts": c.num_experts,
                "causal": is_causal(c.mode),
            })
        }
    }
}

/// Whether a whole-sequence pass under `mode` routes each token from itself and the tokens
/// before it only. `seqtopk` and `batch_topk` do not: a token's allocation depends on later
/// tokens, the scored targets included, so their held-out loss is not that of a causal model
/// (`online_seqtopk` is SeqTopK's causal form).
pub fn is_causal(mode: RoutingMode) -> bool {
    !matches!(mode, RoutingMode::Seqtopk | RoutingMode::BatchTopk)
}

/// Says which routing is in effect and where it comes from (a SeqTopK-trained checkpoint is
/// evaluated with SeqTopK unless told otherwise; the user should see which).
fn log_routing(router: &Value, recorded: bool, args: &RouterArgs) {
    if router.is_null() {
        return;
    }
    let origin = if args.is_set() {
        "command-line options"
    } else if recorded {
        "recorded in the checkpoint's config.json"
    } else {
        "the checkpoint's default: per-token top-K"
    };
    tracing::info!(
        "routing: {} K={} ({origin})",
        router["mode"].as_str().unwrap_or("?"),
        router["top_k"]
    );
}
