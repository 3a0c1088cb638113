//! Router configuration as a recipe's `[router]` section spells it.

use serde::{Deserialize, Serialize};

use crate::RoutingError;

/// How (token, expert) pairs are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    /// Per-token top-K (Hugging Face OLMoE / Qwen-MoE / Mixtral).
    #[default]
    Topk,
    /// Sequence-level top `T·K` pairs per sequence/document, with per-token cap and floor.
    Seqtopk,
    /// Causal SeqTopK: each token competes against the selected scores of the tokens before it
    /// under the cumulative budget `m·K` (generation uses it with an [`crate::ExpertCache`]).
    OnlineSeqtopk,
    /// One flat top-`N·K` over every valid token of the batch (the paper's baseline).
    BatchTopk,
    /// Per-token smallest prefix of sorted probabilities whose mass reaches `top_p`.
    TopP,
}

impl RoutingMode {
    /// The mode's name as a recipe spells it.
    pub fn name(self) -> &'static str {
        match self {
            RoutingMode::Topk => "topk",
            RoutingMode::Seqtopk => "seqtopk",
            RoutingMode::OnlineSeqtopk => "online_seqtopk",
            RoutingMode::BatchTopk => "batch_topk",
            RoutingMode::TopP => "top_p",
        }
    }
}

impl std::fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How `online_seqtopk` charges a new token against the cumulative budget `m·K` of its row.
///
/// Both rules rank the token's candidates (its top `cap` scores) together with the scores the
/// history was given; they differ in whether a token may spend more than the budget left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnlineBudget {
    /// The authors' code: concatenate the history's selected scores with the token's capped
    /// scores, take the flat top `m·K` (positive scores only), OR in the token's top-1. A token
    /// whose candidates outrank the history takes up to `cap`; the history then holds more pairs,
    /// so later tokens pay the overspend back. This is the rule that reallocates.
    #[default]
    Rank,
    /// The paper's prose: as `rank`, but never more than the budget left (`m·K` minus the pairs
    /// already spent), so the cumulative total never exceeds `m·K` except for floor rescues.
    /// A token then rarely gets other than K: in practice per-token TopK (docs/eval.md).
    Strict,
}

impl OnlineBudget {
    /// The rule's name as a recipe spells it.
    pub fn name(self) -> &'static str {
        match self {
            OnlineBudget::Rank => "rank",
            OnlineBudget::Strict => "strict",
        }
    }
}

impl std::fmt::Display for OnlineBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which convention the load-balancing loss follows; the three differ by constant factors and by
/// what they average over, which matters when copying a coefficient from another framework.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbConvention {
    /// No load-balancing loss.
    None,
    /// Hugging Face `load_balancing_loss_func`: pooled over all layers' valid tokens,
    /// `E·Σ_e f_e·P_e`, equal to `K` at perfect balance (the value transformers reports).
    #[default]
    Hf,
    /// Megatron-Core / OLMo-core: per layer `E/K·Σ_e f_e·P_e` (1 at balance), averaged over
    /// layers. Megatron applies its coefficient per layer, so its `c` is `c·L` here.
    Normalized,
    /// DeepSeek `seq_aux` style: the normalised loss per sequence (per document in packed rows),
    /// averaged over sequences and layers.
    Sequence,
}

/// Which assignment the load-balancing loss counts in `f_e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbDispatch {
    /// The pairs the active mode actually dispatched (SeqTopK changes who gets experts, so this
    /// balances the load the experts really see).
    #[default]
    Actual,
    /// A virtual per-token top-K, whatever the mode (Megatron's choice for SeqTopK).
    VirtualTopk,
}

/// The load-balancing part of the router configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalanceConfig {
    /// Which formula.
    pub convention: LbConvention,
    /// Coefficient the trainer multiplies the loss by.
    pub coef: f64,
    /// Which assignment `f_e` counts.
    pub dispatch: LbDispatch,
}

impl Default for LoadBalanceConfig {
    fn default() -> Self {
        Self {
            convention: LbConvention::Hf,
            coef: 0.01,
            dispatch: LbDispatch::Actual,
        }
    }
}

