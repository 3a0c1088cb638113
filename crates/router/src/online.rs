//! The expert cache of Online SeqTopK.

/// Past routing of one MoE layer during generation, kept beside the KV cache.
///
/// **What it holds: the scores of the pairs that were selected, zero elsewhere** (the authors'
/// later code; an earlier variant kept raw scores). A new token therefore competes against what
/// past tokens actually received, so the cumulative total stays at `m·K` except for floor
/// rescues, and an overspend by one token is paid back by the next ones. With raw scores a token
/// would compete against pairs that never ran, and the budget would no longer describe the compute
/// spent. Past choices are never revised.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertCache {
    num_experts: usize,
    rows: Vec<RowCache>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct RowCache {
    /// Selected score per (position, expert), `[len·E]`; zero where not selected or padding.
    scores: Vec<f32>,
    /// Every selected score of the row, sorted descending, for rank queries.
    selected_desc: Vec<f32>,
    /// Valid (non-padding) positions seen so far: `m - 1` for the next token.
    valid_tokens: usize,
}

impl ExpertCache {
    /// An empty cache for `batch` rows of a layer with `num_experts` experts.
    pub fn new(batch: usize, num_experts: usize) -> Self {
        Self {
            num_experts,
            rows: vec![RowCache::default(); batch],
        }
    }

    /// Rows in the cache.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// Experts per layer.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// Positions cached per row (padding included).
    pub fn len(&self) -> usize {
        self.rows
            .first()
            .map_or(0, |r| r.scores.len() / self.num_experts)
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Valid tokens routed so far in `row`.
    pub fn valid_tokens(&self, row: usize) -> usize {
        self.rows[row].valid_tokens
    }

    /// Selected scores of `row`, `[len·E]` row-major, zero where nothing was selected.
    pub fn scores(&self, row: usize) -> &[f32] {
        &self.rows[row].scores
    }

    /// Selected scores of `row`, sorted descending.
    pub fn selected_desc(&self, row: usize) -> &[f32] {
        &self.rows[row].selected_desc
    }

    /// Clears the cache for a new generation.
    pub fn reset(&mut self) {
        for row in &mut self.rows {
            *row = RowCache::default();
        }
    }

    /// Appends one position of `row`: its selected `(expert, score)` pairs (a decode step; each
    /// score is inserted into the sorted list, O(len) per pair).
    pub(crate) fn push(&mut self, row: usize, valid: bool, selected: &[(u32, f32)]) {
        let r = &mut self.rows[row];
        for &(_, s) in selected {
            let at = r.selected_desc.partition_point(|&v| v >= s);
            r.selected_desc.insert(at, s);
        }
        r.append(self.num_experts, valid, selected);
    }

    /// Appends many positions of `row` at once (prefill) and sorts the selected scores once:
    /// O(n log n) for `n` pairs instead of one sorted insertion per pair.
    pub(crate) fn extend<S: AsRef<[(u32, f32)]>>(
        &mut self,
        row: usize,
        positions: impl IntoIterator<Item = (bool, S)>,
    ) {
        let r = &mut self.rows[row];
        for (valid, selected) in positions {
            let selected = selected.as_ref();
            r.selected_desc.extend(selected.iter().map(|&(_, s)| s));
            r.append(self.num_experts, valid, selected);
        }
        r.selected_desc.sort_unstable_by(|a, b| b.total_cmp(a));
    }
}

impl RowCache {
    /// Adds one position's scores row (the sorted list is the caller's business).
    fn append(&mut self, num_experts: usize, valid: bool, selected: &[(u32, f32)]) {
        let start = self.scores.len();
        self.scores.resize(start + num_experts, 0.0);
        for &(x, s) in selected {
            self.scores[start + x as usize] = s;
        }
        if valid {
            self.valid_tokens += 1;
        }
    }
}
