//! Host-side selection rules over per-token candidate lists.
//!
//! The device hands the host each token's top-`U` experts sorted by descending score (`U` = the
//! per-token cap; a small, compile-time-friendly `topk`). Every mode here keeps a *prefix* of each
//! token's candidate list, so a selection is just a count per token. Ties are broken by
//! (score desc, position asc, candidate rank asc), the order the brute-force reference uses.
//!
//! Why the host: a sequence-level top-`T·K` cannot use the GPU `topk` (its `k` is a compile-time
//! size and breaks near 32k), and a full sort on CubeCL backends is itself a host round trip. The
//! MoE layer needs each expert's token list on the host anyway to size its gathers, so reading
//! back `B·T·U` candidates once per layer costs one synchronisation that dispatch would pay
//! regardless, and the selection is O(T·U) per sequence (a linear-time nth-element).

use std::cmp::Ordering;

use crate::{OnlineBudget, Segments};

/// Each token's top-`width` experts and their scores, sorted by descending score.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Candidates per token, `U`.
    pub width: usize,
    /// Scores `[N·U]`, row-major, descending within a token.
    pub scores: Vec<f32>,
    /// Expert ids `[N·U]`, aligned with `scores`.
    pub experts: Vec<u32>,
}

impl Candidates {
    /// Number of token positions.
    pub fn num_tokens(&self) -> usize {
        self.scores.len().checked_div(self.width).unwrap_or(0)
    }

    /// Scores of position `p`'s candidates.
    pub fn scores_of(&self, p: usize) -> &[f32] {
        &self.scores[p * self.width..(p + 1) * self.width]
    }

    /// Expert ids of position `p`'s candidates.
    pub fn experts_of(&self, p: usize) -> &[u32] {
        &self.experts[p * self.width..(p + 1) * self.width]
    }

    /// Candidates from full score rows `[N, E]`, sorted by (score desc, expert asc), keeping the
    /// top `width`. Used where the device reads back every score (tests, `top_p`, `batch_topk`).
    pub fn from_rows(scores: &[f32], num_experts: usize, width: usize) -> Self {
        let n = scores.len() / num_experts;
        let mut out_scores = Vec::with_capacity(n * width);
        let mut out_experts = Vec::with_capacity(n * width);
        let mut order: Vec<u32> = Vec::with_capacity(num_experts);
        for row in scores.chunks_exact(num_experts) {
            order.clear();
            order.extend(0..num_experts as u32);
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            for &e in &order[..width] {
                out_scores.push(row[e as usize]);
                out_experts.push(e);
            }
        }
        Self {
            width,
            scores: out_scores,
            experts: out_experts,
        }
    }
}

/// Per-token top-`k`: every valid token gets its first `k` candidates (Hugging Face's rule,
/// zero scores included so that parity holds even under underflow).
pub fn topk(valid: &[bool], k: usize) -> Vec<u32> {
    valid
        .iter()
        .map(|&v| if v { k as u32 } else { 0 })
        .collect()
}

/// Budgeted selection (SeqTopK, BatchTopK): within each segment of `n` tokens keep the best
/// `n·k` positive-score candidates (each token capped at the candidate width), then raise every
/// valid token to at least `floor` experts.
///
/// With `floor = 0` a segment gets exactly `min(n·k, positive candidates)` pairs. With
/// `floor = 1` the total is `n·k + r`, where `r` is the number of tokens that won nothing in the
/// competition and were given their own top-1 (the paper's order: compete, then rescue).
pub fn budgeted(cands: &Candidates, segments: &Segments, k: usize, floor: usize) -> Vec<u32> {
    let mut counts = vec![0u32; cands.num_tokens()];
    let mut entries = Vec::new();
    for s in 0..segments.len() {
        budgeted_tokens(
            cands,
            segments.tokens_of(s),
            k,
            floor,
            &mut counts,
            &mut entries,
        );
    }
    counts
}

/// [`budgeted`] over one group of tokens, writing their counts.
fn budgeted_tokens(
    cands: &Candidates,
    tokens: &[u32],
    k: usize,
    floor: usize,
    counts: &mut [u32],
    entries: &mut Vec<(f32, u32, u32)>,
) {
    let budget = tokens.len() * k;
    entries.clear();
    for &p in tokens {
        for (rank, &score) in cands.scores_of(p as usize).iter().enumerate() {
            if score > 0.0 {
                entries.push((score, p, rank as u32));
            }
        }
    }
    let keep = budget.min(entries.len());
    if keep < entries.len() && keep > 0 {
        entries.select_nth_unstable_by(keep - 1, entry_order);
    }
    for &(_, p, _) in &entries[..keep] {
        counts[p as usize] += 1;
    }
    for &p in tokens {
        let c = &mut counts[p as usize];
        *c = (*c).max(floor as u32);
    }
}

