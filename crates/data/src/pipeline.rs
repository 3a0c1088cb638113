//! Packing tokenised documents into fixed-length rows, mixture sampling, and resumable iteration.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, Mode, Packing};
use crate::error::{DataError, Result};
use crate::rng::{SplitMix64, derive_seed, fnv1a, permutation};
use crate::source::{LoadedSource, read_source};
use crate::tokenize::{DocTokenizer, TokenizedDoc};

/// One batch: `batch_size` rows of `seq_len` tokens. This is the contract with the model and
/// router crates.
///
/// Invariants (checked by [`Batch::check`]): all per-token vectors have `batch_size * seq_len`
/// entries, row-major; `doc_ids` is non-decreasing along a row, starts at 0, and padding positions
/// carry one id past the row's last document, so "same doc id" is exactly the attention /
/// routing-competition relation; `targets[t] == -1` wherever `valid[t]` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Rows (B).
    pub batch_size: usize,
    /// Tokens per row (T).
    pub seq_len: usize,
    /// Token ids, `[B*T]` row-major.
    pub input_ids: Vec<u32>,
    /// Already shifted: the token position `t` must predict, or -1 = ignored (padding, prompt
    /// tokens in SFT, a document's last position). When a pretraining document continues in a
    /// later row, the row's last position predicts the document's next token.
    pub targets: Vec<i32>,
    /// False = padding.
    pub valid: Vec<bool>,
    /// Document index within its row: attention must not cross documents and SeqTopK routing
    /// competes per document.
    pub doc_ids: Vec<u32>,
    /// Domain tag of each row (every row is filled from a single source).
    pub domains: Vec<String>,
}

impl Batch {
    /// Number of positions with a target.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }

    /// Number of non-padding positions.
    pub fn num_valid(&self) -> usize {
        self.valid.iter().filter(|&&v| v).count()
    }

    /// One row's slice of a per-token vector.
    pub fn row<'a, T>(&self, v: &'a [T], row: usize) -> &'a [T] {
        &v[row * self.seq_len..(row + 1) * self.seq_len]
    }

    /// Verify the invariants documented on the type; `Err` says which one fails.
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.batch_size * self.seq_len;
        if self.input_ids.len() != n
            || self.targets.len() != n
            || self.valid.len() != n
            || self.doc_ids.len() != n
        {
            return Err("per-token vectors must have batch_size * seq_len entries".into());
        }
        if self.domains.len() != self.batch_size {
            return Err("domains must have one entry per row".into());
        }
        for r in 0..self.batch_size {
            let d = self.row(&self.doc_ids, r);
            let v = self.row(&self.valid, r);
            let t = self.row(&self.targets, r);
            if d[0] != 0 {
                return Err(format!("row {r}: doc_ids must start at 0"));
            }
            for i in 1..self.seq_len {
                if d[i] < d[i - 1] || d[i] > d[i - 1] + 1 {
                    return Err(format!("row {r}: doc_ids must increase by steps of 0 or 1"));
                }
                if v[i] && !v[i - 1] {
                    return Err(format!("row {r}: padding must be at the end of the row"));
                }
            }
            for i in 0..self.seq_len {
                if !v[i] && t[i] != -1 {
                    return Err(format!(
                        "row {r}, position {i}: padding must have target -1"
                    ));
                }
                if t[i] < -1 {
                    return Err(format!("row {r}, position {i}: target below -1"));
                }
            }
        }
        Ok(())
    }
}

/// Position of one source's training stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceCursor {
    /// Passes completed over the source's training documents.
    pub epoch: u64,
    /// Index into this epoch's shuffled order.
    pub position: u64,
    /// Tokens of the current document already emitted (a pretraining document split across rows).
    pub offset: u64,
}

/// The whole iterator position: save it with a checkpoint and [`Pipeline::restore`] it to get
/// exactly the batches an uninterrupted run would have seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineState {
    /// Format version of this struct.
    pub version: u32,
    /// Hash of the recipe and the data it read; restoring onto different data is refused.
    pub fingerprint: u64,
    /// Mixture sampler state.
    pub rng: u64,
    /// Batches produced so far.
    pub batches: u64,
    /// Rows produced so far.
    pub rows: u64,
    /// One cursor per source, in recipe order.
    pub cursors: Vec<SourceCursor>,
}

