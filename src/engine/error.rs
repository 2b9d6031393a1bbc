//! Errors of the engine, with the fix a user can apply.

use std::path::PathBuf;

/// Something llama.cpp or the model file did not allow.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file {0} does not exist")]
    NotFound(PathBuf),
    #[error("{path} is not a GGUF file (its first bytes are not \"GGUF\")")]
    NotGguf { path: PathBuf },
    #[error("{path} is not a readable GGUF model: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("llama.cpp cannot load architecture '{arch}' from {path}: {detail}")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        detail: String,
    },
    #[error("the logit lens does not know architecture '{arch}' (it knows {supported})")]
    LensArchitecture { arch: String, supported: String },
    #[error("could not read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start the llama.cpp backend: {0}")]
    Backend(String),
    #[error("could not create a llama.cpp context: {0}")]
    Context(String),
    #[error("the context holds {n_ctx} tokens but {needed} are needed")]
    ContextFull {
        needed: usize,
        n_ctx: usize,
        /// The model's trained context: the most `-c` can give.
        trained: usize,
    },
    #[error("llama.cpp failed to decode: {0}")]
    Decode(String),
    #[error("token id {id} is outside the vocabulary (0..{n_vocab})")]
    TokenOutOfRange { id: i64, n_vocab: usize },
    #[error("nothing to decode: the context is empty")]
    EmptyContext,
}

impl EngineError {
    /// How to fix it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NotFound(_) => {
                "check the path, or run without -m to use the default model (downloaded on first use)"
                    .into()
            }
            Self::NotGguf { .. } | Self::Corrupt { .. } => {
                "ntv reads GGUF files (llama.cpp's format); re-download the file or convert the model with llama.cpp's convert_hf_to_gguf.py".into()
            }
            Self::UnsupportedArchitecture { .. } => {
                "this llama.cpp build does not know the architecture; use a model llama.cpp supports or a newer ntv".into()
            }
            Self::LensArchitecture { .. } => {
                "the lens recomputes the model's final norm and output head from the GGUF, so it needs an architecture whose head ntv knows; preview, generate and attribute still work on this model".into()
            }
            Self::ContextFull {
                needed, trained, ..
            } if needed <= trained => format!(
                "raise the context with -c/--ctx-size {} (the model allows up to {trained}), or shorten the prompt",
                needed.next_power_of_two().max(512).min(*trained)
            ),
            Self::ContextFull { trained, .. } => format!(
                "shorten the prompt (or ask for fewer tokens): this model's context holds at most {trained} tokens"
            ),
            Self::TokenOutOfRange { .. } => "token ids come from `ntv preview --format json`".into(),
            Self::EmptyContext => "give a prompt with -p/--prompt".into(),
            Self::Decode(_) | Self::Context(_) | Self::Backend(_) => {
                "run with --verbose to see llama.cpp's own messages".into()
            }
            Self::Io { .. } => return None,
        })
    }

    /// True when the user's input was at fault (exit code 2).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_)
                | Self::NotGguf { .. }
                | Self::Corrupt { .. }
                | Self::UnsupportedArchitecture { .. }
                | Self::LensArchitecture { .. }
                | Self::ContextFull { .. }
                | Self::TokenOutOfRange { .. }
                | Self::EmptyContext
        )
    }
}

impl crate::error::Diagnose for EngineError {
    fn is_input(&self) -> bool {
        EngineError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        EngineError::hint(self)
    }
}
