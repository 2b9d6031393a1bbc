//! `ntv attribute`: how much each context token contributed to a target token. Reads the
//! session (prompt, completion, model), never writes it.
//!
//! One target (`--index`, `--token`, `--text`, or by default the last completion token / the
//! most probable next token), every completion token (`--all`), or a JSONL batch of requests
//! (`--batch`, optionally one shard of it) with the model loaded once.

use std::io::Write;
use std::time::Instant;

use crate::attribution::Options;
use crate::attribution::attention::AttentionOptions;
use crate::attribution::request::{self, Defaults, Request, TargetSel};
use crate::cli::{AttributeArgs, ConstraintArgs, RuntimeArgs, SamplingArgs, SeedArgs};
use crate::driver::pill;
use crate::error::{Exit, Result};
use crate::record::{AttributeDoc, AttributeTimings, AttributionLine};
use crate::render::document::Attributed;
use crate::settings::RunFlags;
use crate::workbench::explain::Explainer;
use crate::workbench::{Mode, Workbench, facts, ms};

use super::batch::{self, Batch};
use super::{Ctx, emit, model_of, notify};

/// Options from the command line.
fn options(args: &AttributeArgs) -> Result<Options> {
    crate::attribution::runner::check_steps(args.steps, "--steps")?;
    if let Some(w) = args.window {
        crate::attribution::runner::check_window(w, "--window")?;
    }
    Ok(Options {
        method: args.method,
        agg: args.agg,
        target_fn: args.target_fn,
        attention: AttentionOptions {
            layers: args.layers.clone(),
            heads: args.heads.clone(),
            layer_agg: args.layer_agg,
            raw: false,
        },
        steps: args.steps,
        baseline: args.baseline,
        window: args.window,
        watch: Default::default(),
    })
}

/// Run `f` with a progress bar on stderr (a terminal) that follows `opts`' watch: occlusion
/// counts decoded tokens, which its time is proportional to, so the estimate is honest. Drawn
/// only once the engine knows its total, and cleared when `f` returns.
fn with_progress<T>(opts: &Options, f: impl FnOnce(&Options) -> Result<T>) -> Result<T> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let mut opts = opts.clone();
    opts.watch = crate::attribution::Watch::new();
    let watch = opts.watch.clone();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let ticker = s.spawn(|| {
            use std::sync::atomic::Ordering;
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {wide_bar} {percent}% · {elapsed} · about {eta} left",
                )
                .expect("valid template"),
            );
            bar.set_message(opts.method.name());
            let mut shown = false;
            while !done.load(Ordering::Relaxed) {
                let (n, total) = watch.progress();
                if total > 0 {
                    if !shown {
                        shown = true;
                        bar.set_length(total);
                        bar.reset_elapsed();
                        bar.set_draw_target(ProgressDrawTarget::stderr());
                    }
                    bar.set_length(total);
                    bar.set_position(n);
                }
                std::thread::park_timeout(std::time::Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        let r = f(&opts);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        ticker.thread().unpark();
        r
    })
}