const STATE_VERSION: u32 = 1;

/// Running counters (not part of the resumable state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Rows produced.
    pub rows: u64,
    /// Non-padding tokens produced.
    pub tokens: u64,
    /// Target tokens produced.
    pub targets: u64,
    /// Documents tokenised.
    pub documents_tokenized: u64,
    /// Tokens produced by the tokenizer (before truncation; a document is tokenised once).
    pub tokens_tokenized: u64,
    /// SFT examples longer than `seq_len` that were truncated.
    pub truncated: u64,
}

/// Per-source summary after loading.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSummary {
    /// Path from the recipe.
    pub path: std::path::PathBuf,
    /// Domain tag.
    pub domain: String,
    /// Mixture weight.
    pub weight: f64,
    /// Documents used for training.
    pub train_documents: usize,
    /// Documents held out.
    pub validation_documents: usize,
    /// Malformed lines skipped.
    pub skipped_lines: usize,
}

struct RowBuf {
    ids: Vec<u32>,
    targets: Vec<i32>,
    valid: Vec<bool>,
    doc_ids: Vec<u32>,
}

/// A supplier of documents to the packer.
trait DocFeed {
    /// The current document and how many of its tokens were already emitted; `None` = exhausted.
    fn current(&mut self) -> Result<Option<(Arc<TokenizedDoc>, usize)>>;
    /// `n` more tokens emitted; `finished` moves on to the next document.
    fn consume(&mut self, n: usize, finished: bool);
}

/// Fill one row from `feed`. Returns `None` if the feed was exhausted before any token.
fn pack_row(
    feed: &mut dyn DocFeed,
    seq_len: usize,
    packing: Packing,
    mode: Mode,
    pad_id: u32,
    stats: &mut PipelineStats,
) -> Result<Option<RowBuf>> {
    let mut row = RowBuf {
        ids: vec![pad_id; seq_len],
        targets: vec![-1; seq_len],
        valid: vec![false; seq_len],
        doc_ids: vec![0; seq_len],
    };
    let mut used = 0usize;
    let mut n_docs = 0u32;
    let mut empty_in_a_row = 0usize;
    while used < seq_len {
        let Some((doc, offset)) = feed.current()? else {
            break;
        };
        // SFT examples are never split across rows (the answer needs its prompt): longer ones
        // are truncated to one row. Pretraining documents simply continue in the next row.
        let len = if mode == Mode::Sft {
            doc.len().min(seq_len)
        } else {
            doc.len()
        };
        if offset >= len {
            feed.consume(0, true);
            empty_in_a_row += 1;
            if empty_in_a_row > 1_000_000 {
                return Err(DataError::Config(
                    "a source produces only empty documents".into(),
                ));
            }
            continue;
        }
        let remaining = len - offset;
        let space = seq_len - used;
        if used > 0 && (packing == Packing::Padded || (mode == Mode::Sft && remaining > space)) {
            break;
        }
        let n = remaining.min(space);
        for j in 0..n {
            let idx = offset + j;
            let p = used + j;
            row.ids[p] = doc.ids[idx];
            row.valid[p] = true;
            row.doc_ids[p] = n_docs;
            if idx + 1 < len && doc.loss[idx + 1] {
                row.targets[p] = doc.ids[idx + 1] as i32;
            }
        }
        if mode == Mode::Sft && doc.len() > seq_len {
            stats.truncated += 1;
        }
        used += n;
        n_docs += 1;
        feed.consume(n, offset + n == len);
    }
    if used == 0 {
        return Ok(None);
    }
    for p in used..seq_len {
        row.doc_ids[p] = n_docs;
    }
    stats.rows += 1;
    stats.tokens += used as u64;
    stats.targets += row.targets.iter().filter(|&&t| t >= 0).count() as u64;
    Ok(Some(row))
}

#[derive(Default)]
struct CursorCache {
    perm_epoch: Option<u64>,
    perm: Vec<u32>,
    current: Option<(u32, Arc<TokenizedDoc>)>,
}

