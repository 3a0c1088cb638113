//! Which positions of a `[B, T]` batch are real tokens, and which document each belongs to.

use crate::RoutingError;

/// Padding and document structure of a batch, on the host.
///
/// Packed rows hold several documents; SeqTopK must let only tokens of the same document
/// compete, and padding must neither compete nor consume budget. The documents are grouped once,
/// when the layout is built: every MoE layer and every router loss of the batch reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLayout {
    batch: usize,
    seq_len: usize,
    valid: Vec<bool>,
    doc_ids: Vec<u32>,
    documents: Segments,
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
        Self::build(
            batch,
            seq_len,
            vec![true; batch * seq_len],
            vec![0; batch * seq_len],
        )
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
        let batch = lengths.len();
        Ok(Self::build(batch, seq_len, valid, vec![0; batch * seq_len]))
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
        Ok(Self::build(batch, seq_len, valid, doc_ids))
    }

    fn build(batch: usize, seq_len: usize, valid: Vec<bool>, doc_ids: Vec<u32>) -> Self {
        let documents = group_documents(batch, seq_len, &valid, &doc_ids);
        Self {
            batch,
            seq_len,
            valid,
            doc_ids,
            documents,
        }
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

    /// One segment per (row, document id): the units SeqTopK competes within. Segments follow
    /// row order, and within a row ascending document id.
    pub fn documents(&self) -> &Segments {
        &self.documents
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

/// Groups the valid positions of each row by document id: a stable sort per row, O(T log T).
fn group_documents(batch: usize, seq_len: usize, valid: &[bool], doc_ids: &[u32]) -> Segments {
    let n_valid = valid.iter().filter(|&&v| v).count();
    let mut offsets = vec![0];
    let mut tokens = Vec::with_capacity(n_valid);
    let mut of_position = vec![None; batch * seq_len];
    for b in 0..batch {
        let start = tokens.len();
        tokens.extend(
            (b * seq_len..(b + 1) * seq_len)
                .filter(|&p| valid[p])
                .map(|p| p as u32),
        );
        let row = &mut tokens[start..];
        row.sort_by_key(|&p| doc_ids[p as usize]);
        for i in 0..row.len() {
            let p = row[i] as usize;
            if i > 0 && doc_ids[p] != doc_ids[row[i - 1] as usize] {
                offsets.push(start + i);
            }
            of_position[p] = Some((offsets.len() - 1) as u32);
        }
        if !row.is_empty() {
            offsets.push(tokens.len());
        }
    }
    Segments {
        offsets,
        tokens,
        of_position,
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
    fn documents_group_interleaved_ids_and_skip_empty_rows() {
        // Row 0 all padding; row 1 interleaves documents 3 and 1 (segments by ascending id).
        let layout = TokenLayout::new(
            2,
            4,
            vec![false, false, false, false, true, true, true, false],
            vec![0, 0, 0, 0, 3, 1, 3, 1],
        )
        .unwrap();
        let seg = layout.documents();
        assert_eq!(seg.len(), 2);
        assert_eq!(seg.tokens_of(0), &[5]);
        assert_eq!(seg.tokens_of(1), &[4, 6]);
        assert_eq!(
            seg.of_position,
            vec![None, None, None, None, Some(1), Some(0), Some(1), None]
        );
    }

    #[test]
    fn bad_layouts_are_rejected() {
        assert!(TokenLayout::from_lengths(3, &[4]).is_err());
        assert!(TokenLayout::new(2, 2, vec![true; 3], vec![0; 4]).is_err());
    }
}
