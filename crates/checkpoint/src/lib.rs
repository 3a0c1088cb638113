//! Checkpoint directories: what `train`, `eval` and `generate` load, and what `convert` writes.
//!
//! A checkpoint is either a Hugging Face directory (`config.json` + safetensors) or a native one
//! written by `convert import` / `train` (see [`native`]). [`load`] tells them apart so every
//! command accepts both.
//!
//! - [`import_hf`]: HF directory → native directory (burnpack weights, config, tokenizer,
//!   manifest with checksums).
//! - [`export_hf`] / [`export_dir`]: model or checkpoint → HF directory `from_pretrained` loads
//!   (per-expert or fused expert keys).
//! - [`upcycle()`]: dense Llama → Mixtral-style MoE computing the same function.
//! - [`inspect()`]: what a checkpoint directory or safetensors file holds.
//!
//! Quantised sources (GPTQ, AWQ, FP8, MXFP4, bitsandbytes, …) are refused; every output is written
//! to a temporary directory and renamed when complete, and an existing output is never replaced
//! without `force`.

mod convert;
mod dtype;
mod error;
mod files;
mod finite;
mod hf;
mod inspect;
mod load;
pub mod native;
pub mod peft;
mod routing;
mod staging;
mod upcycle;

pub use convert::{ImportOptions, export_dir, export_dir_with, import_hf};
pub use dtype::StorageDtype;
pub use error::CheckpointError;
pub use files::{TOKENIZER_FILES, copy_tokenizer_files};
pub use finite::check_finite;
pub use hf::{
    ExpertLayout, ExportOptions, HfTensor, config_for_dtype, export_hf, hf_tensors,
    write_safetensors,
};
pub use inspect::{
    ExpertSummary, Inspection, ModelSummary, TensorInfo, inspect, safetensors_tensors, verify,
};
pub use load::{CheckpointFormat, LoadedCheckpoint, load, load_in, load_with};
pub use native::{
    Manifest, ManifestFile, SaveOptions, describe_files, load_native, save_native, verify_files,
    verify_native,
};
pub use routing::{ROUTING_KEY, record_routing, recorded_routing};
pub use staging::remove_unfinished_outputs;
pub use upcycle::{UpcycleOptions, upcycle, upcycled_config};
