//! Which positions of a `[B, T]` batch are real tokens, and which document each belongs to.

use crate::RoutingError;

/// Padding and document structure of a batch, on the host.
///
/// Packed rows hold several documents; SeqTopK must let only tokens of the same document
/// compete, and padding must neither compete nor consume budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLayout {
    batch: usize,
    seq_len: usize,
    valid: Vec<bool>,
    doc_ids: Vec<u32>,
}

/// Valid positions grouped into competition segments (one per document of each row), in
/// row-major order. Tokens of a segment are listed in position order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    /// Segment `s` owns `tokens[offsets[s]..offsets[s + 1]]`.
    pub offsets: Vec<usize>,
    /// Flat positions (`b·T + t`) of the valid tokens, grouped by segment.
    pub tokens: Vec<u32>,
    /// Segment index of each flat position, `None` for padding.
    pub of_position: Vec<Option<u32>>,
}

impl Segments {
    /// Number of segments.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no segments (no valid token at all).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flat positions of segment `s`.
    pub fn tokens_of(&self, s: usize) -> &[u32] {
        &self.tokens[self.offsets[s]..self.offsets[s + 1]]
    }
}

impl TokenLayout {
    /// Every position valid, one document per row.
    pub fn dense(batch: usize, seq_len: usize) -> Self {
        Self {
            batch,
            seq_len,
            valid: vec![true; batch * seq_len],
            doc_ids: vec![0; batch * seq_len],
        }
    }

    /// Right-padded rows: row `b` holds `lengths[b]` tokens, then padding.
    pub fn from_lengths(seq_len: usize, lengths: &[usize]) -> Result<Self, RoutingError> {
        let mut valid = Vec::with_capacity(lengths.len() * seq_len);
        for (b, &len) in lengths.iter().enumerate() {
            if len > seq_len {
                return Err(RoutingError::Layout(format!(
                    "row {b} has length {len}, longer than the sequence length {seq_len}"
                )));
            }
            valid.extend((0..seq_len).map(|t| t < len));
        }
        Ok(Self {
            batch: lengths.len(),
            seq_len,
            valid,
            doc_ids: vec![0; lengths.len() * seq_len],
        })
    }

    /// A layout from per-position validity and document ids (both `[B·T]`, row-major).
    pub fn new(
        batch: usize,
        seq_len: usize,
        valid: Vec<bool>,
        doc_ids: Vec<u32>,
    ) -> Result<Self, RoutingError> {
        let n = batch * seq_len;
        if valid.len() != n || doc_ids.len() != n {
            return Err(RoutingError::Layout(format!(
                "expected {n} = {batch}×{seq_len} entries, got {} validity flags and {} document ids",
                valid.len(),
                doc_ids.len()
            )));
        }
        Ok(Self {
            batch,
            seq_len,
            valid,
            doc_ids,
        })
    }

    /// Rows in the batch, `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions per row, `T`.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// `B·T`.
    pub fn num_positions(&self) -> usize {
        self.batch * self.seq_len
    }

    /// Per-position validity, row-major.
    pub fn valid(&self) -> &[bool] {
        &self.valid
    }

    /// Per-position document ids, row-major.
    pub fn doc_ids(&self) -> &[u32] {
        &self.doc_ids
    }

    /// Number of valid (non-padding) positions.
    pub fn num_valid(&self) -> usize {
        self.valid.iter().filter(|&&v| v).count()
    }

    /// One segment per (row, document id): the units SeqTopK competes within.
    pub fn documents(&self) -> Segments {
        let mut offsets = vec![0];
        let mut tokens = Vec::with_capacity(self.num_valid());
        let mut of_position = vec![None; self.num_positions()];
        for b in 0..self.batch {
            let row = b * self.seq_len..(b + 1) * self.seq_len;
            let mut docs: Vec<u32> = row
                .clone()
                .filter(|&p| self.valid[p])
                .map(|p| self.doc_ids[p])
                .collect();
            docs.sort_unstable();
            docs.dedup();
            for doc in docs {
                let s = (offsets.len() - 1) as u32;
                for p in row.clone() {
                    if self.valid[p] && self.doc_ids[p] == doc {
                        tokens.push(p as u32);
                        of_position[p] = Some(s);
                    }
                }
                offsets.push(tokens.len());
            }
        }
        Segments {
            offsets,
            tokens,
            of_position,
        }
    }

    /// A single segment holding every valid token of the batch (for `batch_topk`).
    pub fn whole_batch(&self) -> Segments {
        let tokens: Vec<u32> = (0..self.num_positions())
            .filter(|&p| self.valid[p])
            .map(|p| p as u32)
            .collect();
        let of_position = self.valid.iter().map(|&v| v.then_some(0)).collect();
        let offsets = if tokens.is_empty() {
            vec![0]
        } else {
            vec![0, tokens.len()]
        };
        Segments {
            offsets,
            tokens,
            of_position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_rows_and_skip_padding() {
        let layout = TokenLayout::new(
            2,
            4,
            vec![true, true, true, false, true, true, true, true],
            vec![0, 0, 1, 0, 5, 5, 7, 7],
        )
        .unwrap();
        let seg = layout.documents();
        assert_eq!(seg.len(), 4);
        assert_eq!(seg.tokens_of(0), &[0, 1]);
        assert_eq!(seg.tokens_of(1), &[2]);
        assert_eq!(seg.tokens_of(2), &[4, 5]);
        assert_eq!(seg.tokens_of(3), &[6, 7]);
        assert_eq!(seg.of_position[3], None);
    }

    #[test]
    fn bad_layouts_are_rejected() {
        assert!(TokenLayout::from_lengths(3, &[4]).is_err());
        assert!(TokenLayout::new(2, 2, vec![true; 3], vec![0; 4]).is_err());
    }
}
