//! Saving the iterator position mid-epoch and restoring it gives the identical next batches.

use crate::common::*;
use seqtopk_data::{
    ChatTemplateKind, DataConfig, Mode, Packing, Pipeline, PipelineState, SourceFormat,
};

fn pretrain_cfg() -> DataConfig {
    let s = samples();
    let mut cfg = DataConfig::new(
        olmoe_tokenizer(),
        vec![
            source(
                s.join("writing/kjv.jsonl"),
                SourceFormat::TextJsonl,
                "writing",
                1.0,
            ),
            source(
                s.join("law/spdx_licenses.jsonl"),
                SourceFormat::TextJsonl,
                "law",
                0.5,
            ),
            source(
                s.join("code/mbpp_rust.jsonl"),
                SourceFormat::TextJsonl,
                "code",
                0.5,
            ),
        ],
        256,
        4,
    );
    cfg.seed = 42;
    cfg.validation_fraction = 0.05;
    cfg
}

fn sft_cfg() -> DataConfig {
    let s = samples();
    let mut cfg = DataConfig::new(
        olmoe_tokenizer(),
        vec![
            source(
                s.join("math/gsm8k_test.jsonl"),
                SourceFormat::PromptCompletion,
                "math",
                1.0,
            ),
            source(
                s.join("law/esft_train_law.jsonl"),
                SourceFormat::Chat,
                "law",
                1.0,
            ),
        ],
        512,
        3,
    );
    cfg.mode = Mode::Sft;
    cfg.packing = Packing::Padded;
    cfg.chat_template = ChatTemplateKind::Tulu;
    cfg.seed = 7;
    cfg
}

fn check_resume(cfg: DataConfig, before: usize, after: usize) -> PipelineState {
    let mut a = Pipeline::new(cfg.clone()).unwrap();
    for _ in 0..before {
        a.next_batch().unwrap();
    }
    // Through JSON, as a checkpoint would store it.
    let saved = serde_json::to_string(&a.state()).unwrap();
    let expected: Vec<_> = (0..after).map(|_| a.next_batch().unwrap()).collect();

    let mut b = Pipeline::new(cfg).unwrap();
    let state: PipelineState = serde_json::from_str(&saved).unwrap();
    b.restore(&state).unwrap();
    let got: Vec<_> = (0..after).map(|_| b.next_batch().unwrap()).collect();
    assert_eq!(got, expected);
    assert_eq!(a.state(), b.state());
    state
}

#[test]
fn pretraining_resume_mid_document_is_exact() {
    let state = check_resume(pretrain_cfg(), 7, 12);
    assert_eq!(state.batches, 7);
    assert_eq!(state.rows, 28);
    // Packed 256-token rows of ~1000-token chapters: some source was cut mid-document.
    assert!(state.cursors.iter().any(|c| c.offset > 0), "{state:?}");
    assert!(
        state.cursors[..2].iter().all(|c| c.epoch == 0),
        "KJV and SPDX still mid-epoch: {state:?}"
    );
}

#[test]
fn sft_resume_is_exact() {
    check_resume(sft_cfg(), 5, 10);
}

#[test]
fn resume_across_an_epoch_boundary_is_exact() {
    // Only 2 documents (~11k tokens of US founding texts): 8 batches of 4x512 pass an epoch.
    let mut cfg = DataConfig::new(
        olmoe_tokenizer(),
        vec![source(
            samples().join("law/us_constitution.jsonl"),
            SourceFormat::TextJsonl,
            "law",
            1.0,
        )],
        512,
        4,
    );
    cfg.seed = 3;
    let state = check_resume(cfg, 8, 6);
    assert!(state.cursors[0].epoch >= 1, "{state:?}");
}

#[test]
fn restoring_onto_different_data_is_refused() {
    let mut a = Pipeline::new(pretrain_cfg()).unwrap();
    a.next_batch().unwrap();
    let st = a.state();
    let mut other = pretrain_cfg();
    other.seed = 43;
    let mut b = Pipeline::new(other).unwrap();
    let err = b.restore(&st).unwrap_err();
    assert!(
        matches!(err, seqtopk_data::DataError::StateMismatch(_)),
        "{err}"
    );
    let mut other = pretrain_cfg();
    other.sources[1].max_documents = Some(10);
    let mut b = Pipeline::new(other).unwrap();
    assert!(b.restore(&st).is_err());
    // A different batch size is allowed: the state counts rows per source.
    let mut other = pretrain_cfg();
    other.batch_size = 2;
    let mut b = Pipeline::new(other).unwrap();
    b.restore(&st).unwrap();
}
