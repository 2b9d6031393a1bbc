//! Integration tests: the built `ntv` binary against the real test model
//! (SmolLM2-135M-Instruct Q4_1). Each test process runs llama.cpp with one thread, so the
//! default two test threads share the two cores without oversubscribing them.

mod util;

mod attribute;
mod attribution_llama;
mod autograd;
mod branch;
mod chat_templates;
mod constrained;
mod constraint;
mod docs;
mod engine;
mod errors;
mod generate;
mod golden;
mod hostile;
mod html;
mod hub;
mod kvcache;
mod lens;
mod occlusion_window;
mod oneshot;
mod prefix_cache;
mod preview;
mod readme;
mod regress;
mod samplers;
mod second_arch;
mod serve;
mod serve_browser;
mod session_file;
mod shard;
mod step;
mod sweep;
mod trace;
mod tui;
mod workbench;
