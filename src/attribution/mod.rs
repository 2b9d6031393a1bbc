//! Token attribution: how much each context token contributed to a target token.
//!
//! Submodules, one per engine: `autograd` (saliency, input×gradient, integrated gradients
//! through ntv's own forward and backward passes over the GGUF's own weights, expanded to
//! f32 a tile at a time; the transformer block's passes are in `block`),
//! with `legendre` (Gauss–Legendre quadrature for integrated gradients) and `error`.
//! `attention` and `occlusion` run through llama.cpp; `runner` puts the engines behind one
//! entry point ([`Attributor`]).

pub mod attention;
pub mod autograd;
mod block;
pub mod error;
pub mod legendre;
pub mod occlusion;
pub mod request;
pub mod runner;
pub mod watch;

pub use autograd::{
    Agg, AutogradModel, Baseline, GradAttribution, GradMethod, SUPPORTED_ARCHITECTURES,
    SharedForward, TargetFn, attribute, next_token_logits,
};
pub use error::AttributionError;
pub use runner::{Attributor, BaselineChoice, Engine, Method, Options, Outcome, Target};
pub use watch::Watch;
