//! The trainer: a run's model, optimiser, data and schedule built from a recipe, its budget and
//! held-out evaluation. The optimiser step is in `step`, checkpoints, resume and the export in
//! `persist`, the run loop (cadences, progress, Ctrl-C) in `run`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use seqtopk_data::{Batch, Pipeline};
use seqtopk_model::{MoeTransformer, MoeTransformerConfig};
use seqtopk_router::TokenLayout;

use crate::TrainError;
use crate::gradients::ParamPaths;
use crate::memory::{self, MemoryEstimate, StepShape};
use crate::metrics::{DomainEval, DomainTally};
use crate::precision::{LossScaler, Precision};
use crate::recipe::{Recipe, Recompute};
use crate::schedule::LrSchedule;

mod persist;
mod run;
mod step;

/// How a run is driven (not part of the recipe: it does not change the result).
#[derive(Debug, Clone, Default)]
pub struct TrainerOptions {
    /// Continue from the newest checkpoint in the output directory.
    pub resume: bool,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Set (e.g. by Ctrl-C) to save a checkpoint and stop after the current step.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Resume without checking the checkpoint's manifest (sizes and SHA-256 of its files).
    pub no_verify: bool,
}

/// What a run costs: printed by `--dry-run` and at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Parameters of the model.
    pub params_total: usize,
    /// Parameters a token uses at the nominal budget K (all but the unselected experts).
    pub params_active: usize,
    /// Parameters the optimiser updates (not frozen).
    pub params_trainable: usize,
    /// Parameters no gradient is computed for (a LoRA base), stored in the compute dtype.
    pub params_without_gradient: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Token slots per optimiser step (rows × sequence length).
    pub tokens_per_step: usize,
    /// Token slots over the run.
    pub total_tokens: u64,
}

impl Budget {
    /// The budget of `recipe` on a model of `config` routed at `top_k` (the config's K when
    /// `None`) with `[total, trainable, without gradient]` parameters, over `steps` steps.
    fn new(
        recipe: &Recipe,
        config: &MoeTransformerConfig,
        top_k: Option<usize>,
        [params_total, params_trainable, params_without_gradient]: [usize; 3],
        steps: u64,
    ) -> Self {
        let params_active = match &config.moe {
            Some(moe) => {
                let per_expert = 3 * config.hidden_size * moe.expert_intermediate_size;
                let k = top_k.unwrap_or(moe.num_experts_per_tok);
                let idle = moe.num_experts.saturating_sub(k) * per_expert;
                params_total - config.moe_layers().len() * idle
            }
            None => params_total,
        };
        let tokens_per_step = recipe.tokens_per_step();
        Budget {
            params_total,
            params_active,
            params_trainable,
            params_without_gradient,
            steps,
            tokens_per_step,
            total_tokens: tokens_per_step as u64 * steps,
        }
    }

    /// The budget of `recipe` on a model of `config` counted without building the model (a dry
    /// run of a model too large for this machine): everything trains, or LoRA's adapters and
    /// `modules_to_save` do. `optimizer.freeze` is not applied (it matches built parameters);
    /// steps are 0 when the recipe counts epochs.
    pub fn planned(recipe: &Recipe, config: &MoeTransformerConfig) -> Result<Self, TrainError> {
        let base = config.parameter_count();
        let counts = match &recipe.lora {
            None => [base, base, 0],
            Some(lora) => {
                let model_error = |e: seqtopk_model::ModelError| TrainError::Model(e.to_string());
                let p = lora.spec().params(config).map_err(model_error)?;
                if let Some(target) = p.unmatched.first() {
                    return Err(model_error(seqtopk_model::unmatched_target(target)));
                }
                [base + p.adapters, p.adapters + p.saved, base - p.saved]
            }
        };
        let top_k = recipe.router.as_ref().map(|r| r.top_k);
        Ok(Self::new(
            recipe,
            config,
            top_k,
            counts,
            recipe.train.steps.unwrap_or(0),
        ))
    }

