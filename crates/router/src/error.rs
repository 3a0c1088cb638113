//! Errors raised while configuring or running a router.

/// Why a router could not be built or could not route.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoutingError {
    /// A configuration field has an impossible value.
    #[error("router.{field}: {message}")]
    InvalidConfig {
        /// The offending field, as it is spelled in a recipe.
        field: &'static str,
        /// What was wrong and what was expected.
        message: String,
    },
    /// Tensor shapes do not agree with each other or with the layout.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The token layout (padding / document ids) is inconsistent.
    #[error("invalid token layout: {0}")]
    Layout(String),
    /// An operation needs a mode other than the router's.
    #[error("{operation} needs router mode `{expected}`, but the router is `{actual}`")]
    WrongMode {
        /// What was attempted.
        operation: &'static str,
        /// The mode it needs.
        expected: &'static str,
        /// The router's mode.
        actual: String,
    },
    /// Reading router scores back from the device failed.
    #[error("reading router scores back from the device failed: {0}")]
    Readback(String),
}
