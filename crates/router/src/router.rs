//! The router: logits in, routing plan out.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Tensor, Transaction};

use crate::config::ResolvedConfig;
use crate::plan::RoutingPlan;
use crate::select::{self, Candidates};
use crate::{ExpertCache, LbDispatch, RouterConfig, RoutingError, RoutingMode, TokenLayout};

/// Largest candidate width read back through `topk`; wider lists use a sort. CubeCL's `topk` is a
/// reduction whose `k` is a compile-time size, fine for a cap of `K+2` and bad for large `k`.
const MAX_TOPK_WIDTH: usize = 16;

/// A validated router for one MoE layer shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    config: ResolvedConfig,
}

/// What a layer gets back from routing.
#[derive(Debug, Clone)]
pub struct RouterOutput {
    /// The dispatch plan.
    pub plan: RoutingPlan,
    /// Router probabilities `[B, T, E]` (f32 softmax over all experts), on the autodiff graph.
    pub probs: Tensor<3>,
    /// Router logits `[B, T, E]` in f32, for the z-loss.
    pub logits: Tensor<3>,
    /// Per (document, expert) pair counts `[S·E]` that the load-balancing loss uses (actual or
    /// virtual top-K dispatch, as configured), over `TokenLayout::documents()`.
    pub(crate) balance_counts: Vec<u32>,
    pub(crate) top_k: usize,
}

