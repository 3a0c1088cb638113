//! Tokenisation + packing throughput over a data directory.
//!
//! ```text
//! cargo run --release -p seqtopk-data --example pipeline_throughput -- [DATA_DIR] [SEQ_LEN]
//! ```
//! DATA_DIR defaults to `data` when fetched corpora are there, else `data/samples`. Every JSONL
//! under `<DATA_DIR>/{math,code,law,writing}` is a source (format auto-detected; the ESFT eval
//! files, which hold reference answers rather than training records, are left out), tokenised with
//! the OLMoE tokenizer. Each source is read, then exactly one epoch of it is tokenised and packed,
//! single-threaded: in pretraining mode (packed rows) for every source, and in SFT mode (padded
//! rows, loss on answers) for the sources whose records are prompt/completion or chat.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use seqtopk_data::{DataConfig, Mode, Packing, Pipeline, SourceConfig, SourceFormat};

fn sources(dir: &Path) -> Vec<SourceConfig> {
    let mut out = Vec::new();
    for domain in ["math", "code", "law", "writing"] {
        let Ok(rd) = std::fs::read_dir(dir.join(domain)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".jsonl") || name.starts_with("esft_eval") {
                continue;
            }
            out.push(SourceConfig {
                path: f,
                format: SourceFormat::Auto,
                domain: domain.into(),
                weight: 1.0,
                max_documents: None,
                text_field: None,
                prompt_field: None,
                completion_field: None,
                extensions: None,
            });
        }
    }
    out
}

/// True when the first record is SFT-shaped (prompt/completion or messages).
fn is_sft(src: &SourceConfig) -> bool {
    let Ok(f) = std::fs::File::open(&src.path) else {
        return false;
    };
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(f), &mut line);
    serde_json::from_str::<serde_json::Value>(&line)
        .map(|v| v.get("messages").is_some() || v.get("completion").is_some())
        .unwrap_or(false)
}

#[derive(Default)]
struct Totals {
    docs: u64,
    tokenized: u64,
    emitted: u64,
    targets: u64,
    rows: u64,
    secs: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.first() {
        Some(d) => PathBuf::from(d),
        None if Path::new("data/math").is_dir() => PathBuf::from("data"),
        None => PathBuf::from("data/samples"),
    };
    let seq_len: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let tokenizer = [
        dir.join("tokenizers/olmoe/tokenizer.json"),
        PathBuf::from("data/samples/tokenizers/olmoe/tokenizer.json"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or("no OLMoE tokenizer.json found")?;
    let all = sources(&dir);
    if all.is_empty() {
        return Err(format!("no JSONL under {}/{{math,code,law,writing}}", dir.display()).into());
    }
    println!(
        "data dir {} ({} sources), tokenizer {}, seq_len {seq_len}, batch 8",
        dir.display(),
        all.len(),
        tokenizer.display()
    );

    for (mode, packing) in [
        (Mode::Pretrain, Packing::Packed),
        (Mode::Sft, Packing::Padded),
    ] {
        let mut per_domain: BTreeMap<String, Totals> = BTreeMap::new();
        let mut load_secs = 0.0;
        for src in all.iter().filter(|s| mode == Mode::Pretrain || is_sft(s)) {
            let cfg = DataConfig {
                mode,
                packing,
                ..DataConfig::new(tokenizer.clone(), vec![src.clone()], seq_len, 8)
            };
            let t0 = Instant::now();
            let mut pipe = Pipeline::new(cfg)?;
            load_secs += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            while pipe.state().cursors[0].epoch == 0 {
                std::hint::black_box(pipe.next_batch()?);
            }
            let secs = t1.elapsed().as_secs_f64();
            let st = pipe.stats();
            let t = per_domain.entry(src.domain.clone()).or_default();
            t.docs += st.documents_tokenized;
            t.tokenized += st.tokens_tokenized;
            t.emitted += st.tokens;
            t.targets += st.targets;
            t.rows += st.rows;
            t.secs += secs;
        }
        println!("\n{mode:?} / {packing:?} (reading + checking all sources: {load_secs:.2}s)");
        println!(
            "{:10} {:>8} {:>12} {:>12} {:>12} {:>8} {:>12}",
            "domain", "docs", "tokenized", "in rows", "targets", "secs", "tokens/s"
        );
        let mut all_t = Totals::default();
        for (d, t) in &per_domain {
            println!(
                "{d:10} {:>8} {:>12} {:>12} {:>12} {:>8.2} {:>12.0}",
                t.docs,
                t.tokenized,
                t.emitted,
                t.targets,
                t.secs,
                t.tokenized as f64 / t.secs
            );
            all_t.docs += t.docs;
            all_t.tokenized += t.tokenized;
            all_t.emitted += t.emitted;
            all_t.targets += t.targets;
            all_t.rows += t.rows;
            all_t.secs += t.secs;
        }
        println!(
            "{:10} {:>8} {:>12} {:>12} {:>12} {:>8.2} {:>12.0}   (padding {:.1}%)",
            "all",
            all_t.docs,
            all_t.tokenized,
            all_t.emitted,
            all_t.targets,
            all_t.secs,
            all_t.tokenized as f64 / all_t.secs,
            100.0 * (1.0 - all_t.emitted as f64 / (all_t.rows as f64 * seq_len as f64))
        );
    }
    Ok(())
}
