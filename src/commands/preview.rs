//! `ntv preview`: the tokens the model sees and the next-token distribution. Changes nothing
//! unless --save.

use std::time::Instant;

use crate::cli::PreviewArgs;
use crate::error::{Exit, Result};
use crate::record::Timings;
use crate::render::document::WithPage;
use crate::workbench::{Mode, Workbench, ms};

use super::{Ctx, Flags, emit, model_of, notify, prepare};

pub fn run(ctx: &Ctx<'_>, args: PreviewArgs) -> Result<Exit> {
    let out = ctx.output(None);
    let no_seed = Default::default();
    let a = &args;
    let flags = Flags {
        positional: a.positional_prompt.as_deref(),
        ..Flags::new(&a.prompt, &a.runtime, &a.sampling, &a.constraint, &no_seed)
    };
    let mode = if args.save {
        Mode::Record { reset: args.reset }
    } else {
        Mode::ReadOnly
    };
    let (store, settings) = prepare(ctx, &flags, mode)?;
    let (model, load_ms) = model_of(&settings)?;
    let mut wb = Workbench::open(&model, store, settings, mode)?;
    let t = Instant::now();
    let logprobs = args
        .prompt_logprobs
        .then(|| wb.prompt_logprobs())
        .transpose()?;
    wb.prefill()?;
    let prefill_ms = ms(t);
    let t = Instant::now();
    let dist = wb.preview()?;
    let maths_ms = ms(t);
    if args.save {
        wb.save()?;
    }
    notify(wb.take_notices());
    let timings = Timings {
        load_ms,
        tokenize_ms: wb.tokenize_ms(),
        prefill_ms,
        maths_ms,
    };
    let doc = wb.preview_doc(dist, logprobs, timings);
    let page = |w: &mut dyn std::io::Write| {
        let done = wb.completion().len();
        super::token_page(
            w,
            &wb,
            Some(&doc.prompt_tokens),
            "ntv preview",
            done,
            Some(&doc.dist),
        )
    };
    emit(
        &out,
        &WithPage {
            doc: &doc,
            html: &page,
        },
    )?;
    Ok(Exit::Success)
}
