//! Bad input gives a clear error before training starts (or is skipped and counted), never a panic.

use crate::common::*;
use seqtopk_data::{ChatTemplateKind, DataConfig, DataError, OnBadLine, Pipeline, SourceFormat};

fn one_source(path: std::path::PathBuf, format: SourceFormat) -> DataConfig {
    DataConfig::new(
        tiny_tokenizer(),
        vec![source(path, format, "math", 1.0)],
        16,
        2,
    )
}

fn err(cfg: DataConfig) -> DataError {
    Pipeline::new(cfg).expect_err("expected an error")
}

#[test]
fn malformed_json_names_file_and_line() {
    let d = tmp_dir("badjson");
    let p = write(
        &d,
        "bad.jsonl",
        "{\"text\": \"the cat\"}\n\n{\"text\": \"the dog\"\n{\"text\": \"a dog\"}\n",
    );
    let e = err(one_source(p.clone(), SourceFormat::Auto));
    match &e {
        DataError::BadLine {
            path,
            line,
            message,
        } => {
            assert_eq!(path, &p);
            assert_eq!(*line, 3, "blank lines count");
            assert!(message.contains("invalid JSON"), "{message}");
        }
        other => panic!("wrong error {other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3: invalid JSON", p.display())),
        "{e}"
    );
}

#[test]
fn wrong_field_types_say_what_was_expected() {
    let d = tmp_dir("badfields");
    let cases: [(&str, SourceFormat, &str); 8] = [
        (
            "{\"text\": 5}",
            SourceFormat::TextJsonl,
            "expected field \"text\" to be a string, found a number",
        ),
        (
            "{\"body\": \"x\"}",
            SourceFormat::TextJsonl,
            "missing field \"text\"",
        ),
        (
            "[1, 2]",
            SourceFormat::Auto,
            "expected a JSON object, found an array",
        ),
        (
            "{\"foo\": 1}",
            SourceFormat::Auto,
            "expected one of \"messages\"",
        ),
        (
            "{\"prompt\": \"Q:\", \"completion\": \"\"}",
            SourceFormat::PromptCompletion,
            "field \"completion\" is empty",
        ),
        (
            "{\"messages\": []}",
            SourceFormat::Chat,
            "at least one message",
        ),
        (
            "{\"messages\": [{\"role\": \"bot\", \"content\": \"hi\"}]}",
            SourceFormat::Chat,
            "messages[0]: expected role \"system\", \"user\" or \"assistant\", found \"bot\"",
        ),
        (
            "{\"messages\": [{\"role\": \"user\"}]}",
            SourceFormat::Chat,
            "messages[0]: missing field \"content\"",
        ),
    ];
    for (i, (line, format, expected)) in cases.into_iter().enumerate() {
        let p = write(&d, &format!("case{i}.jsonl"), &format!("{line}\n"));
        let e = err(one_source(p.clone(), format));
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{}:1: ", p.display())), "{msg}");
        assert!(msg.contains(expected), "case {i}: {msg}");
    }
}

