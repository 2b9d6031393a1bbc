//! ntv: see what a language model does at each generation step.
//!
//! Crate map: `cli` (clap definitions) → `app` (parse, dispatch, exit status) → `commands`
//! (one file per subcommand, glue only) over `settings` (CLI + session → parameters), `engine`
//! (the only llama.cpp code), `sampling` (pure maths), `session` (the state file), `chat`
//! (prompt templates), `driver` (steps), `record` (JSON shapes) and `render` (writers).
#![deny(unsafe_code)]

pub mod app;
pub mod attribution;
pub mod chat;
pub mod cli;
pub mod commands;
pub mod constraint;
pub mod docs;
pub mod driver;
#[allow(unsafe_code)]
pub mod engine;
pub mod fsutil;
pub mod kvcache;
pub mod models;
pub mod record;
pub mod render;
pub mod sampling;
pub mod session;
pub mod settings;
pub mod trace;
