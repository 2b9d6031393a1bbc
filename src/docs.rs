//! Generated documentation: man pages (clap_mangen), shell completions (clap_complete) and
//! the JSON Schemas of every output (schemars). All derived from the code, so they cannot
//! drift; the committed `man/` pages are checked against these by a test.

use std::io::Write;

use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::cli::Cli;

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    ("1", "Runtime failure (llama.cpp, I/O, a download)."),
    (
        "2",
        "Bad usage or input: unknown flag, invalid parameter value, missing or unreadable model, corrupt or newer session file, unknown branch, index out of range. The session file is left unchanged.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "NTV_SESSION",
        "Session file to use when --session is not given (default ./ntv-session.json).",
    ),
    (
        "NTV_CACHE_DIR",
        "Cache folder for the default model (default: the platform cache folder + ntv, e.g. ~/.cache/ntv).",
    ),
    ("NTV_THREADS", "CPU threads when -t/--threads is not given."),
    (
        "NTV_API_KEY",
        "The key ntv serve requires on /api routes when --api-key is not given.",
    ),
    (
        "NTV_PYTHON",
        "Python interpreter whose pip fetches the default model (default python3).",
    ),
    (
        "NO_COLOR",
        "When set and non-empty, --color auto never colours.",
    ),
    (
        "CLICOLOR_FORCE",
        "When set and not 0, --color auto colours even when stdout is not a terminal.",
    ),
];

fn render_page(cmd: clap::Command, name: &str) -> std::io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .date("")
        .manual("ntv manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::default();
    if let Some(help) = cmd.get_after_help() {
        roff.control("SH", ["EXAMPLES"]);
        roff.control("nf", []);
        for line in help.to_string().lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, what) in EXIT_STATUS {
        roff.control("TP", []);
        roff.text([bold(*code)]);
        roff.text([roman(*what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (var, what) in ENVIRONMENT {
        roff.control("TP", []);
        roff.text([bold(*var)]);
        roff.text([roman(*what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "ntv(1), ntv-load(1), ntv-preview(1), ntv-sweep(1), ntv-step(1), ntv-generate(1), ntv-tui(1), ntv-branch(1), ntv-attribute(1), ntv-lens(1), ntv-check(1), ntv-diff(1), ntv-serve(1), ntv-model(1), ntv-schema(1), ntv-completions(1)",
    )]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Every man page: `ntv.1` and one per subcommand (`ntv-preview.1`, …), as (file name, bytes).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![("ntv.1".to_string(), render_page(cmd.clone(), "ntv")?)];
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = format!("ntv-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        pages.push((format!("{name}.1"), render_page(sub, &name)?));
    }
    Ok(pages)
}

/// Write the man pages into `dir`.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut names = Vec::new();
    for (name, bytes) in man_pages()? {
        std::fs::write(dir.join(&name), bytes)?;
        names.push(name);
    }
    Ok(names)
}

/// Write a completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "ntv", out);
}

/// Names of the JSON outputs with a schema.
pub const SCHEMA_NAMES: &[&str] = &[
    "load",
    "preview",
    "step",
    "generate",
    "generate.step",
    "generate.checkpoint",
    "generate.batch",
    "branch.list",
    "branch.show",
    "branch.diff",
    "model.list",
    "check",
    "diff",
    "trace",
    "session",
    "attribute",
    "attribute.record",
    "lens",
    "sweep",
    "serve.status",
    "serve.preview",
    "serve.step",
    "serve.attribution",
    "serve.load",
    "serve.error",
];

/// The JSON Schema of one output (`ntv.<name>/1`), or None for an unknown name.
pub fn schema(name: &str) -> Option<serde_json::Value> {
    use crate::record::*;
    let s = match name {
        "load" => schemars::schema_for!(LoadDoc),
        "preview" => schemars::schema_for!(PreviewDoc),
        "step" => schemars::schema_for!(StepDoc),
        "generate" => schemars::schema_for!(GenerateSummary),
        "generate.step" => schemars::schema_for!(StepRecord),
        "generate.checkpoint" => schemars::schema_for!(CheckpointRecord),
        "generate.batch" => schemars::schema_for!(GenerateBatchLine),
        "branch.list" => schemars::schema_for!(BranchListDoc),
        "branch.show" => schemars::schema_for!(BranchShowDoc),
        "branch.diff" => schemars::schema_for!(BranchDiffDoc),
        "model.list" => schemars::schema_for!(ModelListDoc),
        "check" => schemars::schema_for!(crate::trace::CheckReport),
        "diff" => schemars::schema_for!(crate::trace::DiffSummary),
        "trace" => schemars::schema_for!(crate::trace::Trace),
        "session" => schemars::schema_for!(crate::session::Session),
        "attribute" => schemars::schema_for!(AttributeDoc),
        "attribute.record" => schemars::schema_for!(AttributionLine),
        "lens" => schemars::schema_for!(LensDoc),
        "sweep" => schemars::schema_for!(SweepDoc),
        "serve.status" => schemars::schema_for!(crate::serve::api::Status),
        "serve.preview" => schemars::schema_for!(crate::serve::api::PreviewResponse),
        "serve.step" => schemars::schema_for!(crate::serve::api::StepResponse),
        "serve.attribution" => schemars::schema_for!(crate::serve::api::AttributionResponse),
        "serve.load" => schemars::schema_for!(crate::serve::api::LoadResponse),
        "serve.error" => schemars::schema_for!(crate::serve::api::ErrorBody),
        _ => return None,
    };
    let mut v = serde_json::to_value(s).ok()?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "$id".into(),
            serde_json::Value::String(format!("ntv.{name}/1")),
        );
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_renders() {
        for name in SCHEMA_NAMES {
            let s = schema(name).unwrap_or_else(|| panic!("no schema for {name}"));
            assert_eq!(s["$id"], format!("ntv.{name}/1"));
        }
        assert!(schema("nope").is_none());
    }

    #[test]
    fn completions_for_four_shells() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
            clap_complete::Shell::PowerShell,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("preview"),
                "{shell:?} completion lacks subcommands"
            );
            assert!(text.contains("top-p"), "{shell:?} completion lacks flags");
        }
    }

    #[test]
    fn man_pages_have_the_required_sections() {
        let pages = man_pages().unwrap();
        assert!(pages.iter().any(|(n, _)| n == "ntv.1"));
        assert!(pages.iter().any(|(n, _)| n == "ntv-preview.1"));
        for (name, bytes) in &pages {
            let text = String::from_utf8_lossy(bytes);
            for section in [
                "EXIT STATUS",
                "ENVIRONMENT",
                "EXAMPLES",
                "NTV_SESSION",
                "NO_COLOR",
            ] {
                assert!(text.contains(section), "{name} lacks {section}");
            }
        }
    }
}