struct TrainFeed<'a> {
    src: &'a LoadedSource,
    tok: &'a DocTokenizer,
    cursor: &'a mut SourceCursor,
    cache: &'a mut CursorCache,
    seed: u64,
    shuffle: bool,
    index: usize,
    stats: &'a mut PipelineStats,
}

impl DocFeed for TrainFeed<'_> {
    fn current(&mut self) -> Result<Option<(Arc<TokenizedDoc>, usize)>> {
        let n = self.src.train.len() as u64;
        if self.cursor.position >= n {
            self.cursor.epoch += 1;
            self.cursor.position = 0;
            self.cursor.offset = 0;
        }
        if self.cache.perm_epoch != Some(self.cursor.epoch) {
            self.cache.perm = if self.shuffle {
                permutation(
                    n as usize,
                    derive_seed(self.seed, &[self.index as u64, self.cursor.epoch]),
                )
            } else {
                (0..n as u32).collect()
            };
            self.cache.perm_epoch = Some(self.cursor.epoch);
        }
        let doc = self.src.train[self.cache.perm[self.cursor.position as usize] as usize];
        let tokenized = match &self.cache.current {
            Some((d, t)) if *d == doc => t.clone(),
            _ => {
                let t = Arc::new(
                    self.tok
                        .tokenize(&self.src.documents[doc as usize], self.src.file_of(doc))?,
                );
                self.stats.documents_tokenized += 1;
                self.stats.tokens_tokenized += t.len() as u64;
                self.cache.current = Some((doc, t.clone()));
                t
            }
        };
        Ok(Some((tokenized, self.cursor.offset as usize)))
    }

    fn consume(&mut self, n: usize, finished: bool) {
        if finished {
            self.cursor.position += 1;
            self.cursor.offset = 0;
            self.cache.current = None;
        } else {
            self.cursor.offset += n as u64;
        }
    }
}

/// The data pipeline: sources read and checked, tokenizer loaded, iterator positioned.
pub struct Pipeline {
    cfg: DataConfig,
    tok: DocTokenizer,
    sources: Vec<LoadedSource>,
    cum_weights: Vec<f64>,
    state: PipelineState,
    caches: Vec<CursorCache>,
    stats: PipelineStats,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("tokenizer", &self.tok)
            .field("state", &self.state)
            .finish()
    }
}

impl Pipeline {
    /// Read every source, split off validation, load and check the tokenizer. All data errors
    /// surface here, before training starts.
    pub fn new(cfg: DataConfig) -> Result<Self> {
        cfg.validate()?;
        let tok = DocTokenizer::new(&cfg)?;
        let mut sources = Vec::with_capacity(cfg.sources.len());
        for s in &cfg.sources {
            let mut src = read_source(s, cfg.on_bad_line)?;
            src.split(cfg.validation_fraction, cfg.seed);
            tracing::info!(
                source = %s.path.display(),
                domain = %s.domain,
                weight = s.weight,
                documents = src.documents.len(),
                train = src.train.len(),
                validation = src.validation.len(),
                skipped_lines = src.skipped_lines,
                "data source loaded"
            );
            sources.push(src);
        }
        let total: f64 = cfg.sources.iter().map(|s| s.weight).sum();
        let mut acc = 0.0;
        let cum_weights = cfg
            .sources
            .iter()
            .map(|s| {
                acc += s.weight / total;
                acc
            })
            .collect();
        let fingerprint = fingerprint(&cfg, &sources);
        let state = PipelineState {
            version: STATE_VERSION,
            fingerprint,
            rng: derive_seed(cfg.seed, &[u64::MAX]),
            batches: 0,
            rows: 0,
            cursors: vec![SourceCursor::default(); sources.len()],
        };
        let caches = sources.iter().map(|_| CursorCache::default()).collect();
        Ok(Self {
            cfg,
            tok,
            sources,
            cum_weights,
            state,
            caches,
            stats: PipelineStats::default(),
        })
    }

    /// The recipe this pipeline was built from.
    pub fn config(&self) -> &DataConfig {
        &self.cfg
    }

    /// The document tokenizer (ids of EOS and padding, vocabulary size).
    pub fn tokenizer(&self) -> &DocTokenizer {
        &self.tok
    }

