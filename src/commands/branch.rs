//! `ntv branch`: list, new, switch, delete, show, diff.

use crate::cli::{BranchAction, BranchArgs};
use crate::error::{Exit, Result};
use crate::record::{BranchDiffDoc, BranchListDoc, BranchRow, BranchShowDoc, DiffStep, ShownToken};
use crate::render::document::WithPage;
use crate::session::{Branch, Session};
use crate::workbench::recorded_text;

use super::{Ctx, emit};

fn row(session: &Session, b: &Branch) -> BranchRow {
    BranchRow {
        name: b.name.clone(),
        parent: b.parent.clone(),
        fork_position: b.fork_position,
        length: b.completion_ids.len(),
        stop_reason: b.stop_reason,
        active: b.name == session.active_branch,
        seed: b.seed,
    }
}

fn shown(b: &Branch, i: usize) -> Option<ShownToken> {
    let id = *b.completion_ids.get(i)?;
    let meta = b.appended_meta.get(i);
    let text = meta.map(|m| m.selected.text.clone()).unwrap_or_default();
    let bytes = meta.map(|m| m.selected.bytes.clone()).unwrap_or_default();
    Some(ShownToken {
        index: i,
        id,
        display: crate::render::text::display_bytes(&bytes),
        text,
        bytes,
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
pub fn diff(session: &Session, a: &str, b: &str) -> Result<BranchDiffDoc> {
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

fn list_doc(session: &Session) -> BranchListDoc {
    BranchListDoc {
        schema: "ntv.branch.list/1".into(),
        active: session.active_branch.clone(),
        branches: session.branches.iter().map(|b| row(session, b)).collect(),
    }
}

pub fn run(ctx: &Ctx<'_>, args: BranchArgs) -> Result<Exit> {
    let writes = matches!(
        args.action,
        BranchAction::New { .. } | BranchAction::Switch { .. } | BranchAction::Delete { .. }
    );
    let out = ctx.output(None);
    let mut store = ctx.store(writes)?;
    store.require_existing(
        "create one with `ntv step -p PROMPT` (or `ntv load MODEL`), or pass --session FILE",
    )?;
    let s = &mut store.session;
    match args.action {
        BranchAction::List => {}
        BranchAction::New { name, from, at } => {
            s.new_branch(&name, from.as_deref(), at)?;
        }
        BranchAction::Switch { name } => s.switch(&name)?,
        BranchAction::Delete { name, force } => s.delete(&name, force)?,
        BranchAction::Show { name } => {
            let b = match &name {
                Some(n) => s.branch(n)?,
                None => s.active(),
            };
            let doc = BranchShowDoc {
                schema: "ntv.branch.show/1".into(),
                branch: row(s, b),
                tokens: (0..b.completion_ids.len())
                    .filter_map(|i| shown(b, i))
                    .collect(),
                completion_text: recorded_text(b),
            };
            let page = |w: &mut dyn std::io::Write| {
                use crate::render::html::{self, tokens};
                let mut facts = vec![
                    ("branch", b.name.clone()),
                    ("completion tokens", b.completion_ids.len().to_string()),
                ];
                if let Some(r) = b.stop_reason {
                    facts.push(("stop", r.to_string()));
                }
                let prompt = s.prompt_text.as_deref().or(s.prompt.as_deref());
                let t = tokens::Transcript {
                    title: format!("ntv branch show {}", b.name),
                    facts,
                    prompt: tokens::Prompt::Text(prompt.unwrap_or_default()),
                    completion: &b.appended_meta,
                    new_from: b.appended_meta.len(),
                    next: None,
                };
                html::write(w, &tokens::page(&t))
            };
            emit(
                &out,
                &WithPage {
                    doc: &doc,
                    html: &page,
                },
            )?;
            return Ok(Exit::Success);
        }
        BranchAction::Diff { a, b } => {
            emit(&out, &diff(s, &a, &b)?)?;
            return Ok(Exit::Success);
        }
    }
    if writes {
        store.save()?;
    }
    emit(&out, &list_doc(&store.session))?;
    Ok(Exit::Success)
}
