//! `ntv tui [PROMPT]`: the interactive explorer (see [`crate::tui`]) over the session.

use crate::cli::TuiArgs;
use crate::error::{Exit, Result, input_err};
use crate::tui::App;
use crate::workbench::{Mode, Workbench};

use super::{Ctx, Flags, model_of, notify, prepare};

pub fn run(ctx: &Ctx<'_>, args: TuiArgs) -> Result<Exit> {
    if !ctx.term.stdout_tty {
        return Err(input_err(
            "ntv tui needs a terminal, and stdout is not one",
            "in scripts and pipes use `ntv step`, `ntv generate` or `ntv preview` (with --format json)",
        ));
    }
    let a = &args;
    let flags = Flags {
        positional: a.positional_prompt.as_deref(),
        ..Flags::new(&a.prompt, &a.runtime, &a.sampling, &a.constraint, &a.seed)
    };
    let mode = Mode::Record { reset: args.reset };
    let (store, settings) = prepare(ctx, &flags, mode)?;
    let (model, _) = model_of(&settings)?;
    // Shared with the explorer's attribution thread.
    let model = std::sync::Arc::new(model);
    let wb = Workbench::open(&model, store, settings, mode)?;
    let mut app = App::open(wb, std::sync::Arc::clone(&model));
    let result = crate::tui::run(&mut app);
    // The session is saved whatever ended the loop, so no step taken is lost.
    let saved = app.save();
    result?;
    notify(saved?);
    Ok(Exit::Success)
}
