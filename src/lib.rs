//! ntv: see what a language model does at each generation step.
//!
//! Crate map: `cli` (clap definitions) → `app` (parse, read the terminal, dispatch, exit
//! status) → `commands` (the CLI front-end: resolve, call the core, render) → `workbench` (the
//! application core: model, driver, KV and prefix cache, constraint, session; the one step
//! loop) over `settings` (flags + environment + session + terminal → one struct), `engine`
//! (the only llama.cpp code), `sampling` (pure maths), `session` (the state file), `chat`
//! (prompt templates), `serve` (the HTTP front-end), `driver` (one step), `record` (JSON shapes), `render` (writers and the
//! one emitter), `batch` (batch files) and `error` (the leaf every error maps into).
//!
//! Public modules are the ones the binary, the integration tests and the benchmarks use; the
//! rest is crate-private, so an unused item is a warning.
#![deny(unsafe_code)]

pub mod app;
pub mod attribution;
pub(crate) mod batch;
pub mod chat;
pub(crate) mod cli;
pub(crate) mod commands;
pub mod constraint;
pub mod docs;
pub mod driver;
#[allow(unsafe_code)]
pub mod engine;
pub mod error;
pub(crate) mod fsutil;
#[cfg(test)]
pub(crate) mod fuzz;
pub(crate) mod hub;
pub(crate) mod interrupt;
pub mod kvcache;
pub mod limits;
pub mod models;
pub mod record;
pub(crate) mod render;
pub mod sampling;
pub(crate) mod serve;
pub mod session;
pub mod settings;
pub mod trace;
pub mod tui;
pub mod workbench;
