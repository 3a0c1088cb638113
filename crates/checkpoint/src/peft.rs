//! LoRA adapters as Hugging Face PEFT writes them, so `PeftModel.from_pretrained` loads ours and
//! we load theirs:
//!
//! ```text
//! adapter/
//!   adapter_config.json          peft_type LORA, r, lora_alpha, target_modules, target_parameters, …
//!   adapter_model.safetensors    base_model.model.{module}.lora_A.weight [r·E, in]
//!                                base_model.model.{module}.lora_B.weight [out, r·E]
//!                                base_model.model.{module}.weight        (modules_to_save)
//! ```
//!
//! Stacked experts are PEFT `target_parameters` on `mlp.experts`: when both `gate_up_proj` and
//! `down_proj` are adapted, PEFT nests the wrappers in parameter order, so `gate_up_proj`'s
//! factors are under `mlp.experts.base_layer.` and `down_proj`'s under `mlp.experts.`.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use seqtopk_model::{
    AdapterSite, LoraSpec, ModuleTargets, MoeTransformer, SafetensorsSource, from_peft, to_peft,
};
use serde_json::{Value, json};

use crate::files::{read_json, write_json};
use crate::hf::HfTensor;
use crate::staging::Staging;
use crate::{CheckpointError, StorageDtype};

/// The adapter's configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

const PREFIX: &str = "base_model.model";

/// PEFT's key stem of a site's factors (`….lora_A.weight` follows), given every adapted site.
fn factor_stem(site: &AdapterSite, sites: &[AdapterSite]) -> String {
    if !site.experts {
        return format!("{PREFIX}.{}", site.hf_name);
    }
    let (module, param) = site
        .hf_name
        .rsplit_once('.')
        .unwrap_or(("", site.hf_name.as_str()));
    let down_too = sites
        .iter()
        .any(|s| s.hf_name == format!("{module}.down_proj"));
    if param == "gate_up_proj" && down_too {
        format!("{PREFIX}.{module}.base_layer")
    } else {
        format!("{PREFIX}.{module}")
    }
}

fn read_back(t: burn::tensor::Tensor<3>, what: &str) -> Result<Vec<f32>, CheckpointError> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| CheckpointError::Tensor {
            key: what.to_string(),
            message: format!("reading the adapter back failed: {e:?}"),
        })
}

/// The adapter tensors of `model` under PEFT's keys (factors, then `modules_to_save` weights).
pub fn adapter_tensors(
    model: &MoeTransformer,
    spec: &LoraSpec,
) -> Result<Vec<HfTensor>, CheckpointError> {
    let mut model = model.clone();
    let factors = model.lora_factors();
    let sites: Vec<AdapterSite> = factors.iter().map(|f| f.0.clone()).collect();
    let mut out = Vec::new();
    for (site, a, b, _) in factors {
        let r = a.dims()[2];
        let stem = factor_stem(&site, &sites);
        let (pa, pb) = to_peft(&site, r, &read_back(a, &stem)?, &read_back(b, &stem)?);
        out.push(HfTensor {
            key: format!("{stem}.lora_A.weight"),
            shape: vec![r * site.num, site.d_in],
            values: pa,
        });
        out.push(HfTensor {
            key: format!("{stem}.lora_B.weight"),
            shape: vec![site.d_out, r * site.num],
            values: pb,
        });
    }
    for (path, shape, w) in model.saved_modules(&spec.modules_to_save) {
        let key = format!("{PREFIX}.{path}.weight");
        let values =
            w.into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| CheckpointError::Tensor {
                    key: key.clone(),
                    message: format!("reading the weight back failed: {e:?}"),
                })?;
        out.push(HfTensor { key, shape, values });
    }
    Ok(out)
}

/// `adapter_config.json` for `spec`.
pub fn adapter_config(spec: &LoraSpec, base_model: &str) -> Value {
    let list = |names: &[String]| match names.is_empty() {
        true => Value::Null,
        false => json!(names),
    };
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "use_rslora": spec.use_rslora,
        "use_dora": false,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "target_modules": spec.target_modules,
        "target_parameters": list(&spec.target_parameters),
        "rank_pattern": spec.rank_pattern.iter().map(|(k, r)| (k.clone(), json!(r))).collect::<serde_json::Map<_, _>>(),
        "alpha_pattern": spec.alpha_pattern.iter().map(|(k, a)| (k.clone(), json!(a))).collect::<serde_json::Map<_, _>>(),
        "modules_to_save": list(&spec.modules_to_save),
        "revision": null,
        "library": "seqtopk",
    })
}

