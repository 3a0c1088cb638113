//! `eval loss`: mean next-token cross-entropy of token-id rows under a chosen routing, the way to
//! check parity with another implementation on any checkpoint (optionally dumping the logits).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use safetensors::tensor::{Dtype, TensorView};
use seqtopk_model::{MoeTransformer, causal_lm_loss};
use seqtopk_router::TokenLayout;
use serde_json::json;

use crate::common::{ModelArgs, is_causal, read_id_rows};

/// Arguments of `seqtopk eval loss`.
#[derive(Debug, Args)]
pub struct LossArgs {
    /// Checkpoint directory (Hugging Face or native).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSON file holding a list of rows of token ids, e.g. `[[1, 5, 9], [1, 7]]`; rows may differ
    /// in length (they are right padded internally and padding is never scored).
    #[arg(long)]
    pub input_ids: PathBuf,
    /// Rows per forward pass (all rows by default; `batch_topk` competes within a pass).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Write the `[B, T, V]` f32 logits, the `[B, T]` attention mask (1 = real token, i64) and
    /// the padded input ids to this safetensors file (never overwrites an existing file).
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `eval loss`: prints one JSON object with the loss, the number of scored tokens and the
/// routing used.
pub fn run(args: LossArgs) -> Result<()> {
    let device = args.model.device.device()?;
    if let Some(out) = &args.dump_logits
        && out.exists()
    {
        bail!(
            "{}: already exists; remove it or choose another --dump-logits path",
            out.display()
        );
    }
    let (loaded, router) = args.model.load_routed(&args.checkpoint, &device)?;
    let model = loaded.model;
    let vocab = model.config().vocab_size;
    let rows = read_id_rows(&args.input_ids, vocab)?;
    let batch_size = args.batch_size.unwrap_or(rows.len());
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let t_max = rows.iter().map(Vec::len).max().unwrap_or(0);
    if t_max > model.config().max_position_embeddings {
        tracing::warn!(
            "rows of up to {t_max} tokens exceed max_position_embeddings = {}",
            model.config().max_position_embeddings
        );
    }
    let mut dump = args
        .dump_logits
        .as_ref()
        .map(|_| Vec::<f32>::with_capacity(rows.len() * t_max * vocab));
    let (total, count) = score_rows(&model, &rows, batch_size, t_max, dump.as_mut(), &device)?;
    if count == 0 {
        bail!(
            "{}: no next-token pairs to score (every row has a single token)",
            args.input_ids.display()
        );
    }
    if let (Some(path), Some(logits)) = (&args.dump_logits, dump) {
        write_dump(path, &rows, t_max, vocab, &logits)?;
    }
    let loss = total / count as f64;
    let note = model.router().filter(|r| !is_causal(r.mode())).map(|r| {
        format!(
            "{}: non-causal scoring — each token's experts depend on later tokens, the targets included; --router online_seqtopk routes causally",
            r.mode()
        )
    });
    if let Some(note) = &note {
        tracing::warn!("{note}");
    }
    let report = json!({
        "checkpoint": loaded.dir.display().to_string(),
        "rows": rows.len(),
        "tokens": count,
        "loss": loss,
        "perplexity": loss.exp(),
        "router": router,
        "note": note,
        "logits": args.dump_logits.as_ref().map(|p| p.display().to_string()),
    });
    println!("{report}");
    Ok(())
}

/// `Σ` next-token loss and the number of scored pairs over `rows`, `batch_size` rows per
/// forward pass; `dump` (when given) receives every pass's logits padded to `t_max` positions.
fn score_rows(
    model: &MoeTransformer,
    rows: &[Vec<u32>],
    batch_size: usize,
    t_max: usize,
    mut dump: Option<&mut Vec<f32>>,
    device: &Device,
) -> Result<(f64, usize)> {
    let mut total = 0f64;
    let mut count = 0usize;
    for (c, chunk) in rows.chunks(batch_size).enumerate() {
        let first_row = c * batch_size;
        let b = chunk.len();
        // Chunks share the global width so the dump is one [B, T, V] array.
        let t = if dump.is_some() {
            t_max
        } else {
            chunk.iter().map(Vec::len).max().unwrap_or(0)
        };
        let lengths: Vec<usize> = chunk.iter().map(Vec::len).collect();
        let layout = TokenLayout::from_lengths(t, &lengths)?;
        let mut ids = Vec::with_capacity(b * t);
        for row in chunk {
            ids.extend(row.iter().copied());
            ids.extend(std::iter::repeat_n(0, t - row.len()));
        }
        let out = model.forward(&ids, &layout, device)?;
        if let Some(dump) = dump.as_deref_mut() {
            let host = out
                .logits
                .clone()
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| anyhow::anyhow!("reading logits back failed: {e:?}"))?;
            dump.extend(host);
        }
        if lengths.iter().all(|&l| l < 2) {
            continue;
        }
        check_logits(&out.logits, &lengths, t, first_row)?;
        let (loss, n) = causal_lm_loss(out.logits, &ids, &layout)?;
        let loss = loss
            .into_data()
            .try_into_vec_as::<f64>()
            .map_err(|e| anyhow::anyhow!("reading the loss back failed: {e:?}"))?[0];
        total += loss * n as f64;
        count += n;
    }
    Ok((total, count))
}

/// Fails at the first row and position (of the real tokens) whose logits hold NaN or ±Inf,
/// instead of reporting a `null` loss.
fn check_logits(
    logits: &burn::tensor::Tensor<3>,
    lengths: &[usize],
    t: usize,
    first_row: usize,
) -> Result<()> {
    let finite = logits
        .clone()
        .is_finite()
        .all_dim(2)
        .int()
        .try_into_vec_as::<i64>()
        .map_err(|e| anyhow::anyhow!("reading the logits check back failed: {e:?}"))?;
    for (r, &len) in lengths.iter().enumerate() {
        if let Some(i) = (0..len).find(|&i| finite[r * t + i] == 0) {
            bail!(
                "row {}, position {i}: the logits are not finite (NaN or ±Inf); the model overflowed or its weights are damaged, so no loss is reported",
                first_row + r
            );
        }
    }
    Ok(())
}

fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>> {
    TensorView::new(dtype, shape, data).context("building the logits dump")
}

fn write_dump(path: &Path, rows: &[Vec<u32>], t: usize, v: usize, logits: &[f32]) -> Result<()> {
    let b = rows.len();
    let mut mask = Vec::with_capacity(b * t * 8);
    let mut ids = Vec::with_capacity(b * t * 8);
    for row in rows {
        for i in 0..t {
            mask.extend_from_slice(&i64::from(i < row.len()).to_le_bytes());
            ids.extend_from_slice(&i64::from(row.get(i).copied().unwrap_or(0)).to_le_bytes());
        }
    }
    let logit_bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let tensors = vec![
        ("attention_mask", view(Dtype::I64, vec![b, t], &mask)?),
        ("input_ids", view(Dtype::I64, vec![b, t], &ids)?),
        ("logits", view(Dtype::F32, vec![b, t, v], &logit_bytes)?),
    ];
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    safetensors::serialize_to_file(tensors, None, &tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "{}: cannot move {} into place",
            path.display(),
            tmp.display()
        )
    })?;
    Ok(())
}
