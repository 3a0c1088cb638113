//! Refusing weights that hold NaN or ±Inf.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use seqtopk_model::MoeTransformer;

use crate::CheckpointError;

/// Finds the first float parameter holding NaN or ±Inf, by module path.
#[derive(Default)]
struct NonFinite {
    path: Vec<String>,
    found: Option<(String, u64)>,
    unreadable: Option<String>,
}

impl ModuleVisitor for NonFinite {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.found.is_some() || self.unreadable.is_some() {
            return;
        }
        // Counted on the device: one scalar comes back per parameter, not the weights.
        let bad = param
            .val()
            .is_finite()
            .bool_not()
            .int()
            .sum()
            .try_into_scalar::<i64>();
        match bad {
            Ok(0) => {}
            Ok(n) => self.found = Some((self.path.join("."), n as u64)),
            Err(e) => self.unreadable = Some(format!("{}: {e:?}", self.path.join("."))),
        }
    }
}

/// Refuses a model with a NaN or infinite weight, naming the tensor: such a model evaluates to
/// `null` losses and generates token 0 forever instead of failing.
pub fn check_finite(model: &MoeTransformer, dir: &Path) -> Result<(), CheckpointError> {
    let mut visitor = NonFinite::default();
    model.visit(&mut visitor);
    if let Some((key, count)) = visitor.found {
        return Err(CheckpointError::NonFinite {
            path: dir.to_path_buf(),
            key,
            count,
        });
    }
    if let Some(message) = visitor.unreadable {
        return Err(CheckpointError::Tensor {
            key: message,
            message: "reading the non-finite count back failed".into(),
        });
    }
    Ok(())
}
