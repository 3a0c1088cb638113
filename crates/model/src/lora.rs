//! LoRA adapters with Hugging Face PEFT's meaning, on Burn's parameter reparameterization.
//!
//! An adapted weight keeps its frozen base and gains two trainable factors, so its effective
//! value is `W + s·A·B` (input-major, as Burn stores weights). Burn materialises that value in
//! [`Param::val`], so attention, dense MLPs and the router need no code of their own; the routed
//! experts instead add `s·(x·A)·B` on their activations ([`Experts::forward`]), which keeps no
//! second copy of the (large) expert tensors alive for the backward pass.
//!
//! Targets are named as PEFT names them, by Hugging Face path: a `target_modules` entry selects
//! the linear modules whose path equals it or ends in `.entry` (`q_proj`, `self_attn.o_proj`,
//! `shared_expert.down_proj`), and `target_modules` given as one string is a regex over whole
//! paths, widened on some families as PEFT widens it ([`ModuleTargets`]); a `target_parameters`
//! entry selects stacked expert parameters the same way (`gate_up_proj`,
//! `layers.3.mlp.experts.down_proj`). `modules_to_save` entries are
//! trained in full and match, as in PEFT, any module path that ends with them (`gate` selects
//! the router, and Qwen2-MoE's `shared_expert_gate` too).

use burn::module::{Module, Param, Reparameterization, Reparameterizer};
use burn::nn::{Embedding, Linear};
use burn::tensor::module::linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use seqtopk_rng::SplitMix64;

use crate::hf_keys::{self, ATTENTION, SWIGLU};
use crate::model::{Ffn, MoeTransformer};
use crate::{Experts, ModelError, SwiGlu};
use crate::{Family, FfnKind, MoeTransformerConfig};

/// The trainable factors of one adapted weight: `ΔW_e = scale · a_e · b_e` for each of the `E`
/// stacked matrices (`E = 1` for a linear layer).
#[derive(Module, Debug)]
pub struct LoraFactors {
    /// `[E, in, r]` (PEFT `lora_A`, transposed per expert).
    pub a: Param<Tensor<3>>,
    /// `[E, r, out]` (PEFT `lora_B`, transposed per expert).
    pub b: Param<Tensor<3>>,
    /// `alpha / r` (or `alpha / √r` with rsLoRA).
    pub scale: f64,
    /// Dropout on the adapter's input while training (linear layers; PEFT `lora_dropout`).
    pub dropout: f64,
}

impl Reparameterization for LoraFactors {
    const NAME: &'static str = "lora";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let delta = self.delta();
        let delta = if delta.dtype() == base.dtype() {
            delta
        } else {
            delta.cast(base.dtype())
        };
        let shape = base.shape();
        base + delta.reshape(shape)
    }
}

impl LoraFactors {
    /// `scale · a · b`, `[E, in, out]`.
    pub fn delta(&self) -> Tensor<3> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    /// `s·(x·a)·b` for `x` `[E, N, in]`, with the factors of `experts` (all when `None`).
    pub fn on_activations(
        &self,
        x: Tensor<3>,
        experts: Option<&Tensor<1, burn::tensor::Int>>,
    ) -> Tensor<3> {
        let (a, b) = match experts {
            None => (self.a.val(), self.b.val()),
            Some(which) => (
                self.a.val().select(0, which.clone()),
                self.b.val().select(0, which.clone()),
            ),
        };
        let dtype = x.dtype();
        let (a, b) = if a.dtype() == dtype {
            (a, b)
        } else {
            (a.cast(dtype), b.cast(dtype))
        };
        x.matmul(a).matmul(b).mul_scalar(self.scale)
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.a.val().dims()[2]
    }
}

/// What to adapt and how (a recipe's `[lora]` table, or a PEFT `adapter_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank `r` of every adapter.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// rsLoRA scaling `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Linear modules to adapt (PEFT `target_modules`).
    pub target_modules: ModuleTargets,
    /// Stacked expert parameters to adapt (PEFT `target_parameters`): `gate_up_proj`,
    /// `down_proj`, or longer suffixes such as `layers.3.mlp.experts.down_proj`.
    pub target_parameters: Vec<String>,
    /// Modules trained in full, by HF path suffix.
    pub modules_to_save: Vec<String>,
    /// PEFT `rank_pattern`: regex keys giving matching sites another rank.
    pub rank_pattern: Vec<(String, usize)>,
    /// PEFT `alpha_pattern`: regex keys giving matching sites another alpha.
    pub alpha_pattern: Vec<(String, f64)>,
    /// PEFT `lora_dropout`: dropout on linear adapters' input while training.
    pub dropout: f64,
}

