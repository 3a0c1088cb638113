//! Tokenisation of documents into ids plus a per-token loss flag.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::config::{DataConfig, Mode};
use crate::error::{DataError, Result};
use crate::source::Document;
use crate::template::{ChatTemplate, Rendered};

/// A tokenised document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizedDoc {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `loss[i]`: token `i` is a target (the previous position is trained to predict it).
    /// `loss[0]` is always false: nothing in the document precedes its first token.
    pub loss: Vec<bool>,
}

impl TokenizedDoc {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for a document with no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of target tokens.
    pub fn num_targets(&self) -> usize {
        self.loss.iter().filter(|&&b| b).count()
    }
}

/// The checkpoint's tokenizer plus the template, EOS/pad ids and loss policy of the recipe.
#[derive(Clone)]
pub struct DocTokenizer {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    mode: Mode,
    add_eos: bool,
    eos_id: u32,
    pad_id: u32,
    path: PathBuf,
}

impl std::fmt::Debug for DocTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocTokenizer")
            .field("path", &self.path)
            .field("template", &self.template)
            .field("mode", &self.mode)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// Load a `tokenizer.json`.
///
/// The post-processor is removed: with `add_special_tokens = false` it adds nothing, but the
/// byte-level one *trims* offsets (a lone `"\n"` token gets an empty range), and SFT masking
/// needs each token's true byte range. Ids are unaffected.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(DataError::MissingTokenizer {
            path: path.to_path_buf(),
        });
    }
    let mut tok = Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    tok.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
    Ok(tok)
}

/// Resolve a token string to its single id, or explain why it cannot be used.
fn single_token(tok: &Tokenizer, s: &str, what: &str, path: &Path) -> Result<u32> {
    if let Some(id) = tok.token_to_id(s) {
        return Ok(id);
    }
    let ids = tok
        .encode_fast(s, false)
        .map(|e| e.get_ids().to_vec())
        .unwrap_or_default();
    Err(DataError::TokenizerMismatch(format!(
        "{what} {s:?} is not a token of {} (it encodes to {} tokens {:?}); set `{}` in the recipe to a token of this vocabulary",
        path.display(),
        ids.len(),
        ids,
        if what == "pad token" {
            "pad_token"
        } else {
            "eos_token"
        },
    )))
}

impl DocTokenizer {
    /// Build from the recipe; fails early if the EOS/pad strings are not single tokens.
    pub fn new(cfg: &DataConfig) -> Result<Self> {
        let tokenizer = load_tokenizer(&cfg.tokenizer)?;
        let template = ChatTemplate::new(cfg.chat_template, cfg.eos_token.as_deref());
        let eos_id = single_token(&tokenizer, &template.eos, "eos token", &cfg.tokenizer)?;
        // The EOS string is inserted as text by the templates: it must also *encode* to that id
        // (i.e. be an added token), otherwise the model would see it spelled out in pieces.
        let enc = tokenizer
            .encode_fast(template.eos.as_str(), false)
            .map_err(|e| DataError::Tokenizer {
                path: cfg.tokenizer.clone(),
                message: e.to_string(),
            })?;
        if enc.get_ids() != [eos_id] {
            return Err(DataError::TokenizerMismatch(format!(
                "eos token {:?} has id {eos_id} but the text encodes to {:?}: it must be an added (special) token",
                template.eos,
                enc.get_ids()
            )));
        }
        let pad_id = match &cfg.pad_token {
            Some(p) => single_token(&tokenizer, p, "pad token", &cfg.tokenizer)?,
            None => eos_id,
        };
        Ok(Self {
            tokenizer,
            template,
            mode: cfg.mode,
            add_eos: cfg.add_eos,
            eos_id,
            pad_id,
            path: cfg.tokenizer.clone(),
        })
    }

    /// EOS id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The chat template in use.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn encode_err(&self, source: &Path, e: impl std::fmt::Display) -> DataError {
        DataError::Encode {
            path: source.to_path_buf(),
            message: format!("{e} (tokenizer {})", self.path.display()),
        }
    }

    /// Encode a rendered text and mark tokens whose first byte lies in a trainable span.
    pub fn encode_rendered(&self, r: &Rendered, source: &Path) -> Result<TokenizedDoc> {
        let enc = self
            .tokenizer
            .encode(r.text.as_str(), false)
            .map_err(|e| self.encode_err(source, e))?;
        let ids = enc.get_ids().to_vec();
        let mut loss: Vec<bool> = enc
            .get_offsets()
            .iter()
            .map(|&(start, _)| r.trainable.iter().any(|span| span.contains(&start)))
            .collect();
        if let Some(first) = loss.first_mut() {
            *first = false;
        }
        Ok(TokenizedDoc { ids, loss })
    }

    /// Tokenise one document under the recipe's mode and template.
    pub fn tokenize(&self, doc: &Document, source: &Path) -> Result<TokenizedDoc> {
        let rendered = match doc {
            Document::Text(t) => {
                let mut ids = self
                    .tokenizer
                    .encode_fast(t.as_str(), false)
                    .map_err(|e| self.encode_err(source, e))?
                    .get_ids()
                    .to_vec();
                if self.add_eos {
                    ids.push(self.eos_id);
                }
                let mut loss = vec![true; ids.len()];
                if let Some(first) = loss.first_mut() {
                    *first = false;
                }
                return Ok(TokenizedDoc { ids, loss });
            }
            Document::PromptCompletion { prompt, completion } => {
                self.template.render_prompt_completion(prompt, completion)
            }
            Document::Chat(messages) => self.template.render(messages, false),
        };
        match self.mode {
            Mode::Sft => self.encode_rendered(&rendered, source),
            Mode::Pretrain => {
                // Continued pretraining on chat data: every token is a target.
                let ids = self
                    .tokenizer
                    .encode_fast(rendered.text.as_str(), false)
                    .map_err(|e| self.encode_err(source, e))?
                    .get_ids()
                    .to_vec();
                let mut loss = vec![true; ids.len()];
                if let Some(first) = loss.first_mut() {
                    *first = false;
                }
                Ok(TokenizedDoc { ids, loss })
            }
        }
    }
}