    /// Bytes of weights, gradients and AdamW state (activations not included): parameters that
    /// take gradients keep f32 weights (plus a 2-byte copy when `half`-precision passes cast
    /// them); those without (a LoRA base) are stored in the compute dtype; the trainable ones
    /// add an f32 gradient and two f32 moments.
    pub fn state_bytes(&self, half: bool) -> f64 {
        self.weight_bytes(half) + self.params_trainable as f64 * 12.0
    }

    /// Bytes of the weights alone, as [`Self::state_bytes`] counts them.
    pub fn weight_bytes(&self, half: bool) -> f64 {
        let frozen = self.params_without_gradient as f64;
        let graded = (self.params_total - self.params_without_gradient) as f64;
        let (frozen_bytes, graded_bytes) = if half { (2.0, 6.0) } else { (4.0, 4.0) };
        frozen * frozen_bytes + graded * graded_bytes
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// All steps done; the final model is exported here.
    Completed {
        /// Steps completed.
        steps: u64,
        /// Final export directory.
        final_dir: PathBuf,
    },
    /// Stopped on request after saving a checkpoint.
    Interrupted {
        /// Steps completed.
        steps: u64,
        /// The checkpoint to resume from.
        checkpoint: PathBuf,
    },
}

/// A training run in progress.
pub struct Trainer {
    recipe: Recipe,
    /// One device per data-parallel replica; the first (primary) holds the model and the
    /// optimiser state.
    replicas: Vec<Device>,
    model: MoeTransformer,
    optim: ModuleOptimizer,
    schedule: LrSchedule,
    pipeline: Pipeline,
    paths: ParamPaths,
    frozen: Vec<ParamId>,
    /// Dynamic loss scaling (f16 runs only).
    loss_scaler: Option<LossScaler>,
    step: u64,
    total_steps: u64,
    hf_config: serde_json::Value,
    tokenizer_dir: Option<PathBuf>,
}

impl Trainer {
    /// Builds the model, the data pipeline and the optimiser a recipe describes.
    pub fn new(recipe: Recipe) -> Result<Self, TrainError> {
        let replicas = training_devices(&recipe)?;
        let loss_scaler = recipe.loss_scale.as_ref().map(LossScaler::new);
        let pipeline = Pipeline::new(recipe.data.clone())?;
        let (model, hf_config, tokenizer_dir) = build_model(&recipe, &replicas[0])?;
        let vocab = model.config().vocab_size;
        let tok_vocab = pipeline.tokenizer().vocab_size();
        if tok_vocab > vocab {
            return Err(TrainError::Model(format!(
                "the tokenizer {} has {tok_vocab} tokens but the model's vocab_size is {vocab}",
                recipe.data.tokenizer.display()
            )));
        }
        let model = route_and_adapt(&recipe, model)?;
        let paths = ParamPaths::of(&model);
        let unmatched = paths.unmatched(&recipe.optimizer.freeze);
        if !unmatched.is_empty() {
            return Err(TrainError::Recipe {
                origin: "optimizer.freeze".into(),
                message: format!(
                    "{unmatched:?} match no parameter (paths look like `{}`)",
                    paths.entries().first().map_or("", |e| e.path.as_str())
                ),
            });
        }
        let frozen = paths.matching(&recipe.optimizer.freeze);
        let total_steps = planned_steps(&recipe, &pipeline)?;
        let o = &recipe.optimizer;
        let optim = AdamWConfig::new()
            .with_beta_1(o.betas[0] as f32)
            .with_beta_2(o.betas[1] as f32)
            .with_epsilon(o.eps as f32)
            .with_weight_decay(o.weight_decay as f32)
            .init();
        let schedule = LrSchedule::new(&recipe.schedule, o.lr, total_steps);
        Ok(Self {
            recipe,
            replicas,
            model,
            optim,
            schedule,
            pipeline,
            paths,
            frozen,
            loss_scaler,
            step: 0,
            total_steps,
            hf_config,
            tokenizer_dir,
        })
    }

    /// The device holding the model and the optimiser state.
    fn primary(&self) -> &Device {
        &self.replicas[0]
    }