/// Router settings. Optional fields take the mode's defaults when left out; see
/// [`RouterConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Selection mode.
    #[serde(default)]
    pub mode: RoutingMode,
    /// Expert budget per token, `K`.
    pub top_k: usize,
    /// Most experts one token may get. Default `K+2` for the SeqTopK modes (the paper's cap),
    /// `E` for `batch_topk` and `top_p`, `K` for `topk`.
    #[serde(default)]
    pub cap: Option<usize>,
    /// Fewest experts a valid token gets: 1 keeps each token's own top-1 (the paper), 0 lets a
    /// token pass on the residual only (Megatron). Default 1, except 0 for `batch_topk`.
    #[serde(default)]
    pub floor: Option<usize>,
    /// Probability mass for `top_p`.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Budget rule of `online_seqtopk` (default `rank`, the authors' code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_budget: Option<OnlineBudget>,
    /// Renormalise the selected weights of each token to sum to 1. Default: the model's
    /// `norm_topk_prob`.
    #[serde(default)]
    pub renormalize: Option<bool>,
    /// Load-balancing loss.
    #[serde(default)]
    pub load_balance: LoadBalanceConfig,
    /// Router z-loss coefficient (ST-MoE); 0 disables it.
    #[serde(default)]
    pub z_loss_coef: f64,
}

impl RouterConfig {
    /// A config for `mode` with budget `top_k` and every other field at its default.
    pub fn new(mode: RoutingMode, top_k: usize) -> Self {
        Self {
            mode,
            top_k,
            cap: None,
            floor: None,
            top_p: None,
            online_budget: None,
            renormalize: None,
            load_balance: LoadBalanceConfig::default(),
            z_loss_coef: 0.0,
        }
    }

    /// Sets the per-token cap.
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = Some(cap);
        self
    }

    /// Sets the per-token floor.
    pub fn with_floor(mut self, floor: usize) -> Self {
        self.floor = Some(floor);
        self
    }

    /// Sets the `top_p` mass.
    pub fn with_top_p(mut self, p: f64) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sets the budget rule of `online_seqtopk`.
    pub fn with_online_budget(mut self, rule: OnlineBudget) -> Self {
        self.online_budget = Some(rule);
        self
    }

    /// Sets whether selected weights are renormalised.
    pub fn with_renormalize(mut self, renormalize: bool) -> Self {
        self.renormalize = Some(renormalize);
        self
    }

    /// Checks the config against a layer with `num_experts` experts and fills in defaults.
    /// `model_norm_topk_prob` is the model's own renormalisation setting.
    pub fn validate(
        &self,
        num_experts: usize,
        model_norm_topk_prob: bool,
    ) -> Result<ResolvedConfig, RoutingError> {
        let invalid = |field, message: String| RoutingError::InvalidConfig { field, message };
        let e = num_experts;
        let k = self.top_k;
        if e == 0 {
            return Err(invalid("num_experts", "the layer has no experts".into()));
        }
        if k == 0 || k > e {
            return Err(invalid(
                "top_k",
                format!("must be between 1 and the number of experts ({e}), got {k}"),
            ));
        }
        let cap = self.resolve_cap(e, k)?;
        let floor = self.resolve_floor(k)?;
        let top_p = self.resolve_top_p()?;
        self.check_extras()?;
        Ok(ResolvedConfig {
            mode: self.mode,
            num_experts: e,
            top_k: k,
            cap,
            floor,
            top_p,
            online_budget: self.online_budget.unwrap_or_default(),
            renormalize: self.renormalize.unwrap_or(model_norm_topk_prob),
            load_balance: self.load_balance.clone(),
            z_loss_coef: self.z_loss_coef,
        })
    }
}

impl RouterConfig {
    /// Most experts a token may get: `top_k` for TopK, `K + 2` for the SeqTopK modes, `E` else.
    fn resolve_cap(&self, e: usize, k: usize) -> Result<usize, RoutingError> {
        let invalid = |message: String| RoutingError::InvalidConfig {
            field: "cap",
            message,
        };
        let default_cap = match self.mode {
            RoutingMode::Topk => k,
            RoutingMode::Seqtopk | RoutingMode::OnlineSeqtopk => (k + 2).min(e),
            RoutingMode::BatchTopk | RoutingMode::TopP => e,
        };
        let cap = self.cap.unwrap_or(default_cap);
        if self.mode == RoutingMode::Topk && cap != k {
            return Err(invalid(format!(
                "mode `topk` gives every token exactly top_k = {k} experts; cap {cap} is meaningless"
            )));
        }
        if cap < k.min(e) && self.mode != RoutingMode::TopP {
            return Err(invalid(format!("must be at least top_k = {k}, got {cap}")));
        }
        if cap == 0 || cap > e {
            return Err(invalid(format!(
                "must be between 1 and the number of experts ({e}), got {cap}"
            )));
        }
        Ok(cap)
    }