/// Writes `model`'s adapters (see the module docs) to `out`, atomically.
pub fn save_adapter(
    model: &MoeTransformer,
    spec: &LoraSpec,
    base_model: &str,
    out: &Path,
    force: bool,
) -> Result<(), CheckpointError> {
    let staging = Staging::new(out, force)?;
    let tensors = adapter_tensors(model, spec)?;
    let encoded: Vec<(&HfTensor, Vec<u8>)> = tensors
        .iter()
        .map(|t| (t, StorageDtype::F32.encode(&t.values)))
        .collect();
    let mut views = Vec::with_capacity(encoded.len());
    for (t, bytes) in &encoded {
        let view =
            TensorView::new(safetensors::Dtype::F32, t.shape.clone(), bytes).map_err(|e| {
                CheckpointError::Tensor {
                    key: t.key.clone(),
                    message: format!("shape {:?} does not match its data: {e}", t.shape),
                }
            })?;
        views.push((t.key.clone(), view));
    }
    let path = staging.dir().join(ADAPTER_WEIGHTS);
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), &path).map_err(|e| {
        CheckpointError::Output {
            path: path.clone(),
            message: format!("writing safetensors failed: {e}"),
        }
    })?;
    write_json(
        &staging.dir().join(ADAPTER_CONFIG),
        &adapter_config(spec, base_model),
    )?;
    staging.publish()
}

fn config_error(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Names from a config field that is a list of strings, absent or null.
fn names(config: &Value, field: &str, path: &Path) -> Result<Vec<String>, CheckpointError> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    config_error(path, format!("`{field}` must be a list of module names"))
                })
            })
            .collect(),
        Some(other) => Err(config_error(
            path,
            format!("`{field}` must be a list of module names, not {other}"),
        )),
    }
}

/// PEFT settings whose weights would mean something else here, with why each is refused: a
/// setting is accepted when absent, `null` or equal to the JSON value given.
const UNSUPPORTED: [(&str, Option<&str>, &str); 4] = [
    ("use_dora", Some("false"), "DoRA adapters are not supported"),
    (
        "bias",
        Some("\"none\""),
        "adapters with biases are not supported",
    ),
    (
        "fan_in_fan_out",
        Some("false"),
        "only nn.Linear-style (fan_in_fan_out = false) weights are supported",
    ),
    (
        "layers_to_transform",
        None,
        "layer selection is not supported; list the modules instead",
    ),
];

/// Refuses a non-LoRA `peft_type` and the [`UNSUPPORTED`] settings, naming the file.
fn refuse_unsupported(config: &Value, path: &Path) -> Result<(), CheckpointError> {
    let field = |name: &str| config.get(name).filter(|v| !v.is_null());
    if field("peft_type").and_then(Value::as_str) != Some("LORA") {
        let found = field("peft_type").and_then(Value::as_str);
        return Err(config_error(
            path,
            format!("`peft_type` is {found:?}; only LORA adapters are supported"),
        ));
    }
    for (name, accepted, why) in UNSUPPORTED {
        if let Some(v) = field(name)
            && accepted.is_none_or(|a| serde_json::from_str::<Value>(a).ok().as_ref() != Some(v))
        {
            return Err(config_error(path, format!("`{name}` = {v}: {why}")));
        }
    }
    Ok(())
}

