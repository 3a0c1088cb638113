//! Shared by the trainer's integration tests: the default recipe shrunk to a fraction of a
//! second per step, stepping, and reading the weights back.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor};
use seqtopk_train::{DEFAULT_RECIPE, Recipe, StepMetrics, Trainer};

pub fn repo_root() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../..").to_owned()
}

/// The default recipe shrunk to a fraction of a second per step, data paths made absolute.
pub fn recipe(backend: &str, extra: &[String]) -> Recipe {
    let root = repo_root();
    let mut overrides: Vec<String> = vec![
        format!("backend=\"{backend}\""),
        format!("data.tokenizer=\"{root}/data/samples/tokenizers/olmoe/tokenizer.json\""),
        format!(
            "data.sources=[{{path=\"{root}/data/samples/math/math_train.jsonl\", \
             format=\"prompt_completion\", domain=\"math\"}}]"
        ),
        "data.seq_len=32".into(),
        "batch.micro_batch_size=2".into(),
        // Two micro-batches per step: each pass casts the model afresh.
        "batch.grad_accum_steps=2".into(),
        "train.steps=3".into(),
        "schedule.warmup_steps=0".into(),
    ];
    overrides.extend_from_slice(extra);
    Recipe::parse(DEFAULT_RECIPE, "test", &overrides).unwrap()
}

pub fn steps(trainer: &mut Trainer, n: usize) -> Vec<StepMetrics> {
    (0..n).map(|_| trainer.step_once().unwrap()).collect()
}

/// Every float parameter's dtype and values, in module order.
#[derive(Default)]
pub struct Weights(Vec<(DType, Vec<f32>)>);

impl ModuleVisitor for Weights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let dtype = t.dtype();
        self.0
            .push((dtype, t.into_data().try_into_vec_as::<f32>().unwrap()));
    }
}

pub fn weights(trainer: &Trainer) -> Vec<(DType, Vec<f32>)> {
    let mut w = Weights::default();
    trainer.model().visit(&mut w);
    w.0
}