    /// Fewest experts a token keeps: `top_k` for TopK, 0 for BatchTopK, 1 else.
    fn resolve_floor(&self, k: usize) -> Result<usize, RoutingError> {
        let invalid = |message: String| RoutingError::InvalidConfig {
            field: "floor",
            message,
        };
        let default_floor = match self.mode {
            RoutingMode::BatchTopk => 0,
            RoutingMode::Topk => k,
            _ => 1,
        };
        let floor = self.floor.unwrap_or(default_floor);
        match self.mode {
            RoutingMode::Topk if floor != k => {
                Err(invalid(format!("mode `topk` has floor = top_k = {k}")))
            }
            RoutingMode::TopP if floor != 1 => Err(invalid(
                "mode `top_p` always keeps the top-1 (floor 1)".into(),
            )),
            RoutingMode::Seqtopk | RoutingMode::OnlineSeqtopk | RoutingMode::BatchTopk
                if floor > 1 =>
            {
                Err(invalid(format!("must be 0 or 1, got {floor}")))
            }
            _ => Ok(floor),
        }
    }

    /// The probability mass of mode `top_p` (0 for the other modes, which take none).
    fn resolve_top_p(&self) -> Result<f64, RoutingError> {
        let invalid = |message: String| RoutingError::InvalidConfig {
            field: "top_p",
            message,
        };
        match (self.mode, self.top_p) {
            (RoutingMode::TopP, Some(p)) if p > 0.0 && p <= 1.0 => Ok(p),
            (RoutingMode::TopP, Some(p)) => Err(invalid(format!("must be in (0, 1], got {p}"))),
            (RoutingMode::TopP, None) => Err(invalid("mode `top_p` needs a top_p value".into())),
            (_, Some(_)) => Err(invalid(format!(
                "only used by mode `top_p`, not `{}`",
                self.mode
            ))),
            (_, None) => Ok(0.0),
        }
    }

    /// The online budget belongs to its mode; loss coefficients are finite and non-negative.
    fn check_extras(&self) -> Result<(), RoutingError> {
        let invalid = |field, message: String| RoutingError::InvalidConfig { field, message };
        if let Some(rule) = self.online_budget
            && self.mode != RoutingMode::OnlineSeqtopk
        {
            return Err(invalid(
                "online_budget",
                format!(
                    "only used by mode `online_seqtopk`, not `{}` (got `{rule}`)",
                    self.mode
                ),
            ));
        }
        if !(self.load_balance.coef >= 0.0 && self.load_balance.coef.is_finite()) {
            return Err(invalid(
                "load_balance.coef",
                format!(
                    "must be a finite number >= 0, got {}",
                    self.load_balance.coef
                ),
            ));
        }
        if !(self.z_loss_coef >= 0.0 && self.z_loss_coef.is_finite()) {
            return Err(invalid(
                "z_loss_coef",
                format!("must be a finite number >= 0, got {}", self.z_loss_coef),
            ));
        }
        Ok(())
    }
}

/// A validated configuration with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    /// Selection mode.
    pub mode: RoutingMode,
    /// Experts in the layer, `E`.
    pub num_experts: usize,
    /// Budget per token, `K`.
    pub top_k: usize,
    /// Most experts per token.
    pub cap: usize,
    /// Fewest experts per valid token.
    pub floor: usize,
    /// Mass for `top_p` (0 for other modes).
    pub top_p: f64,
    /// Budget rule of `online_seqtopk` (`rank` for the other modes, where it is unused).
    pub online_budget: OnlineBudget,
    /// Whether selected weights are renormalised per token.
    pub renormalize: bool,
    /// Load-balancing loss settings.
    pub load_balance: LoadBalanceConfig,
    /// z-loss coefficient.
    pub z_loss_coef: f64,
}

