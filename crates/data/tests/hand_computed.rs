//! Packing, masks and boundaries checked against expectations computed by hand, with a word-level
//! tokenizer (`tests/fixtures/tiny_tokenizer.json`) where every word is one token:
//! pad 0, eos 1, `<|user|>` 2, `<|assistant|>` 3, the 7, cat 8, sat 9, on 10, mat 11, a 12, dog 13,
//! ran 14, `Q:` 15, `2+2?` 16, `4` 17.

use crate::common::*;
use seqtopk_data::{Batch, ChatTemplateKind, DataConfig, Mode, Packing, Pipeline, SourceFormat};

const EOS: u32 = 1;

fn three_docs(name: &str) -> std::path::PathBuf {
    let d = tmp_dir(name);
    // A = the cat sat <eos> (4)   B = a dog ran on the mat <eos> (7)   C = the dog sat <eos> (4)
    write(
        &d,
        "text.jsonl",
        "{\"text\": \"the cat sat\"}\n{\"text\": \"a dog ran on the mat\"}\n\n{\"text\": \"the dog sat\"}\n",
    )
}

fn pretrain(path: std::path::PathBuf, seq_len: usize, batch: usize, packing: Packing) -> Pipeline {
    let mut cfg = DataConfig::new(
        tiny_tokenizer(),
        vec![source(path, SourceFormat::Auto, "writing", 1.0)],
        seq_len,
        batch,
    );
    cfg.shuffle = false;
    cfg.packing = packing;
    cfg.pad_token = Some("<|padding|>".into());
    Pipeline::new(cfg).unwrap()
}

#[test]
fn packed_pretraining_rows_carry_boundaries_and_continuations() {
    let mut p = pretrain(three_docs("packed"), 8, 2, Packing::Packed);
    let b = p.next_batch().unwrap();
    b.check().unwrap();
    assert_eq!((b.batch_size, b.seq_len), (2, 8));
    // Row 0: A (4 tokens) then the first 4 tokens of B, which continues in row 1.
    assert_eq!(b.row(&b.input_ids, 0), &[7, 8, 9, EOS, 12, 13, 14, 10]);
    assert_eq!(b.row(&b.doc_ids, 0), &[0, 0, 0, 0, 1, 1, 1, 1]);
    // A's EOS predicts nothing (document end); B's 4th token predicts B's 5th ("the"), in row 1.
    assert_eq!(b.row(&b.targets, 0), &[8, 9, EOS as i32, -1, 13, 14, 10, 7]);
    assert!(b.row(&b.valid, 0).iter().all(|&v| v));
    // Row 1: rest of B (3), all of C (4), first token of A of the next epoch.
    assert_eq!(b.row(&b.input_ids, 1), &[7, 11, EOS, 7, 13, 9, EOS, 7]);
    assert_eq!(b.row(&b.doc_ids, 1), &[0, 0, 0, 1, 1, 1, 1, 2]);
    assert_eq!(
        b.row(&b.targets, 1),
        &[11, EOS as i32, -1, 13, 9, EOS as i32, -1, 8]
    );
    assert_eq!(b.domains, vec!["writing", "writing"]);
    // 16 positions, 3 document ends (-1): 13 targets.
    assert_eq!(b.num_targets(), 13);
    let s = p.state();
    assert_eq!(
        (
            s.cursors[0].epoch,
            s.cursors[0].position,
            s.cursors[0].offset
        ),
        (1, 0, 1)
    );
}

