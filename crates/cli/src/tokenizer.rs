//! `seqtopk tokenizer`: trains a byte-level BPE tokenizer on a recipe's training data, for a
//! model trained from scratch with a vocabulary sized to the corpus.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use seqtopk_data::{BpeOptions, train_bpe};
use seqtopk_train::Recipe;

/// Arguments of `tokenizer`.
#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// Recipe whose `[data]` sources (training split only) the tokenizer learns from; its EOS
    /// and pad tokens become the first special tokens.
    #[arg(long)]
    recipe: PathBuf,
    /// Vocabulary size, the 256 byte symbols and the special tokens included.
    #[arg(long)]
    vocab_size: usize,
    /// Merge only pairs seen at least this often.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Where to write `tokenizer.json` (default: the recipe's `data.tokenizer`). An existing
    /// file is never overwritten.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a recipe field, as in `train --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Runs `tokenizer`: trains, writes the file, prints a JSON summary.
pub fn run(args: TokenizerArgs) -> Result<()> {
    let recipe = Recipe::from_file(&args.recipe, &args.overrides)?;
    let out = args.out.unwrap_or_else(|| recipe.data.tokenizer.clone());
    if out.exists() {
        bail!(
            "{} already exists; delete it or pass --out to write elsewhere",
            out.display()
        );
    }
    let options = BpeOptions {
        vocab_size: args.vocab_size,
        min_frequency: args.min_frequency,
    };
    tracing::info!(recipe = %args.recipe.display(), vocab_size = args.vocab_size, "training a BPE tokenizer");
    let (tokenizer, summary) = train_bpe(&recipe.data, &options)
        .with_context(|| format!("training a tokenizer on {}", args.recipe.display()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written beside the target and renamed, so an interrupted run leaves no partial file.
    let tmp = out.with_extension("json.tmp");
    tokenizer
        .save(&tmp, false)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    let report = serde_json::json!({
        "tokenizer": out,
        "vocab_size": summary.vocab_size,
        "special_tokens": summary.special_tokens,
        "documents": summary.documents,
        "bytes": summary.bytes,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