impl ResolvedConfig {
    /// How many candidates per token the device must hand to the host selection: every expert
    /// a token could possibly get.
    pub fn candidates_per_token(&self) -> usize {
        self.cap.max(self.top_k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqtopk_defaults_follow_the_paper() {
        let c = RouterConfig::new(RoutingMode::Seqtopk, 2)
            .validate(8, false)
            .unwrap();
        assert_eq!((c.cap, c.floor, c.renormalize), (4, 1, false));
        let c = RouterConfig::new(RoutingMode::Seqtopk, 8)
            .validate(9, true)
            .unwrap();
        assert_eq!((c.cap, c.renormalize), (9, true), "cap is clipped to E");
    }

    #[test]
    fn batch_topk_defaults_have_no_cap_or_floor() {
        let c = RouterConfig::new(RoutingMode::BatchTopk, 2)
            .validate(8, false)
            .unwrap();
        assert_eq!((c.cap, c.floor), (8, 0));
    }

    #[test]
    fn impossible_values_name_the_field() {
        let err = RouterConfig::new(RoutingMode::Seqtopk, 9)
            .validate(8, false)
            .unwrap_err();
        assert!(err.to_string().starts_with("router.top_k:"), "{err}");
        let err = RouterConfig::new(RoutingMode::Seqtopk, 4)
            .with_cap(3)
            .validate(8, false)
            .unwrap_err();
        assert!(err.to_string().starts_with("router.cap:"), "{err}");
        let err = RouterConfig::new(RoutingMode::Seqtopk, 2)
            .with_floor(2)
            .validate(8, false)
            .unwrap_err();
        assert!(err.to_string().starts_with("router.floor:"), "{err}");
        let err = RouterConfig::new(RoutingMode::TopP, 2)
            .validate(8, false)
            .unwrap_err();
        assert!(err.to_string().starts_with("router.top_p:"), "{err}");
        let err = RouterConfig::new(RoutingMode::TopP, 2)
            .with_top_p(1.5)
            .validate(8, false)
            .unwrap_err();
        assert!(err.to_string().contains("(0, 1]"), "{err}");
        let err = RouterConfig::new(RoutingMode::Topk, 2)
            .with_top_p(0.5)
            .validate(8, false)
            .unwrap_err();
        assert!(err.to_string().starts_with("router.top_p:"), "{err}");
    }

    #[test]
    fn parses_a_recipe_section_and_rejects_unknown_fields() {
        let cfg: RouterConfig = toml::from_str(
            "mode = \"seqtopk\"\ntop_k = 2\ncap = 4\nfloor = 1\nz_loss_coef = 0.001\n\
             [load_balance]\nconvention = \"sequence\"\ncoef = 0.01\ndispatch = \"virtual_topk\"\n",
        )
        .unwrap();
        assert_eq!(cfg.mode, RoutingMode::Seqtopk);
        assert_eq!(cfg.load_balance.convention, LbConvention::Sequence);
        assert_eq!(cfg.load_balance.dispatch, LbDispatch::VirtualTopk);
        let err = toml::from_str::<RouterConfig>("top_k = 2\ncapp = 4\n").unwrap_err();
        assert!(err.to_string().contains("capp"), "{err}");
        let err = toml::from_str::<RouterConfig>("top_k = 2\nmode = \"seq\"\n").unwrap_err();
        assert!(err.to_string().contains("seqtopk"), "{err}");
    }

    #[test]
    fn online_budget_defaults_to_rank_and_belongs_to_online_seqtopk() {
        let c = RouterConfig::new(RoutingMode::OnlineSeqtopk, 2)
            .validate(8, false)
            .unwrap();
        assert_eq!(c.online_budget, OnlineBudget::Rank);
        let cfg: RouterConfig =
            toml::from_str("mode = \"online_seqtopk\"\ntop_k = 2\nonline_budget = \"strict\"\n")
                .unwrap();
        assert_eq!(
            cfg.validate(8, false).unwrap().online_budget,
            OnlineBudget::Strict
        );
        let err = RouterConfig::new(RoutingMode::Seqtopk, 2)
            .with_online_budget(OnlineBudget::Strict)
            .validate(8, false)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("router.online_budget:"),
            "{err}"
        );
        let err =
            toml::from_str::<RouterConfig>("top_k = 2\nonline_budget = \"loose\"\n").unwrap_err();
        assert!(err.to_string().contains("strict"), "{err}");
    }

    #[test]
    fn renormalize_defaults_to_the_model_and_can_be_overridden() {
        let base = RouterConfig::new(RoutingMode::Topk, 2);
        assert!(base.validate(8, true).unwrap().renormalize);
        assert!(
            !base
                .clone()
                .with_renormalize(false)
                .validate(8, true)
                .unwrap()
                .renormalize
        );
    }
}