#[test]
fn padded_rows_hold_one_document_each() {
    let mut p = pretrain(three_docs("padded"), 8, 3, Packing::Padded);
    let b = p.next_batch().unwrap();
    b.check().unwrap();
    assert_eq!(b.row(&b.input_ids, 0), &[7, 8, 9, EOS, 0, 0, 0, 0]);
    assert_eq!(
        b.row(&b.valid, 0),
        &[true, true, true, true, false, false, false, false]
    );
    // Padding gets the id one past the last document.
    assert_eq!(b.row(&b.doc_ids, 0), &[0, 0, 0, 0, 1, 1, 1, 1]);
    assert_eq!(
        b.row(&b.targets, 0),
        &[8, 9, EOS as i32, -1, -1, -1, -1, -1]
    );
    assert_eq!(b.row(&b.input_ids, 1), &[12, 13, 14, 10, 7, 11, EOS, 0]);
    assert_eq!(
        b.row(&b.targets, 1),
        &[13, 14, 10, 7, 11, EOS as i32, -1, -1]
    );
    assert_eq!(b.row(&b.input_ids, 2), &[7, 13, 9, EOS, 0, 0, 0, 0]);
    assert_eq!(b.num_valid(), 4 + 7 + 4);
    assert_eq!(b.num_targets(), 3 + 6 + 3);
}

#[test]
fn padded_long_document_continues_in_next_row() {
    let mut p = pretrain(three_docs("padded-long"), 4, 3, Packing::Padded);
    let b = p.next_batch().unwrap();
    b.check().unwrap();
    assert_eq!(b.row(&b.input_ids, 0), &[7, 8, 9, EOS]);
    assert_eq!(b.row(&b.input_ids, 1), &[12, 13, 14, 10]);
    assert_eq!(b.row(&b.targets, 1), &[13, 14, 10, 7]); // "on" predicts "the" of the next row
    assert_eq!(b.row(&b.input_ids, 2), &[7, 11, EOS, 0]);
    assert_eq!(b.row(&b.targets, 2), &[11, EOS as i32, -1, -1]);
}

/// One chat record: the user says "the cat", the assistant answers "a dog".
const CHAT: &str = "{\"messages\": [{\"role\": \"user\", \"content\": \"the cat\"}, {\"role\": \"assistant\", \"content\": \"a dog\"}]}\n";

fn sft(seq_len: usize, batch: usize, template: ChatTemplateKind, packing: Packing) -> Pipeline {
    let d = tmp_dir(&format!("sft-{seq_len}-{template:?}-{packing:?}"));
    let pc = write(
        &d,
        "pc.jsonl",
        "{\"prompt\": \"Q: 2+2?\", \"completion\": \" 4\"}\n",
    );
    let chat = write(&d, "chat.jsonl", CHAT);
    let mut cfg = DataConfig::new(
        tiny_tokenizer(),
        vec![
            source(pc, SourceFormat::PromptCompletion, "math", 1.0),
            source(chat, SourceFormat::Chat, "law", 1.0),
        ],
        seq_len,
        batch,
    );
    cfg.mode = Mode::Sft;
    cfg.chat_template = template;
    cfg.packing = packing;
    cfg.shuffle = false;
    Pipeline::new(cfg).unwrap()
}

fn row_of(b: &Batch, domain: &str) -> usize {
    b.domains.iter().position(|d| d == domain).unwrap()
}

#[test]
fn sft_masks_prompt_and_trains_answer_and_eos() {
    // Raw template: "Q: 2+2? 4<|endoftext|>" -> [Q:, 2+2?, 4, eos]; only "4" and eos are targets.
    let mut p = sft(6, 8, ChatTemplateKind::None, Packing::Padded);
    let b = p.next_batch().unwrap();
    b.check().unwrap();
    let r = row_of(&b, "math");
    assert_eq!(b.row(&b.input_ids, r), &[15, 16, 17, EOS, EOS, EOS]); // pad defaults to eos
    assert_eq!(b.row(&b.targets, r), &[-1, 17, EOS as i32, -1, -1, -1]);
    // The raw template renders the chat record as "the cat\n\na dog<|endoftext|>".
    let r = row_of(&b, "law");
    assert_eq!(b.row(&b.input_ids, r), &[7, 8, 12, 13, EOS, EOS]);
    assert_eq!(b.row(&b.targets, r), &[-1, 12, 13, EOS as i32, -1, -1]);
}

