//! `ntv lens`: what each layer would predict (the logit lens) at the next-token position, at
//! the position predicting a completion token (`--index`), or at every position (`--all`).
//! Reads the session (prompt, completion, model), never writes it.

use crate::cli::{ConstraintArgs, LensArgs, RuntimeArgs, SamplingArgs, SeedArgs};
use crate::error::{Exit, Result, input_err};
use crate::workbench::lens::{LensRequest, LensSel};
use crate::workbench::{Mode, Workbench};

use super::{Ctx, Flags, emit, model_of, notify};

/// Most tokens listed per layer.
const MAX_TOP: usize = 100;

pub fn run(ctx: &Ctx<'_>, args: LensArgs) -> Result<Exit> {
    let out = ctx.output(None);
    if !(1..=MAX_TOP).contains(&args.top) {
        return Err(input_err(
            format!("--top {} is out of range", args.top),
            format!("give 1 to {MAX_TOP} tokens per layer"),
        ));
    }
    let req = LensRequest {
        sel: match (args.index, args.all) {
            (Some(i), _) => LensSel::Index(i),
            (None, true) => LensSel::All,
            (None, false) => LensSel::Next,
        },
        top: args.top,
        token: args.token,
    };
    // The lens runs its own capture context: no prefix cache, no sampling or constraint.
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
    let flags = Flags {
        positional: args.positional_prompt.as_deref(),
        ..Flags::new(&args.prompt, &runtime, &sampling, &constraint, &seed)
    };
    let (store, settings) = super::prepare(ctx, &flags, Mode::ReadOnly)?;
    let (model, load_ms) = model_of(&settings)?;
    let wb = Workbench::open(&model, store, settings, Mode::ReadOnly)?;
    wb.require_unchanged_model()?;
    let mut wb = wb;
    notify(wb.take_notices());
    let mut doc = wb.lens(&req)?;
    doc.timings.load_ms = load_ms;
    emit(&out, &doc)?;
    Ok(Exit::Success)
}