/// PEFT's `target_modules`: a list of module names, each selecting the modules whose HF path is
/// it or ends in `.name`, or one regex the whole HF path must match (`re.fullmatch`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    untagged,
    expecting = "a list of module names, or one regex over module paths"
)]
pub enum ModuleTargets {
    /// Module names or path suffixes (`q_proj`, `self_attn.o_proj`).
    Names(Vec<String>),
    /// A regex over whole module paths (`model.layers.0.self_attn.q_proj`).
    Pattern(String),
}

impl ModuleTargets {
    /// Whether no module can be selected (an empty list).
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Names(names) if names.is_empty())
    }

    /// One rule per target, with the text an error names it by. A pattern is read as PEFT 0.21
    /// reads it on transformers 5: for the families whose MoE layout transformers 5 renamed
    /// (OLMoE, Qwen3-MoE, Mixtral) PEFT first widens the regex to the last path component of
    /// every module it matches (`model\.layers\.0\.self_attn\.q_proj` adapts `q_proj` in every
    /// layer), elsewhere the regex selects exactly the paths it matches.
    fn rules(
        &self,
        family: Family,
        linear_sites: &[&AdapterSite],
    ) -> Result<Vec<(String, Rule)>, ModelError> {
        let pattern = match self {
            Self::Names(names) => {
                return Ok(names
                    .iter()
                    .map(|n| (n.clone(), Rule::Suffix(n.clone())))
                    .collect());
            }
            Self::Pattern(p) if p == "all-linear" => {
                return Err(ModelError::Input(
                    "lora target_modules `all-linear` (PEFT's shorthand) is not supported: list \
                     the modules, or give a regex over their paths"
                        .into(),
                ));
            }
            Self::Pattern(p) => p,
        };
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            ModelError::Input(format!(
                "lora target_modules {pattern:?} is not a regex: {e}"
            ))
        })?;
        if !matches!(family, Family::Olmoe | Family::Qwen3Moe | Family::Mixtral) {
            return Ok(vec![(pattern.clone(), Rule::Full(re))]);
        }
        let mut leaves: Vec<String> = linear_sites
            .iter()
            .filter(|site| re.is_match(&site.hf_name))
            .filter_map(|site| site.hf_name.rsplit('.').next().map(str::to_owned))
            .collect();
        leaves.sort();
        leaves.dedup();
        Ok(vec![(pattern.clone(), Rule::Leaves(leaves))])
    }
}

/// How one target selects HF paths.
enum Rule {
    /// PEFT's list entries: the path is the name or ends in `.name`.
    Suffix(String),
    /// PEFT's string form: the regex matches the whole path.
    Full(regex::Regex),
    /// PEFT's string form widened to last path components (see [`ModuleTargets::rules`]).
    Leaves(Vec<String>),
}

impl Rule {
    fn selects(&self, name: &str) -> bool {
        match self {
            Self::Suffix(target) => name == target || name.ends_with(&format!(".{target}")),
            Self::Full(re) => re.is_match(name),
            Self::Leaves(leaves) => name
                .rsplit('.')
                .next()
                .is_some_and(|leaf| leaves.iter().any(|l| l == leaf)),
        }
    }
}

/// The value of the first `pattern` key that matches `name` as PEFT matches them: the regex
/// `(.*\.)?(key)$` from the start of the site's HF name.
fn by_pattern<T: Copy>(pattern: &[(String, T)], name: &str) -> Result<Option<T>, ModelError> {
    for (key, value) in pattern {
        let re = regex::Regex::new(&format!("^(.*\\.)?({key})$")).map_err(|e| {
            ModelError::Input(format!(
                "lora rank/alpha pattern {key:?} is not a regex: {e}"
            ))
        })?;
        if re.is_match(name) {
            return Ok(Some(*value));
        }
    }
    Ok(None)
}

