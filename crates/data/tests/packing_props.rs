//! Property: packed pretraining rows, read in order, are exactly the documents' tokens each
//! followed by EOS; every target is the next token of the same document, and only EOS lacks one.
//! Padded rows hold the same token stream with one document segment per row.

use crate::common::*;
use proptest::prelude::*;
use seqtopk_data::{DataConfig, Packing, Pipeline, SourceFormat};

const WORDS: [(&str, u32); 8] = [
    ("the", 7),
    ("cat", 8),
    ("sat", 9),
    ("on", 10),
    ("mat", 11),
    ("a", 12),
    ("dog", 13),
    ("ran", 14),
];
const EOS: u32 = 1;

fn run(
    docs: &[Vec<usize>],
    seq_len: usize,
    packing: Packing,
    case: u64,
) -> Result<(), TestCaseError> {
    let d = tmp_dir(&format!("prop-{case}-{packing:?}"));
    let jsonl: String = docs
        .iter()
        .map(|doc| {
            let text: Vec<&str> = doc.iter().map(|&w| WORDS[w].0).collect();
            format!("{}\n", serde_json::json!({ "text": text.join(" ") }))
        })
        .collect();
    let path = write(&d, "docs.jsonl", &jsonl);
    let mut cfg = DataConfig::new(
        tiny_tokenizer(),
        vec![source(path, SourceFormat::TextJsonl, "x", 1.0)],
        seq_len,
        1,
    );
    cfg.shuffle = false;
    cfg.packing = packing;
    let mut p = Pipeline::new(cfg).unwrap();
    let stream: Vec<u32> = docs
        .iter()
        .flat_map(|doc| doc.iter().map(|&w| WORDS[w].1).chain(std::iter::once(EOS)))
        .collect();
    let mut got = Vec::new();
    let mut targets = Vec::new();
    while got.len() < stream.len() {
        let b = p.next_batch().unwrap();
        prop_assert!(b.check().is_ok());
        let valid = b.num_valid();
        if packing == Packing::Padded {
            // One segment per row: doc_ids are 0 on valid positions.
            prop_assert!(b.doc_ids[..valid].iter().all(|&x| x == 0));
        } else if got.len() + seq_len <= stream.len() {
            prop_assert_eq!(valid, seq_len, "packed rows are full");
        }
        got.extend_from_slice(&b.input_ids[..valid]);
        targets.extend_from_slice(&b.targets[..valid]);
    }
    got.truncate(stream.len());
    prop_assert_eq!(&got, &stream);
    for i in 0..stream.len() {
        let expected = if stream[i] == EOS {
            -1
        } else {
            stream[i + 1] as i32
        };
        prop_assert_eq!(targets[i], expected, "position {}", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn packed_and_padded_rows_preserve_the_token_stream(
        docs in prop::collection::vec(prop::collection::vec(0usize..8, 1..30), 1..12),
        seq_len in 2usize..24,
        case in any::<u64>(),
    ) {
        run(&docs, seq_len, Packing::Packed, case)?;
        run(&docs, seq_len, Packing::Padded, case)?;
    }
}
