//! The `[data]` section of a training recipe.
//!
//! Every struct here denies unknown fields: a typo in a recipe (`seq_lenght`) must be an error, not
//! a silently ignored default that ruins a run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Continued pretraining on raw text, or supervised fine-tuning with loss on answers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every token (except a document's first) is a target.
    #[default]
    Pretrain,
    /// Only assistant/completion tokens (and the EOS that closes them) are targets.
    Sft,
}

/// How documents are laid out in fixed-length rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// Several documents share a row; `doc_ids` separates them. No compute is wasted on padding.
    #[default]
    Packed,
    /// At most one document (segment) per row, the rest is padding.
    Padded,
}

/// What to do with a malformed JSONL line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadLine {
    /// Fail with `file:line` and what was expected.
    #[default]
    Error,
    /// Skip the line, count it, and log the count once per source.
    Skip,
}

/// Chat template used to render `messages` and prompt/completion records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatTemplateKind {
    /// OLMoE-1B-7B-0924-Instruct / OLMo-2-Instruct: the Tulu template preceded by the BOS string
    /// `<|endoftext|>`; EOS `<|endoftext|>`.
    #[default]
    Olmoe,
    /// Tulu (open-instruct `tulu`): `<|user|>\n...\n<|assistant|>\n...<eos>`, no BOS.
    Tulu,
    /// ChatML as in Qwen2-Instruct: a default system turn when none is given; EOS `<|im_end|>`.
    Chatml,
    /// Raw models: contents concatenated, EOS appended after the answer.
    None,
}

/// Record layout of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// JSONL; each line is classified by its fields: `messages`, else `prompt`+`completion`,
    /// else `text`.
    #[default]
    Auto,
    /// JSONL with a `messages` array of `{role, content}`.
    Chat,
    /// JSONL with `prompt` and `completion` strings.
    PromptCompletion,
    /// JSONL with a `text` string.
    TextJsonl,
    /// Plain text: a file, or every file of a directory (recursively), one document per file.
    Text,
}

fn default_weight() -> f64 {
    1.0
}

/// One data source: a file or directory, its format, domain tag and mixture weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// File or directory (directories only for `format = "text"`). Relative paths are resolved
    /// against the current directory (or [`DataConfig::resolve_paths`]'s base).
    pub path: PathBuf,
    /// Record layout.
    #[serde(default)]
    pub format: SourceFormat,
    /// Domain tag (`math`, `code`, `law`, `writing`, or any string); carried per row in batches.
    pub domain: String,
    /// Relative mixture weight; rows are drawn from sources in proportion to it.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Use at most this many documents of the source (after reading, before the split).
    #[serde(default)]
    pub max_documents: Option<usize>,
    /// Field holding the text for `text_jsonl`/`auto` (default `text`).
    #[serde(default)]
    pub text_field: Option<String>,
    /// Field holding the prompt (default `prompt`).
    #[serde(default)]
    pub prompt_field: Option<String>,
    /// Field holding the completion (default `completion`).
    #[serde(default)]
    pub completion_field: Option<String>,
    /// Only files with these extensions when `path` is a directory (default: all files).
    #[serde(default)]
    pub extensions: Option<Vec<String>>,
}

fn default_batch_size() -> usize {
    8
}

fn default_true() -> bool {
    true
}

/// The data section of a recipe: what to read and how to turn it into batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Path of the checkpoint's `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Data sources (at least one).
    pub sources: Vec<SourceConfig>,
    /// Tokens per row (T).
    pub seq_len: usize,
    /// Rows per batch (B).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Pretraining or SFT loss.
    #[serde(default)]
    pub mode: Mode,
    /// Packed or padded rows.
    #[serde(default)]
    pub packing: Packing,
    /// Seed of shuffling, mixture sampling and the validation split.
    #[serde(default)]
    pub seed: u64,
    /// Reshuffle each source's documents every epoch (false: file order, e.g. for curricula or
    /// hand-checkable tests).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Fraction of each source's documents held out for validation (0 = none).
    #[serde(default)]
    pub validation_fraction: f64,
    /// Malformed JSONL lines: error or skip.
    #[serde(default)]
    pub on_bad_line: OnBadLine,
    /// Chat template for `messages` and prompt/completion records.
    #[serde(default)]
    pub chat_template: ChatTemplateKind,
    /// EOS token string; defaults to the template's (`<|endoftext|>`, ChatML `<|im_end|>`). Must be
    /// a single token of the vocabulary.
    #[serde(default)]
    pub eos_token: Option<String>,
    /// Padding token string; defaults to the EOS token (padding is masked by `valid` anyway).
    #[serde(default)]
    pub pad_token: Option<String>,
    /// Append EOS after each plain-text document so the model learns where documents end.
    #[serde(default = "default_true")]
    pub add_eos: bool,
}

impl DataConfig {
    /// `sources` tokenized with `tokenizer` into batches of `batch_size` rows of `seq_len`
    /// tokens; every other field as a recipe that leaves it out gets it.
    pub fn new(
        tokenizer: PathBuf,
        sources: Vec<SourceConfig>,
        seq_len: usize,
        batch_size: usize,
    ) -> Self {
        Self {
            tokenizer,
            sources,
            seq_len,
            batch_size,
            mode: Mode::default(),
            packing: Packing::default(),
            seed: 0,
            shuffle: default_true(),
            validation_fraction: 0.0,
            on_bad_line: OnBadLine::default(),
            chat_template: ChatTemplateKind::default(),
            eos_token: None,
            pad_token: None,
            add_eos: default_true(),
        }
    }

    /// Checks that do not need the files: sizes, weights, fractions.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Config(m));
        if self.sources.is_empty() {
            return bad("no sources".into());
        }
        if self.seq_len < 2 {
            return bad(format!("seq_len must be at least 2, got {}", self.seq_len));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "validation_fraction must be in [0, 1), got {}",
                self.validation_fraction
            ));
        }
        for s in &self.sources {
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return bad(format!(
                    "source {}: weight must be finite and > 0, got {}",
                    s.path.display(),
                    s.weight
                ));
            }
            if s.domain.trim().is_empty() {
                return bad(format!("source {}: empty domain tag", s.path.display()));
            }
        }
        Ok(())
    }

    /// Resolve relative tokenizer and source paths against `base` (e.g. the recipe's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if self.tokenizer.is_relative() {
            self.tokenizer = base.join(&self.tokenizer);
        }
        for s in &mut self.sources {
            if s.path.is_relative() {
                s.path = base.join(&s.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `new` gives what a recipe naming only its four arguments deserialises to, so the two
    /// sets of defaults cannot drift apart.
    #[test]
    fn new_matches_a_recipe_that_leaves_the_rest_out() {
        let parsed: DataConfig =
            toml::from_str("tokenizer = \"t.json\"\nsources = []\nseq_len = 16\nbatch_size = 2\n")
                .unwrap();
        assert_eq!(parsed, DataConfig::new("t.json".into(), vec![], 16, 2));
    }
}
