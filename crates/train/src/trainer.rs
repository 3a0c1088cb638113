//! The training loop: micro-batches → loss → gradients → accumulation → clipping → AdamW,
//! with held-out evaluation, exact-resume checkpoints, a non-finite-loss stop and Ctrl-C.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, FloatDType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use seqtopk_data::{Batch, Pipeline};
use seqtopk_model::{MoeTransformer, MoeTransformerConfig};
use seqtopk_router::{LbConvention, RoutingStats, TokenLayout, load_balancing_loss, z_loss};

use crate::TrainError;
use crate::gradients::{GradientTools, ParamPaths};
use crate::metrics::{DomainEval, DomainTally, LayerRouting, Monitor, StepMetrics};
use crate::precision::{LossScaler, Precision, ScaleVerdict};
use crate::recipe::{Recipe, Recompute};
use crate::resume::{self, MODEL_FILE, OPTIMIZER_FILE, RECIPE_FILE, STATE_FILE, TrainerState};
use crate::schedule::LrSchedule;

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
    /// Bytes of weights, gradients and AdamW state (activations not included): parameters that
    /// take gradients keep f32 weights (plus a 2-byte copy when `half`-precision passes cast
    /// them); those without (a LoRA base) are stored in the compute dtype; the trainable ones
    /// add an f32 gradient and two f32 moments.
    pub fn state_bytes(&self, half: bool) -> f64 {
        let frozen = self.params_without_gradient as f64;
        let graded = (self.params_total - self.params_without_gradient) as f64;
        let (frozen_bytes, graded_bytes) = if half { (2.0, 6.0) } else { (4.0, 4.0) };
        frozen * frozen_bytes + graded * graded_bytes + self.params_trainable as f64 * 12.0
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
        let loss_scaler = recipe.loss_scale.as_ref().map(LossScaler::new);
        let pipeline = Pipeline::new(recipe.data.clone())?;
        let (mut model, hf_config, tokenizer_dir) = build_model(&recipe, &replicas[0])?;
        let vocab = model.config().vocab_size;
        let tok_vocab = pipeline.tokenizer().vocab_size();
        if tok_vocab > vocab {
            return Err(TrainError::Model(format!(
                "the tokenizer {} has {tok_vocab} tokens but the model's vocab_size is {vocab}",
                recipe.data.tokenizer.display()
            )));
        }
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
        if let Some(lora) = &recipe.lora {
            let seed =
                seqtopk_data::rng::derive_seed(recipe.seed, &[seqtopk_data::rng::fnv1a(b"lora")]);
            let (adapted, sites) =
                model
                    .with_lora(&lora.spec(), seed)
                    .map_err(|e| TrainError::Recipe {
                        origin: "lora".into(),
                        message: e.to_string(),
                    })?;
            model = match recipe.precision.compute_dtype() {
                // The frozen base needs no f32 master copy: it is kept in the compute dtype.
                Some(dtype) => adapted.store_frozen_in(dtype),
                None => adapted,
            };
            tracing::info!(
                adapters = sites.len(),
                rank = lora.r,
                base_dtype = %recipe.precision,
                "LoRA: base frozen"
            );
        }
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
        let total_steps = match (recipe.train.steps, recipe.train.epochs) {
            (Some(s), _) => s,
            (None, Some(epochs)) => {
                let tokens = train_tokens(&pipeline)?;
                let per_step = recipe.tokens_per_step() as f64;
                ((epochs * tokens as f64 / per_step).ceil() as u64).max(1)
            }
            (None, None) => unreachable!("validated"),
        };
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
        let params_total = self.paths.num_params();
        let entries = self.paths.entries().iter();
        let trainable: usize = entries
            .clone()
            .filter(|e| e.trainable && !self.frozen.contains(&e.id))
            .map(|e| e.numel)
            .sum();
        let without_gradient: usize = entries.filter(|e| !e.trainable).map(|e| e.numel).sum();
        let c = self.model.config();
        let params_active = match &c.moe {
            Some(moe) => {
                let per_expert = 3 * c.hidden_size * moe.expert_intermediate_size;
                let moe_layers = c.moe_layers().len();
                let k = self
                    .model
                    .router()
                    .map_or(moe.num_experts_per_tok, |r| r.config().top_k);
                params_total - moe_layers * moe.num_experts.saturating_sub(k) * per_expert
            }
            None => params_total,
        };
        let tokens_per_step = self.recipe.tokens_per_step();
        Budget {
            params_total,
            params_active,
            params_trainable: trainable,
            params_without_gradient: without_gradient,
            steps: self.total_steps,
            tokens_per_step,
            total_tokens: tokens_per_step as u64 * self.total_steps,
        }
    }

    /// Loads the newest checkpoint of the run's output directory: model, optimiser, data
    /// position and step. Returns the step resumed from, or `None` when there is none.
    ///
    /// The checkpoint is verified against its manifest first; a damaged or incomplete newest
    /// checkpoint is an error, never passed over for an older one.
    pub fn resume_latest(&mut self) -> Result<Option<u64>, TrainError> {
        self.resume_latest_with(true)
    }

    /// [`Trainer::resume_latest`], with checksum verification optional (`verify = false` also
    /// accepts a checkpoint without manifest).
    pub fn resume_latest_with(&mut self, verify: bool) -> Result<Option<u64>, TrainError> {
        let output = self.recipe.output_dir();
        let Some(found) = resume::latest_checkpoint(&output) else {
            return Ok(None);
        };
        if verify {
            resume::verify_checkpoint(&found, true)?;
        }
        let dir = found.dir;
        let state = resume::read_state(&dir)?;
        if state.name != self.recipe.name {
            return Err(TrainError::Checkpoint {
                path: dir,
                message: format!(
                    "belongs to run `{}`, not `{}`",
                    state.name, self.recipe.name
                ),
            });
        }
        let ckpt_err = |path: PathBuf, message: String| TrainError::Checkpoint { path, message };
        let model_path = dir.join(MODEL_FILE);
        let mut store = BurnpackStore::from_file(&model_path).validate(true);
        let applied = self
            .model
            .load_from(&mut store)
            .map_err(|e| ckpt_err(model_path.clone(), e.to_string()))?;
        if !applied.missing.is_empty() || !applied.errors.is_empty() {
            let first = applied
                .missing
                .first()
                .map(|m| format!("missing {m:?}"))
                .or_else(|| applied.errors.first().map(|e| format!("{e}")))
                .unwrap_or_default();
            return Err(ckpt_err(
                model_path,
                format!(
                    "does not match the recipe's model ({} tensors missing, {} mismatched; first: {first})",
                    applied.missing.len(),
                    applied.errors.len()
                ),
            ));
        }
        let optim_path = dir.join(OPTIMIZER_FILE);
        self.optim =
            self.optim.clone().load(&optim_path).map_err(|e| {
                ckpt_err(optim_path, format!("cannot load the optimiser state: {e}"))
            })?;
        self.pipeline
            .restore(&state.pipeline)
            .map_err(|e| ckpt_err(dir.clone(), e.to_string()))?;
        // Parameter ids came from the checkpoint: recompute the path → id map.
        self.paths = ParamPaths::of(&self.model);
        self.frozen = self.paths.matching(&self.recipe.optimizer.freeze);
        if let (Some(scaler), Some(saved)) = (&mut self.loss_scaler, state.loss_scaler) {
            scaler.scale = saved.scale;
            scaler.good_steps = saved.good_steps;
        }
        self.step = state.step;
        tracing::info!(step = state.step, checkpoint = %dir.display(), "resumed");
        Ok(Some(state.step))
    }

    /// Saves an exact-resume checkpoint of the current step.
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        let state = TrainerState {
            step: self.step,
            total_steps: self.total_steps,
            pipeline: self.pipeline.state(),
            name: self.recipe.name.clone(),
            loss_scaler: self.loss_scaler,
        };
        let recipe_toml = self.recipe.to_toml();
        resume::write_checkpoint(
            &self.recipe.output_dir(),
            self.step,
            self.recipe.train.keep_checkpoints,
            |dir| {
                let mut store = BurnpackStore::from_file(dir.join(MODEL_FILE)).overwrite(true);
                self.model
                    .save_into(&mut store)
                    .map_err(|e| format!("writing the model: {e}"))?;
                self.optim
                    .save(dir.join(OPTIMIZER_FILE))
                    .map_err(|e| format!("writing the optimiser state: {e}"))?;
                let json = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
                std::fs::write(dir.join(STATE_FILE), json).map_err(|e| e.to_string())?;
                std::fs::write(dir.join(RECIPE_FILE), &recipe_toml).map_err(|e| e.to_string())?;
                Ok(())
            },
        )
    }

    /// One optimiser step over `micro_batches` (gradient accumulation; with several devices,
    /// micro-batch `i` runs on replica `i mod devices`). The loss is the mean over all target
    /// tokens of the step (every micro-batch weighted by its tokens); load balancing and z-loss
    /// are averaged over micro-batches.
    pub fn train_step(&mut self, micro_batches: &[Batch]) -> Result<StepMetrics, TrainError> {
        let started = Instant::now();
        let total_targets: usize = micro_batches.iter().map(Batch::num_targets).sum();
        if total_targets == 0 {
            return Err(TrainError::Model(format!(
                "step {}: the batch has no target tokens",
                self.step + 1
            )));
        }
        let router = self.recipe.router.as_ref();
        let pass = PassWeights {
            total_targets,
            lb: router
                .map(|r| &r.load_balance)
                .filter(|lb| lb.convention != LbConvention::None && lb.coef > 0.0)
                .map(|lb| (lb.convention, lb.coef)),
            z_coef: router.map_or(0.0, |r| r.z_loss_coef),
            n_micro: micro_batches.len() as f64,
            compute_dtype: self.recipe.precision.compute_dtype(),
            loss_scale: self.loss_scaler.map_or(1.0, |s| s.scale),
        };
        let passes = self.replica_passes(micro_batches, &pass)?;
        // Every replica's gradients move to the primary device (`GradientsParams::to_device`)
        // and are summed there, so the global norm can be taken before the one optimiser step.
        let mut accumulator = GradientsAccumulator::<MoeTransformer>::new();
        let (mut lm_sum, mut lb_sum, mut z_sum, mut tokens) = (0.0, 0.0, 0.0, 0);
        let mut per_micro: Vec<(usize, Vec<(usize, RoutingStats)>)> = Vec::new();
        for replica in passes {
            let grads = if self.replicas.len() > 1 {
                replica.grads.to_device(self.primary(), &self.model)
            } else {
                replica.grads
            };
            accumulator.accumulate(&self.model, grads);
            lm_sum += replica.lm_sum;
            lb_sum += replica.lb_sum;
            z_sum += replica.z_sum;
            tokens += replica.tokens;
            per_micro.extend(replica.routing);
        }
        // Routing statistics in micro-batch order, whichever replica ran them.
        per_micro.sort_by_key(|(i, _)| *i);
        let mut routing: Vec<LayerRouting> = Vec::new();
        for (_, layers) in &per_micro {
            for (i, (layer, stats)) in layers.iter().enumerate() {
                if routing.len() <= i {
                    routing.push(LayerRouting::new(*layer, stats));
                }
                routing[i].add(stats);
            }
        }
        let total = lm_sum + lb_sum + z_sum;
        let step = self.step + 1;
        if !total.is_finite() {
            return Err(self.non_finite(step, total));
        }
        let mut grads = accumulator.grads();
        let tools = GradientTools::new(&self.paths);
        tools.drop_frozen(&mut grads, &self.frozen);
        // The norm of the gradients as computed, i.e. times the loss scale.
        let scaled_norm = tools.global_norm(&grads);
        let lr = self.schedule.lr(self.step);
        let mut skipped = false;
        match self
            .loss_scaler
            .as_mut()
            .map(|s| s.update(scaled_norm.is_finite()))
        {
            None if !scaled_norm.is_finite() => return Err(self.non_finite(step, scaled_norm)),
            None | Some(ScaleVerdict::Apply) => {}
            Some(ScaleVerdict::Skip) => {
                tracing::warn!(
                    step,
                    loss_scale = pass.loss_scale,
                    "f16 gradients overflowed: step skipped, loss scale halved"
                );
                skipped = true;
            }
            Some(ScaleVerdict::GiveUp) => {
                return Err(TrainError::NonFiniteGradients {
                    step,
                    last_good: self.last_good_checkpoint(),
                });
            }
        }
        let grad_norm = scaled_norm / pass.loss_scale;
        if !skipped {
            // Unscaling and clipping in one pass over the gradients.
            let mut factor = 1.0 / pass.loss_scale;
            let max_norm = self.recipe.optimizer.max_grad_norm;
            if max_norm > 0.0 && grad_norm > max_norm {
                factor *= max_norm / (grad_norm + 1e-6);
            }
            if factor != 1.0 {
                tools.scale(&mut grads, factor);
            }
            self.model = self.optim.step(lr, self.model.clone(), grads);
        }
        self.step = step;
        Ok(StepMetrics {
            step,
            loss: total,
            lm_loss: lm_sum,
            lb_loss: lb_sum,
            z_loss: z_sum,
            lr,
            grad_norm,
            target_tokens: total_targets,
            tokens,
            seconds: started.elapsed().as_secs_f64(),
            routing,
            loss_scale: self.loss_scaler.is_some().then_some(pass.loss_scale),
            skipped,
        })
    }

    /// Forward and backward of every micro-batch: on the primary device alone, or on each
    /// replica (the model forked to its device) in its own thread, as Burn's learner does.
    fn replica_passes(
        &self,
        micro_batches: &[Batch],
        pass: &PassWeights,
    ) -> Result<Vec<ReplicaPass>, TrainError> {
        let n = self.replicas.len();
        if n == 1 {
            let all: Vec<(usize, &Batch)> = micro_batches.iter().enumerate().collect();
            return Ok(vec![replica_pass(&self.model, &all, self.primary(), pass)?]);
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .replicas
                .iter()
                .enumerate()
                .map(|(r, device)| {
                    let share: Vec<(usize, &Batch)> = micro_batches
                        .iter()
                        .enumerate()
                        .skip(r)
                        .step_by(n)
                        .collect();
                    let model = if r == 0 {
                        self.model.clone()
                    } else {
                        self.model.clone().fork(device)
                    };
                    scope.spawn(move || replica_pass(&model, &share, device, pass))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }

    /// Draws the next step's micro-batches from the data pipeline and trains on them.
    pub fn step_once(&mut self) -> Result<StepMetrics, TrainError> {
        let n = self.recipe.batch.grad_accum_steps * self.replicas.len();
        let mut batches = Vec::with_capacity(n);
        for _ in 0..n {
            batches.push(self.pipeline.next_batch()?);
        }
        self.train_step(&batches)
    }

    fn non_finite(&self, step: u64, value: f64) -> TrainError {
        TrainError::NonFiniteLoss {
            step,
            value,
            last_good: self.last_good_checkpoint(),
        }
    }

    fn last_good_checkpoint(&self) -> String {
        match resume::latest_checkpoint(&self.recipe.output_dir()) {
            Some(c) => format!("The last good checkpoint is {}", c.dir.display()),
            None => "No checkpoint was written before it.".into(),
        }
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

    /// Exports the current model as a native checkpoint (what `eval`, `generate` and
    /// `convert export` read); its config.json records the recipe's routing, which they apply.
    /// A LoRA run exports the merged model and its adapter in PEFT's format under
    /// `out/adapter`.
    pub fn export(&self, out: &Path) -> Result<PathBuf, TrainError> {
        let options = seqtopk_checkpoint::SaveOptions {
            source: format!(
                "seqtopk train, recipe `{}`, step {}",
                self.recipe.name, self.step
            ),
            force: true,
            ..Default::default()
        };
        let mut config = self.hf_config.clone();
        if let Some(router) = &self.recipe.router {
            seqtopk_checkpoint::record_routing(&mut config, router);
        }
        let merged = self
            .recipe
            .lora
            .as_ref()
            .map(|_| self.model.clone().merge_lora());
        let failed = |path: PathBuf| {
            move |e: seqtopk_checkpoint::CheckpointError| TrainError::Checkpoint {
                path,
                message: e.to_string(),
            }
        };
        seqtopk_checkpoint::save_native(
            merged.as_ref().unwrap_or(&self.model),
            &config,
            self.tokenizer_dir.as_deref(),
            out,
            &options,
        )
        .map_err(failed(out.to_path_buf()))?;
        if let Some(lora) = &self.recipe.lora {
            let dir = out.join("adapter");
            let base = self
                .recipe
                .model
                .checkpoint
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string());
            seqtopk_checkpoint::peft::save_adapter(&self.model, &lora.spec(), &base, &dir, true)
                .map_err(failed(dir.clone()))?;
        }
        Ok(out.to_path_buf())
    }

    /// Runs the remaining steps: logging, evaluation and checkpoints on their cadences, a
    /// checkpoint and an export at the end.
    pub fn run(mut self, options: &TrainerOptions) -> Result<RunOutcome, TrainError> {
        let output = self.recipe.output_dir();
        std::fs::create_dir_all(&output).map_err(|e| TrainError::Output {
            path: output.clone(),
            message: e.to_string(),
        })?;
        let _lock = resume::lock_output(&output)?;
        resume::clean_leftovers(&output);
        if options.resume {
            match self.resume_latest_with(!options.no_verify)? {
                Some(step) => tracing::info!("continuing from step {step}"),
                None => tracing::warn!(
                    "--resume: no checkpoint in {}; starting from step 0",
                    output.display()
                ),
            }
        } else if let Some(found) = resume::latest_checkpoint(&output) {
            return Err(TrainError::Output {
                path: output,
                message: format!(
                    "already holds checkpoint {}; pass --resume to continue it or choose another output_dir",
                    found.dir.display()
                ),
            });
        }
        let mut monitor = Monitor::open(&self.recipe.log_dir())?;
        let bar = progress_bar(options.progress, self.total_steps, self.step);
        let t = self.recipe.train.clone();
        while self.step < self.total_steps {
            let m = self.step_once()?;
            let tokens_per_s = m.tokens as f64 / m.seconds.max(1e-9);
            bar.set_position(m.step);
            bar.set_message(format!("loss {:.4} | {:.0} tok/s", m.loss, tokens_per_s));
            if m.step.is_multiple_of(t.log_every) || m.step == 1 {
                monitor.step(&m);
                bar.suspend(|| {
                    tracing::info!(
                        step = m.step,
                        loss = format!("{:.4}", m.loss),
                        lm = format!("{:.4}", m.lm_loss),
                        lb = format!("{:.4}", m.lb_loss),
                        lr = format!("{:.2e}", m.lr),
                        grad_norm = format!("{:.3}", m.grad_norm),
                        tokens_per_s = format!("{tokens_per_s:.0}"),
                        "train"
                    )
                });
            }
            let last = self.step == self.total_steps;
            if (t.eval_every > 0 && self.step.is_multiple_of(t.eval_every)) || last {
                let eval = self.evaluate()?;
                monitor.eval(self.step, &eval);
                for d in &eval {
                    bar.suspend(|| {
                        tracing::info!(
                            step = self.step,
                            domain = d.domain,
                            loss = format!("{:.4}", d.loss),
                            tokens = d.tokens,
                            experts_per_token = d.experts_per_token.map(|e| format!("{e:.3}")),
                            "eval"
                        )
                    });
                }
            }
            let interrupted = options
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst));
            if (t.checkpoint_every > 0 && self.step.is_multiple_of(t.checkpoint_every))
                || last
                || interrupted
            {
                let dir = self.save_checkpoint()?;
                monitor.flush();
                bar.suspend(|| tracing::info!(step = self.step, checkpoint = %dir.display(), "checkpoint saved"));
                if interrupted && !last {
                    bar.abandon();
                    return Ok(RunOutcome::Interrupted {
                        steps: self.step,
                        checkpoint: dir,
                    });
                }
            }
        }
        bar.finish();
        monitor.flush();
        let final_dir = self.export(&output.join("final"))?;
        Ok(RunOutcome::Completed {
            steps: self.step,
            final_dir,
        })
    }
}

