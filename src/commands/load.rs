//! `ntv load MODEL`: load, print the facts, record the model in the session.

use crate::cli::LoadArgs;
use crate::error::{Exit, Result, input_err};
use crate::record::LoadDoc;
use crate::settings::ModelChoice;
use crate::workbench::{facts, model_changed, model_ref};

use super::{Ctx, emit, load_model, notify};

pub fn run(ctx: &Ctx<'_>, args: LoadArgs) -> Result<Exit> {
    let out = ctx.output(None);
    let mut store = ctx.store(true)?;
    let choice = ModelChoice::from_flags(args.model.as_deref(), &args.hub)?.ok_or_else(|| {
        input_err(
            "no model to load",
            "pass a GGUF file, a Hugging Face model (hf:OWNER/REPO[:QUANT]) or --hf-repo",
        )
    })?;
    let model = load_model(&choice.path()?, args.gpu_layers)?;
    let mref = model_ref(&model, choice.label(), store.session.model.as_ref())?;
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
