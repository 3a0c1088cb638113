//! Held-out evaluation gives every domain of the recipe its own loss.

use seqtopk_train::{DEFAULT_RECIPE, Recipe, Trainer};

/// The default recipe on the committed samples, math alone or math and writing, one validation
/// batch per domain, plus `extra` overrides.
fn sample_recipe(with_writing: bool, extra: &[&str]) -> Recipe {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let samples = format!("{root}/data/samples");
    let math = format!(
        "{{path=\"{samples}/math/math_train.jsonl\", format=\"prompt_completion\", domain=\"math\"}}"
    );
    let writing = format!(
        ", {{path=\"{samples}/writing/austen.jsonl\", format=\"text_jsonl\", domain=\"writing\"}}"
    );
    let sources = if with_writing { writing } else { String::new() };
    let mut overrides = vec![
        format!("data.tokenizer=\"{samples}/tokenizers/olmoe/tokenizer.json\""),
        format!("data.sources=[{math}{sources}]"),
        "train.eval_batches=1".into(),
    ];
    overrides.extend(extra.iter().map(|e| e.to_string()));
    Recipe::parse(DEFAULT_RECIPE, "default", &overrides).unwrap()
}

#[test]
fn every_domain_gets_its_held_out_loss_from_its_own_batches() {
    let recipe = sample_recipe(true, &[]);
    let rows_per_batch = recipe.batch.micro_batch_size * recipe.data.seq_len;
    let trainer = Trainer::new(recipe).unwrap();
    let eval = trainer.evaluate().unwrap();
    let domains: Vec<&str> = eval.iter().map(|d| d.domain.as_str()).collect();
    // The math source alone has more than one validation batch: writing must still be scored.
    assert_eq!(domains, ["math", "writing"]);
    for seqtopk_train::DomainEval {
        domain,
        loss,
        tokens: targets,
        experts_per_token,
        at_floor,
        at_cap,
    } in &eval
    {
        assert!(loss.is_finite() && *loss > 0.0, "{domain}: {loss}");
        // One batch per domain, plus the batch where the math rows end and the writing rows
        // begin, which counts for both.
        assert!(
            *targets > 0 && *targets <= 2 * rows_per_batch,
            "{domain}: {targets} targets from at most two batches of {rows_per_batch} slots"
        );
        // The recipe routes with SeqTopK at K = 2: each document spends T·K pairs (plus the
        // tokens rescued by the floor), unevenly: some tokens keep one expert, some get K + 2.
        let mean = experts_per_token.unwrap();
        assert!((2.0..2.5).contains(&mean), "{domain}: {mean} experts/token");
        let (floor, cap) = (at_floor.unwrap(), at_cap.unwrap());
        assert!(
            floor > 0.0 && cap > 0.0 && floor + cap < 1.0,
            "{domain}: {floor} {cap}"
        );
    }
}

#[test]
fn topk_gives_every_held_out_token_exactly_k_experts() {
    let recipe = sample_recipe(false, &["router.mode=\"topk\""]);
    let eval = Trainer::new(recipe).unwrap().evaluate().unwrap();
    assert_eq!(eval.len(), 1);
    assert_eq!(eval[0].experts_per_token, Some(2.0));
}
