//! `ntv load MODEL`: load, print the facts, record the model in the session.

use std::io::Write;

use crate::cli::{GlobalArgs, LoadArgs, OutputFormat};
use crate::record::LoadDoc;
use crate::render::table;
use crate::settings;

use super::{SessionCtx, facts, load_model, model_ref, warn_if_model_changed, write_json};

pub fn run(global: &GlobalArgs, args: LoadArgs) -> anyhow::Result<()> {
    let out = settings::output(global, None);
    let mut sc = SessionCtx::open(global, true)?;
    let runtime = crate::cli::EngineArgs {
        gpu_layers: args.gpu_layers,
        ..Default::default()
    };
    let model = load_model(&args.model, &runtime)?;
    let mref = model_ref(&model)?;
    warn_if_model_changed(&sc.session, &mref, &mut std::io::stderr());
    if !super::same_model(&sc.session, &mref.path) {
        super::guard_completion(&mut sc.session, "model", args.reset)?;
    }
    let fingerprint = mref.fingerprint.sha256_head_tail.clone();
    sc.session.model = Some(mref);
    sc.save()?;
    let doc = LoadDoc {
        schema: "ntv.load/1".into(),
        model: facts(&model),
        load_seconds: model.info().load_time.as_secs_f64(),
        fingerprint,
        session: sc.path_string(),
    };
    let mut stdout = std::io::stdout().lock();
    match out.format {
        OutputFormat::Table => table::load(&mut stdout, &doc, &out.palette)?,
        OutputFormat::Json => write_json(&mut stdout, &doc, true)?,
        OutputFormat::Jsonl => write_json(&mut stdout, &doc, false)?,
    }
    stdout.flush()?;
    Ok(())
}
