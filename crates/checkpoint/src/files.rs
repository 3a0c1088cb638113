//! Small files every output writes: tokenizer copies and pretty JSON.

use std::path::Path;

use serde_json::Value;

use crate::CheckpointError;

/// Tokenizer and generation files copied beside converted weights when the source has them.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Copies the [`TOKENIZER_FILES`] present in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name))
                .map_err(|source| CheckpointError::Io { path: src, source })?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}

/// Reads `path` as JSON; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

/// Writes `value` to `path` as pretty JSON with a final newline.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<(), CheckpointError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| CheckpointError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}