impl LoraSpec {
    /// The rank of the adapter on `site` and its factor `s` of `W + s·A·B` (`alpha / r`, or
    /// `alpha / √r` with rsLoRA), after `rank_pattern` and `alpha_pattern`.
    pub fn rank_and_scale(&self, site: &AdapterSite) -> Result<(usize, f64), ModelError> {
        let rank = by_pattern(&self.rank_pattern, &site.hf_name)?.unwrap_or(self.rank);
        let alpha = by_pattern(&self.alpha_pattern, &site.hf_name)?.unwrap_or(self.alpha);
        if rank == 0 {
            return Err(ModelError::Input(format!(
                "lora rank of `{}` must be at least 1",
                site.hf_name
            )));
        }
        let scale = if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        Ok((rank, scale))
    }
}

/// One weight LoRA can adapt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSite {
    /// HF module path (`model.layers.0.self_attn.q_proj`) or, for stacked experts, HF parameter
    /// path (`model.layers.0.mlp.experts.gate_up_proj`).
    pub hf_name: String,
    /// Whether this is a stacked expert parameter (PEFT `target_parameters`).
    pub experts: bool,
    /// Stacked matrices `E` (1 for a linear layer).
    pub num: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Where the weight sits in the model.
    place: Place,
}

/// A weight's place in a decoder layer: the layer and which of its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    layer: usize,
    weight: LayerWeight,
}

/// One adaptable weight of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerWeight {
    /// Attention projection `q_proj`, `k_proj`, `v_proj`, `o_proj` (0–3).
    Attention(usize),
    /// Dense MLP projection `gate_proj`, `up_proj`, `down_proj` (0–2).
    Mlp(usize),
    /// Qwen2-MoE shared-expert projection, as [`LayerWeight::Mlp`].
    SharedExpert(usize),
    /// Stacked expert parameter, by its local path (`gate_up` or `down`).
    Experts(&'static str),
}

/// Every weight LoRA can adapt in a model of `config`, in HF order: the geometry the adapters,
/// their PEFT layout and a dry run's parameter count all read.
pub fn adapter_sites(config: &MoeTransformerConfig) -> Vec<AdapterSite> {
    let h = config.hidden_size;
    let (q, kv) = config.attention_widths();
    let mut sites = Vec::new();
    let linear = |layer, weight, hf_name: String, d_in, d_out| AdapterSite {
        hf_name,
        experts: false,
        num: 1,
        d_in,
        d_out,
        place: Place { layer, weight },
    };
    let swiglu = |layer, prefix: &str, i, wrap: fn(usize) -> LayerWeight| {
        let shapes = [(h, i), (h, i), (i, h)];
        (0..3)
            .map(|j| {
                let name = format!("{prefix}.{}", SWIGLU[j]);
                linear(layer, wrap(j), name, shapes[j].0, shapes[j].1)
            })
            .collect::<Vec<_>>()
    };
    for (l, ffn) in config.layers.iter().enumerate() {
        let p = hf_keys::layer(l);
        let keys = hf_keys::MoeKeys::new(&p, false);
        let shapes = [(h, q), (h, kv), (h, kv), (q, h)];
        for (j, name) in ATTENTION.iter().enumerate() {
            let (d_in, d_out) = shapes[j];
            let name = format!("{}.{name}", hf_keys::self_attn(&p));
            sites.push(linear(l, LayerWeight::Attention(j), name, d_in, d_out));
        }
        match (ffn, &config.moe) {
            (FfnKind::Dense { intermediate_size }, _) => {
                sites.extend(swiglu(
                    l,
                    &hf_keys::dense_mlp(&p),
                    *intermediate_size,
                    LayerWeight::Mlp,
                ));
            }
            (FfnKind::Moe, Some(moe)) => {
                let (e, i) = (moe.num_experts, moe.expert_intermediate_size);
                for (j, (path, d_in, d_out)) in [("gate_up", h, 2 * i), ("down", i, h)]
                    .into_iter()
                    .enumerate()
                {
                    sites.push(AdapterSite {
                        hf_name: keys.fused(j),
                        experts: true,
                        num: e,
                        d_in,
                        d_out,
                        place: Place {
                            layer: l,
                            weight: LayerWeight::Experts(path),
                        },
                    });
                }
                if let Some(i) = moe.shared_expert_intermediate_size {
                    let prefix = keys.shared_expert();
                    sites.extend(swiglu(l, &prefix, i, LayerWeight::SharedExpert));
                }
            }
            (FfnKind::Moe, None) => {}
        }
    }
    sites
}