#[test]
fn invalid_utf8_is_a_bad_line() {
    let d = tmp_dir("utf8");
    let p = d.join("bin.jsonl");
    std::fs::write(&p, b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n").unwrap();
    let e = err(one_source(p, SourceFormat::Auto));
    assert!(matches!(e, DataError::BadLine { line: 2, .. }), "{e}");
    let t = d.join("bin.txt");
    std::fs::write(&t, b"line one\nline two \xc3\x28\n").unwrap();
    let e = err(one_source(t, SourceFormat::Text));
    assert!(matches!(e, DataError::BadLine { line: 2, .. }), "{e}");
}

#[test]
fn skip_mode_counts_bad_lines() {
    let d = tmp_dir("skip");
    let p = write(
        &d,
        "mixed.jsonl",
        "{\"text\": \"the cat\"}\nnot json\n{\"text\": 3}\n{\"text\": \"a dog\"}\n",
    );
    let mut cfg = one_source(p, SourceFormat::Auto);
    cfg.on_bad_line = OnBadLine::Skip;
    let mut pipe = Pipeline::new(cfg).unwrap();
    let s = &pipe.summary()[0];
    assert_eq!((s.train_documents, s.skipped_lines), (2, 2));
    pipe.next_batch().unwrap().check().unwrap();
}

#[test]
fn empty_sources_are_errors() {
    let d = tmp_dir("empty");
    let p = write(&d, "empty.jsonl", "\n\n");
    assert!(matches!(
        err(one_source(p, SourceFormat::Auto)),
        DataError::EmptySource { .. }
    ));
    // Everything skipped: still empty, and the message says why.
    let p = write(&d, "allbad.jsonl", "oops\n{\"x\": 1}\n");
    let mut cfg = one_source(p, SourceFormat::Auto);
    cfg.on_bad_line = OnBadLine::Skip;
    let e = err(cfg);
    assert!(e.to_string().contains("2 malformed lines skipped"), "{e}");
    // A directory with no matching files.
    std::fs::create_dir_all(d.join("nothing")).unwrap();
    assert!(matches!(
        err(one_source(d.join("nothing"), SourceFormat::Text)),
        DataError::EmptySource { .. }
    ));
}

#[test]
fn missing_files_are_errors() {
    let e = err(one_source(
        "/nonexistent/math.jsonl".into(),
        SourceFormat::Auto,
    ));
    assert!(matches!(e, DataError::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/math.jsonl"));
    let d = tmp_dir("missingtok");
    let p = write(&d, "a.jsonl", "{\"text\": \"the cat\"}\n");
    let mut cfg = one_source(p, SourceFormat::Auto);
    cfg.tokenizer = d.join("no-tokenizer.json");
    let e = err(cfg);
    assert!(matches!(e, DataError::MissingTokenizer { .. }), "{e}");
    assert!(
        e.to_string().starts_with("tokenizer "),
        "not a data source: {e}"
    );
    let mut cfg = one_source(d.join("a.jsonl"), SourceFormat::Auto);
    cfg.tokenizer = write(&d, "garbage.json", "{not a tokenizer");
    assert!(matches!(err(cfg), DataError::Tokenizer { .. }));
}

#[test]
fn tokenizer_mismatches_are_errors() {
    let d = tmp_dir("mismatch");
    let p = write(&d, "a.jsonl", "{\"text\": \"the cat\"}\n");
    let mut cfg = one_source(p.clone(), SourceFormat::Auto);
    cfg.eos_token = Some("<|eot_id|>".into());
    let e = err(cfg);
    assert!(matches!(e, DataError::TokenizerMismatch(_)), "{e}");
    assert!(
        e.to_string().contains("\"<|eot_id|>\" is not a token"),
        "{e}"
    );
    let mut cfg = one_source(p.clone(), SourceFormat::Auto);
    cfg.pad_token = Some("[PAD]".into());
    assert!(err(cfg).to_string().contains("pad_token"));
    // ChatML needs <|im_end|>, which the OLMoE vocabulary does not have.
    let mut cfg = one_source(p, SourceFormat::Auto);
    cfg.tokenizer = olmoe_tokenizer();
    cfg.chat_template = ChatTemplateKind::Chatml;
    let e = err(cfg);
    assert!(e.to_string().contains("<|im_end|>"), "{e}");
}

#[test]
fn inconsistent_configs_are_errors() {
    let d = tmp_dir("cfg");
    let p = write(&d, "a.jsonl", "{\"text\": \"the cat\"}\n");
    let base = one_source(p.clone(), SourceFormat::Auto);
    let mut c = base.clone();
    c.seq_len = 1;
    assert!(matches!(err(c), DataError::Config(_)));
    let mut c = base.clone();
    c.sources[0].weight = 0.0;
    assert!(matches!(err(c), DataError::Config(_)));
    let mut c = base.clone();
    c.validation_fraction = 1.0;
    assert!(matches!(err(c), DataError::Config(_)));
    let mut c = base.clone();
    c.sources.clear();
    assert!(matches!(err(c), DataError::Config(_)));
    let mut c = base;
    c.sources[0].path = d.clone(); // a directory as JSONL
    assert!(matches!(err(c), DataError::Config(_)));
}

#[test]
fn recipe_toml_round_trip_and_unknown_fields() {
    let toml_src = r#"
        tokenizer = "data/samples/tokenizers/olmoe/tokenizer.json"
        seq_len = 1024
        batch_size = 8
        mode = "sft"
        packing = "padded"
        seed = 17
        validation_fraction = 0.05
        on_bad_line = "skip"
        chat_template = "tulu"

        [[sources]]
        path = "data/samples/math/math_train.jsonl"
        domain = "math"
        weight = 2.0

        [[sources]]
        path = "data/samples/law/esft_train_law.jsonl"
        format = "chat"
        domain = "law"
    "#;
    let cfg: DataConfig = toml::from_str(toml_src).unwrap();
    assert_eq!(cfg.sources.len(), 2);
    assert_eq!(cfg.sources[1].weight, 1.0);
    assert!(cfg.shuffle && cfg.add_eos);
    let back: DataConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let mut cfg = cfg;
    cfg.resolve_paths(&root());
    Pipeline::new(cfg).unwrap();
    let typo = toml_src.replace("seq_len", "seq_lenght");
    let e = toml::from_str::<DataConfig>(&typo).unwrap_err().to_string();
    assert!(e.contains("seq_lenght"), "{e}");
    let typo = toml_src.replace("weight = 2.0", "wieght = 2.0");
    assert!(toml::from_str::<DataConfig>(&typo).is_err());
}

#[test]
fn corrupted_state_is_rejected_not_panicking() {
    let mut p = Pipeline::new(one_source(
        write(
            &tmp_dir("state"),
            "a.jsonl",
            "{\"text\": \"the cat\"}\n{\"text\": \"a dog\"}\n",
        ),
        SourceFormat::Auto,
    ))
    .unwrap();
    let mut st = p.state();
    st.cursors[0].position = 99;
    assert!(matches!(p.restore(&st), Err(DataError::StateMismatch(_))));
    let mut st = p.state();
    st.cursors.push(Default::default());
    assert!(p.restore(&st).is_err());
    let mut st = p.state();
    st.version = 99;
    assert!(p.restore(&st).is_err());
}
