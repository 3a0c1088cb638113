//! The model side of evaluation: batched log-likelihoods, greedy generation with stop sequences
//! (KV cache, and the expert cache under `online_seqtopk`), and token-level perplexity.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use seqtopk_model::{FinishReason, GenerationConfig, MoeTransformer};
use seqtopk_router::TokenLayout;
use tokenizers::Tokenizer;

use crate::EvalError;

/// Log-likelihood of a continuation given its context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogLikelihood {
    /// Sum of the continuation tokens' log-probabilities (natural log).
    pub logprob: f64,
    /// Whether every continuation token is the argmax of its position (greedy decoding would
    /// produce the continuation).
    pub greedy: bool,
    /// Number of continuation tokens.
    pub tokens: usize,
}

/// A generated completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new tokens (a final stop token included).
    pub ids: Vec<u32>,
    /// Decoded text, cut at the first stop sequence.
    pub text: String,
    /// Whether the prompt was cut from the left to fit the context window.
    pub truncated_prompt: bool,
}

/// A model and its tokenizer, ready to score and generate.
pub struct Lm<'a> {
    model: &'a MoeTransformer,
    tokenizer: &'a Tokenizer,
    device: &'a Device,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Context window in tokens (inputs are cut from the left to fit).
    pub max_length: usize,
    /// Token ids that end a generation (EOS and friends).
    pub stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Lm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lm")
            .field("batch_size", &self.batch_size)
            .field("max_length", &self.max_length)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

