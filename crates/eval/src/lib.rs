//! `seqtopk-eval`: downstream evaluation of seqtopk checkpoints under any routing mode.
//!
//! - [`tasks`]: the registry (GSM8K, MATH-500, HumanEval, MBPP, MMLU law, ESFT law and summary,
//!   LAMBADA, per-domain perplexity): data files, prompts, stop sequences, metrics.
//! - [`extract`], [`rouge`]: answer extraction and scoring (lm-eval-harness conventions).
//! - [`sandbox`]: runs generated Python with time, CPU, memory and file limits in a scratch
//!   directory, refusing writes outside it, sockets and new processes.
//! - [`lm`]: batched log-likelihoods, greedy generation with stop sequences (KV cache, and the
//!   expert cache under `online_seqtopk`), perplexity.
//! - [`evaluate()`]: runs tasks and returns [`TaskResult`]s; [`report`] turns them into JSON, a
//!   readable table and the router × K comparison table.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use seqtopk_eval::{EvalOptions, Lm, TaskId, evaluate};
//! let device = burn::tensor::Device::flex();
//! let model = seqtopk_model::load_checkpoint("checkpoints/my-model", &device)?;
//! let tokenizer = seqtopk_data::load_tokenizer("checkpoints/my-model/tokenizer.json".as_ref())?;
//! let lm = Lm::new(&model, &tokenizer, &device);
//! let results = evaluate(&lm, &TaskId::parse_list("gsm8k,mmlu_law")?, &EvalOptions::default())?;
//! # Ok(()) }
//! ```

pub mod error;
pub mod evaluate;
pub mod extract;
pub mod lm;
pub mod report;
pub mod rouge;
pub mod sandbox;
pub mod tasks;

pub use error::EvalError;
pub use evaluate::{EvalOptions, evaluate};
pub use lm::{Generation, Lm, LogLikelihood};
pub use report::{ESFT_NOTE, EvalReport, ItemRecord, TaskResult, compare_markdown};
pub use sandbox::{Outcome, RunResult, Sandbox, SandboxConfig};
pub use tasks::{TaskData, TaskId, load_task};

/// A byte-level `tokenizer.json` for models whose vocabulary is the 256 byte values (id = byte):
/// a BPE model without merges over the GPT-2 byte alphabet, with the byte-level pre-tokenizer and
/// decoder, so any UTF-8 text round-trips. The tiny test checkpoints (vocab 256) use it.
pub fn byte_level_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0u16..256)
        .map(|b| (byte_char(b as u8).to_string(), serde_json::Value::from(b)))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": false
        },
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": false
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": []
        }
    })
    .to_string()
}

/// GPT-2's byte → printable character map (the byte-level alphabet).
fn byte_char(b: u8) -> char {
    let printable = |x: u8| {
        (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x)
    };
    if printable(b) {
        return char::from(b);
    }
    // Non-printable bytes map to 256, 257, … in byte order.
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("valid code point")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn byte_level_tokenizer_maps_bytes_to_ids_and_round_trips() {
        let tok = tokenizers::Tokenizer::from_str(&byte_level_tokenizer_json()).unwrap();
        let text = "Question: 2+2?\n答案 ü";
        let enc = tok.encode(text, false).unwrap();
        let ids: Vec<u32> = enc.get_ids().to_vec();
        assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        assert_eq!(tok.get_vocab_size(true), 256);
    }
}
