//! Helpers shared by the `seqtopk` binary's integration tests. Each file under `tests/` is its
//! own test binary and takes this module in with `mod support;` (a directory module, so Cargo
//! does not build it as a test of its own): one copy of where the fixtures are, of fresh scratch
//! directories, of running the binary and of reading what it printed, instead of one per file.

// Each test binary compiles all of this module but calls only some of it; without this the
// helpers a binary does not use would warn as dead code there.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};

use safetensors::SafeTensors;
use serde_json::Value;

/// The repository root: recipes, `data/` and checkpoints are named relative to it.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed tiny checkpoint `checkpoints/fixtures/<name>` (with its HF golden outputs).
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("checkpoints/fixtures").join(name)
}

/// A fresh, empty directory for one test (a leftover of an earlier run is removed first). Its
/// name holds the test binary's name, `tag` and this process's id, so tests running in parallel
/// in one binary (each with its own tag), the other test binaries and a concurrent `cargo test`
/// never share a directory.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "seqtopk-{}-{tag}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
