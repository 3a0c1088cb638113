//! Helpers shared by the `seqtopk` binary's integration tests (the modules of `tests/main.rs`):
//! one copy of where the fixtures are, of scratch directories, of running the binary and of
//! reading what it printed, instead of one per file.

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Device;
use safetensors::SafeTensors;
use seqtopk_model::{MoeTransformer, MoeTransformerConfig};
use seqtopk_train::Recipe;
use serde_json::Value;

/// The repository root: recipes, `data/` and checkpoints are named relative to it.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed tiny checkpoint `checkpoints/fixtures/<name>` (with its HF golden outputs).
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("checkpoints/fixtures").join(name)
}

/// A fresh, empty directory for one test under Cargo's per-target scratch folder (beside the
/// build, not in a possibly small `/tmp`), removed when the test passes and kept when it fails so
/// what went wrong can be read. Its name holds `tag`, this process's id and a per-process count,
/// so tests in parallel, other test binaries and a concurrent `cargo test` never share one.
pub fn scratch(tag: &str) -> Scratch {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("seqtopk-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A test's scratch directory (see [`scratch`]); a path everywhere one is expected.
pub struct Scratch(PathBuf);

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for Scratch {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `seqtopk args…` with the binary Cargo built for these tests, not yet run: for callers that
/// set more (working directory, environment, stdio) before running it.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seqtopk"));
    cmd.args(args);
    cmd
}

/// Runs `seqtopk args…` to completion with `RUST_LOG=warn`, whatever the tests run under: stderr
/// then holds warnings and the error, not info-level progress, the same on every machine.
pub fn seqtopk(args: &[&str]) -> Output {
    command(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running seqtopk")
}

/// stdout then stderr of a finished run, as text: for assertion messages, and for checks that do
/// not care which stream a line went to.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The JSON a successful run printed on stdout; panics, showing the run's output, if it failed
/// or printed anything else.
pub fn ok_json(out: &Output) -> Value {
    assert!(out.status.success(), "seqtopk failed:\n{}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{}", text(out)))
}

/// The stderr (the error users see) of a run that must have failed; panics, showing the run's
/// output, if it succeeded.
pub fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure:\n{}", text(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Shape and values of the little-endian i64 tensor `key` (token ids, attention masks) of a
/// safetensors file such as a fixture's `golden.safetensors`.
pub fn i64s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<i64>) {
    values(st, key, i64::from_le_bytes)
}

/// Shape and values of the little-endian f32 tensor `key` (logits, hidden states) of a
/// safetensors file.
pub fn f32s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<f32>) {
    values(st, key, f32::from_le_bytes)
}

fn values<T, const N: usize>(
    st: &SafeTensors,
    key: &str,
    from_le: fn([u8; N]) -> T,
) -> (Vec<usize>, Vec<T>) {
    let t = st.tensor(key).unwrap();
    let v = t
        .data()
        .chunks_exact(N)
        .map(|c| from_le(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

/// `train` on the tiny recipe (`recipes/tiny-seqtopk-math.toml`, 64 tokens, micro-batch 2, no
/// progress bar) for `steps` steps into `out`, with more `--set` overrides: `fixed` (a test
/// file's own shrinking) then `extra` (one test's).
pub fn tiny_train(out: &Path, steps: u64, fixed: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--recipe",
        "recipes/tiny-seqtopk-math.toml",
        "--no-progress",
    ]
    .map(String::from)
    .to_vec();
    let sets = [
        "data.seq_len=64".to_owned(),
        "batch.micro_batch_size=2".into(),
    ]
    .into_iter()
    .chain(fixed.iter().map(|s| (*s).to_owned()))
    .chain([
        format!("train.steps={steps}"),
        format!("output_dir=\"{}\"", out.display()),
    ])
    .chain(extra.iter().map(|s| (*s).to_owned()));
    for set in sets {
        args.push("--set".into());
        args.push(set);
    }
    args
}

/// `seqtopk args…` run from the repository root (recipes name their files relative to it), with
/// `RUST_LOG=info`: some checks read the info-level lines (resumed, routing).
pub fn from_root<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(args);
    cmd.current_dir(repo_root()).env("RUST_LOG", "info");
    cmd
}

/// The checkpoint a run into `out` saved after `step`.
pub fn checkpoint(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:06}"))
}

/// Every tensor of a checkpoint's `model.bpk` (base weights and any LoRA factors), by module
/// path, as raw bytes: the model its `recipe.toml` describes, loaded from the file.
pub fn checkpoint_weights(checkpoint: &Path) -> Vec<(String, Vec<u8>)> {
    let recipe = Recipe::from_file(&checkpoint.join("recipe.toml"), &[]).unwrap();
    let json = serde_json::to_string(recipe.model.config.as_ref().unwrap()).unwrap();
    let config = MoeTransformerConfig::from_json_str(&json, "recipe").unwrap();
    let mut model = MoeTransformer::init(&config, recipe.seed, &Device::flex()).unwrap();
    if let Some(lora) = &recipe.lora {
        model = model.with_lora(&lora.spec(), 1).unwrap().0;
    }
    let result = model
        .load_from(&mut BurnpackStore::from_file(checkpoint.join("model.bpk")))
        .unwrap();
    assert!(
        result.missing.is_empty() && result.errors.is_empty(),
        "{result:?}"
    );
    let mut all: Vec<(String, Vec<u8>)> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec()))
        .collect();
    all.sort();
    all
}
