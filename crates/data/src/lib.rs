//! `seqtopk-data`: the data pipeline that feeds the seqtopk trainer.
//!
//! Sources (JSONL chat / prompt-completion / text, or plain text files) are read and checked up
//! front, tagged with a domain and a mixture weight, split deterministically into train and
//! validation, rendered with the model family's chat template, tokenised with the checkpoint's
//! `tokenizer.json`, and packed into fixed-length rows whose document boundaries travel with the
//! batch (attention must not cross documents, and SeqTopK routing competes per document).
//!
//! The crate deliberately does not depend on Burn: it produces plain `Vec` batches ([`Batch`]),
//! so it builds in seconds and the model crates own the tensor conversion.
//!
//! ```no_run
//! use seqtopk_data::{DataConfig, Pipeline};
//! let cfg: DataConfig = toml::from_str(r#"
//!     tokenizer = "data/samples/tokenizers/olmoe/tokenizer.json"
//!     seq_len = 512
//!     batch_size = 4
//!     mode = "sft"
//!     [[sources]]
//!     path = "data/samples/math/gsm8k_test.jsonl"
//!     domain = "math"
//! "#).unwrap();
//! let mut pipe = Pipeline::new(cfg)?;
//! let batch = pipe.next_batch()?;
//! let saved = pipe.state(); // serde: store it with the checkpoint
//! # Ok::<(), seqtopk_data::DataError>(())
//! ```

pub mod bpe;
pub mod config;
pub mod error;
pub mod pipeline;
/// Randomness and hashing, from their one home (the `seqtopk-rng` crate).
pub use seqtopk_rng as rng;
pub mod source;
pub mod template;
pub mod tokenize;

pub use bpe::{BpeOptions, BpeSummary, train_bpe};
pub use config::{
    ChatTemplateKind, DataConfig, Mode, OnBadLine, Packing, SourceConfig, SourceFormat,
};
pub use error::{DataError, Result};
pub use pipeline::{
    Batch, Pipeline, PipelineState, PipelineStats, SourceCursor, SourceSummary, ValidationBatches,
};
pub use source::{Document, Message, Role};
pub use template::{ChatTemplate, Rendered};
pub use tokenize::{DocTokenizer, TokenizedDoc, load_tokenizer};