pub fn run(ctx: &Ctx<'_>, args: AttributeArgs) -> Result<Exit> {
    let out = ctx.output(None);
    if !args.merge.is_empty() {
        return merge(&out, &args.merge, args.batch.as_deref());
    }
    let opts = options(&args)?;
    // attribute runs its own engines: no prefix cache, no sampling or constraint settings.
    let runtime = RuntimeArgs {
        engine: args.engine.clone(),
        no_cache: true,
        cache_size: 0,
        force: args.force,
    };
    let (sampling, constraint, seed) = (
        SamplingArgs::default(),
        ConstraintArgs::default(),
        SeedArgs::default(),
    );
    let given = crate::settings::cli_prompt(&args.prompt, None)?;
    let store = ctx.store(false)?.force_model(args.force);
    let settings = crate::settings::resolve(
        RunFlags {
            given_prompt: given.as_deref(),
            prompt: &args.prompt,
            runtime: &runtime,
            sampling: &sampling,
            constraint: &constraint,
            seed: &seed,
            stops: &[],
            max_tokens: None,
        },
        store.existing(),
    )?;
    if let Some(path) = &args.batch {
        let batch = Batch::open(
            path,
            args.shard.as_deref(),
            args.fail_fast,
            r#"{"prompt": "Hello", "method": "saliency"}"#,
        )?;
        let (lines, places) = batch.read_placed::<Request>()?;
        let place = |line: usize| places.as_ref().and_then(|p| p.get(&line).cloned());
        let defaults = Defaults {
            // The command-line prompt is the default of lines without one.
            prompt: given,
            system: args.prompt.system.clone(),
            // Read once by resolve (stdin cannot be read twice).
            messages: args
                .prompt
                .messages
                .as_ref()
                .and_then(|_| settings.prompt.as_ref()?.messages.clone()),
            chat_template: crate::settings::cli_chat_template(&args.prompt),
            parse_special: crate::settings::cli_parse_special(&args.prompt),
            sel: TargetSel::from_flags(args.index, args.token, args.all),
            options: opts,
        };
        let (model, _) = model_of(&settings)?;
        let mut explainer = Explainer::new(&model, &settings.context);
        explainer.on_notice(|n| notify(vec![n]));
        if let Some(b) = args.max_memory {
            explainer.set_activation_budget(b);
        }
        let mut stdout = std::io::stdout().lock();
        let mut targets = 0usize;
        // A page holds the whole batch; every other format streams the lines.
        let html = out.format == crate::cli::OutputFormat::Html;
        let kept = std::cell::RefCell::new(Vec::new());
        let put = |w: &mut dyn Write, line: AttributionLine| -> Result<()> {
            if html {
                kept.borrow_mut().push(line);
            } else {
                crate::render::json::write(w, &line, false)?;
                w.flush()?;
            }
            Ok(())
        };
        let status = batch.run(
            &out,
            lines,
            &mut stdout,
            &mut |w, line, req: Request| {
                let merged = request::merge(&req, &defaults)?;
                for mut r in explainer.explain_request(&merged)? {
                    r.id = req.id.clone();
                    r.line = Some(line);
                    r.shard = place(line);
                    targets += 1;
                    put(w, AttributionLine::Ok(Box::new(r)))?;
                }
                Ok(())
            },
            &mut |w, mut f| {
                f.shard = place(f.line);
                put(w, AttributionLine::Failed(f))
            },
        )?;
        if html {
            let page = crate::render::html::attribute::batch_page(&kept.borrow());
            crate::render::html::write(&mut stdout, &page)?;
            stdout.flush()?;
        }
        let _ = writeln!(
            std::io::stderr(),
            "attributed {} of {} requests ({targets} targets)",
            status.total - status.failed.len(),
            status.total
        );
        return batch::finish(path, status);
    }

    settings.require_prompt()?;
    let (model, load_ms) = model_of(&settings)?;
    let context = settings.context.clone();
    let mut wb = Workbench::open(&model, store, settings, Mode::ReadOnly)?;
    wb.require_unchanged_model()?;
    notify(wb.take_notices());
    let mut explainer = Explainer::new(&model, &context);
    explainer.on_notice(|n| notify(vec![n]));
    if let Some(b) = args.max_memory {
        explainer.set_activation_budget(b);
    }
    let sel = match &args.text {
        Some(text) => TargetSel::Token(explainer.single_token(text)?.into()),
        None => TargetSel::from_flags(args.index, args.token, args.all),
    };
    let t = Instant::now();
    let records = if opts.method == crate::attribution::Method::Occlusion && out.stderr_tty {
        with_progress(&opts, |opts| wb.attribute(&mut explainer, sel, opts))?
    } else {
        wb.attribute(&mut explainer, sel, &opts)?
    };
    let spec = wb.settings().require_prompt()?.clone();
    let doc = AttributeDoc {
        schema: "ntv.attribute/1".into(),
        model: facts(&model),
        prompt: spec.prompt.clone(),
        system: spec.system.clone(),
        messages: spec.messages.clone(),
        chat_template: spec.chat_template && model.info().chat_template.is_some(),
        prompt_tokens: wb.prompt_ids().iter().map(|&id| pill(&model, id)).collect(),
        completion_tokens: wb.completion().iter().map(|&id| pill(&model, id)).collect(),
        branch: wb.session().active_branch.clone(),
        targets: records,
        timings: AttributeTimings {
            load_ms,
            attribute_ms: ms(t),
        },
    };
    emit(
        &out,
        &Attributed {
            doc: &doc,
            top: args.top,
        },
    )?;
    Ok(Exit::Success)
}

/// `--merge PART…`: the parts of a sharded batch in input order, on stdout (JSONL, or the batch
/// page with `--format html`). Every check comes before the first byte is written.
fn merge(
    out: &crate::settings::OutputSettings,
    paths: &[std::path::PathBuf],
    batch: Option<&std::path::Path>,
) -> Result<Exit> {
    let limit = crate::batch::MAX_PART_BYTES;
    let hint = "pass the JSONL files that ntv attribute --batch … --shard … wrote";
    let parts = paths
        .iter()
        .map(|p| {
            Ok(crate::batch::Part {
                name: p.display().to_string(),
                text: crate::limits::read_file(p, limit, "part", hint)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let source = batch
        .map(|p| {
            let text = crate::limits::read_file(
                p,
                crate::limits::MAX_BATCH_FILE_BYTES,
                "batch file",
                "pass the batch file the shards ran on, or leave --batch out",
            )?;
            Ok::<_, crate::error::Error>((p.display().to_string(), text))
        })
        .transpose()?;
    let merged = crate::batch::merge(
        &parts,
        source.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
    )?;
    let mut stdout = std::io::stdout().lock();
    if out.format == crate::cli::OutputFormat::Html {
        let lines = merged
            .lines
            .iter()
            .map(|l| serde_json::from_str::<AttributionLine>(l))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                crate::error::input_err(
                    format!("a part's record is not an attribution record: {e}"),
                    "merge the JSONL of ntv attribute --batch runs",
                )
            })?;
        let page = crate::render::html::attribute::batch_page(&lines);
        crate::render::html::write(&mut stdout, &page)?;
    } else {
        for line in &merged.lines {
            writeln!(stdout, "{line}")?;
        }
    }
    stdout.flush()?;
    let _ = writeln!(
        std::io::stderr(),
        "merged {} requests ({} records, {} of them errors) from {} parts",
        merged.requests,
        merged.lines.len(),
        merged.errors,
        parts.len()
    );
    Ok(Exit::Success)
}
