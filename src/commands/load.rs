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
    let runtime = crate::cli::RuntimeArgs {
        gpu_layers: args.gpu_layers,
        ..Default::default()
    };
    let model = load_model(&args.model, &runtime)?;
    let mref = model_ref(&model)?;
    warn_if_model_changed(&sc.session, &mref, &mut std::io::stderr());
    let changed = sc
        .session
        .model
        .as_ref()
        .is_some_and(|m| m.path != mref.path);
    let has_completion = sc
        .session
        .branches
        .iter()
        .any(|b| !b.completion_ids.is_empty());
    if changed && has_completion {
        if !args.reset {
            return Err(crate::app::input_err(
                "this session holds a completion made with another model",
                "pass --reset to start the session over, or --session NEW.json to keep both",
            ));
        }
        let fresh = crate::session::Session::new();
        sc.session.branches = fresh.branches;
        sc.session.active_branch = fresh.active_branch;
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