impl<'a> Lm<'a> {
    /// Wrap a model; the context window defaults to its `max_position_embeddings`, the stop ids
    /// to its EOS ids plus the tokenizer's `<|im_end|>` / `<|endoftext|>` when present.
    pub fn new(model: &'a MoeTransformer, tokenizer: &'a Tokenizer, device: &'a Device) -> Self {
        let config = model.config();
        let mut stop_ids = config.eos_token_ids.clone();
        for s in ["<|endoftext|>", "<|im_end|>", "</s>"] {
            if let Some(id) = tokenizer.token_to_id(s)
                && (id as usize) < config.vocab_size
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        stop_ids.retain(|&id| (id as usize) < config.vocab_size);
        Self {
            model,
            tokenizer,
            device,
            batch_size: 8,
            max_length: config.max_position_embeddings.max(2),
            stop_ids,
        }
    }

    /// The model.
    pub fn model(&self) -> &MoeTransformer {
        self.model
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EvalError::Tokenizer(format!("encoding failed: {e}")))?;
        let ids = enc.get_ids().to_vec();
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EvalError::Tokenizer(format!(
                "the tokenizer produced id {bad}, outside the model's vocabulary of {vocab}: tokenizer and checkpoint do not belong together"
            )));
        }
        Ok(ids)
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String, EvalError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| EvalError::Tokenizer(format!("decoding failed: {e}")))
    }

    /// Context and continuation ids the way lm-evaluation-harness splits them: the pair is
    /// encoded together and the continuation is what follows the context's own encoding (a space
    /// ending the context moves to the continuation first).
    pub fn encode_pair(
        &self,
        context: &str,
        continuation: &str,
    ) -> Result<(Vec<u32>, Vec<u32>), EvalError> {
        let trimmed = context.trim_end();
        let (context, continuation) = (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        );
        let ctx = self.encode(context)?;
        let whole = self.encode(&format!("{context}{continuation}"))?;
        let cont = if whole.len() > ctx.len() && whole.starts_with(&ctx) {
            whole[ctx.len()..].to_vec()
        } else {
            self.encode(&continuation)?
        };
        Ok((ctx, cont))
    }

    /// Log-likelihoods of continuations given contexts (`(context ids, continuation ids)`), in
    /// input order. Inputs longer than the window lose context from the left. Rows are batched by
    /// length; one forward per batch, and only `[B, T]` log-probabilities and argmaxes are read
    /// back.
    ///
    /// Routing follows generation: under `online_seqtopk` the context is routed as a prefilled
    /// prompt (offline SeqTopK) and the continuation causally, token by token
    /// ([`MoeTransformer::forward_scoring`]). Under `seqtopk` and `batch_topk` the whole row
    /// competes at once, so a context token's allocation depends on the continuation being scored.
    pub fn loglikelihood(
        &self,
        requests: &[(Vec<u32>, Vec<u32>)],
    ) -> Result<Vec<LogLikelihood>, EvalError> {
        let mut rows = Vec::with_capacity(requests.len());
        for (i, (ctx, cont)) in requests.iter().enumerate() {
            if ctx.is_empty() || cont.is_empty() {
                return Err(EvalError::Options(format!(
                    "log-likelihood request {i}: context and continuation need at least one token each"
                )));
            }
            if cont.len() >= self.max_length {
                return Err(EvalError::Options(format!(
                    "log-likelihood request {i}: the continuation ({} tokens) does not fit the context window of {}",
                    cont.len(),
                    self.max_length
                )));
            }
            let mut full: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            // The input is everything but the last token; keep at most max_length of it.
            let drop = (full.len() - 1).saturating_sub(self.max_length);
            full.drain(..drop);
            rows.push((i, full, cont.len()));
        }
        rows.sort_by_key(|(_, full, _)| std::cmp::Reverse(full.len()));
        let mut out = vec![None; requests.len()];
        for batch in rows.chunks(self.batch_size.max(1)) {
            let t = batch.iter().map(|(_, f, _)| f.len() - 1).max().unwrap_or(1);
            let b = batch.len();
            let pad = self.model.config().pad_token_id.unwrap_or(0);
            let mut ids = vec![pad; b * t];
            let mut targets = vec![0i64; b * t];
            let mut lengths = Vec::with_capacity(b);
            let mut prompt_lens = Vec::with_capacity(b);
            for (r, (_, full, cont_len)) in batch.iter().enumerate() {
                let n = full.len() - 1;
                // The context kept after truncation: what generation would prefill.
                prompt_lens.push(full.len() - cont_len);
                ids[r * t..r * t + n].copy_from_slice(&full[..n]);
                for j in 0..n {
                    targets[r * t + j] = i64::from(full[j + 1]);
                }
                lengths.push(n);
            }
            let layout =
                TokenLayout::from_lengths(t, &lengths).map_err(seqtopk_model::ModelError::from)?;
            let (logp, argmax) = self.score_batch(&ids, &layout, &prompt_lens, targets)?;
            for (r, (i, full, cont_len)) in batch.iter().enumerate() {
                let n = full.len() - 1;
                let mut logprob = 0.0;
                let mut greedy = true;
                for j in n - cont_len..n {
                    logprob += f64::from(logp[r * t + j]);
                    greedy &= argmax[r * t + j] == i64::from(full[j + 1]);
                }
                out[*i] = Some(LogLikelihood {
                    logprob,
                    greedy,
                    tokens: *cont_len,
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every row scored"))
            .collect())
    }

    /// One forward: per-position log-probability of `targets` and argmax, both `[B·T]`.
    fn score_batch(
        &self,
        ids: &[u32],
        layout: &TokenLayout,
        prompt_lens: &[usize],
        targets: Vec<i64>,
    ) -> Result<(Vec<f32>, Vec<i64>), EvalError> {
        let (b, t) = (layout.batch(), layout.seq_len());
        let out = self
            .model
            .forward_scoring(ids, layout, prompt_lens, self.device)?;
        let logp = log_softmax(out.logits, 2);
        let argmax = logp.clone().argmax(2).reshape([b * t]);
        let idx = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, t, 1]), self.device);
        let picked = logp.gather(2, idx).reshape([b * t]);
        let picked = picked
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| EvalError::Readback(format!("{e:?}")))?;
        let argmax = argmax
            .into_data()
            .try_into_vec_as::<i64>()
            .map_err(|e| EvalError::Readback(format!("{e:?}")))?;
        Ok((picked, argmax))
    }

    /// Sum of next-token negative log-likelihoods of a document and the number of tokens scored.
    /// The document is cut into windows of `max_length` tokens that overlap by one token, so
    /// every token after the first is scored exactly once, with the context of its own window.
    /// Each window is a one-token prompt, so `online_seqtopk` routes it causally throughout.
    pub fn document_nll(&self, ids: &[u32]) -> Result<(f64, usize), EvalError> {
        if ids.len() < 2 {
            return Ok((0.0, 0));
        }
        let step = self.max_length.max(2) - 1;
        let mut requests = Vec::new();
        let mut start = 0;
        while start + 1 < ids.len() {
            let end = (start + 1 + step).min(ids.len());
            requests.push((vec![ids[start]], ids[start + 1..end].to_vec()));
            start = end - 1;
        }
        let scores = self.loglikelihood(&requests)?;
        Ok((
            -scores.iter().map(|s| s.logprob).sum::<f64>(),
            scores.iter().map(|s| s.tokens).sum(),
        ))
    }

    /// Greedy generation with stop sequences: prompts are left-padded per batch (and cut from the
    /// left to leave room for `max_new_tokens`), prefilled once, then decoded one token per step
    /// through the KV cache (and each MoE layer's expert cache in `online_seqtopk` mode). A row
    /// stops at a stop id or once its decoded text contains a stop sequence; a batch stops when
    /// every row has.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        stop_sequences: &[String],
    ) -> Result<Vec<Generation>, EvalError> {
        if max_new_tokens == 0 {
            return Err(EvalError::Options(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(EvalError::Options(format!("prompt {i} has no tokens")));
        }
        let room = self.max_length.saturating_sub(max_new_tokens).max(1);
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
        let mut out = vec![None; prompts.len()];
        for batch in order.chunks(self.batch_size.max(1)) {
            let rows: Vec<&[u32]> = batch
                .iter()
                .map(|&i| {
                    let p = &prompts[i];
                    &p[p.len().saturating_sub(room)..]
                })
                .collect();
            let generated = self.generate_batch(&rows, max_new_tokens, stop_sequences)?;
            for ((&i, ids), row) in batch.iter().zip(generated).zip(&rows) {
                let text = self.decode(&ids)?;
                let text = crate::extract::truncate_at_stop(&text, stop_sequences).to_string();
                out[i] = Some(Generation {
                    ids,
                    text,
                    truncated_prompt: row.len() < prompts[i].len(),
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|g| g.expect("every prompt generated"))
            .collect())
    }

    /// Greedy continuations of one batch through [`seqtopk_model::Generator`] (left padding,
    /// one prefill, cached decode steps, stop ids), ending a row early once its decoded text
    /// holds a stop sequence.
    fn generate_batch(
        &self,
        prompts: &[&[u32]],
        max_new_tokens: usize,
        stop_sequences: &[String],
    ) -> Result<Vec<Vec<u32>>, EvalError> {
        let prompts: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        let config = GenerationConfig::greedy(max_new_tokens, &self.stop_ids);
        let mut generator = self.model.generator(&prompts, &config, self.device)?;
        let check_text = stop_sequences.iter().any(|s| !s.is_empty());
        while generator.step()?.is_some() {
            if !check_text {
                continue;
            }
            for row in 0..prompts.len() {
                if generator.finish_reasons()[row].is_some() {
                    continue;
                }
                let text = self.decode(&generator.tokens()[row])?;
                if stop_sequences
                    .iter()
                    .any(|s| !s.is_empty() && text.contains(s.as_str()))
                {
                    generator.finish_row(row, FinishReason::Stop)?;
                }
            }
        }
        Ok(generator.into_generated().tokens)
    }
}