/// Descending score, then earlier position, then better candidate rank.
fn entry_order(a: &(f32, u32, u32), b: &(f32, u32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

/// Top-P: per valid token, the shortest prefix of candidates whose mass reaches `p`
/// (the crossing expert included), at most the candidate width, at least one.
pub fn top_p(cands: &Candidates, valid: &[bool], p: f64) -> Vec<u32> {
    valid
        .iter()
        .enumerate()
        .map(|(pos, &v)| {
            if !v {
                return 0;
            }
            let mut mass = 0.0f64;
            let mut count = 0u32;
            for &s in cands.scores_of(pos) {
                count += 1;
                mass += f64::from(s);
                if mass >= p {
                    break;
                }
            }
            count.max(1)
        })
        .collect()
}

/// How many of a new token's candidates it wins against a history under the cumulative budget.
///
/// `past_desc` holds the scores of every pair the history was given, sorted descending, and
/// `budget` is `m·K` for the `m`-th valid token. Union rank of candidate `j` = past entries with a
/// score `>=` its own (earlier tokens win ties) plus `j`; it is selected while that rank is below
/// `budget` and its score is positive, and under [`OnlineBudget::Strict`] also never beyond the
/// budget left (`budget - past pairs`). The first `floor` candidates are kept regardless. Past
/// choices are never revised.
pub fn online_count(
    past_desc: &[f32],
    scores: &[f32],
    budget: usize,
    floor: usize,
    rule: OnlineBudget,
) -> u32 {
    let left = budget_left(rule, budget, past_desc.len());
    let mut count = 0;
    for (j, &s) in scores.iter().enumerate() {
        let ahead = past_desc.partition_point(|&v| v >= s) + j;
        if j < floor || (s > 0.0 && ahead < budget && j < left) {
            count += 1;
        } else {
            break;
        }
    }
    count as u32
}

/// Most candidates a token may take: unbounded for `rank`, the budget left for `strict`.
fn budget_left(rule: OnlineBudget, budget: usize, spent: usize) -> usize {
    match rule {
        OnlineBudget::Rank => usize::MAX,
        OnlineBudget::Strict => budget.saturating_sub(spent),
    }
}

/// Online SeqTopK applied causally to whole segments: token `m` (1-based in its segment) competes
/// with the pairs given to tokens `1..m` under the budget `m·k`, exactly as it would when decoded
/// one token at a time with an empty prompt.
pub fn causal(
    cands: &Candidates,
    segments: &Segments,
    k: usize,
    floor: usize,
    rule: OnlineBudget,
) -> Vec<u32> {
    prompted(cands, segments, &vec![0; segments.len()], k, floor, rule)
}

/// Routing as generation does it, in one pass: the first `prompt_lens[s]` tokens of segment `s`
/// are a prompt routed with offline SeqTopK ([`budgeted`] over the prompt alone), and every later
/// token is routed causally against the prompt's and its predecessors' selections, as decode
/// steps would be. Runs in O(n log n) per segment with a Fenwick tree over score ranks instead of
/// re-sorting the history at every token.
///
/// # Panics
/// If `prompt_lens` does not hold one length per segment, each at most the segment's length
/// (callers check this against the user's input first).
pub fn prompted(
    cands: &Candidates,
    segments: &Segments,
    prompt_lens: &[usize],
    k: usize,
    floor: usize,
    rule: OnlineBudget,
) -> Vec<u32> {
    assert_eq!(
        prompt_lens.len(),
        segments.len(),
        "one prompt length per segment"
    );
    let mut counts = vec![0u32; cands.num_tokens()];
    let mut entries = Vec::new();
    for s in 0..segments.len() {
        let tokens = segments.tokens_of(s);
        let (prompt, rest) = tokens.split_at(prompt_lens[s]);
        budgeted_tokens(cands, prompt, k, floor, &mut counts, &mut entries);
        // Distinct candidate scores of the segment, descending: rank r counts scores >= value[r].
        let mut values: Vec<f32> = tokens
            .iter()
            .flat_map(|&p| cands.scores_of(p as usize).iter().copied())
            .collect();
        values.sort_unstable_by(|a, b| b.total_cmp(a));
        values.dedup();
        let rank_of = |score: f32| values.partition_point(|&v| v > score);
        let mut tree = Fenwick::new(values.len());
        let mut spent = 0usize;
        for &p in prompt {
            let n = counts[p as usize] as usize;
            spent += n;
            for &sc in &cands.scores_of(p as usize)[..n] {
                tree.add(rank_of(sc));
            }
        }
        for (i, &p) in rest.iter().enumerate() {
            let budget = (prompt.len() + i + 1) * k;
            let left = budget_left(rule, budget, spent);
            let scores = cands.scores_of(p as usize);
            let mut count = 0usize;
            for (j, &sc) in scores.iter().enumerate() {
                let ahead = tree.prefix_sum(rank_of(sc) + 1) + j;
                if j < floor || (sc > 0.0 && ahead < budget && j < left) {
                    count += 1;
                } else {
                    break;
                }
            }
            spent += count;
            for &sc in &scores[..count] {
                tree.add(rank_of(sc));
            }
            counts[p as usize] = count as u32;
        }
    }
    counts
}

/// Counts of inserted items per rank with prefix sums in O(log n).
struct Fenwick {
    tree: Vec<usize>,
}

impl Fenwick {
    fn new(n: usize) -> Self {
        Self {
            tree: vec![0; n + 1],
        }
    }

    fn add(&mut self, index: usize) {
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// Items with rank `< end`.
    fn prefix_sum(&self, end: usize) -> usize {
        let mut i = end;
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenLayout;

    fn cands(rows: &[&[f32]], width: usize) -> Candidates {
        let e = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Candidates::from_rows(&flat, e, width)
    }

    #[test]
    fn budget_goes_to_the_confident_pairs() {
        // Token 0 is sure (one big score), token 1 is flat: SeqTopK with k=2 gives the flat
        // token more experts than the sure one.
        let c = cands(&[&[0.97, 0.01, 0.01, 0.01], &[0.3, 0.25, 0.25, 0.2]], 4);
        let layout = TokenLayout::dense(1, 2);
        let counts = budgeted(&c, layout.documents(), 2, 1);
        assert_eq!(counts, vec![1, 3]);
    }

    #[test]
    fn online_count_respects_history_and_floor() {
        use OnlineBudget::{Rank, Strict};
        for rule in [Rank, Strict] {
            // History took two big scores; budget 4 leaves two slots for the new token.
            assert_eq!(online_count(&[0.9, 0.8], &[0.5, 0.3, 0.1], 4, 1, rule), 2);
            // A history that already spent the budget leaves only the floor.
            assert_eq!(
                online_count(&[0.9, 0.8, 0.7, 0.6], &[0.5, 0.3], 4, 1, rule),
                1
            );
            assert_eq!(
                online_count(&[0.9, 0.8, 0.7, 0.6], &[0.5, 0.3], 4, 0, rule),
                0
            );
            // Zero scores never win.
            assert_eq!(online_count(&[], &[0.5, 0.0, 0.0], 6, 1, rule), 1);
        }
        // A new token that outranks the history: `strict` gives it only the budget left (one),
        // `rank` every candidate that ranks within the budget of three.
        assert_eq!(online_count(&[0.2, 0.1], &[0.5, 0.4, 0.3], 3, 1, Strict), 1);
        assert_eq!(online_count(&[0.2, 0.1], &[0.5, 0.4, 0.3], 3, 1, Rank), 3);
    }

    #[test]
    fn causal_equals_repeated_online_count() {
        let c = cands(
            &[
                &[0.5, 0.3, 0.1, 0.1],
                &[0.25, 0.25, 0.25, 0.25],
                &[0.9, 0.05, 0.03, 0.02],
                &[0.4, 0.4, 0.1, 0.1],
            ],
            3,
        );
        let layout = TokenLayout::dense(1, 4);
        for rule in [OnlineBudget::Rank, OnlineBudget::Strict] {
            let counts = causal(&c, layout.documents(), 2, 1, rule);
            let mut past: Vec<f32> = Vec::new();
            for p in 0..4 {
                let n = online_count(&past, c.scores_of(p), (p + 1) * 2, 1, rule);
                assert_eq!(n, counts[p], "{rule}: token {p}");
                past.extend_from_slice(&c.scores_of(p)[..n as usize]);
                past.sort_by(|a, b| b.total_cmp(a));
            }
        }
    }
}
