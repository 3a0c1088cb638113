//! Reading sources into documents, and the deterministic validation split.
//!
//! All documents are read and checked up front so that a malformed line, a missing file or an
//! empty source stops the run before any training step (tokenisation is lazy; parsing is not).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{OnBadLine, SourceConfig, SourceFormat};
use crate::error::{DataError, Result};
use crate::rng::{derive_seed, fnv1a, mix64};

/// Speaker of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt.
    System,
    /// The user's turn (never a target in SFT).
    User,
    /// The model's turn (the SFT targets).
    Assistant,
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// A document as read from a source, before templating and tokenisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// Raw text (pretraining; in SFT mode every token is a target).
    Text(String),
    /// A prompt and the answer to learn.
    PromptCompletion {
        /// Context (no loss in SFT).
        prompt: String,
        /// Answer (loss in SFT).
        completion: String,
    },
    /// A conversation.
    Chat(Vec<Message>),
}

impl Document {
    /// Stable content hash (used for the validation split and the state fingerprint).
    pub fn content_hash(&self) -> u64 {
        match self {
            Document::Text(t) => mix64(fnv1a(t.as_bytes()) ^ 1),
            Document::PromptCompletion { prompt, completion } => {
                mix64(fnv1a(prompt.as_bytes()) ^ 2) ^ fnv1a(completion.as_bytes())
            }
            Document::Chat(ms) => ms.iter().fold(3u64, |h, m| {
                mix64(h ^ (m.role as u64)) ^ fnv1a(m.content.as_bytes())
            }),
        }
    }
}

/// A source after reading: its documents and which of them are held out.
#[derive(Debug, Clone)]
pub struct LoadedSource {
    /// The source's recipe entry.
    pub config: SourceConfig,
    /// Documents in file order.
    pub documents: Vec<Document>,
    /// The file each document came from (directories yield many files).
    pub document_files: Vec<u32>,
    /// Files read, indexed by `document_files`.
    pub files: Vec<PathBuf>,
    /// Indices of training documents (file order).
    pub train: Vec<u32>,
    /// Indices of held-out validation documents (file order).
    pub validation: Vec<u32>,
    /// Lines skipped as malformed (`on_bad_line = "skip"`).
    pub skipped_lines: usize,
    /// Hash of all documents' content hashes (for the resume fingerprint).
    pub content_hash: u64,
}

fn field<'a>(cfg: &'a Option<String>, default: &'a str) -> &'a str {
    cfg.as_deref().unwrap_or(default)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, String> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "expected field \"{name}\" to be a string, found {}",
            type_name(v)
        )),
        None => Err(format!("missing field \"{name}\"")),
    }
}

fn parse_messages(v: &Value) -> Result<Vec<Message>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "expected \"messages\" to be an array, found {}",
            type_name(v)
        ));
    };
    if items.is_empty() {
        return Err("expected \"messages\" to hold at least one message".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(o) = m else {
                return Err(format!("messages[{i}]: expected an object, found {}", type_name(m)));
            };
            let role = match string_field(o, "role").map_err(|e| format!("messages[{i}]: {e}"))?.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(format!(
                        "messages[{i}]: expected role \"system\", \"user\" or \"assistant\", found \"{other}\""
                    ));
                }
            };
            let content = string_field(o, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
            Ok(Message { role, content })
        })
        .collect()
}

/// Parse one JSONL line according to the source format. `Err` carries the human message.
fn parse_line(line: &str, cfg: &SourceConfig) -> Result<Document, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON ({e})"))?;
    let Value::Object(obj) = v else {
        return Err(format!("expected a JSON object, found {}", type_name(&v)));
    };
    let text_f = field(&cfg.text_field, "text");
    let prompt_f = field(&cfg.prompt_field, "prompt");
    let compl_f = field(&cfg.completion_field, "completion");
    let format = match cfg.format {
        SourceFormat::Auto => {
            if obj.contains_key("messages") {
                SourceFormat::Chat
            } else if obj.contains_key(prompt_f) && obj.contains_key(compl_f) {
                SourceFormat::PromptCompletion
            } else if obj.contains_key(text_f) {
                SourceFormat::TextJsonl
            } else {
                return Err(format!(
                    "expected one of \"messages\", \"{prompt_f}\"+\"{compl_f}\" or \"{text_f}\"; found fields {:?}",
                    obj.keys().collect::<Vec<_>>()
                ));
            }
        }
        f => f,
    };
    match format {
        SourceFormat::Chat => {
            let m = obj.get("messages").ok_or("missing field \"messages\"")?;
            Ok(Document::Chat(parse_messages(m)?))
        }
        SourceFormat::PromptCompletion => {
            let prompt = string_field(&obj, prompt_f)?;
            let completion = string_field(&obj, compl_f)?;
            if completion.is_empty() {
                return Err(format!("field \"{compl_f}\" is empty"));
            }
            Ok(Document::PromptCompletion { prompt, completion })
        }
        SourceFormat::TextJsonl => {
            let t = string_field(&obj, text_f)?;
            if t.is_empty() {
                return Err(format!("field \"{text_f}\" is empty"));
            }
            Ok(Document::Text(t))
        }
        SourceFormat::Auto | SourceFormat::Text => unreachable!("resolved above"),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn list_files(dir: &Path, exts: &Option<Vec<String>>, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
        .collect::<Result<_>>()?;
    // Sorted so that document order (and hence the whole pipeline) is independent of the file system.
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list_files(&p, exts, out)?;
        } else if exts.as_ref().is_none_or(|exts| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.iter().any(|x| x.trim_start_matches('.') == e))
        }) {
            out.push(p);
        }
    }
    Ok(())
}

