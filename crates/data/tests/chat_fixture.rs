//! The Rust chat templates against transformers' `apply_chat_template` (fixture written by
//! `tools/data/make_chat_fixture.py` with transformers 5.23 and the real OLMoE tokenizer).

use crate::common::*;
use seqtopk_data::{ChatTemplate, ChatTemplateKind, DataConfig, Message, load_tokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    add_generation_prompt: bool,
    messages: Vec<Message>,
    text: String,
    olmoe_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn kind(name: &str) -> ChatTemplateKind {
    match name {
        "olmoe" => ChatTemplateKind::Olmoe,
        "tulu" => ChatTemplateKind::Tulu,
        "chatml" => ChatTemplateKind::Chatml,
        other => panic!("unknown template {other}"),
    }
}

#[test]
fn rendered_text_equals_transformers() {
    let f = fixture();
    assert!(f.cases.len() >= 40);
    for c in &f.cases {
        let t = ChatTemplate::new(kind(&c.template), None);
        let r = t.render(&c.messages, c.add_generation_prompt);
        assert_eq!(
            r.text, c.text,
            "case {} / {} / gen={}",
            c.name, c.template, c.add_generation_prompt
        );
    }
}

#[test]
fn token_ids_equal_python_tokenizers() {
    let tok = load_tokenizer(&olmoe_tokenizer()).unwrap();
    for c in &fixture().cases {
        let enc = tok.encode(c.text.as_str(), false).unwrap();
        assert_eq!(
            enc.get_ids(),
            &c.olmoe_ids[..],
            "case {} / {}",
            c.name,
            c.template
        );
    }
}

#[test]
fn trainable_tokens_decode_to_the_answers() {
    // For the Tulu family on the real tokenizer: the tokens marked as targets are exactly the
    // assistant contents, each followed by EOS.
    let f = fixture();
    let mut cfg = DataConfig::new(olmoe_tokenizer(), vec![], 64, 1);
    cfg.mode = seqtopk_data::Mode::Sft;
    for c in f
        .cases
        .iter()
        .filter(|c| c.template != "chatml" && !c.add_generation_prompt)
    {
        cfg.chat_template = kind(&c.template);
        let dt = seqtopk_data::DocTokenizer::new(&cfg).unwrap();
        let r = dt.template().render(&c.messages, false);
        let doc = dt
            .encode_rendered(&r, std::path::Path::new("fixture"))
            .unwrap();
        assert_eq!(doc.ids, c.olmoe_ids);
        let trained: Vec<u32> = doc
            .ids
            .iter()
            .zip(&doc.loss)
            .filter(|(_, l)| **l)
            .map(|(i, _)| *i)
            .collect();
        let text = dt.inner().decode(&trained, false).unwrap();
        let expected: String = c
            .messages
            .iter()
            .filter(|m| m.role == seqtopk_data::Role::Assistant)
            .map(|m| format!("{}<|endoftext|>", m.content))
            .collect();
        assert_eq!(text, expected, "case {} / {}", c.name, c.template);
    }
}
