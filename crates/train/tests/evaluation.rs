//! Held-out evaluation gives every domain of the recipe its own loss.

use seqtopk_train::{DEFAULT_RECIPE, Recipe, Trainer};

#[test]
fn every_domain_gets_its_held_out_loss_from_its_own_batches() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let samples = format!("{root}/data/samples");
    let overrides = vec![
        format!("data.tokenizer=\"{samples}/tokenizers/olmoe/tokenizer.json\""),
        format!(
            "data.sources=[{{path=\"{samples}/math/math_train.jsonl\", format=\"prompt_completion\", \
             domain=\"math\"}}, {{path=\"{samples}/writing/austen.jsonl\", format=\"text_jsonl\", \
             domain=\"writing\"}}]"
        ),
        "train.eval_batches=1".into(),
    ];
    let recipe = Recipe::parse(DEFAULT_RECIPE, "default", &overrides).unwrap();
    let rows_per_batch = recipe.batch.micro_batch_size * recipe.data.seq_len;
    let trainer = Trainer::new(recipe).unwrap();
    let eval = trainer.evaluate().unwrap();
    let domains: Vec<&str> = eval.iter().map(|(d, _, _)| d.as_str()).collect();
    // The math source alone has more than one validation batch: writing must still be scored.
    assert_eq!(domains, ["math", "writing"]);
    for (domain, loss, targets) in &eval {
        assert!(loss.is_finite() && *loss > 0.0, "{domain}: {loss}");
        // One batch per domain, plus the batch where the math rows end and the writing rows
        // begin, which counts for both.
        assert!(
            *targets > 0 && *targets <= 2 * rows_per_batch,
            "{domain}: {targets} targets from at most two batches of {rows_per_batch} slots"
        );
    }
}
