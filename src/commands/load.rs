//! `ntv load MODEL`: load, print the facts, record the model in the session.

use crate::cli::LoadArgs;
use crate::error::{Exit, Result};
use crate::record::LoadDoc;
use crate::workbench::{facts, model_changed, model_ref};

use super::{Ctx, emit, load_model, notify};

pub fn run(ctx: &Ctx<'_>, args: LoadArgs) -> Result<Exit> {
    let out = ctx.output(None);
    let mut store = ctx.store(true)?;
    let model = load_model(&args.model, args.gpu_layers)?;
    let mref = model_ref(&model)?;
    let mut notices: Vec<String> = model_changed(&store.session, &mref).into_iter().collect();
    let fingerprint = mref.fingerprint.sha256_head_tail.clone();
    store.adopt(&mref, None, args.reset)?;
    if let Some(aside) = store.save()?.aside {
        notices.push(format!(
            "note: the session held a completion for another model; it is kept as {}",
            aside.display()
        ));
    }
    notify(notices);
    let doc = LoadDoc {
        schema: "ntv.load/1".into(),
        model: facts(&model),
        load_seconds: model.info().load_time.as_secs_f64(),
        fingerprint,
        session: store.path_string(),
    };
    emit(&out, &doc)?;
    Ok(Exit::Success)
}