/// Reads an adapter's `adapter_config.json` as a [`LoraSpec`], refusing PEFT features whose
/// weights would mean something else here (DoRA, biases, …).
pub fn read_adapter_spec(dir: &Path) -> Result<LoraSpec, CheckpointError> {
    let path = dir.join(ADAPTER_CONFIG);
    if !path.is_file() {
        return Err(config_error(
            &path,
            "missing: an adapter directory holds adapter_config.json and adapter_model.safetensors",
        ));
    }
    let config = read_json(&path)?;
    let field = |name: &str| config.get(name).filter(|v| !v.is_null());
    refuse_unsupported(&config, &path)?;
    let rank = field("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| config_error(&path, "`r` must be a positive integer"))?
        as usize;
    let alpha = field("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| config_error(&path, "`lora_alpha` must be a number"))?;
    let target_modules = match config.get("target_modules") {
        Some(Value::String(pattern)) => ModuleTargets::Pattern(pattern.clone()),
        _ => ModuleTargets::Names(names(&config, "target_modules", &path)?),
    };
    let target_parameters = names(&config, "target_parameters", &path)?;
    let pattern = |name: &str| -> Result<Vec<(String, f64)>, CheckpointError> {
        match field(name) {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    v.as_f64().map(|x| (k.clone(), x)).ok_or_else(|| {
                        config_error(&path, format!("`{name}` maps {k:?} to {v}, not a number"))
                    })
                })
                .collect(),
            Some(other) => Err(config_error(
                &path,
                format!("`{name}` must map module patterns to numbers, not {other}"),
            )),
        }
    };
    Ok(LoraSpec {
        rank,
        alpha,
        use_rslora: field("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        target_modules,
        target_parameters,
        modules_to_save: names(&config, "modules_to_save", &path)?,
        rank_pattern: pattern("rank_pattern")?
            .into_iter()
            .map(|(k, r)| (k, r as usize))
            .collect(),
        alpha_pattern: pattern("alpha_pattern")?,
        // Training-only: loading an adapter for inference never applies it.
        dropout: field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
    })
}

/// `model` with the adapter of `dir` attached (base frozen, factors and `modules_to_save`
/// trainable). Every tensor of the file must be used and every adapted module must be in it.
pub fn load_adapter(
    model: MoeTransformer,
    dir: &Path,
) -> Result<(MoeTransformer, LoraSpec), CheckpointError> {
    let spec = read_adapter_spec(dir)?;
    let weights: PathBuf = dir.join(ADAPTER_WEIGHTS);
    if !weights.is_file() {
        return Err(CheckpointError::Config {
            path: weights,
            message: "missing: the adapter's weights".into(),
        });
    }
    let load = |e: seqtopk_model::LoadError| CheckpointError::Load {
        path: weights.clone(),
        source: e,
    };
    let source = SafetensorsSource::open_files(std::slice::from_ref(&weights)).map_err(load)?;
    let mut used: Vec<String> = Vec::new();
    let (sites, _) = model
        .lora_sites(&spec)
        .map_err(|e| config_error(&dir.join(ADAPTER_CONFIG), e.to_string()))?;
    let tensor = |key: String, shape: Vec<usize>, used: &mut Vec<String>| {
        let t = source
            .read_any(&key)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("`{key}` is missing from {}", weights.display()))?;
        if t.shape != shape {
            return Err(format!(
                "`{key}` has shape {:?}, this model needs {shape:?}",
                t.shape
            ));
        }
        used.push(key);
        Ok(t.values)
    };
    let (mut model, _) = model
        .with_lora_values(&spec, &mut |site, r| {
            let stem = factor_stem(site, &sites);
            let pa = tensor(
                format!("{stem}.lora_A.weight"),
                vec![r * site.num, site.d_in],
                &mut used,
            )
            .map_err(seqtopk_model::ModelError::Input)?;
            let pb = tensor(
                format!("{stem}.lora_B.weight"),
                vec![site.d_out, r * site.num],
                &mut used,
            )
            .map_err(seqtopk_model::ModelError::Input)?;
            Ok(from_peft(site, r, &pa, &pb))
        })
        .map_err(|e| config_error(&weights, e.to_string()))?;
    for (path, shape, _) in model.clone().saved_modules(&spec.modules_to_save) {
        let key = format!("{PREFIX}.{path}.weight");
        let values =
            tensor(key, shape.clone(), &mut used).map_err(|m| config_error(&weights, m))?;
        model
            .set_saved_module(&path, &shape, values)
            .map_err(|e| config_error(&weights, e.to_string()))?;
    }
    let unused: Vec<String> = source
        .keys()
        .into_iter()
        .filter(|k| !used.contains(k))
        .collect();
    if let Some(first) = unused.first() {
        return Err(config_error(
            &weights,
            format!(
                "{} tensors belong to no adapted module of this model (first: `{first}`): the \
                 adapter was made for another model or its config does not list them",
                unused.len()
            ),
        ));
    }
    Ok((model, spec))
}
