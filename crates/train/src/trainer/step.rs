//! One optimiser step: every micro-batch's forward and backward (on the replicas), the
//! weighted losses, accumulation, the loss scale, clipping and AdamW.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, FloatDType, Tensor};
use seqtopk_data::Batch;
use seqtopk_model::MoeTransformer;
use seqtopk_rng::derive_seed;
use seqtopk_router::{LbConvention, RoutingStats, load_balancing_loss, z_loss};

use super::{Trainer, layout_of};
use crate::TrainError;
use crate::gradients::GradientTools;
use crate::metrics::{LayerRouting, StepMetrics};
use crate::precision::ScaleVerdict;
use crate::resume;

impl Trainer {
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
        let pass = self.pass_weights(total_targets, micro_batches.len());
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
        let routing = merge_routing(per_micro);
        let total = lm_sum + lb_sum + z_sum;
        let step = self.step + 1;
        if !total.is_finite() {
            return Err(self.non_finite(step, total));
        }
        let mut grads = accumulator.grads();
        GradientTools::new(&self.paths).drop_frozen(&mut grads, &self.frozen);
        // The norm of the gradients as computed, i.e. times the loss scale.
        let scaled_norm = GradientTools::new(&self.paths).global_norm(&grads);
        let lr = self.schedule.lr(self.step);
        let skipped = self.skips_overflow(step, scaled_norm, pass.loss_scale)?;
        let grad_norm = scaled_norm / pass.loss_scale;
        if !skipped {
            // Unscaling and clipping in one pass over the gradients.
            let mut factor = 1.0 / pass.loss_scale;
            let max_norm = self.recipe.optimizer.max_grad_norm;
            if max_norm > 0.0 && grad_norm > max_norm {
                factor *= max_norm / (grad_norm + 1e-6);
            }
            if factor != 1.0 {
                GradientTools::new(&self.paths).scale(&mut grads, factor);
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

    /// How one step's passes weigh and scale their losses.
    fn pass_weights(&self, total_targets: usize, n_micro: usize) -> PassWeights {
        let router = self.recipe.router.as_ref();
        PassWeights {
            total_targets,
            lb: router
                .map(|r| &r.load_balance)
                .filter(|lb| lb.convention != LbConvention::None && lb.coef > 0.0)
                .map(|lb| (lb.convention, lb.coef)),
            z_coef: router.map_or(0.0, |r| r.z_loss_coef),
            n_micro: n_micro as f64,
            compute_dtype: self.recipe.precision.compute_dtype(),
            loss_scale: self.loss_scaler.map_or(1.0, |s| s.scale),
            // LoRA dropout draws its masks from the device's generator, seeded per step so a
            // resumed run draws the same ones.
            dropout_seed: self
                .recipe
                .lora
                .as_ref()
                .filter(|l| l.dropout > 0.0)
                .map(|_| derive_seed(self.recipe.seed, &[self.step])),
        }
    }

    /// Whether step `step` is skipped because its f16 gradients overflowed (the loss scaler
    /// halves its scale); an error for non-finite gradients without a scaler, or when the
    /// scaler gives up.
    fn skips_overflow(
        &mut self,
        step: u64,
        scaled_norm: f64,
        loss_scale: f64,
    ) -> Result<bool, TrainError> {
        match self
            .loss_scaler
            .as_mut()
            .map(|s| s.update(scaled_norm.is_finite()))
        {
            None if !scaled_norm.is_finite() => Err(self.non_finite(step, scaled_norm)),
            None | Some(ScaleVerdict::Apply) => Ok(false),
            Some(ScaleVerdict::Skip) => {
                tracing::warn!(
                    step,
                    loss_scale,
                    "f16 gradients overflowed: step skipped, loss scale halved"
                );
                Ok(true)
            }
            Some(ScaleVerdict::GiveUp) => Err(TrainError::NonFiniteGradients {
                step,
                last_good: self.last_good_checkpoint(),
            }),
        }
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
    /// Seed of the step's dropout masks (`None`: no dropout).
    dropout_seed: Option<u64>,
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
        if let Some(seed) = pass.dropout_seed {
            device.seed(derive_seed(seed, &[index as u64]));
        }
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

fn scalar(t: &Tensor<1>) -> f64 {
    f64::from(t.clone().into_scalar::<f32>())
}

/// Routing statistics per layer over a step, summed in micro-batch order whichever replica
/// ran each micro-batch.
fn merge_routing(mut per_micro: Vec<(usize, Vec<(usize, RoutingStats)>)>) -> Vec<LayerRouting> {
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
    routing
}
