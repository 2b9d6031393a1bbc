//! `ntv generate`: step until a stop condition, streaming records or coloured text; with
//! `--batch`, every case of a file from its prompt.

use crate::cli::{GenerateArgs, OutputFormat};
use crate::error::{Exit, Result, input_err};
use crate::record::{CheckpointRecord, GenerateBatchLine, GenerateBatchSummary, GenerateCase};
use crate::render::document::WithPage;
use crate::render::table;
use crate::trace::{BuildInfo, Trace, TraceStep};
use crate::workbench::cases::{self, CaseInput, CaseLine, apply_line, run_case, trace_case};
use crate::workbench::{Mode, StepEvent, Workbench};

use super::batch::{self, Batch};
use super::{Ctx, Flags, model_of, notify, prepare, stream};

pub fn run(ctx: &Ctx<'_>, args: GenerateArgs) -> Result<Exit> {
    if args.batch.is_some() {
        return run_batch(ctx, args);
    }
    let out = ctx.output(Some(OutputFormat::Jsonl));
    let flags = flags(&args);
    let mode = Mode::Record { reset: args.reset };
    let (store, settings) = prepare(ctx, &flags, mode)?;
    let (model, _) = model_of(&settings)?;
    let mut wb = Workbench::open(&model, store, settings, mode)?;
    let branch = wb.session().active();
    if args.record.is_some() && (!branch.completion_ids.is_empty() || branch.rng_pos > 0) {
        return Err(input_err(
            "--record records a generation from the prompt, but this branch already has a completion",
            "pass --no-session, --reset, or switch to an empty branch (ntv branch new NAME --at 0)",
        ));
    }
    notify(wb.take_notices());
    let s = stream(&out);
    let mut stdout = std::io::stdout().lock();
    let constraint = wb.session().constraint.clone();
    s.header(&mut stdout, |w, c| {
        table::generate_header(w, &c.palette)?;
        match &constraint {
            Some(k) => table::constraint_line(w, k, &c.palette),
            None => Ok(()),
        }
    })?;
    let progress = out.progress_bar().then(|| {
        let pb = indicatif::ProgressBar::new(u64::from(
            wb.settings()
                .max_tokens
                .unwrap_or(crate::settings::DEFAULT_MAX_TOKENS),
        ));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} tokens {per_sec} {wide_bar}",
            )
            .expect("valid template"),
        );
        pb
    });
    let top_k = wb.settings().display_k;
    let mut trace_steps = Vec::new();
    wb.set_checkpoints(crate::settings::checkpoints()?);
    // From here Ctrl-C and SIGTERM stop at the next token; the work so far is kept.
    crate::interrupt::install()?;
    let run = wb.generate_events(!s.streams(), &mut |event| match event {
        StepEvent::Token(record) => {
            if args.record.is_some() {
                trace_steps.push(TraceStep::from_meta_top(&record.appended_meta, top_k));
            }
            s.item(&mut stdout, record)?;
            if let Some(pb) = &progress {
                pb.inc(1);
            }
            Ok(())
        }
        StepEvent::Saved { branch, tokens } => Ok(s.item(
            &mut stdout,
            &CheckpointRecord {
                kind: "checkpoint".into(),
                branch: branch.to_string(),
                tokens,
            },
        )?),
    })?;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    if let Some(path) = &args.record {
        let mut trace = Trace::new(BuildInfo::current(&model.info().device));
        trace.cases.push(trace_case(
            &wb.case_input(),
            cases::trace_model(
                &model,
                wb.session()
                    .model
                    .as_ref()
                    .and_then(|m| m.hub.as_ref())
                    .map(|h| h.reference.as_str()),
            )?,
            wb.prompt_text().to_string(),
            wb.prompt_ids().to_vec(),
            trace_steps,
            run.outcome
                .stop_reason
                .unwrap_or(crate::record::StopReason::MaxTokens),
        ));
        crate::trace::write(path, &trace)?;
    }
    wb.save()?;
    notify(wb.take_notices());
    let interrupted = super::interrupted(&wb, &run);
    let doc = wb.generate_summary(run);
    let page = |w: &mut dyn std::io::Write| {
        let from = doc.completion_ids.len() - doc.n_tokens;
        super::token_page(w, &wb, None, "ntv generate", from, None)
    };
    s.finish(
        &mut stdout,
        &WithPage {
            doc: &doc,
            html: &page,
        },
    )?;
    Ok(interrupted.unwrap_or(Exit::Success))
}