    /// Per-source counts after loading and splitting.
    pub fn summary(&self) -> Vec<SourceSummary> {
        self.sources
            .iter()
            .map(|s| SourceSummary {
                path: s.config.path.clone(),
                domain: s.config.domain.clone(),
                weight: s.config.weight,
                train_documents: s.train.len(),
                validation_documents: s.validation.len(),
                skipped_lines: s.skipped_lines,
            })
            .collect()
    }

    /// Loaded sources (documents and the split), in recipe order.
    pub fn sources(&self) -> &[LoadedSource] {
        &self.sources
    }

    /// Running counters.
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    /// The current position, to save with a checkpoint.
    pub fn state(&self) -> PipelineState {
        self.state.clone()
    }

    /// Continue from a saved position. Refused if the recipe or the data differ.
    pub fn restore(&mut self, state: &PipelineState) -> Result<()> {
        if state.version != STATE_VERSION {
            return Err(DataError::StateMismatch(format!(
                "state version {} but this build writes {STATE_VERSION}",
                state.version
            )));
        }
        if state.fingerprint != self.state.fingerprint {
            return Err(DataError::StateMismatch(
                "the saved state belongs to a different data recipe or different data (fingerprint differs)".into(),
            ));
        }
        if state.cursors.len() != self.sources.len() {
            return Err(DataError::StateMismatch("number of sources differs".into()));
        }
        for (c, s) in state.cursors.iter().zip(&self.sources) {
            if c.position > s.train.len() as u64 {
                return Err(DataError::StateMismatch(format!(
                    "cursor position {} beyond the {} documents of {}",
                    c.position,
                    s.train.len(),
                    s.config.path.display()
                )));
            }
        }
        self.state = state.clone();
        self.caches = self
            .sources
            .iter()
            .map(|_| CursorCache::default())
            .collect();
        Ok(())
    }

    fn pick_source(&mut self) -> usize {
        let mut rng = SplitMix64::new(self.state.rng);
        let u = rng.next_f64();
        self.state.rng = rng.state;
        self.cum_weights
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cum_weights.len() - 1)
    }

    /// The next training batch. The stream is infinite: each source reshuffles when it runs out.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        let mut batch = empty_batch(b, t);
        for r in 0..b {
            let s = self.pick_source();
            let mut feed = TrainFeed {
                src: &self.sources[s],
                tok: &self.tok,
                cursor: &mut self.state.cursors[s],
                cache: &mut self.caches[s],
                seed: self.cfg.seed,
                shuffle: self.cfg.shuffle,
                index: s,
                stats: &mut self.stats,
            };
            let mut stats = PipelineStats::default();
            let row = pack_row(
                &mut feed,
                t,
                self.cfg.packing,
                self.cfg.mode,
                self.tok.pad_id(),
                &mut stats,
            )?
            .expect("training feeds are cyclic and never exhausted");
            self.stats.rows += stats.rows;
            self.stats.tokens += stats.tokens;
            self.stats.targets += stats.targets;
            self.stats.truncated += stats.truncated;
            put_row(&mut batch, r, row, &self.sources[s].config.domain);
            self.state.rows += 1;
        }
        self.state.batches += 1;
        Ok(batch)
    }

    /// One pass over the held-out documents, source by source in file order (rows never mix
    /// sources, so per-domain losses are a grouping by `domains`). The last batch may be smaller.
    pub fn validation_batches(&self) -> ValidationBatches<'_> {
        ValidationBatches {
            pipe: self,
            source: 0,
            position: 0,
            offset: 0,
            current: None,
            stats: PipelineStats::default(),
        }
    }

    /// Domains in recipe order, without repeats.
    pub fn domains(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.sources {
            if !out.contains(&s.config.domain) {
                out.push(s.config.domain.clone());
            }
        }
        out
    }
}

impl Iterator for Pipeline {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_batch())
    }
}

fn empty_batch(b: usize, t: usize) -> Batch {
    Batch {
        batch_size: b,
        seq_len: t,
        input_ids: vec![0; b * t],
        targets: vec![-1; b * t],
        valid: vec![false; b * t],
        doc_ids: vec![0; b * t],
        domains: vec![String::new(); b],
    }
}

