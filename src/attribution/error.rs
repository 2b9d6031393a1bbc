//! Errors of the attribution engines.

use std::path::PathBuf;

/// Why an attribution could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error(
        "the gradient methods (saliency, input_x_gradient, integrated_gradients) do not support the `{arch}` architecture (supported: {supported}); use `attention` or `occlusion`, which work for every architecture llama.cpp runs"
    )]
    UnsupportedArchitecture { arch: String, supported: String },
    #[error("GGUF model {path}: {message}")]
    BadModel { path: PathBuf, message: String },
    #[error("{0}")]
    BadInput(String),
    #[error(
        "the model produced non-finite numbers (NaN or infinity) attributing token {id} after {context_len} tokens"
    )]
    NonFinite { id: i32, context_len: usize },
    #[error("the attribution was cancelled")]
    Cancelled,
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

impl AttributionError {
    /// True when the user's input was at fault (exit code 2).
    pub fn is_input(&self) -> bool {
        match self {
            Self::UnsupportedArchitecture { .. } | Self::BadInput(_) | Self::Gguf { .. } => true,
            Self::Engine(e) => e.is_input(),
            Self::Io { .. } | Self::BadModel { .. } | Self::Cancelled | Self::NonFinite { .. } => {
                false
            }
        }
    }

    /// How to fix it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::UnsupportedArchitecture { .. } => {
                Some("pass --method attention or --method occlusion".into())
            }
            Self::NonFinite { .. } => Some(
                "the model file's weights or this back end produce invalid numbers: try another model file, or the CPU back end".into(),
            ),
            Self::Engine(e) => e.hint(),
            _ => None,
        }
    }
}

impl crate::error::Diagnose for AttributionError {
    fn is_input(&self) -> bool {
        AttributionError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        AttributionError::hint(self)
    }
}
