//! Gradient bookkeeping Burn's optimiser leaves to the trainer: which parameter is which module
//! path (for freezing), the global gradient norm, and clipping by it (PyTorch's
//! `clip_grad_norm_`, not Burn's per-tensor clipping).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Every float parameter's module path (dot-joined) and id, in module order.
#[derive(Debug, Clone, Default)]
pub struct ParamPaths {
    entries: Vec<ParamEntry>,
    stack: Vec<String>,
}

/// One float parameter.
#[derive(Debug, Clone)]
pub struct ParamEntry {
    /// Dot-joined module path.
    pub path: String,
    /// Its id (what optimiser state and gradients are keyed by).
    pub id: ParamId,
    /// Number of values.
    pub numel: usize,
    /// Tensor rank.
    pub rank: usize,
    /// Whether it takes gradients (LoRA freezes the base).
    pub trainable: bool,
}

impl ParamPaths {
    /// Walks `module`.
    pub fn of<M: Module>(module: &M) -> Self {
        let mut paths = ParamPaths::default();
        module.visit(&mut paths);
        paths
    }

    /// Each parameter.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of parameter values.
    pub fn num_params(&self) -> usize {
        self.entries.iter().map(|e| e.numel).sum()
    }

    /// Ids of parameters whose path starts with one of `prefixes` (a prefix matches whole path
    /// segments: `layers.1` matches `layers.1.mlp…` but not `layers.10…`).
    pub fn matching(&self, prefixes: &[String]) -> Vec<ParamId> {
        self.entries
            .iter()
            .filter(|e| prefixes.iter().any(|p| segment_prefix(&e.path, p)))
            .map(|e| e.id)
            .collect()
    }

    /// Prefixes that match no parameter (a typo in `optimizer.freeze`).
    pub fn unmatched<'a>(&self, prefixes: &'a [String]) -> Vec<&'a str> {
        prefixes
            .iter()
            .filter(|p| !self.entries.iter().any(|e| segment_prefix(&e.path, p)))
            .map(String::as_str)
            .collect()
    }
}

fn segment_prefix(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl ModuleVisitor for ParamPaths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.entries.push(ParamEntry {
            path: self.stack.join("."),
            id: param.id,
            numel: param.base().shape().num_elements(),
            trainable: param.base().is_require_grad(),
            rank: D,
        });
    }
}

/// Operations over the gradients of one optimiser step.
pub struct GradientTools<'a> {
    paths: &'a ParamPaths,
}

/// Runs `$body` with `$d` bound to the parameter's rank as a const (gradients are typed by rank).
macro_rules! with_rank {
    ($rank:expr, $d:ident => $body:block) => {
        match $rank {
            1 => {
                const $d: usize = 1;
                $body
            }
            2 => {
                const $d: usize = 2;
                $body
            }
            3 => {
                const $d: usize = 3;
                $body
            }
            4 => {
                const $d: usize = 4;
                $body
            }
            r => unreachable!("the model has no rank-{r} parameters"),
        }
    };
}

impl<'a> GradientTools<'a> {
    /// Tools for the parameters in `paths`.
    pub fn new(paths: &'a ParamPaths) -> Self {
        Self { paths }
    }

    /// Drops the gradients of `frozen` parameters so the optimiser leaves them (and their
    /// weight decay) untouched.
    pub fn drop_frozen(&self, grads: &mut GradientsParams, frozen: &[ParamId]) {
        for e in self
            .paths
            .entries()
            .iter()
            .filter(|e| frozen.contains(&e.id))
        {
            with_rank!(e.rank, D => {
                let _ = grads.remove::<D>(e.id);
            });
        }
    }

    /// The global L2 norm of all gradients, summed on the device (one value read back).
    pub fn global_norm(&self, grads: &GradientsParams) -> f64 {
        let mut total: Option<Tensor<1>> = None;
        for e in self.paths.entries() {
            let sq = with_rank!(e.rank, D => {
                grads.get::<D>(e.id).map(|g| g.square().sum())
            });
            if let Some(sq) = sq {
                total = Some(match total {
                    Some(t) => t + sq,
                    None => sq,
                });
            }
        }
        total.map_or(0.0, |t| f64::from(t.into_scalar::<f32>()).sqrt())
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&self, grads: &mut GradientsParams, factor: f64) {
        for e in self.paths.entries() {
            with_rank!(e.rank, D => {
                if let Some(g) = grads.remove::<D>(e.id) {
                    grads.register(e.id, g.mul_scalar(factor));
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use seqtopk_model::{MoeTransformer, MoeTransformerConfig};

    #[test]
    fn paths_name_modules_and_prefixes_match_whole_segments() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../checkpoints/fixtures/olmoe-tiny"
        );
        let config = MoeTransformerConfig::from_file(format!("{dir}/config.json")).unwrap();
        let model = MoeTransformer::init(&config, 0, &Device::flex()).unwrap();
        let paths = ParamPaths::of(&model);
        let names: Vec<&str> = paths.entries().iter().map(|e| e.path.as_str()).collect();
        eprintln!("{names:?}");
        assert!(names.contains(&"embed_tokens.weight"), "{names:?}");
        assert_eq!(paths.num_params(), model.num_params());
        let attn = paths.matching(&["layers.0.self_attn".into()]);
        assert!(!attn.is_empty());
        assert!(paths.matching(&["layers.0.self_at".into()]).is_empty());
        assert_eq!(
            paths.unmatched(&["layers.9".into(), "norm".into()]),
            vec!["layers.9"]
        );
    }
}