/// A module `modules_to_save` can name: its HF path, its place (`None` for the embedding and
/// the head) and its parameter count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WholeModule {
    hf_name: String,
    place: WholePlace,
    params: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WholePlace {
    Embedding,
    Attention(usize, usize),
    Router(usize),
    SharedExpertGate(usize),
    Head,
}

/// Every module `modules_to_save` can name in a model of `config`, in HF order.
fn whole_modules(config: &MoeTransformerConfig) -> Vec<WholeModule> {
    let (h, v) = (config.hidden_size, config.vocab_size);
    let (q, kv) = config.attention_widths();
    let module = |hf_name: String, place, params| WholeModule {
        hf_name,
        place,
        params,
    };
    let mut out = vec![module(
        hf_keys::EMBED_TOKENS.into(),
        WholePlace::Embedding,
        v * h,
    )];
    for (l, ffn) in config.layers.iter().enumerate() {
        let p = hf_keys::layer(l);
        let keys = hf_keys::MoeKeys::new(&p, false);
        let qkv_bias = usize::from(config.qkv_bias);
        let params = [
            h * q + qkv_bias * q,
            h * kv + qkv_bias * kv,
            h * kv + qkv_bias * kv,
            q * h + usize::from(config.o_bias) * h,
        ];
        for (j, name) in ATTENTION.iter().enumerate() {
            let name = format!("{}.{name}", hf_keys::self_attn(&p));
            out.push(module(name, WholePlace::Attention(l, j), params[j]));
        }
        if let (FfnKind::Moe, Some(moe)) = (ffn, &config.moe) {
            out.push(module(
                keys.gate(),
                WholePlace::Router(l),
                h * moe.num_experts,
            ));
            if moe.shared_expert_intermediate_size.is_some() {
                let name = keys.shared_expert_gate();
                out.push(module(name, WholePlace::SharedExpertGate(l), h));
            }
        }
    }
    if !config.tie_word_embeddings {
        out.push(module(hf_keys::LM_HEAD.into(), WholePlace::Head, h * v));
    }
    out
}

/// Parameters a LoRA set-up trains and adds, counted from the config alone (what a dry run
/// prints for a model too large to build here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraParams {
    /// Parameters of the adapters' factors.
    pub adapters: usize,
    /// Base parameters `modules_to_save` trains in full.
    pub saved: usize,
    /// Targets that select nothing (PEFT tolerates them; a recipe's run refuses them).
    pub unmatched: Vec<String>,
}

impl LoraSpec {
    /// The parameters `self` would train on a model of `config`; an error names a bad rank
    /// pattern.
    pub fn params(&self, config: &MoeTransformerConfig) -> Result<LoraParams, ModelError> {
        let (sites, unmatched) = self.select(config)?;
        let mut adapters = 0;
        for site in &sites {
            let (rank, _) = self.rank_and_scale(site)?;
            adapters += site.num * rank * (site.d_in + site.d_out);
        }
        let saved = whole_modules(config)
            .iter()
            .filter(|m| saved_by(&self.modules_to_save, &m.hf_name))
            .map(|m| m.params)
            .sum();
        Ok(LoraParams {
            adapters,
            saved,
            unmatched,
        })
    }

