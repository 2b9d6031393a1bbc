//! `ntv step`: append one token (or N), force ids or text, undo, rewind onto a new branch.

use std::io::Write;

use crate::app::input_err;
use crate::cli::{GlobalArgs, OutputFormat, StepArgs};
use crate::driver::{Choice, Driver, pill};
use crate::record::{ForcedBy, StepDoc, StepRecord, StopReason};
use crate::render::table;
use crate::settings;

use super::stepping::{branch_rng, completion_text, pills_from_branch, prepare};
use super::{SessionCtx, write_json};

fn print(global: &GlobalArgs, doc: &StepDoc) -> anyhow::Result<()> {
    let out = settings::output(global, None);
    let mut stdout = std::io::stdout().lock();
    match out.format {
        OutputFormat::Table => table::step(&mut stdout, doc, &out.palette)?,
        OutputFormat::Json => write_json(&mut stdout, doc, true)?,
        OutputFormat::Jsonl => {
            for s in &doc.steps {
                write_json(&mut stdout, s, false)?;
            }
            write_json(&mut stdout, doc, false)?;
        }
    }
    stdout.flush()?;
    Ok(())
}

/// `--undo N`: drop the last N tokens of the active branch; needs no model.
fn undo(global: &GlobalArgs, n: usize) -> anyhow::Result<()> {
    let mut sc = SessionCtx::open(global, true)?;
    if !sc.existed {
        return Err(input_err(
            "there is no session to undo in",
            "create one with `ntv step -p PROMPT` or pass --session FILE",
        ));
    }
    let before = sc.session.active().completion_ids.clone();
    sc.session.undo(n)?;
    let branch = sc.session.active().clone();
    let removed = before[branch.completion_ids.len()..].to_vec();
    sc.save()?;
    let doc = StepDoc {
        schema: "ntv.step/1".into(),
        branch: branch.name.clone(),
        created_branch: None,
        action: "undo".into(),
        steps: Vec::new(),
        appended: Vec::new(),
        appended_meta: Vec::new(),
        new_completion_ids: Vec::new(),
        removed_ids: removed,
        completion_ids: branch.completion_ids.clone(),
        completion_tokens: pills_from_branch(&branch),
        completion_text: completion_text(None, &branch),
        context_token_count: 0,
        done: false,
        stop_reason: None,
        seed: branch.seed,
        constraint: sc.session.constraint.clone(),
    };
    print(global, &doc)
}

pub fn run(global: &GlobalArgs, args: StepArgs) -> anyhow::Result<()> {
    if let Some(n) = args.undo {
        return undo(global, n);
    }
    if args.steps == 0 {
        return Err(input_err("-n 0 takes no step", "pass -n N with N >= 1"));
    }
    let mut prep = prepare(
        global,
        &args.prompt,
        &args.runtime,
        &args.sampling,
        &args.constraint,
        args.seed.greedy,
        args.reset,
    )?;
    let created_branch = match args.at {
        Some(i) => Some(prep.sc.session.fork_at(i)?),
        None => None,
    };
    // Forced text is tokenised without special-token parsing (sampling.md, Selection).
    let choices: Vec<Choice> = if let Some(id) = args.token {
        let id = i32::try_from(id)
            .ok()
            .filter(|&i| prep.model.in_range(i))
            .ok_or_else(|| {
                input_err(
                    format!(
                        "token id {id} is outside the vocabulary (0..{})",
                        prep.model.n_vocab()
                    ),
                    "token ids come from `ntv preview --format json`",
                )
            })?;
        vec![Choice::Force(id, ForcedBy::Token)]
    } else if let Some(text) = &args.text {
        let ids = prep.model.tokenize(text, false, false);
        if ids.is_empty() {
            return Err(input_err(
                "--text is empty: nothing to append",
                "pass the text to force, e.g. --text \" Paris\"",
            ));
        }
        ids.into_iter()
            .map(|id| Choice::Force(id, ForcedBy::Text))
            .collect()
    } else {
        let c = if prep.params.greedy {
            Choice::Greedy
        } else {
            Choice::Sample
        };
        vec![c; args.steps as usize]
    };

    let model = &prep.model;
    let cache = super::kv_cache(&prep.sc, &args.runtime);
    let fingerprint = prep
        .sc
        .session
        .model
        .as_ref()
        .map(super::cache_fingerprint)
        .unwrap_or_default();
    let mut driver = Driver::new(model, &prep.ctx_opts, &prep.prompt_ids)?;
    let branch = prep.sc.session.active_mut();
    let mut rng = branch_rng(branch, &args.seed);
    driver.set_completion(&branch.completion_ids)?;
    driver.set_constraint(prep.constraint.take())?;
    super::restore_prefix(cache.as_ref(), &mut driver, &fingerprint);
    let start = branch.completion_ids.len();
    let mut records = Vec::new();
    let mut stop = None;
    for choice in choices {
        let meta = driver.step(&prep.params, prep.display_k, choice, &mut rng)?;
        let id = meta.selected_id;
        if driver.constraint_complete()? {
            stop = Some(StopReason::ConstraintComplete);
        } else if model.is_eog(id) {
            stop = Some(StopReason::Eog);
        } else if driver.context().len() >= driver.n_ctx() {
            stop = Some(StopReason::ContextFull);
        }
        let branch = prep.sc.session.active_mut();
        branch.completion_ids.push(id);
        branch.appended_meta.push(meta.clone());
        branch.rng_pos = rng.state().pos;
        branch.stop_reason = stop.map(|s| s.as_str().to_string());
        records.push(StepRecord {
            kind: "step".into(),
            branch: branch.name.clone(),
            index: branch.completion_ids.len() - 1,
            selected: meta.selected.clone(),
            appended_meta: meta,
            done: stop.is_some(),
            stop_reason: stop,
            constraint: prep.sc.session.constraint.clone(),
        });
        // Forced text is appended whole; sampled/greedy steps stop at the end of generation.
        if stop.is_some() && !matches!(choice, Choice::Force(_, ForcedBy::Text)) {
            break;
        }
    }
    let context_token_count = driver.context().len();
    super::save_prefix(cache.as_ref(), &mut driver, &fingerprint);
    drop(driver);
    prep.sc.save()?;

    let branch = prep.sc.session.active().clone();
    let new_ids = branch.completion_ids[start..].to_vec();
    let doc = StepDoc {
        schema: "ntv.step/1".into(),
        branch: branch.name.clone(),
        action: if created_branch.is_some() {
            "rewind"
        } else {
            "append"
        }
        .into(),
        created_branch,
        appended: new_ids.iter().map(|&id| pill(model, id)).collect(),
        appended_meta: records.iter().map(|r| r.appended_meta.clone()).collect(),
        steps: records,
        new_completion_ids: new_ids,
        removed_ids: Vec::new(),
        completion_tokens: branch
            .completion_ids
            .iter()
            .map(|&id| pill(model, id))
            .collect(),
        completion_text: completion_text(Some(model), &branch),
        completion_ids: branch.completion_ids.clone(),
        context_token_count,
        done: stop.is_some(),
        stop_reason: stop,
        seed: branch.seed,
        constraint: prep.sc.session.constraint.clone(),
    };
    print(global, &doc)
}