/// What reading a source's file(s) gave: documents, the file of each, the files, and how many
/// malformed lines or files were skipped.
#[derive(Default)]
struct Read {
    documents: Vec<Document>,
    document_files: Vec<u32>,
    files: Vec<PathBuf>,
    skipped: usize,
}

/// Read a source. `on_bad` decides whether a malformed line fails or is counted and skipped.
pub fn read_source(cfg: &SourceConfig, on_bad: OnBadLine) -> Result<LoadedSource> {
    let path = &cfg.path;
    if !path.exists() {
        return Err(DataError::MissingFile { path: path.clone() });
    }
    let Read {
        documents,
        document_files,
        files,
        skipped,
    } = match cfg.format {
        SourceFormat::Text => read_text(cfg, on_bad)?,
        _ => read_jsonl(cfg, on_bad)?,
    };
    if skipped > 0 {
        tracing::warn!(source = %path.display(), skipped, "malformed lines skipped");
    }
    if documents.is_empty() {
        return Err(DataError::EmptySource {
            path: path.clone(),
            domain: cfg.domain.clone(),
            detail: if skipped > 0 {
                format!(" ({skipped} malformed lines skipped)")
            } else {
                String::new()
            },
        });
    }
    let hashes: Vec<u64> = documents.iter().map(Document::content_hash).collect();
    let content_hash = hashes
        .iter()
        .fold(fnv1a(cfg.domain.as_bytes()), |h, &x| mix64(h ^ x));
    Ok(LoadedSource {
        config: cfg.clone(),
        documents,
        document_files,
        files,
        train: Vec::new(),
        validation: Vec::new(),
        skipped_lines: skipped,
        content_hash,
    })
}

/// A text source: one document per file (a file, or every file of a directory with the
/// configured extensions); empty files are not documents.
fn read_text(cfg: &SourceConfig, on_bad: OnBadLine) -> Result<Read> {
    let (path, mut read) = (&cfg.path, Read::default());
    if path.is_dir() {
        list_files(path, &cfg.extensions, &mut read.files)?;
    } else {
        read.files.push(path.clone());
    }
    for (fi, f) in read.files.iter().enumerate() {
        let bytes = std::fs::read(f).map_err(io_err(f))?;
        match String::from_utf8(bytes) {
            Ok(s) if s.trim().is_empty() => {} // an empty file is not a document
            Ok(s) => {
                read.documents.push(Document::Text(s));
                read.document_files.push(fi as u32);
            }
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                if on_bad == OnBadLine::Skip {
                    read.skipped += 1;
                } else {
                    return Err(DataError::BadLine {
                        path: f.clone(),
                        line,
                        message: format!(
                            "expected UTF-8 text, found an invalid byte at offset {at}"
                        ),
                    });
                }
            }
        }
        if cfg.max_documents.is_some_and(|m| read.documents.len() >= m) {
            break;
        }
    }
    Ok(read)
}

/// A JSONL source: one document per non-blank line.
fn read_jsonl(cfg: &SourceConfig, on_bad: OnBadLine) -> Result<Read> {
    let (path, mut read) = (&cfg.path, Read::default());
    if path.is_dir() {
        return Err(DataError::Config(format!(
            "source {}: a directory needs format = \"text\" (JSONL sources are single files)",
            path.display()
        )));
    }
    read.files.push(path.clone());
    let reader = BufReader::new(std::fs::File::open(path).map_err(io_err(path))?);
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(io_err(path))?;
        let lineno = i + 1;
        let parsed = match std::str::from_utf8(&line) {
            Ok(s) if s.trim().is_empty() => continue,
            Ok(s) => parse_line(s, cfg),
            Err(_) => Err("expected UTF-8, found invalid bytes".to_string()),
        };
        match parsed {
            Ok(d) => {
                read.documents.push(d);
                read.document_files.push(0);
            }
            Err(message) if on_bad == OnBadLine::Skip => {
                if read.skipped == 0 {
                    tracing::warn!(file = %path.display(), line = lineno, %message, "skipping malformed line");
                }
                read.skipped += 1;
            }
            Err(message) => {
                return Err(DataError::BadLine {
                    path: path.clone(),
                    line: lineno,
                    message,
                });
            }
        }
        if cfg.max_documents.is_some_and(|m| read.documents.len() >= m) {
            break;
        }
    }
    Ok(read)
}

impl LoadedSource {
    /// Hold out `round(fraction * n)` documents (at least one when `fraction > 0` and there are
    /// two or more documents), chosen by a seeded hash of their *content*: the split does not move
    /// when files are reordered or appended to, and duplicates land on the same side.
    pub fn split(&mut self, fraction: f64, seed: u64) {
        let n = self.documents.len();
        let mut k = (fraction * n as f64).round() as usize;
        if fraction > 0.0 && n >= 2 {
            k = k.clamp(1, n - 1);
        } else if n < 2 {
            k = 0;
        }
        let salt = derive_seed(seed, &[fnv1a(self.config.domain.as_bytes())]);
        let mut keyed: Vec<(u64, u32)> = self
            .documents
            .iter()
            .enumerate()
            .map(|(i, d)| (mix64(d.content_hash() ^ salt), i as u32))
            .collect();
        keyed.sort_unstable();
        let mut val: Vec<u32> = keyed[..k].iter().map(|&(_, i)| i).collect();
        val.sort_unstable();
        let mut is_val = vec![false; n];
        for &i in &val {
            is_val[i as usize] = true;
        }
        self.train = (0..n as u32).filter(|&i| !is_val[i as usize]).collect();
        self.validation = val;
    }

    /// The file a document came from (for error messages).
    pub fn file_of(&self, doc: u32) -> &Path {
        &self.files[self.document_files[doc as usize] as usize]
    }
}
