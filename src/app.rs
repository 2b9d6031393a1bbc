//! Parse, resolve, dispatch; map errors to `error:` / `hint:` lines and an exit status.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands;

/// A problem with the user's input (exit status 2), raised by the command layer.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub message: String,
    pub hint: Option<String>,
}

impl InputError {
    /// An input error with a hint.
    pub fn new(message: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        Self {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Shorthand to fail with an input error.
pub fn input_err(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    InputError::new(message, Some(hint.into())).into()
}

/// Exit status and hint of an error chain: the innermost typed error decides.
fn classify(err: &anyhow::Error) -> (u8, Option<String>) {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<InputError>() {
            return (2, e.hint.clone());
        }
        if let Some(e) = cause.downcast_ref::<crate::engine::EngineError>() {
            return (if e.is_input() { 2 } else { 1 }, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::sampling::SamplingError>() {
            return (if e.is_input() { 2 } else { 1 }, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::session::SessionError>() {
            return (if e.is_input() { 2 } else { 1 }, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::chat::ChatError>() {
            return (if e.is_input() { 2 } else { 1 }, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::constraint::ConstraintError>() {
            return (if e.is_input() { 2 } else { 1 }, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::trace::TraceError>() {
            return (if e.is_input() { 2 } else { 1 }, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::attribution::AttributionError>() {
            return (if e.is_input() { 2 } else { 1 }, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::commands::check::Regression>() {
            return (1, Some(e.hint()));
        }
        if let Some(e) = cause.downcast_ref::<crate::models::FetchError>() {
            return (1, e.hint());
        }
        if let Some(e) = cause.downcast_ref::<crate::driver::StepError>() {
            return match e {
                crate::driver::StepError::Engine(e) => (if e.is_input() { 2 } else { 1 }, e.hint()),
                crate::driver::StepError::Sampling(e) => {
                    (if e.is_input() { 2 } else { 1 }, e.hint())
                }
                crate::driver::StepError::Constraint(e) => {
                    (if e.is_input() { 2 } else { 1 }, e.hint())
                }
            };
        }
    }
    (1, None)
}

/// The error and its causes on one line (a cause already in the text is not repeated).
pub fn message(err: &anyhow::Error) -> String {
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Run the program: 0 ok, 1 runtime failure, 2 bad usage or input.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    crate::engine::set_verbose(cli.global.verbose);
    let result = match cli.command {
        Command::Load(args) => commands::load::run(&cli.global, args),
        Command::Preview(args) => commands::preview::run(&cli.global, args),
        Command::Step(args) => commands::step::run(&cli.global, args),
        Command::Generate(args) => commands::generate::run(&cli.global, args),
        Command::Branch(args) => commands::branch::run(&cli.global, args),
        Command::Attribute(args) => commands::attribute::run(&cli.global, args),
        Command::Model(args) => commands::model::run(&cli.global, args),
        Command::Check(args) => commands::check::run(&cli.global, args),
        Command::Diff(args) => commands::diff::run(&cli.global, args),
        Command::Schema { name } => commands::docs::schema(name.as_deref()),
        Command::Completions { shell } => commands::docs::completions(shell),
        Command::Man { dir } => commands::docs::man(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let (code, hint) = classify(&err);
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {}", message(&err));
            if let Some(h) = hint {
                let _ = writeln!(stderr, "hint: {h}");
            }
            ExitCode::from(code)
        }
    }
}
