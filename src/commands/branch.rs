//! `ntv branch`: list, new, switch, delete, show, diff.

use std::io::Write;

use crate::app::input_err;
use crate::cli::{BranchAction, BranchArgs, GlobalArgs, OutputFormat};
use crate::record::{BranchDiffDoc, BranchListDoc, BranchRow, BranchShowDoc, DiffStep, ShownToken};
use crate::render::{table, text::display};
use crate::session::{Branch, Session};
use crate::settings;

use super::stepping::completion_text;
use super::{SessionCtx, write_json};

fn row(session: &Session, b: &Branch) -> BranchRow {
    BranchRow {
        name: b.name.clone(),
        parent: b.parent.clone(),
        fork_position: b.fork_position,
        length: b.completion_ids.len(),
        stop_reason: b.stop_reason.clone(),
        active: b.name == session.active_branch,
        seed: b.seed,
    }
}

fn shown(b: &Branch, i: usize) -> Option<ShownToken> {
    let id = *b.completion_ids.get(i)?;
    let meta = b.appended_meta.get(i);
    let text = meta.map(|m| m.selected.text.clone()).unwrap_or_default();
    Some(ShownToken {
        index: i,
        id,
        display: display(&text),
        text,
        special: meta.is_some_and(|m| m.selected.special),
        p_final: meta.map(|m| m.selected.p_final),
        forced: meta.is_some_and(|m| m.forced),
    })
}

/// p_final of token `id` in branch `b`'s recorded distribution at step `i`, when it was shown
/// (or selected) there.
fn p_under(b: &Branch, i: usize, id: i32) -> Option<f64> {
    let meta = b.appended_meta.get(i)?;
    if meta.selected_id == id {
        return Some(meta.selected.p_final);
    }
    meta.dist
        .tokens
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.p_final)
}

/// Compare two branches step by step.
pub fn diff(session: &Session, a: &str, b: &str) -> anyhow::Result<BranchDiffDoc> {
    let (ba, bb) = (session.branch(a)?, session.branch(b)?);
    let shared = ba
        .completion_ids
        .iter()
        .zip(&bb.completion_ids)
        .take_while(|(x, y)| x == y)
        .count();
    let longest = ba.completion_ids.len().max(bb.completion_ids.len());
    let first_divergence = (shared < longest).then_some(shared);
    let steps = (shared..longest)
        .map(|i| {
            let (ta, tb) = (shown(ba, i), shown(bb, i));
            DiffStep {
                index: i,
                a_token_p_final_under_b: ta.as_ref().and_then(|t| p_under(bb, i, t.id)),
                b_token_p_final_under_a: tb.as_ref().and_then(|t| p_under(ba, i, t.id)),
                a: ta,
                b: tb,
            }
        })
        .collect();
    Ok(BranchDiffDoc {
        schema: "ntv.branch.diff/1".into(),
        a: a.into(),
        b: b.into(),
        shared_prefix: shared,
        first_divergence,
        steps,
    })
}

fn emit<T: serde::Serialize>(
    global: &GlobalArgs,
    doc: &T,
    table_fn: impl FnOnce(&mut dyn Write, &crate::render::Palette) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let out = settings::output(global, None);
    let mut stdout = std::io::stdout().lock();
    match out.format {
        OutputFormat::Table => table_fn(&mut stdout, &out.palette)?,
        OutputFormat::Json => write_json(&mut stdout, doc, true)?,
        OutputFormat::Jsonl => write_json(&mut stdout, doc, false)?,
    }
    stdout.flush()?;
    Ok(())
}

fn list_doc(session: &Session) -> BranchListDoc {
    BranchListDoc {
        schema: "ntv.branch.list/1".into(),
        active: session.active_branch.clone(),
        branches: session.branches.iter().map(|b| row(session, b)).collect(),
    }
}

pub fn run(global: &GlobalArgs, args: BranchArgs) -> anyhow::Result<()> {
    let writes = matches!(
        args.action,
        BranchAction::New { .. } | BranchAction::Switch { .. } | BranchAction::Delete { .. }
    );
    let mut sc = SessionCtx::open(global, writes)?;
    if !sc.existed {
        return Err(input_err(
            "there is no session file here",
            "create one with `ntv step -p PROMPT` (or `ntv load MODEL`), or pass --session FILE",
        ));
    }
    match args.action {
        BranchAction::List => {
            let doc = list_doc(&sc.session);
            emit(global, &doc, |w, p| table::branch_list(w, &doc, p))
        }
        BranchAction::New { name, from, at } => {
            sc.session.new_branch(&name, from.as_deref(), at)?;
            sc.save()?;
            let doc = list_doc(&sc.session);
            emit(global, &doc, |w, p| table::branch_list(w, &doc, p))
        }
        BranchAction::Switch { name } => {
            sc.session.switch(&name)?;
            sc.save()?;
            let doc = list_doc(&sc.session);
            emit(global, &doc, |w, p| table::branch_list(w, &doc, p))
        }
        BranchAction::Delete { name, force } => {
            sc.session.delete(&name, force)?;
            sc.save()?;
            let doc = list_doc(&sc.session);
            emit(global, &doc, |w, p| table::branch_list(w, &doc, p))
        }
        BranchAction::Show { name } => {
            let b = match &name {
                Some(n) => sc.session.branch(n)?,
                None => sc.session.active(),
            };
            let doc = BranchShowDoc {
                schema: "ntv.branch.show/1".into(),
                branch: row(&sc.session, b),
                tokens: (0..b.completion_ids.len())
                    .filter_map(|i| shown(b, i))
                    .collect(),
                completion_text: completion_text(None, b),
            };
            emit(global, &doc, |w, p| table::branch_show(w, &doc, p))
        }
        BranchAction::Diff { a, b } => {
            let doc = diff(&sc.session, &a, &b)?;
            emit(global, &doc, |w, p| table::branch_diff(w, &doc, p))
        }
    }
}
