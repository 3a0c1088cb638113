//! Helpers shared by the checkpoint crate's integration tests (the modules of `tests/main.rs`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use seqtopk_model::MoeTransformer;
use seqtopk_router::TokenLayout;

/// The committed fixture `checkpoints/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../checkpoints/fixtures")
        .join(name)
}

/// A fresh scratch directory under the target dir (removed first if a previous run left it);
/// `name` is unique among the tests of this binary.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `model`'s logits `[B·T, V]` (row-major, padding rows included) for `ids` under `layout`.
pub fn all_logits(
    model: &MoeTransformer,
    ids: &[u32],
    layout: &TokenLayout,
    device: &Device,
) -> Vec<f32> {
    model
        .forward(ids, layout, device)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}