    /// The sites of a model of `config` this spec's targets select, and the targets that select
    /// none; an error names a `target_modules` pattern that is not a regex.
    fn select(
        &self,
        config: &MoeTransformerConfig,
    ) -> Result<(Vec<AdapterSite>, Vec<String>), ModelError> {
        let all = adapter_sites(config);
        let linear: Vec<&AdapterSite> = all.iter().filter(|s| !s.experts).collect();
        let modules = self.target_modules.rules(config.family, &linear)?;
        let parameters: Vec<_> = self
            .target_parameters
            .iter()
            .map(|t| (t.clone(), Rule::Suffix(t.clone())))
            .collect();
        let mut used = vec![false; modules.len() + parameters.len()];
        let mut sites = Vec::new();
        for site in all {
            let (rules, offset) = match site.experts {
                false => (&modules, 0),
                true => (&parameters, modules.len()),
            };
            let mut hit = false;
            for (t, (_, rule)) in rules.iter().enumerate() {
                if rule.selects(&site.hf_name) {
                    used[offset + t] = true;
                    hit = true;
                }
            }
            if hit {
                sites.push(site);
            }
        }
        let unmatched = modules
            .iter()
            .chain(&parameters)
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|((t, _), _)| t.clone())
            .collect();
        Ok((sites, unmatched))
    }
}

/// Whether PEFT's `modules_to_save` entries `names` select the module at HF path `path`: as
/// in PEFT, any entry the path ends with.
pub fn saved_by(names: &[String], path: &str) -> bool {
    names.iter().any(|n| path.ends_with(n.as_str()))
}

/// The error of a target that selects nothing.
pub fn unmatched_target(target: &str) -> ModelError {
    ModelError::Input(format!(
        "lora target `{target}` selects nothing in this model (target_modules name linear \
         modules such as q_proj, o_proj or a dense/shared-expert gate_proj; target_parameters \
         name the stacked experts, gate_up_proj and down_proj)"
    ))
}

/// Gives the factors of a site at a rank: `a` `[E, in, r]` and `b` `[E, r, out]`, row-major.
pub type FactorValues<'a> =
    dyn FnMut(&AdapterSite, usize) -> Result<(Vec<f32>, Vec<f32>), ModelError> + 'a;

/// A mutable handle on one adaptable weight.
enum Slot<'a> {
    Linear(&'a mut Linear),
    /// The experts and the local path of the parameter (`gate_up` or `down`).
    Experts(&'a mut Experts, &'static str),
}

/// A mutable handle on one module `modules_to_save` can name.
enum Whole<'a> {
    Linear(&'a mut Linear),
    Embedding(&'a mut Embedding),
}

/// Attaches given factors to the parameter at `path` of the module it is applied to.
struct Attach {
    path: &'static str,
    factors: Option<LoraFactors>,
}

impl Reparameterizer for Attach {
    type Reparam = LoraFactors;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraFactors>) {
        if path == self.path {
            (param, self.factors.take())
        } else {
            (param, None)
        }
    }
}

fn factors_on(
    site: &AdapterSite,
    (rank, scale, dropout): (usize, f64, f64),
    a: Vec<f32>,
    b: Vec<f32>,
    device: &Device,
) -> LoraFactors {
    LoraFactors {
        a: Param::from_data(TensorData::new(a, [site.num, site.d_in, rank]), device),
        b: Param::from_data(TensorData::new(b, [site.num, rank, site.d_out]), device),
        scale,
        // PEFT has no dropout for stacked expert parameters.
        dropout: if site.experts { 0.0 } else { dropout },
    }
}

/// `x·W + b` of a linear layer. An adapter with dropout, while training (on an autodiff
/// device), computes PEFT's `x·W₀ + b + s·(dropout(x)·A)·B`, which the folded weight
/// `W₀ + s·A·B` cannot express; otherwise the layer runs on its (adapted) weight as it is.
pub(crate) fn linear_forward<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let Some(f) = layer
        .weight
        .reparameterization::<LoraFactors>()
        .filter(|f| f.dropout > 0.0 && x.device().is_autodiff())
    else {
        return layer.forward(x);
    };
    let dtype = x.dtype();
    let factor = |p: &Param<Tensor<3>>| {
        let [_, rows, cols] = p.val().dims();
        p.val().reshape([rows, cols]).cast(dtype)
    };
    let keep = 1.0 - f.dropout;
    let mask = x.random_like(Distribution::Bernoulli(keep));
    let dropped = (x.clone() * mask).div_scalar(keep);
    let low_rank = linear(linear(dropped, factor(&f.a), None), factor(&f.b), None);
    let base = linear(x, layer.weight.base(), layer.bias.as_ref().map(Param::val));
    base + low_rank.mul_scalar(f.scale)
}

