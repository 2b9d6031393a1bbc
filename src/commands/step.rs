//! `ntv step`: append one token (or N), force ids or text, undo, rewind onto a new branch.

use crate::cli::StepArgs;
use crate::error::{Exit, Result, input_err};
use crate::record::StepAction;
use crate::render::document::WithPage;
use crate::workbench::{self, Mode, Workbench};

use super::{Ctx, Flags, emit, model_of, notify, prepare};

/// `--undo N`: drop the last N tokens of the active branch; needs no model.
fn undo(ctx: &Ctx<'_>, n: usize) -> Result<Exit> {
    let mut store = ctx.store(true)?;
    store.require_existing("create one with `ntv step -p PROMPT` or pass --session FILE")?;
    let removed = workbench::undo(&mut store.session, n)?;
    store.save()?;
    let doc = workbench::undo_doc(&store.session, removed);
    emit(&ctx.output(None), &doc)?;
    Ok(Exit::Success)
}

pub fn run(ctx: &Ctx<'_>, args: StepArgs) -> Result<Exit> {
    if let Some(n) = args.undo {
        return undo(ctx, n);
    }
    if args.steps == 0 {
        return Err(input_err("-n 0 takes no step", "pass -n N with N >= 1"));
    }
    let out = ctx.output(None);
    let a = &args;
    let flags = Flags::new(&a.prompt, &a.runtime, &a.sampling, &a.constraint, &a.seed)
        .stopping(&a.stop, None);
    let mode = Mode::Record { reset: args.reset };
    let (store, settings) = prepare(ctx, &flags, mode)?;
    let (model, _) = model_of(&settings)?;
    let mut wb = Workbench::open(&model, store, settings, mode)?;
    let created_branch = args.at.map(|i| wb.rewind(i)).transpose()?;
    let plan = match (args.token, &args.text) {
        (Some(id), _) => wb.force_token(id)?,
        (None, Some(text)) => wb.force_text(text)?,
        (None, None) => wb.choose(Some(args.steps as usize)),
    };
    // A long `-n` stops at the next token on Ctrl-C and keeps what it made.
    crate::interrupt::install()?;
    let run = wb.step(&plan, None, true, &mut |_| Ok(()))?;
    wb.save()?;
    notify(wb.take_notices());
    let interrupted = super::interrupted(&wb, &run);
    let action = if created_branch.is_some() {
        StepAction::Rewind
    } else {
        StepAction::Append
    };
    let doc = wb.step_doc(action, created_branch, Some(run), Vec::new());
    let page = |w: &mut dyn std::io::Write| {
        let from = doc.completion_ids.len() - doc.new_completion_ids.len();
        super::token_page(w, &wb, None, "ntv step", from, None)
    };
    emit(
        &out,
        &WithPage {
            doc: &doc,
            html: &page,
        },
    )?;
    Ok(interrupted.unwrap_or(Exit::Success))
}
