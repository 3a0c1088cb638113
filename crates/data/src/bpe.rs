//! Training a byte-level BPE tokenizer on a recipe's own training documents.
//!
//! A model trained from scratch does not need a 50 k-token vocabulary: at small widths the
//! embedding and the `[N, V]` logits then cost more than the experts. This trains the GPT-2 /
//! OLMoE kind of tokenizer (byte-level pre-tokenizer and decoder, BPE merges) with the
//! `tokenizers` crate on the documents the recipe trains on — its validation split left out, so
//! held-out loss stays held out — with the recipe's EOS (and pad token, when set) as the first
//! special tokens, so the recipe runs on the result unchanged.

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::config::DataConfig;
use crate::error::{DataError, Result};
use crate::source::{Document, read_source};
use crate::template::ChatTemplate;

/// What to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpeOptions {
    /// Size of the vocabulary, special tokens and the 256 byte symbols included.
    pub vocab_size: usize,
    /// A pair must occur this often to be merged.
    pub min_frequency: u64,
}

/// What a training run saw and made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpeSummary {
    /// Training documents read, over all sources.
    pub documents: usize,
    /// Their UTF-8 bytes.
    pub bytes: usize,
    /// Vocabulary size reached (smaller than asked when the corpus has fewer distinct merges).
    pub vocab_size: usize,
    /// The special tokens, in id order from 0.
    pub special_tokens: Vec<String>,
}

/// The text a document contributes to the tokenizer's training corpus.
fn document_text(doc: &Document) -> String {
    match doc {
        Document::Text(t) => t.clone(),
        Document::PromptCompletion { prompt, completion } => format!("{prompt}{completion}"),
        Document::Chat(messages) => messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Trains a byte-level BPE tokenizer on the training documents of `cfg`'s sources (split as the
/// pipeline splits them, so exactly its validation documents are left out).
pub fn train_bpe(cfg: &DataConfig, opts: &BpeOptions) -> Result<(Tokenizer, BpeSummary)> {
    cfg.validate()?;
    let eos = ChatTemplate::new(cfg.chat_template, cfg.eos_token.as_deref()).eos;
    let mut special_tokens = vec![eos];
    if let Some(pad) = &cfg.pad_token
        && !special_tokens.contains(pad)
    {
        special_tokens.push(pad.clone());
    }
    let floor = special_tokens.len() + ByteLevel::alphabet().len();
    if opts.vocab_size <= floor {
        return Err(DataError::Config(format!(
            "a byte-level BPE vocabulary needs more than {floor} entries (256 bytes and {} special tokens); asked for {}",
            special_tokens.len(),
            opts.vocab_size
        )));
    }
    let mut texts = Vec::new();
    for source in &cfg.sources {
        let mut loaded = read_source(source, cfg.on_bad_line)?;
        loaded.split(cfg.validation_fraction, cfg.seed);
        texts.extend(
            loaded
                .train
                .iter()
                .map(|&i| document_text(&loaded.documents[i as usize])),
        );
    }
    let bytes = texts.iter().map(String::len).sum();
    let mut trainer = TrainerWrapper::from(
        BpeTrainerBuilder::new()
            .vocab_size(opts.vocab_size)
            .min_frequency(opts.min_frequency)
            .show_progress(false)
            .special_tokens(
                special_tokens
                    .iter()
                    .map(|s| AddedToken::from(s.clone(), true))
                    .collect(),
            )
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build(),
    );
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level))
        .with_post_processor(Some(byte_level));
    let failed = |e: tokenizers::Error| DataError::Tokenizer {
        path: cfg.tokenizer.clone(),
        message: format!("training a BPE tokenizer: {e}"),
    };
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(failed)?;
    let summary = BpeSummary {
        documents: texts.len(),
        bytes,
        vocab_size: tokenizer.get_vocab_size(true),
        special_tokens,
    };
    Ok((tokenizer, summary))
}