impl MoeTransformer {
    /// Visits every weight LoRA can adapt, in HF order.
    fn for_each_site(&mut self, f: &mut dyn FnMut(AdapterSite, Slot<'_>)) {
        for site in adapter_sites(self.config()) {
            let slot = self.slot(site.place);
            f(site, slot);
        }
    }

    /// The weight at `place` (a place [`adapter_sites`] gave for this model's config).
    fn slot(&mut self, place: Place) -> Slot<'_> {
        let layer = &mut self.layers[place.layer];
        let attn = &mut layer.self_attn;
        match (place.weight, &mut layer.mlp) {
            (LayerWeight::Attention(j), _) => Slot::Linear(match j {
                0 => &mut attn.q_proj,
                1 => &mut attn.k_proj,
                2 => &mut attn.v_proj,
                _ => &mut attn.o_proj,
            }),
            (LayerWeight::Mlp(j), Ffn::Dense(m)) => Slot::Linear(swiglu_linear(m, j)),
            (LayerWeight::SharedExpert(j), Ffn::Moe(moe)) => match &mut moe.shared_expert {
                Some(m) => Slot::Linear(swiglu_linear(m, j)),
                None => unreachable!("the config has a shared expert, the model none"),
            },
            (LayerWeight::Experts(path), Ffn::Moe(moe)) => Slot::Experts(&mut moe.experts, path),
            _ => unreachable!("layer {} is not the kind its config says", place.layer),
        }
    }