fn progress_bar(enabled: bool, total: u64, position: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_position(position);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {msg} | {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// How one micro-batch's losses are weighted within the step.
struct PassWeights {
    /// Target tokens of the whole step (all micro-batches, all replicas).
    total_targets: usize,
    /// Load-balancing convention and coefficient, when it applies.
    lb: Option<(LbConvention, f64)>,
    z_coef: f64,
    /// Micro-batches of the whole step.
    n_micro: f64,
    /// The half type passes compute in (`None`: f32).
    compute_dtype: Option<FloatDType>,
    /// What the loss is multiplied by before the backward pass (1 unless f16).
    loss_scale: f64,
}

/// What one replica computed for its share of the micro-batches.
struct ReplicaPass {
    /// Its gradients, summed over its micro-batches, on its own device.
    grads: GradientsParams,
    lm_sum: f64,
    lb_sum: f64,
    z_sum: f64,
    tokens: usize,
    /// Per micro-batch (by index in the step): each MoE layer's index and routing statistics.
    routing: Vec<(usize, Vec<(usize, RoutingStats)>)>,
}

/// Forward and backward of `batches` with `model` on `device`.
fn replica_pass(
    model: &MoeTransformer,
    batches: &[(usize, &Batch)],
    device: &Device,
    pass: &PassWeights,
) -> Result<ReplicaPass, TrainError> {
    let mut accumulator = GradientsAccumulator::<MoeTransformer>::new();
    let mut out = ReplicaPass {
        grads: GradientsParams::new(),
        lm_sum: 0.0,
        lb_sum: 0.0,
        z_sum: 0.0,
        tokens: 0,
        routing: Vec::new(),
    };
    for &(index, batch) in batches {
        let layout = layout_of(batch)?;
        // The cast copy is taken inside this micro-batch's autodiff graph, so its gradients reach
        // `model` in f32. (One copy per micro-batch: a backward pass consumes the graph.)
        let compute = pass
            .compute_dtype
            .map(|dtype| model.cast_for_compute(dtype));
        let computing = compute.as_ref().unwrap_or(model);
        let forward = computing
            .forward_hidden(&batch.input_ids, &layout, device)
            .map_err(|e| TrainError::Model(e.to_string()))?;
        let nll = computing
            .target_nll(forward.hidden, &batch.targets)
            .map_err(|e| TrainError::Model(e.to_string()))?;
        let mut loss = nll.sum.div_scalar(pass.total_targets as f64);
        out.lm_sum += scalar(&loss);
        let routed = !forward.router_outputs.is_empty();
        if let Some((convention, coef)) = pass.lb
            && routed
        {
            let l = load_balancing_loss(&forward.router_outputs, &layout, convention)
                .mul_scalar(coef / pass.n_micro);
            out.lb_sum += scalar(&l);
            loss = loss + l;
        }
        if pass.z_coef > 0.0 && routed {
            let l = z_loss(&forward.router_outputs, &layout).mul_scalar(pass.z_coef / pass.n_micro);
            out.z_sum += scalar(&l);
            loss = loss + l;
        }
        let stats = forward
            .router_outputs
            .iter()
            .zip(&forward.moe_layers)
            .map(|(r, &layer)| (layer, r.plan.stats.clone()))
            .collect();
        out.routing.push((index, stats));
        out.tokens += batch.num_valid();
        if pass.loss_scale != 1.0 {
            loss = loss.mul_scalar(pass.loss_scale);
        }
        let grads = loss.backward();
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    out.grads = accumulator.grads();
    Ok(out)
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

fn scalar(t: &Tensor<1>) -> f64 {
    f64::from(t.clone().into_scalar::<f32>())
}
