//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use seqtopk_data::{SourceConfig, SourceFormat};

/// Repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed samples.
pub fn samples() -> PathBuf {
    root().join("data/samples")
}

/// The real OLMoE tokenizer (committed sample).
pub fn olmoe_tokenizer() -> PathBuf {
    samples().join("tokenizers/olmoe/tokenizer.json")
}

/// The hand-made word-level tokenizer.
pub fn tiny_tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_tokenizer.json")
}

/// A fresh directory for one test's files.
pub fn tmp_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("seqtopk-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Write a file and return its path.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// A source entry with defaults.
pub fn source(path: PathBuf, format: SourceFormat, domain: &str, weight: f64) -> SourceConfig {
    SourceConfig {
        path,
        format,
        domain: domain.into(),
        weight,
        max_documents: None,
        text_field: None,
        prompt_field: None,
        completion_field: None,
        extensions: None,
    }
}