    /// The model being trained.
    pub fn model(&self) -> &MoeTransformer {
        &self.model
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Steps planned.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// What the run costs.
    pub fn budget(&self) -> Budget {
        let entries = self.paths.entries().iter();
        let trainable: usize = entries
            .clone()
            .filter(|e| e.trainable && !self.frozen.contains(&e.id))
            .map(|e| e.numel)
            .sum();
        let without_gradient: usize = entries.filter(|e| !e.trainable).map(|e| e.numel).sum();
        let top_k = self.model.router().map(|r| r.config().top_k);
        Budget::new(
            &self.recipe,
            self.model.config(),
            top_k,
            [self.paths.num_params(), trainable, without_gradient],
            self.total_steps,
        )
    }

    /// Predicted peak memory of one step on each device.
    pub fn memory_estimate(&self) -> MemoryEstimate {
        let config = self.model.config();
        memory::estimate(config, &self.budget(), &StepShape::of(&self.recipe, config))
    }

    /// Held-out next-token loss per domain over the first `eval_batches` validation batches of
    /// each domain, with the routing each domain's tokens got.
    pub fn evaluate(&self) -> Result<Vec<DomainEval>, TrainError> {
        let model = self.model.valid();
        let model = match self.recipe.precision.compute_dtype() {
            Some(dtype) => model.cast_for_compute(dtype),
            None => model,
        };
        let device = self.primary().clone().inner();
        let per_domain = self.recipe.train.eval_batches;
        let domains = self.pipeline.domains();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut tallies: BTreeMap<String, DomainTally> = BTreeMap::new();
        for batch in self.pipeline.validation_batches() {
            let batch = batch?;
            // Validation runs source by source: a batch counts for the domains of its rows, and
            // is scored while one of them still has batches to go.
            let mut batch_domains: Vec<&String> =
                batch.domains.iter().filter(|d| !d.is_empty()).collect();
            batch_domains.sort();
            batch_domains.dedup();
            let done = |d: &String| seen.get(d).copied().unwrap_or(0) >= per_domain;
            if batch_domains.iter().all(|d| done(d)) {
                if domains.iter().all(done) {
                    break;
                }
                continue;
            }
            for d in batch_domains {
                *seen.entry(d.clone()).or_default() += 1;
            }
            let layout = layout_of(&batch)?;
            let out = model
                .forward_hidden(&batch.input_ids, &layout, &device)
                .map_err(|e| TrainError::Model(e.to_string()))?;
            for routed in &out.router_outputs {
                let stats = &routed.plan.stats;
                for (p, &experts) in stats.experts_per_token.iter().enumerate() {
                    if stats.valid[p] {
                        let domain = &batch.domains[p / batch.seq_len];
                        tallies
                            .entry(domain.clone())
                            .or_default()
                            .add_routing(experts, stats);
                    }
                }
            }
            let nll = model
                .target_nll(out.hidden, &batch.targets)
                .map_err(|e| TrainError::Model(e.to_string()))?;
            let values = nll
                .per_target
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| TrainError::Model(format!("reading eval loss back: {e:?}")))?;
            for (&p, &value) in nll.positions.iter().zip(&values) {
                let domain = &batch.domains[p / batch.seq_len];
                tallies
                    .entry(domain.clone())
                    .or_default()
                    .add_loss(f64::from(value));
            }
        }
        Ok(tallies
            .into_iter()
            .filter_map(|(domain, tally)| tally.finish(domain))
            .collect())
    }
}

/// Tokens of every training document (to turn `epochs` into steps).
fn train_tokens(pipeline: &Pipeline) -> Result<u64, TrainError> {
    let mut total = 0u64;
    for source in pipeline.sources() {
        for &doc in &source.train {
            let d = pipeline
                .tokenizer()
                .tokenize(&source.documents[doc as usize], source.file_of(doc))?;
            total += d.len() as u64;
        }
    }
    Ok(total)
}

fn build_model(
    recipe: &Recipe,
    device: &Device,
) -> Result<(MoeTransformer, serde_json::Value, Option<PathBuf>), TrainError> {
    let tokenizer_dir = recipe.data.tokenizer.parent().map(Path::to_path_buf);
    if let Some(dir) = &recipe.model.checkpoint {
        let loaded =
            seqtopk_checkpoint::load(dir, device).map_err(|e| TrainError::Model(e.to_string()))?;
        let tokenizer_dir = loaded
            .tokenizer
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .or(tokenizer_dir);
        return Ok((loaded.model, loaded.hf_config, tokenizer_dir));
    }
    let table = recipe.model.config.clone().unwrap_or_default();
    let json = serde_json::to_value(&table).map_err(|e| TrainError::Recipe {
        origin: "model.config".into(),
        message: e.to_string(),
    })?;
    let config =
        MoeTransformerConfig::from_json_str(&json.to_string(), "[model.config]").map_err(|e| {
            TrainError::Recipe {
                origin: "model.config".into(),
                message: e.to_string(),
            }
        })?;
    let model = MoeTransformer::init(&config, recipe.seed, device)
        .map_err(|e| TrainError::Model(e.to_string()))?;
    Ok((model, json, tokenizer_dir))
}

fn layout_of(batch: &Batch) -> Result<TokenLayout, TrainError> {
    TokenLayout::new(
        batch.batch_size,
        batch.seq_len,
        batch.valid.clone(),
        batch.doc_ids.clone(),
    )
    .map_err(|e| TrainError::Model(format!("batch layout: {e}")))
}

/// One autodiff device per replica (with Burn's checkpointing under balanced recomputation),
/// each able to compute in the recipe's precision.
fn training_devices(recipe: &Recipe) -> Result<Vec<Device>, TrainError> {
    let replicas = recipe
        .devices
        .iter()
        .map(|&index| {
            let device = recipe.backend.device(index)?.autodiff();
            Ok(match recipe.train.recompute {
                Recompute::None => device,
                Recompute::Balanced => device.gradient_checkpointing(),
            })
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    for (replica, &index) in replicas.iter().zip(&recipe.devices) {
        if !recipe.precision.is_supported_by(replica) {
            return Err(TrainError::Recipe {
                origin: "precision".into(),
                message: format!(
                    "\"{}\" is not supported by {} device {index}, which computes in: {}",
                    recipe.precision,
                    recipe.backend,
                    Precision::supported_by(replica)
                ),
            });
        }
    }
    Ok(replicas)
}

/// `model` with the recipe's routing and, for a LoRA recipe, its adapters (the frozen base
/// then stored in the compute dtype: it needs no f32 master copy).
fn route_and_adapt(
    recipe: &Recipe,
    mut model: MoeTransformer,
) -> Result<MoeTransformer, TrainError> {
    if let Some(router) = &recipe.router {
        if model.config().moe.is_none() {
            return Err(TrainError::Recipe {
                origin: "router".into(),
                message: "the model has no MoE layers to route".into(),
            });
        }
        model.set_routing(router).map_err(|e| TrainError::Recipe {
            origin: "router".into(),
            message: e.to_string(),
        })?;
    }
    let Some(lora) = &recipe.lora else {
        return Ok(model);
    };
    let seed = seqtopk_data::rng::derive_seed(recipe.seed, &[seqtopk_data::rng::fnv1a(b"lora")]);
    let (adapted, sites) = model
        .with_lora(&lora.spec(), seed)
        .map_err(|e| TrainError::Recipe {
            origin: "lora".into(),
            message: e.to_string(),
        })?;
    tracing::info!(
        adapters = sites.len(),
        rank = lora.r,
        base_dtype = %recipe.precision,
        "LoRA: base frozen"
    );
    Ok(match recipe.precision.compute_dtype() {
        Some(dtype) => adapted.store_frozen_in(dtype),
        None => adapted,
    })
}

/// The run's optimiser steps: `train.steps`, or `train.epochs` over the training split.
fn planned_steps(recipe: &Recipe, pipeline: &Pipeline) -> Result<u64, TrainError> {
    Ok(match (recipe.train.steps, recipe.train.epochs) {
        (Some(s), _) => s,
        (None, Some(epochs)) => {
            let tokens = train_tokens(pipeline)?;
            let per_step = recipe.tokens_per_step() as f64;
            ((epochs * tokens as f64 / per_step).ceil() as u64).max(1)
        }
        (None, None) => unreachable!("validated"),
    })
}
