//! `generate`: continuations of text prompts (tokenised with the checkpoint's `tokenizer.json`)
//! or of token-id rows, greedy or sampled, one JSON line per prompt on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use seqtopk_model::{FinishReason, GenerationConfig, MoeTransformer};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::common::{ModelArgs, read_id_rows};

/// Arguments of `seqtopk generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (Hugging Face or native).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A text prompt (repeatable); needs the checkpoint's tokenizer.json.
    #[arg(long, conflicts_with = "input_ids")]
    pub prompt: Vec<String>,
    /// File of text prompts: one per line, or for a `.jsonl` file one JSON string or
    /// `{"prompt": "…"}` object per line. Blank lines are skipped.
    #[arg(long, conflicts_with = "input_ids")]
    pub prompts: Option<PathBuf>,
    /// JSON file with a list of rows of prompt token ids, for checkpoints without a tokenizer.
    #[arg(long)]
    pub input_ids: Option<PathBuf>,
    /// Most new tokens per prompt.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = the whole vocabulary).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of prompt 0's sampling stream; prompt `i` uses `seed + i`, so a prompt's output does
    /// not depend on the other prompts or on the batch size.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop at this token id (all digits) or text (repeatable). A text that is one vocabulary
    /// entry stops at that token; any other text stops once the completion contains it.
    /// Default: the config's eos_token_id.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Prompts decoded together (left padded).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Encode text prompts without the tokenizer's special tokens (BOS, …).
    #[arg(long)]
    pub no_special_tokens: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A prompt as given and as token ids.
struct Prompt {
    text: Option<String>,
    ids: Vec<u32>,
}

/// Runs `generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let has_text = !args.prompt.is_empty() || args.prompts.is_some();
    if !has_text && args.input_ids.is_none() {
        bail!("nothing to generate from: pass --prompt TEXT, --prompts FILE or --input-ids FILE");
    }
    let device = args.model.device.device()?;
    let (loaded, _) = args.model.load_routed(&args.checkpoint, &device)?;
    let model = loaded.model;
    let tokenizer = match &loaded.tokenizer {
        Some(path) => Some(load_tokenizer(path, model.config().vocab_size)?),
        None => None,
    };
    let prompts = read_prompts(&args, tokenizer.as_ref(), &model, &loaded.dir)?;
    let (stop_ids, stop_texts) = resolve_stops(&args.stop, tokenizer.as_ref(), &model)?;
    let base = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: stop_ids,
    };
    base.validate()?;
    let context = model.config().max_position_embeddings;
    let stdout = std::io::stdout();
    for (c, chunk) in prompts.chunks(args.batch_size).enumerate() {
        let first = c * args.batch_size;
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let config = GenerationConfig {
            seed: args.seed.wrapping_add(first as u64),
            max_new_tokens: within_context(&ids, args.max_new_tokens, context, first)?,
            ..base.clone()
        };
        let mut generator = model.generator(&ids, &config, &device)?;
        while generator.step()?.is_some() {
            if let (Some(tok), false) = (&tokenizer, stop_texts.is_empty()) {
                for row in 0..chunk.len() {
                    if generator.finish_reasons()[row].is_some() {
                        continue;
                    }
                    let text = decode(tok, &generator.tokens()[row], false)?;
                    if stop_texts.iter().any(|s| text.contains(s.as_str())) {
                        generator.finish_row(row, FinishReason::Stop)?;
                    }
                }
            }
        }
        let out = generator.into_generated();
        let mut lock = stdout.lock();
        for (row, prompt) in chunk.iter().enumerate() {
            let completion = match &tokenizer {
                Some(tok) => Some(decode(tok, &out.tokens[row], true)?),
                None => None,
            };
            let prompt_text = match (&prompt.text, &tokenizer) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(tok)) => Some(decode(tok, &prompt.ids, false)?),
                (None, None) => None,
            };
            let line = json!({
                "index": first + row,
                "prompt": prompt_text,
                "prompt_ids": prompt.ids,
                "completion": completion,
                "ids": out.tokens[row],
                "finish_reason": out.finish[row].name(),
                "seed": config.seed.wrapping_add(row as u64),
            });
            writeln!(lock, "{line}").context("writing to stdout")?;
        }
        lock.flush().context("writing to stdout")?;
    }
    Ok(())
}

