//! The CLI front-end: one file per subcommand, each resolving settings, calling the core
//! ([`crate::workbench`]) and rendering what it returns. No command has a step loop of its own.

pub mod attribute;
pub mod batch;
pub mod branch;
pub mod check;
pub mod diff;
pub mod docs;
pub mod generate;
pub mod lens;
pub mod load;
pub mod model;
pub mod preview;
pub mod serve;
pub mod step;
pub mod sweep;
pub mod tui;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::cli::{GlobalArgs, OutputFormat, PromptArgs, RuntimeArgs};
use crate::engine::{LoadOptions, Model};
use crate::error::{Exit, Result};
use crate::render::{Document, Stream, TableCtx};
use crate::session::Session;
use crate::settings::{self, OutputSettings, RunFlags, RunSettings, Terminal};
use crate::workbench::{SessionStore, Workbench};

/// What every command gets: the global flags and the terminal, read once.
pub struct Ctx<'a> {
    pub global: &'a GlobalArgs,
    pub term: &'a Terminal,
}

impl Ctx<'_> {
    /// Output settings of this call.
    pub fn output(&self, stream_default: Option<OutputFormat>) -> OutputSettings {
        settings::output(self.global, self.term, stream_default)
    }

    /// The session of this call (`write` takes its lock).
    pub fn store(&self, write: bool) -> Result<SessionStore> {
        SessionStore::open(settings::session_path(self.global), write)
    }
}

/// Table context of an output.
pub fn table_ctx(out: &OutputSettings) -> TableCtx {
    TableCtx {
        palette: out.palette,
        width: out.width,
    }
}

/// Print one document on stdout in the call's format.
pub fn emit<D: Document>(out: &OutputSettings, doc: &D) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    crate::render::emit(&mut stdout, out.format, &table_ctx(out), doc)?;
    Ok(())
}

/// A record stream on stdout in the call's format.
pub fn stream(out: &OutputSettings) -> Stream {
    Stream {
        format: out.format,
        ctx: table_ctx(out),
    }
}

/// `--format html` on a command without a page is bad usage, refused before any work.
pub fn html_page(global: &GlobalArgs, command: &crate::cli::Command) -> Result<()> {
    use crate::cli::{BranchAction, Command as C};
    if global.json || global.format != Some(OutputFormat::Html) {
        return Ok(());
    }
    let has_page = match command {
        C::Preview(_) | C::Attribute(_) | C::Check(_) | C::Diff(_) | C::Sweep(_) | C::Lens(_) => {
            true
        }
        C::Step(a) => a.undo.is_none(),
        C::Generate(a) => a.batch.is_none(),
        C::Branch(a) => matches!(a.action, BranchAction::Show { .. }),
        _ => false,
    };
    if has_page {
        return Ok(());
    }
    Err(crate::error::input_err(
        "--format html has no page for this command",
        "HTML pages: preview, step (not --undo), generate (not --batch), branch show, attribute, check, diff, sweep, lens",
    ))
}

/// Write the token page of the active branch: the prompt's pills (made here when `prompt` is
/// None), every completion token with the distribution recorded when it was appended (those
/// from `new_from` on are this call's), and the next-token distribution of `preview`.
pub fn token_page(
    w: &mut dyn Write,
    wb: &Workbench<'_>,
    prompt: Option<&[crate::record::TokenPill]>,
    title: &str,
    new_from: usize,
    next: Option<&crate::record::Dist>,
) -> std::io::Result<()> {
    use crate::render::html;
    let made: Vec<_>;
    let prompt = match prompt {
        Some(p) => p,
        None => {
            made = wb
                .prompt_ids()
                .iter()
                .map(|&id| crate::driver::pill(wb.model(), id))
                .collect();
            &made
        }
    };
    let s = wb.settings();
    let p = &s.params;
    let branch = wb.session().active();
    let mut facts = vec![
        ("model", crate::workbench::facts(wb.model()).model_id),
        ("branch", branch.name.clone()),
        ("prompt tokens", prompt.len().to_string()),
        ("completion tokens", branch.completion_ids.len().to_string()),
    ];
    if p.greedy {
        facts.push(("sampling", "greedy".into()));
    } else {
        facts.push((
            "sampling",
            format!(
                "temp {} · top-p {} · top-k {} · min-p {}",
                p.temperature, p.top_p, p.top_k, p.min_p
            ),
        ));
    }
    if let Some(seed) = branch.seed {
        facts.push(("seed", seed.to_string()));
    }
    if let Some(r) = branch.stop_reason {
        facts.push(("stop", r.to_string()));
    }
    if let Some(c) = &wb.session().constraint {
        facts.push(("constraint", html::parts::json_name(&c.kind)));
    }
    let t = html::tokens::Transcript {
        title: title.to_string(),
        facts,
        prompt: html::tokens::Prompt::Tokens(prompt),
        completion: &branch.appended_meta,
        new_from,
        next,
    };
    html::write(w, &html::tokens::page(&t))
}

