//! `ntv sweep KNOB=VALUES…`: the distribution under every value of one or two knobs, from one
//! decode. Reads the session, never writes it.

use crate::cli::SweepArgs;
use crate::error::{Exit, Result, input_err};
use crate::sampling::knob::Axis;
use crate::workbench::sweep::SweepRequest;
use crate::workbench::{Mode, Workbench};

use super::{Ctx, Flags, emit, model_of, notify, prepare};

pub fn run(ctx: &Ctx<'_>, args: SweepArgs) -> Result<Exit> {
    let out = ctx.output(None);
    let no_seed = Default::default();
    let a = &args;
    let flags = Flags::new(&a.prompt, &a.runtime, &a.sampling, &a.constraint, &no_seed);
    let (store, settings) = prepare(ctx, &flags, Mode::ReadOnly)?;
    // Every axis is parsed and checked before the model loads.
    let axes = args
        .axes
        .iter()
        .map(|spec| {
            Axis::parse(spec, &settings.params).map_err(|e| {
                input_err(
                    e.0,
                    "a knob is KNOB=FROM:TO:STEP or KNOB=a,b,c, e.g. temp=0.1:2:0.1 or top-p=0.8,0.9,1",
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (model, _) = model_of(&settings)?;
    let mut wb = Workbench::open(&model, store, settings, Mode::ReadOnly)?;
    let doc = wb.sweep(&SweepRequest {
        axes,
        at: args.at,
        max_kept: args.max_kept,
    })?;
    notify(wb.take_notices());
    emit(&out, &doc)?;
    Ok(Exit::Success)
}