/// `max_new_tokens` capped so the longest prompt of a batch plus its continuation fits the
/// model's context (`max_position_embeddings`), with a warning when that cuts it; a prompt that
/// alone fills the context is an error. `first` numbers the batch's prompts in messages.
fn within_context(
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    context: usize,
    first: usize,
) -> Result<usize> {
    let (row, longest) = prompts
        .iter()
        .map(Vec::len)
        .enumerate()
        .max_by_key(|&(_, n)| n)
        .unwrap_or((0, 0));
    if longest >= context {
        bail!(
            "prompt {} has {longest} tokens, which fills the model's context of {context} (max_position_embeddings); shorten it",
            first + row
        );
    }
    let room = context - longest;
    if max_new_tokens > room {
        tracing::warn!(
            "--max-new-tokens {max_new_tokens} capped at {room}: prompt {} has {longest} tokens and the model's context is {context} (max_position_embeddings)",
            first + row
        );
        return Ok(room);
    }
    Ok(max_new_tokens)
}

fn load_tokenizer(path: &Path, vocab_size: usize) -> Result<Tokenizer> {
    let tok = Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
    let n = tok.get_vocab_size(true);
    if n > vocab_size {
        tracing::warn!(
            "{}: the tokenizer has {n} tokens, the model's vocabulary {vocab_size}",
            path.display()
        );
    }
    Ok(tok)
}

fn decode(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<String> {
    tok.decode(ids, skip_special)
        .map_err(|e| anyhow::anyhow!("decoding {ids:?}: {e}"))
}

fn read_prompts(
    args: &GenerateArgs,
    tokenizer: Option<&Tokenizer>,
    model: &MoeTransformer,
    dir: &Path,
) -> Result<Vec<Prompt>> {
    let vocab = model.config().vocab_size;
    if let Some(path) = &args.input_ids {
        return Ok(read_id_rows(path, vocab)?
            .into_iter()
            .map(|ids| Prompt { text: None, ids })
            .collect());
    }
    let mut texts = args.prompt.clone();
    if let Some(path) = &args.prompts {
        texts.extend(read_prompt_file(path)?);
    }
    if texts.is_empty() {
        bail!("no prompts: the prompt file has no non-blank lines");
    }
    let Some(tok) = tokenizer else {
        bail!(
            "{}: no tokenizer.json, so text prompts cannot be encoded; pass token ids with --input-ids",
            dir.display()
        );
    };
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let ids = tok
                .encode(text.as_str(), !args.no_special_tokens)
                .map_err(|e| anyhow::anyhow!("prompt {i}: cannot encode: {e}"))?
                .get_ids()
                .to_vec();
            if ids.is_empty() {
                bail!("prompt {i} ({text:?}) encodes to no tokens");
            }
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                bail!(
                    "prompt {i}: the tokenizer produced id {bad}, outside the model's vocabulary of {vocab}"
                );
            }
            Ok(Prompt {
                text: Some(text),
                ids,
            })
        })
        .collect()
}

fn read_prompt_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            out.push(line.to_owned());
            continue;
        }
        let where_ = || format!("{}: line {}", path.display(), n + 1);
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", where_()))?;
        match value {
            Value::String(s) => out.push(s),
            Value::Object(map) => match map.get("prompt") {
                Some(Value::String(s)) => out.push(s.clone()),
                _ => bail!("{}: expected a \"prompt\" string field", where_()),
            },
            other => bail!(
                "{}: expected a JSON string or {{\"prompt\": …}}, got {other}",
                where_()
            ),
        }
    }
    Ok(out)
}

/// Splits `--stop` values into token ids and texts; without any, the config's eos ids.
fn resolve_stops(
    stops: &[String],
    tokenizer: Option<&Tokenizer>,
    model: &MoeTransformer,
) -> Result<(Vec<u32>, Vec<String>)> {
    if stops.is_empty() {
        return Ok((model.config().eos_token_ids.clone(), Vec::new()));
    }
    let vocab = model.config().vocab_size;
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for s in stops {
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            let id: u32 = s
                .parse()
                .with_context(|| format!("--stop {s}: not a token id"))?;
            if id as usize >= vocab {
                bail!("--stop {id}: outside the model's vocabulary of {vocab}");
            }
            ids.push(id);
            continue;
        }
        if s.is_empty() {
            bail!("--stop: empty text");
        }
        let Some(tok) = tokenizer else {
            bail!(
                "--stop {s:?}: text stops need the checkpoint's tokenizer.json; pass token ids instead"
            );
        };
        match tok.token_to_id(s) {
            Some(id) if (id as usize) < vocab => ids.push(id),
            _ => texts.push(s.clone()),
        }
    }
    Ok((ids, texts))
}
