//! Parse, read the terminal once, dispatch; print an error once as `error:` / `hint:` lines and
//! turn the outcome into an exit status.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands;
use crate::error::Exit;
use crate::settings::Terminal;

/// llama.cpp's two-letter flags, which clap cannot spell: `-hf`/`-hfr` are `--hf-repo`, `-hff`
/// is `--hf-file` (up to a `--`, after which every argument is a value).
fn llama_cpp_spellings(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> impl Iterator<Item = std::ffi::OsString> {
    let mut values_only = false;
    args.map(move |a| {
        if values_only {
            return a;
        }
        match a.to_str() {
            Some("--") => {
                values_only = true;
                a
            }
            Some("-hf" | "-hfr") => "--hf-repo".into(),
            Some("-hff") => "--hf-file".into(),
            _ => a,
        }
    })
}

/// Run the program: 0 ok, 1 runtime failure, 2 bad usage or input.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse_from(llama_cpp_spellings(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    crate::engine::set_verbose(cli.global.verbose);
    let term = Terminal::detect();
    let ctx = commands::Ctx {
        global: &cli.global,
        term: &term,
    };
    // `--format html` on a command without a page is refused before any work.
    let refused = commands::html_page(&cli.global, &cli.command);
    let result = match cli.command {
        _ if refused.is_err() => refused.map(|()| Exit::Success),
        Command::Load(args) => commands::load::run(&ctx, args),
        Command::Preview(args) => commands::preview::run(&ctx, args),
        Command::Step(args) => commands::step::run(&ctx, args),
        Command::Generate(args) => commands::generate::run(&ctx, args),
        Command::Branch(args) => commands::branch::run(&ctx, args),
        Command::Sweep(args) => commands::sweep::run(&ctx, args),
        Command::Tui(args) => commands::tui::run(&ctx, args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Attribute(args) => commands::attribute::run(&ctx, args),
        Command::Lens(args) => commands::lens::run(&ctx, args),
        Command::Model(args) => commands::model::run(&ctx, args),
        Command::Check(args) => commands::check::run(&ctx, args),
        Command::Diff(args) => commands::diff::run(&ctx, args),
        Command::Schema { name } => commands::docs::schema(name.as_deref()),
        Command::Completions { shell } => commands::docs::completions(shell),
        Command::Man { dir } => commands::docs::man(&dir),
    };
    let mut stderr = std::io::stderr().lock();
    let (message, hint, code) = match result {
        Ok(Exit::Success) => return ExitCode::SUCCESS,
        Ok(Exit::Failure { message, hint }) => (message, hint, crate::error::EXIT_RUNTIME),
        Ok(Exit::Interrupted(note)) => {
            let _ = writeln!(stderr, "{note}");
            return ExitCode::from(crate::interrupt::EXIT_INTERRUPTED);
        }
        Err(err) if err.is_broken_pipe() => return ExitCode::SUCCESS,
        Err(err) => (
            err.message(),
            err.hint().map(str::to_string),
            err.exit_code(),
        ),
    };
    let _ = writeln!(stderr, "error: {message}");
    if let Some(h) = hint {
        let _ = writeln!(stderr, "hint: {h}");
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn llama_cpp_two_letter_flags_become_long_flags_until_a_double_dash() {
        let args = [
            "ntv", "preview", "-hf", "o/r:Q4_0", "-hff", "f.gguf", "-hfr", "--", "-hf",
        ];
        let out: Vec<String> = super::llama_cpp_spellings(args.iter().map(Into::into))
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            [
                "ntv",
                "preview",
                "--hf-repo",
                "o/r:Q4_0",
                "--hf-file",
                "f.gguf",
                "--hf-repo",
                "--",
                "-hf"
            ]
        );
    }
}