fn put_row(batch: &mut Batch, r: usize, row: RowBuf, domain: &str) {
    let t = batch.seq_len;
    let range = r * t..(r + 1) * t;
    batch.input_ids[range.clone()].copy_from_slice(&row.ids);
    batch.targets[range.clone()].copy_from_slice(&row.targets);
    batch.valid[range.clone()].copy_from_slice(&row.valid);
    batch.doc_ids[range].copy_from_slice(&row.doc_ids);
    batch.domains[r] = domain.to_string();
}

fn fingerprint(cfg: &DataConfig, sources: &[LoadedSource]) -> u64 {
    // batch_size is deliberately left out: the state counts rows per source, so resuming with a
    // different batch size is well defined. Paths are left out too (data may move); content is in.
    let per_source: Vec<_> = sources
        .iter()
        .map(|s| {
            (
                &s.config.domain,
                s.config.weight,
                s.config.format,
                s.config.max_documents,
                s.documents.len(),
                s.content_hash,
            )
        })
        .collect();
    let key = serde_json::json!({
        "seed": cfg.seed,
        "shuffle": cfg.shuffle,
        "seq_len": cfg.seq_len,
        "mode": cfg.mode,
        "packing": cfg.packing,
        "template": cfg.chat_template,
        "eos": cfg.eos_token,
        "pad": cfg.pad_token,
        "add_eos": cfg.add_eos,
        "validation_fraction": cfg.validation_fraction,
        "sources": per_source,
    });
    fnv1a(key.to_string().as_bytes())
}

/// Iterator over validation batches (see [`Pipeline::validation_batches`]).
pub struct ValidationBatches<'a> {
    pipe: &'a Pipeline,
    source: usize,
    position: usize,
    offset: usize,
    current: Option<(u32, Arc<TokenizedDoc>)>,
    stats: PipelineStats,
}

impl ValidationBatches<'_> {
    /// Counters of the rows produced so far.
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }
}

struct ValFeed<'b, 'a> {
    it: &'b mut ValidationBatches<'a>,
}

impl DocFeed for ValFeed<'_, '_> {
    fn current(&mut self) -> Result<Option<(Arc<TokenizedDoc>, usize)>> {
        let src = &self.it.pipe.sources[self.it.source];
        let Some(&doc) = src.validation.get(self.it.position) else {
            return Ok(None);
        };
        let t = match &self.it.current {
            Some((d, t)) if *d == doc => t.clone(),
            _ => {
                let t = Arc::new(
                    self.it
                        .pipe
                        .tok
                        .tokenize(&src.documents[doc as usize], src.file_of(doc))?,
                );
                self.it.stats.documents_tokenized += 1;
                self.it.stats.tokens_tokenized += t.len() as u64;
                self.it.current = Some((doc, t.clone()));
                t
            }
        };
        Ok(Some((t, self.it.offset)))
    }

    fn consume(&mut self, n: usize, finished: bool) {
        if finished {
            self.it.position += 1;
            self.it.offset = 0;
            self.it.current = None;
        } else {
            self.it.offset += n;
        }
    }
}

impl Iterator for ValidationBatches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let pipe = self.pipe;
        let (b, t) = (pipe.cfg.batch_size, pipe.cfg.seq_len);
        let mut rows: Vec<(RowBuf, usize)> = Vec::with_capacity(b);
        while rows.len() < b && self.source < pipe.sources.len() {
            let src_index = self.source;
            let mut stats = self.stats;
            let res = pack_row(
                &mut ValFeed { it: self },
                t,
                pipe.cfg.packing,
                pipe.cfg.mode,
                pipe.tok.pad_id(),
                &mut stats,
            );
            self.stats = stats;
            match res {
                Err(e) => return Some(Err(e)),
                Ok(Some(row)) => rows.push((row, src_index)),
                Ok(None) => {
                    self.source += 1;
                    self.position = 0;
                    self.offset = 0;
                    self.current = None;
                }
            }
        }
        if rows.is_empty() {
            return None;
        }
        let mut batch = empty_batch(rows.len(), t);
        for (r, (row, s)) in rows.into_iter().enumerate() {
            put_row(&mut batch, r, row, &pipe.sources[s].config.domain);
        }
        Some(Ok(batch))
    }
}
