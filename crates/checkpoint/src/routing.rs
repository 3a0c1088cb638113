//! The routing a checkpoint records in its `config.json`, so it survives export and import.

use std::path::Path;

use seqtopk_router::RouterConfig;
use serde_json::Value;

use crate::CheckpointError;

/// `config.json` key holding the routing a checkpoint was trained with, as a recipe's `[router]`
/// section spells it. Hugging Face loaders keep unknown config keys as inert attributes, so the
/// record survives `from_pretrained`/`save_pretrained` and seqtopk's export and import.
pub const ROUTING_KEY: &str = "seqtopk_routing";

/// Records `router` in an HF config (replacing an earlier record).
pub fn record_routing(hf_config: &mut Value, router: &RouterConfig) {
    if let (Value::Object(map), Ok(value)) = (hf_config, serde_json::to_value(router)) {
        map.insert(ROUTING_KEY.to_owned(), value);
    }
}

/// The routing recorded in an HF config, if any; `path` names the file in errors.
pub fn recorded_routing(
    path: &Path,
    hf_config: &Value,
) -> Result<Option<RouterConfig>, CheckpointError> {
    match hf_config.get(ROUTING_KEY) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| CheckpointError::Config {
                path: path.to_path_buf(),
                message: format!("`{ROUTING_KEY}` is not a router configuration: {e}"),
            }),
    }
}