/// Print notes and warnings on stderr.
pub fn notify(notices: Vec<String>) {
    let mut err = std::io::stderr().lock();
    for n in notices {
        let _ = writeln!(err, "{n}");
    }
}

/// Load the model at `path`. A load that takes over a second shows a progress bar on stderr
/// when stderr is a terminal (indicatif draws nothing otherwise).
pub fn load_model(path: &Path, gpu_layers: Option<u32>) -> Result<Model> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("loading model {wide_bar} {percent}%")
            .expect("valid template"),
    );
    let started = Instant::now();
    let shown = std::sync::atomic::AtomicBool::new(false);
    let b = bar.clone();
    let opts = LoadOptions {
        gpu_layers,
        progress: Some(std::sync::Arc::new(move |p: f32| {
            use std::sync::atomic::Ordering;
            if started.elapsed().as_secs_f32() > 1.0 && !shown.swap(true, Ordering::Relaxed) {
                b.set_draw_target(ProgressDrawTarget::stderr());
            }
            b.set_position((p.clamp(0.0, 1.0) * 1000.0) as u64);
        })),
    };
    let model = Model::load(path, &opts);
    bar.finish_and_clear();
    Ok(model?)
}

/// The flags of a call that decodes on the session, with the prompt text read.
pub struct Flags<'a> {
    pub prompt: &'a PromptArgs,
    pub positional: Option<&'a str>,
    pub runtime: &'a RuntimeArgs,
    pub sampling: &'a crate::cli::SamplingArgs,
    pub constraint: &'a crate::cli::ConstraintArgs,
    pub seed: &'a crate::cli::SeedArgs,
    pub stops: &'a [String],
    pub max_tokens: Option<u32>,
}

impl<'a> Flags<'a> {
    /// The flag groups every decoding command has; no positional prompt, stops or budget.
    pub fn new(
        prompt: &'a PromptArgs,
        runtime: &'a RuntimeArgs,
        sampling: &'a crate::cli::SamplingArgs,
        constraint: &'a crate::cli::ConstraintArgs,
        seed: &'a crate::cli::SeedArgs,
    ) -> Self {
        Self {
            prompt,
            positional: None,
            runtime,
            sampling,
            constraint,
            seed,
            stops: &[],
            max_tokens: None,
        }
    }

    /// With `--stop` values and `-n` of generate.
    pub fn stopping(self, stops: &'a [String], max_tokens: Option<u32>) -> Self {
        Self {
            stops,
            max_tokens,
            ..self
        }
    }
}

/// Resolve a call's settings over the session found on disk.
pub fn resolve(flags: &Flags<'_>, session: Option<&Session>) -> Result<RunSettings> {
    let given = settings::cli_prompt(flags.prompt, flags.positional)?;
    settings::resolve(
        RunFlags {
            given_prompt: given.as_deref(),
            prompt: flags.prompt,
            runtime: flags.runtime,
            sampling: flags.sampling,
            constraint: flags.constraint,
            seed: flags.seed,
            stops: flags.stops,
            max_tokens: flags.max_tokens,
        },
        session,
    )
}

/// The first half of opening the core: the session and the settings resolved over it (bad
/// input fails here, before any model work).
pub fn prepare(
    ctx: &Ctx<'_>,
    flags: &Flags<'_>,
    mode: crate::workbench::Mode,
) -> Result<(SessionStore, RunSettings)> {
    let write = matches!(mode, crate::workbench::Mode::Record { .. });
    let store = ctx.store(write)?.force_model(flags.runtime.force);
    let settings = resolve(flags, store.existing())?;
    settings.require_prompt()?;
    Ok((store, settings))
}

/// The exit of a run that Ctrl-C or SIGTERM stopped (after its work was saved), if it was.
pub fn interrupted(wb: &Workbench<'_>, run: &crate::workbench::StepRun) -> Option<Exit> {
    (run.outcome.stop_reason == Some(crate::record::StopReason::Interrupted)).then(|| {
        let b = wb.session().active();
        Exit::Interrupted(match wb.session_path() {
            Some(p) => format!(
                "interrupted: stopped after {} new tokens; branch {} ({} tokens) is saved in {}",
                run.outcome.n_tokens,
                b.name,
                b.completion_ids.len(),
                p.display()
            ),
            None => format!(
                "interrupted: stopped after {} new tokens (no session file: nothing kept)",
                run.outcome.n_tokens
            ),
        })
    })
}

/// The second half: the model of the settings, and how long loading it took (ms).
pub fn model_of(settings: &RunSettings) -> Result<(Model, f64)> {
    let path = settings.model.path()?;
    let t = Instant::now();
    let model = load_model(&path, settings.gpu_layers)?;
    Ok((model, crate::workbench::ms(t)))
}