fn flags(args: &GenerateArgs) -> Flags<'_> {
    let a = args;
    Flags::new(&a.prompt, &a.runtime, &a.sampling, &a.constraint, &a.seed)
        .stopping(&a.stop, a.max_tokens)
}

/// `generate --batch FILE`: every case from its prompt, model loaded once, session untouched.
fn run_batch(ctx: &Ctx<'_>, args: GenerateArgs) -> Result<Exit> {
    let out = ctx.output(Some(OutputFormat::Jsonl));
    let path = args.batch.as_deref().expect("batch mode");
    let store = ctx.store(false)?;
    // Session values apply to parameters as everywhere; the prompt comes from each line.
    let settings = super::resolve(&flags(&args), store.existing())?;
    let batch = Batch::open(
        path,
        args.shard.as_deref(),
        args.fail_fast,
        r#"{"prompt": "Hello", "seed": 7}"#,
    )?;
    let lines = batch.read::<CaseLine>()?;
    let (model, _) = model_of(&settings)?;
    crate::settings::check_display_k(settings.display_k, model.n_vocab())?;
    let base = CaseInput {
        id: None,
        prompt: crate::settings::PromptSpec {
            prompt: String::new(),
            system: args
                .prompt
                .system
                .clone()
                .unwrap_or_else(|| crate::chat::DEFAULT_SYSTEM.to_string()),
            messages: None,
            chat_template: crate::settings::cli_chat_template(&args.prompt).unwrap_or(true),
            parse_special: crate::settings::cli_parse_special(&args.prompt).unwrap_or(true),
        },
        params: settings.call_params(),
        constraint: settings.constraint.clone(),
        seed: 0,
        threads: settings.context.n_threads,
        ctx_size: settings.context.n_ctx,
        max_tokens: args
            .max_tokens
            .unwrap_or(crate::settings::DEFAULT_MAX_TOKENS),
        stop: args.stop.clone(),
        top_k: settings.display_k,
    };
    let mut trace = Trace::new(BuildInfo::current(&model.info().device));
    // A batch is always a stream of lines (JSON asks for the same records).
    let mut s = stream(&out);
    if s.format == OutputFormat::Json {
        s.format = OutputFormat::Jsonl;
    }
    let mut stdout = std::io::stdout().lock();
    let n = lines.len();
    let status = batch.run(
        &out,
        lines,
        &mut stdout,
        &mut |w, lineno, line| {
            let explicit_seed = line.seed.or(args.seed.seed);
            let mut input = apply_line(&base, line)?;
            input.seed = explicit_seed.unwrap_or_else(crate::sampling::StreamRng::os_seed);
            let run = run_case(&model, &input)?;
            let case = GenerateCase {
                kind: "case".into(),
                id: input.id.clone(),
                line: lineno,
                n_tokens: run.completion_ids.len(),
                completion_text: run.completion_text,
                completion_ids: run.completion_ids,
                stop_reason: run.case.stop_reason,
                tokens_per_second: run.tokens_per_second,
                seed: input.seed,
            };
            s.item(w, &GenerateBatchLine::Case(case))?;
            trace.cases.push(run.case);
            Ok(())
        },
        &mut |w, f| Ok(s.item(w, &GenerateBatchLine::Failed(f))?),
    )?;
    if let Some(p) = &args.record {
        crate::trace::write(p, &trace)?;
    }
    s.item(
        &mut stdout,
        &GenerateBatchLine::Summary(GenerateBatchSummary {
            kind: "summary".into(),
            schema: "ntv.generate.batch/1".into(),
            cases: n,
            failed: status.failed.len(),
            trace: args.record.as_ref().map(|p| p.display().to_string()),
        }),
    )?;
    batch::finish(path, status)
}