    /// Visits every module `modules_to_save` can name, under its HF path.
    fn for_each_whole(&mut self, f: &mut dyn FnMut(String, Whole<'_>)) {
        for module in whole_modules(self.config()) {
            let whole = match module.place {
                WholePlace::Embedding => Whole::Embedding(&mut self.embed_tokens),
                WholePlace::Attention(l, j) => match self.slot(Place {
                    layer: l,
                    weight: LayerWeight::Attention(j),
                }) {
                    Slot::Linear(linear) => Whole::Linear(linear),
                    Slot::Experts(..) => unreachable!("attention projections are linear"),
                },
                WholePlace::Router(l) => match &mut self.layers[l].mlp {
                    Ffn::Moe(moe) => Whole::Linear(&mut moe.gate),
                    Ffn::Dense(_) => unreachable!("layer {l} has a router in its config"),
                },
                WholePlace::SharedExpertGate(l) => match &mut self.layers[l].mlp {
                    Ffn::Moe(moe) => match &mut moe.shared_expert_gate {
                        Some(gate) => Whole::Linear(gate),
                        None => unreachable!("the config has a shared expert gate"),
                    },
                    Ffn::Dense(_) => unreachable!("layer {l} has a router in its config"),
                },
                WholePlace::Head => match &mut self.lm_head {
                    Some(head) => Whole::Linear(head),
                    None => unreachable!("the config has an untied head"),
                },
            };
            f(module.hf_name, whole);
        }
    }

    /// The weights `spec` adapts, in HF order, and the entries of `target_modules` and
    /// `target_parameters` that select nothing.
    pub fn lora_sites(
        &self,
        spec: &LoraSpec,
    ) -> Result<(Vec<AdapterSite>, Vec<String>), ModelError> {
        spec.select(self.config())
    }

    /// Freezes every parameter, attaches `spec`'s adapters (PEFT's initialisation: `A`
    /// uniform in `±1/√in` from `seed`, `B` zero, so the model's output is unchanged) and
    /// unfreezes `modules_to_save`. Returns the adapted sites. Every target must select
    /// something (a typo is an error naming it).
    pub fn with_lora(
        self,
        spec: &LoraSpec,
        seed: u64,
    ) -> Result<(Self, Vec<AdapterSite>), ModelError> {
        if let Some(target) = self.lora_sites(spec)?.1.first() {
            return Err(unmatched_target(target));
        }
        let mut rng = SplitMix64::new(seed);
        self.with_lora_values(spec, &mut |site, r| {
            let bound = 1.0 / (site.d_in as f64).sqrt();
            let a = (0..site.num * site.d_in * r)
                .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
                .collect();
            Ok((a, vec![0.0; site.num * r * site.d_out]))
        })
    }

    /// [`Self::with_lora`] with the factors' values (`a` `[E, in, r]`, `b` `[E, r, out]`,
    /// row-major) given per site and rank.
    pub fn with_lora_values(
        self,
        spec: &LoraSpec,
        values: &mut FactorValues<'_>,
    ) -> Result<(Self, Vec<AdapterSite>), ModelError> {
        let mut model = self.freeze();
        let (sites, _) = model.lora_sites(spec)?;
        if sites.is_empty() {
            return Err(ModelError::Input(
                "the lora targets select no module of this model".into(),
            ));
        }
        let device = model.embed_tokens.weight.base().device();
        let mut failure = None;
        model.for_each_site(&mut |site, slot| {
            if failure.is_some() || !sites.contains(&site) {
                return;
            }
            let factors = match spec
                .rank_and_scale(&site)
                .and_then(|(rank, scale)| Ok((rank, scale, values(&site, rank)?)))
            {
                Ok((rank, scale, (a, b))) => {
                    factors_on(&site, (rank, scale, spec.dropout), a, b, &device)
                }
                Err(e) => {
                    failure = Some(e);
                    return;
                }
            };
            match slot {
                Slot::Linear(l) => {
                    let attach = Attach {
                        path: "weight",
                        factors: Some(factors),
                    };
                    *l = l.clone().apply_reparameterization(attach);
                }
                Slot::Experts(x, path) => {
                    let attach = Attach {
                        path,
                        factors: Some(factors),
                    };
                    *x = x.clone().apply_reparameterization(attach);
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        model.train_in_full(&spec.modules_to_save)?;
        Ok((model, sites))
    }

    /// Makes the modules `names` select (PEFT `modules_to_save`) trainable again.
    fn train_in_full(&mut self, names: &[String]) -> Result<(), ModelError> {
        let mut used = vec![false; names.len()];
        self.for_each_whole(&mut |path, whole| {
            let hit: Vec<usize> = (0..names.len())
                .filter(|&n| path.ends_with(names[n].as_str()))
                .collect();
            if hit.is_empty() {
                return;
            }
            hit.iter().for_each(|&n| used[n] = true);
            match whole {
                Whole::Linear(l) => *l = l.clone().unfreeze(),
                Whole::Embedding(e) => *e = e.clone().unfreeze(),
            }
        });
        match used.iter().position(|u| !u) {
            Some(n) => Err(ModelError::Input(format!(
                "lora modules_to_save `{}` selects no module of this model (modules trained in \
                 full are the router `gate`, `shared_expert_gate`, attention projections, \
                 `embed_tokens` and `lm_head`)",
                names[n]
            ))),
            None => Ok(()),
        }
    }

    /// The HF paths of the modules `names` select (PEFT `modules_to_save`), with their HF
    /// weights (`[out, in]` / `[V, H]`, row-major) and shapes.
    pub fn saved_modules(&mut self, names: &[String]) -> Vec<(String, Vec<usize>, Tensor<2>)> {
        let mut out = Vec::new();
        self.for_each_whole(&mut |path, whole| {
            if !saved_by(names, &path) {
                return;
            }
            match whole {
                Whole::Linear(l) => {
                    let w = l.weight.val().transpose();
                    out.push((path, w.dims().to_vec(), w));
                }
                Whole::Embedding(e) => {
                    let w = e.weight.val();
                    out.push((path, w.dims().to_vec(), w));
                }
            }
        });
        out
    }

    /// Replaces the weight of the module at HF path `path` (one `modules_to_save` names) with
    /// `values` in HF layout (`[out, in]`, or `[V, H]` for the embedding), keeping it trainable.
    pub fn set_saved_module(
        &mut self,
        path: &str,
        shape: &[usize],
        values: Vec<f32>,
    ) -> Result<(), ModelError> {
        let mut outcome = Err(ModelError::Input(format!(
            "`{path}` is not a module this model can train in full"
        )));
        self.for_each_whole(&mut |p, whole| {
            if p != path {
                return;
            }
            // A linear layer stores `[in, out]`, the embedding `[V, H]` as HF does.
            let (weight, hf_shape, transposed) = match whole {
                Whole::Linear(l) => {
                    let [d_in, d_out] = l.weight.base().dims();
                    (&mut l.weight, [d_out, d_in], true)
                }
                Whole::Embedding(e) => {
                    let dims = e.weight.base().dims();
                    (&mut e.weight, dims, false)
                }
            };
            if shape != hf_shape {
                outcome = Err(ModelError::Input(format!(
                    "`{path}` has shape {shape:?}, the model's is {hf_shape:?}"
                )));
                return;
            }
            let device = weight.base().device();
            let dtype = weight.base().dtype();
            let mut t = Tensor::<2>::from_data(TensorData::new(values.clone(), hf_shape), &device);
            if transposed {
                t = t.transpose();
            }
            *weight = Param::from_tensor(t.cast(dtype));
            outcome = Ok(());
        });
        outcome
    }

    /// The adapters of the model, per site (empty without LoRA).
    pub fn lora_factors(&mut self) -> Vec<(AdapterSite, Tensor<3>, Tensor<3>, f64)> {
        let mut out = Vec::new();
        self.for_each_site(&mut |site, slot| {
            let factors = match slot {
                Slot::Linear(l) => l.weight.reparameterization::<LoraFactors>(),
                Slot::Experts(x, "gate_up") => x.gate_up.reparameterization::<LoraFactors>(),
                Slot::Experts(x, _) => x.down.reparameterization::<LoraFactors>(),
            };
            if let Some(f) = factors {
                out.push((site, f.a.val(), f.b.val(), f.scale));
            }
        });
        out
    }

    /// The model with every adapter folded into its base weight (`W + s·A·B`), as a plain model
    /// whose parameters are all trainable again.
    pub fn merge_lora(mut self) -> Self {
        // Keeping each parameter's id keeps an export byte-for-byte reproducible.
        fn fold<const D: usize>(param: &mut Param<Tensor<D>>) {
            if param.reparameterization::<LoraFactors>().is_some() {
                *param = Param::initialized(param.id, param.val().detach());
            }
        }
        self.for_each_site(&mut |_, slot| match slot {
            Slot::Linear(l) => fold(&mut l.weight),
            Slot::Experts(x, "gate_up") => fold(&mut x.gate_up),
            Slot::Experts(x, _) => fold(&mut x.down),
        });
        self.unfreeze()
    }
}

fn swiglu_linear(m: &mut SwiGlu, j: usize) -> &mut Linear {
    match j {
        0 => &mut m.gate_proj,
        1 => &mut m.up_proj,
        _ => &mut m.down_proj,
    }
}

/// Where each entry of our `a` `[E, in, r]` and `b` `[E, r, out]` (row-major) sits in PEFT's
/// `lora_A.weight` `[r·E, in]` (row `e·r + j`) and `lora_B.weight` `[out, r·E]` (column
/// `j·E + e`).
fn peft_positions(site: &AdapterSite, rank: usize) -> (Vec<usize>, Vec<usize>) {
    let (e_n, d_in, d_out, r) = (site.num, site.d_in, site.d_out, rank);
    let mut in_a = Vec::with_capacity(e_n * d_in * r);
    let mut in_b = Vec::with_capacity(e_n * r * d_out);
    for e in 0..e_n {
        for i in 0..d_in {
            in_a.extend((0..r).map(|j| (e * r + j) * d_in + i));
        }
        for j in 0..r {
            in_b.extend((0..d_out).map(|o| o * r * e_n + j * e_n + e));
        }
    }
    (in_a, in_b)
}

/// PEFT's `lora_A.weight` and `lora_B.weight` from our `a` and `b` (see [`peft_positions`]).
pub fn to_peft(site: &AdapterSite, rank: usize, a: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (in_a, in_b) = peft_positions(site, rank);
    let mut pa = vec![0.0; a.len()];
    let mut pb = vec![0.0; b.len()];
    in_a.iter().zip(a).for_each(|(&at, &v)| pa[at] = v);
    in_b.iter().zip(b).for_each(|(&at, &v)| pb[at] = v);
    (pa, pb)
}

/// The inverse of [`to_peft`].
pub fn from_peft(site: &AdapterSite, rank: usize, pa: &[f32], pb: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (in_a, in_b) = peft_positions(site, rank);
    (
        in_a.iter().map(|&at| pa[at]).collect(),
        in_b.iter().map(|&at| pb[at]).collect(),
    )
}