impl Router {
    /// Validates `config` for a layer with `num_experts` experts; `model_norm_topk_prob` is the
    /// model's own renormalisation flag, used unless the config overrides it.
    pub fn new(
        config: &RouterConfig,
        num_experts: usize,
        model_norm_topk_prob: bool,
    ) -> Result<Self, RoutingError> {
        Ok(Self {
            config: config.validate(num_experts, model_norm_topk_prob)?,
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ResolvedConfig {
        &self.config
    }

    /// The selection mode.
    pub fn mode(&self) -> RoutingMode {
        self.config.mode
    }

    /// Routes a whole batch. In `online_seqtopk` mode every token competes causally against the
    /// pairs of the tokens before it in its document (what decoding with an empty prompt gives;
    /// [`Router::route_prompted`] routes a prompt the way generation's prefill does).
    ///
    /// One host synchronisation: the per-token candidates are read back once.
    pub fn route(
        &self,
        logits: Tensor<3>,
        layout: &TokenLayout,
    ) -> Result<RouterOutput, RoutingError> {
        let (logits, probs, cands) = self.prepare(logits, layout)?;
        let c = &self.config;
        let counts = match c.mode {
            RoutingMode::Topk => select::topk(layout.valid(), c.top_k),
            RoutingMode::Seqtopk => select::budgeted(&cands, layout.documents(), c.top_k, c.floor),
            RoutingMode::BatchTopk => {
                select::budgeted(&cands, &layout.whole_batch(), c.top_k, c.floor)
            }
            RoutingMode::TopP => select::top_p(&cands, layout.valid(), c.top_p),
            RoutingMode::OnlineSeqtopk => select::causal(
                &cands,
                layout.documents(),
                c.top_k,
                c.floor,
                c.online_budget,
            ),
        };
        Ok(self.finish(logits, probs, &cands, &counts, layout))
    }

    /// Routes whole sequences the way generation would, in `online_seqtopk` mode: the first
    /// `prompt_lens[b]` valid tokens of row `b` are the prompt, routed with offline SeqTopK as
    /// [`Router::route_prefill`] does, and each later token is routed causally against the
    /// prompt and the tokens before it, as [`Router::route_decode`] would route it. Scoring a
    /// continuation this way gives the allocation generation would have used. Rows must hold one
    /// document each (padding allowed); a prompt length of 0 is [`Router::route`].
    pub fn route_prompted(
        &self,
        logits: Tensor<3>,
        layout: &TokenLayout,
        prompt_lens: &[usize],
    ) -> Result<RouterOutput, RoutingError> {
        self.expect_online("route_prompted")?;
        if prompt_lens.len() != layout.batch() {
            return Err(RoutingError::Shape(format!(
                "prompt_lens has {} entries, the batch has {} rows",
                prompt_lens.len(),
                layout.batch()
            )));
        }
        let docs = layout.documents();
        let mut per_segment = Vec::with_capacity(docs.len());
        for (b, (&len, segment)) in prompt_lens.iter().zip(row_documents(layout)?).enumerate() {
            let valid = segment.map_or(0, |s| docs.tokens_of(s).len());
            if len > valid {
                return Err(RoutingError::Layout(format!(
                    "prompt_lens[{b}] = {len} exceeds the row's {valid} valid tokens"
                )));
            }
            if segment.is_some() {
                per_segment.push(len);
            }
        }
        let (logits, probs, cands) = self.prepare(logits, layout)?;
        let c = &self.config;
        let counts = select::prompted(
            &cands,
            docs,
            &per_segment,
            c.top_k,
            c.floor,
            c.online_budget,
        );
        Ok(self.finish(logits, probs, &cands, &counts, layout))
    }

    /// Prefill for generation in `online_seqtopk` mode: the prompt is known in full, so it is
    /// routed with offline SeqTopK (budget `T_valid·K` per row), and the selected scores fill the
    /// empty `cache`. Rows must hold one document each (left padding allowed).
    pub fn route_prefill(
        &self,
        logits: Tensor<3>,
        layout: &TokenLayout,
        cache: &mut ExpertCache,
    ) -> Result<RouterOutput, RoutingError> {
        self.expect_online("route_prefill")?;
        self.check_cache(cache, layout)?;
        if !cache.is_empty() {
            return Err(RoutingError::Layout(format!(
                "prefill needs an empty expert cache, this one holds {} positions; reset it or \
                 decode instead",
                cache.len()
            )));
        }
        row_documents(layout)?;
        let (logits, probs, cands) = self.prepare(logits, layout)?;
        let c = &self.config;
        let counts = select::budgeted(&cands, layout.documents(), c.top_k, c.floor);
        let t = layout.seq_len();
        for b in 0..layout.batch() {
            cache.extend(
                b,
                (b * t..(b + 1) * t)
                    .map(|p| (layout.valid()[p], selected_pairs(&cands, p, counts[p]))),
            );
        }
        Ok(self.finish(logits, probs, &cands, &counts, layout))
    }

    /// Decode steps in `online_seqtopk` mode: each new position (in order) gets the candidates
    /// it wins against its row's cached selections under the cumulative budget `m·K`, where `m`
    /// counts the row's valid tokens including this one, by the configured
    /// [`crate::OnlineBudget`] rule. The cache grows by the new positions.
    pub fn route_decode(
        &self,
        logits: Tensor<3>,
        layout: &TokenLayout,
        cache: &mut ExpertCache,
    ) -> Result<RouterOutput, RoutingError> {
        self.expect_online("route_decode")?;
        self.check_cache(cache, layout)?;
        let (logits, probs, cands) = self.prepare(logits, layout)?;
        let c = &self.config;
        let t = layout.seq_len();
        let mut counts = vec![0u32; layout.num_positions()];
        for b in 0..layout.batch() {
            for i in 0..t {
                let p = b * t + i;
                let valid = layout.valid()[p];
                if valid {
                    let m = cache.valid_tokens(b) + 1;
                    counts[p] = select::online_count(
                        cache.selected_desc(b),
                        cands.scores_of(p),
                        m * c.top_k,
                        c.floor,
                        c.online_budget,
                    );
                }
                let selected = selected_pairs(&cands, p, counts[p]);
                cache.push(b, valid, &selected);
            }
        }
        Ok(self.finish(logits, probs, &cands, &counts, layout))
    }

    fn expect_online(&self, operation: &'static str) -> Result<(), RoutingError> {
        if self.config.mode == RoutingMode::OnlineSeqtopk {
            Ok(())
        } else {
            Err(RoutingError::WrongMode {
                operation,
                expected: "online_seqtopk",
                actual: self.config.mode.to_string(),
            })
        }
    }

    fn check_cache(&self, cache: &ExpertCache, layout: &TokenLayout) -> Result<(), RoutingError> {
        if cache.batch() != layout.batch() || cache.num_experts() != self.config.num_experts {
            return Err(RoutingError::Shape(format!(
                "expert cache is for {} rows × {} experts, the batch has {} rows × {} experts",
                cache.batch(),
                cache.num_experts(),
                layout.batch(),
                self.config.num_experts
            )));
        }
        Ok(())
    }

    /// Checks shapes, computes f32 probabilities, and reads the candidates back.
    fn prepare(
        &self,
        logits: Tensor<3>,
        layout: &TokenLayout,
    ) -> Result<(Tensor<3>, Tensor<3>, Candidates), RoutingError> {
        let [b, t, e] = logits.dims();
        if e != self.config.num_experts {
            return Err(RoutingError::Shape(format!(
                "router logits have {e} experts, the router was built for {}",
                self.config.num_experts
            )));
        }
        if [b, t] != [layout.batch(), layout.seq_len()] {
            return Err(RoutingError::Shape(format!(
                "router logits are [{b}, {t}, {e}] but the token layout is [{}, {}]",
                layout.batch(),
                layout.seq_len()
            )));
        }
        // Softmax in fp32 as Hugging Face does; f64 stays f64 (gradient checks).
        let logits = match logits.dtype() {
            DType::F64 | DType::F32 => logits,
            _ => logits.cast(DType::F32),
        };
        let probs = softmax(logits.clone(), 2);
        let width = self.config.candidates_per_token();
        let scores = probs.clone().detach();
        let (values, indices) = if width <= MAX_TOPK_WIDTH {
            scores.topk_with_indices(width, 2)
        } else {
            let (v, i) = scores.sort_descending_with_indices(2);
            (v.narrow(2, 0, width), i.narrow(2, 0, width))
        };
        let data = Transaction::default()
            .register(values)
            .register(indices)
            .try_execute()
            .map_err(|err| RoutingError::Readback(format!("{err:?}")))?;
        let [values, indices]: [_; 2] = data.try_into().expect("two registered tensors");
        let scores = values
            .try_into_vec_as::<f32>()
            .map_err(|err| RoutingError::Readback(format!("{err:?}")))?;
        let experts = indices
            .try_into_vec_as::<i64>()
            .map_err(|err| RoutingError::Readback(format!("{err:?}")))?
            .into_iter()
            .map(|x| x as u32)
            .collect();
        Ok((
            logits,
            probs,
            Candidates {
                width,
                scores,
                experts,
            },
        ))
    }

    fn finish(
        &self,
        logits: Tensor<3>,
        probs: Tensor<3>,
        cands: &Candidates,
        counts: &[u32],
        layout: &TokenLayout,
    ) -> RouterOutput {
        let c = &self.config;
        let [b, t, e] = probs.dims();
        let plan = RoutingPlan::build(
            cands,
            counts,
            probs.clone().reshape([b * t, e]),
            c.renormalize,
            layout.valid().to_vec(),
            c.floor,
            c.cap,
        );
        let balance_counts = match c.load_balance.dispatch {
            LbDispatch::Actual => balance_counts(cands, counts, layout, e),
            LbDispatch::VirtualTopk => {
                balance_counts(cands, &select::topk(layout.valid(), c.top_k), layout, e)
            }
        };
        RouterOutput {
            plan,
            probs,
            logits,
            balance_counts,
            top_k: c.top_k,
        }
    }
}

/// The one document (segment) of each row, `None` for an all-padding row; an error for a row
/// that packs several, which generation-style routing cannot handle.
fn row_documents(layout: &TokenLayout) -> Result<Vec<Option<usize>>, RoutingError> {
    let (docs, t) = (layout.documents(), layout.seq_len());
    (0..layout.batch())
        .map(|b| {
            let mut segments = (b * t..(b + 1) * t).filter_map(|p| docs.of_position[p]);
            let first = segments.next();
            if segments.any(|s| Some(s) != first) {
                return Err(RoutingError::Layout(format!(
                    "row {b} holds several documents; prompts must be one document per row"
                )));
            }
            Ok(first.map(|s| s as usize))
        })
        .collect()
}

fn selected_pairs(cands: &Candidates, p: usize, count: u32) -> Vec<(u32, f32)> {
    let n = count as usize;
    cands.experts_of(p)[..n]
        .iter()
        .copied()
        .zip(cands.scores_of(p)[..n].iter().copied())
        .collect()
}

/// Pair counts per (document, expert).
fn balance_counts(cands: &Candidates, counts: &[u32], layout: &TokenLayout, e: usize) -> Vec<u32> {
    let docs = layout.documents();
    let mut out = vec![0u32; docs.len() * e];
    for (p, &c) in counts.iter().enumerate() {
        if let Some(s) = docs.of_position[p] {
            for &x in &cands.experts_of(p)[..c as usize] {
                out[s as usize * e + x as usize] += 1;
            }
        }
    }
    out
}