#[test]
fn sft_olmoe_template_masks() {
    let mut p = sft(10, 8, ChatTemplateKind::Olmoe, Packing::Padded);
    let b = p.next_batch().unwrap();
    let r = row_of(&b, "law");
    // [eos(bos), <|user|>, the, cat, <|assistant|>, a, dog, eos, pad, pad]
    assert_eq!(
        b.row(&b.input_ids, r),
        &[EOS, 2, 7, 8, 3, 12, 13, EOS, EOS, EOS]
    );
    assert_eq!(
        b.row(&b.targets, r),
        &[-1, -1, -1, -1, 12, 13, EOS as i32, -1, -1, -1]
    );
    assert_eq!(b.row(&b.valid, r).iter().filter(|&&v| v).count(), 8);
    // The prompt/completion pair becomes a user turn and an assistant turn.
    let r = row_of(&b, "math");
    assert_eq!(
        b.row(&b.input_ids, r),
        &[EOS, 2, 15, 16, 3, 17, EOS, EOS, EOS, EOS]
    );
    assert_eq!(
        b.row(&b.targets, r),
        &[-1, -1, -1, -1, 17, EOS as i32, -1, -1, -1, -1]
    );
}

#[test]
fn sft_packing_never_splits_an_example() {
    // Only the chat source (8 tokens): with seq_len 10 a second copy (next epoch) does not fit
    // in the 2 remaining slots, so the row is padded instead of splitting the example.
    let d = tmp_dir("sft-nosplit");
    let chat = write(&d, "chat.jsonl", CHAT);
    let mut cfg = DataConfig::new(
        tiny_tokenizer(),
        vec![source(chat, SourceFormat::Auto, "law", 1.0)],
        10,
        1,
    );
    cfg.mode = Mode::Sft;
    cfg.pad_token = Some("<|padding|>".into());
    let mut p = Pipeline::new(cfg.clone()).unwrap();
    let b = p.next_batch().unwrap();
    assert_eq!(b.input_ids, vec![EOS, 2, 7, 8, 3, 12, 13, EOS, 0, 0]);
    assert_eq!(b.doc_ids, vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    // With seq_len 16 two copies fit: two documents in the row.
    cfg.seq_len = 16;
    let mut p = Pipeline::new(cfg).unwrap();
    let b = p.next_batch().unwrap();
    assert_eq!(
        &b.doc_ids[..16],
        &[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    );
    assert_eq!(
        b.targets[7], -1,
        "the first example's EOS predicts nothing across the boundary"
    );
    assert_eq!(&b.targets[12..16], &[12, 13, EOS as i32, -1]);
}

#[test]
fn sft_truncates_long_examples_to_one_row() {
    let mut p = sft(6, 8, ChatTemplateKind::Olmoe, Packing::Packed);
    let b = p.next_batch().unwrap();
    b.check().unwrap();
    let r = row_of(&b, "law");
    // 8 tokens truncated to 6: [eos, <|user|>, the, cat, <|assistant|>, a]; "a" has no target left.
    assert_eq!(b.row(&b.input_ids, r), &[EOS, 2, 7, 8, 3, 12]);
    assert_eq!(b.row(&b.targets, r), &[-1, -1, -1, -1, 12, -1]);
    assert!(p.stats().truncated >= 1);
}

#[test]
fn plain_text_directory_is_one_document_per_file() {
    let d = tmp_dir("textdir");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    write(&d, "b.txt", "a dog ran\n");
    write(&d, "a.txt", "the cat sat\n");
    write(&d, "sub/c.txt", "the mat\n");
    write(&d, "skip.md", "the the the\n");
    write(&d, "empty.txt", "   \n");
    let mut s = source(d.clone(), SourceFormat::Text, "writing", 1.0);
    s.extensions = Some(vec!["txt".into()]);
    let mut cfg = DataConfig::new(tiny_tokenizer(), vec![s], 12, 1);
    cfg.shuffle = false;
    let mut p = Pipeline::new(cfg).unwrap();
    assert_eq!(p.summary()[0].train_documents, 3);
    let b = p.next_batch().unwrap();
    // Sorted paths: a.txt, b.txt, sub/c.txt.
    assert_eq!(
        b.input_ids,
        vec![7, 8, 9, EOS, 12, 13, 14, EOS, 7, 11, EOS, 7]
    );
    assert_eq!(b.doc_ids, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3]);
}
