//! The only code that talks to llama.cpp (`llama_cpp_2` / `llama_cpp_sys_2`): backend start-up,
//! model loading and facts, tokens, decoding with KV-cache reuse and logits, and the residual
//! stream with the model's own output head (the logit lens). Everything that
//! leaves this module is plain data (`i32` ids, `f32` logits, `String`s).

mod capture;
mod decoder;
mod error;
mod gguf;
mod grammar;
mod lens;
pub(crate) mod linalg;
mod log;
mod model;
mod occlude;
mod quantize;
mod samplers;
mod state;

pub use capture::{AttentionCapture, AttentionRows};
pub use decoder::{ContextOptions, Decoder};
pub use error::EngineError;
pub use gguf::{QMatrix, WeightFile};
pub use lens::{HeadInput, LensHead, ResidualCapture, Residuals, lens_architectures};
pub use log::set_verbose;
pub use model::{LoadOptions, Model, ModelInfo, ProgressFn};
pub use occlude::{LeaveOneOut, Occluder, spans as occlusion_spans, spans_cost as occlusion_cost};
pub use quantize::{QUANT_TYPES, quantize};
pub use samplers::{LlamaChain, LlamaChainResult};

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

/// The process-wide llama.cpp backend, started on first use (logs routed first, so nothing
/// reaches stderr unless `--verbose` asked for it).
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    // llama.cpp allows one backend per process: serialise the first start (two threads of a
    // test binary may load a model at the same moment).
    static START: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    log::install();
    let b = LlamaBackend::init().map_err(|e| EngineError::Backend(e.to_string()))?;
    Ok(BACKEND.get_or_init(|| b))
}

/// Names of the compute devices llama.cpp can use (e.g. "CPU", "CUDA0").
pub fn devices() -> Vec<String> {
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| format!("{} ({})", d.name, d.backend))
        .collect()
}

/// The llama.cpp build this binary links (from llama-cpp-sys-2's vendored copy).
pub fn llama_cpp_version() -> &'static str {
    "llama-cpp-sys-2 0.1.161"
}
