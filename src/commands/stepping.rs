//! Set-up shared by `step` and `generate`: session, model, prompt, parameters and the branch's
//! random stream.

use crate::cli::{ConstraintArgs, GlobalArgs, PromptArgs, RuntimeArgs, SamplingArgs, SeedArgs};
use crate::constraint::{Constraint, ConstraintKind};
use crate::engine::{ContextOptions, Model};
use crate::record::TokenPill;
use crate::render::text::display;
use crate::sampling::{RngState, SamplingParams, StreamRng};
use crate::session::{Branch, ConstraintSpec};
use crate::settings;

use super::{
    PromptSpec, SessionCtx, adopt_inputs, load_model, model_ref, prompt_ids, prompt_spec,
    warn_if_model_changed,
};

/// Everything a stepping command needs before it decodes.
pub struct Prepared {
    pub sc: SessionCtx,
    pub model: Model,
    pub spec: PromptSpec,
    pub prompt_ids: Vec<i32>,
    /// Parameters for this call (with --greedy applied).
    pub params: SamplingParams,
    pub display_k: usize,
    pub ctx_opts: ContextOptions,
    /// The constraint's matcher at the start of the completion (replayed by the driver).
    pub constraint: Option<Constraint>,
}

/// Build the matcher of a (validated) constraint spec for `model`.
pub fn build_constraint(
    model: &Model,
    spec: Option<&ConstraintSpec>,
) -> anyhow::Result<Option<Constraint>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let kind = ConstraintKind::parse(&spec.kind).expect("validated by settings::constraint");
    Ok(Some(Constraint::new(&model.tok_env(), kind, &spec.source)?))
}

/// Resolve inputs, load the model and record the inputs in the (in-memory) session.
pub fn prepare(
    global: &GlobalArgs,
    prompt: &PromptArgs,
    runtime: &RuntimeArgs,
    sampling: &SamplingArgs,
    constraint_args: &ConstraintArgs,
    greedy: bool,
    reset: bool,
) -> anyhow::Result<Prepared> {
    let mut sc = SessionCtx::open(global, true)?;
    let existing = sc.existing().cloned();
    let spec = prompt_spec(prompt, None, existing.as_ref())?;
    let (params, preset) = settings::params(
        existing.as_ref().map(|s| &s.params),
        existing.as_ref().and_then(|s| s.preset),
        sampling,
    )?;
    let display_k = settings::display_k(sampling, existing.as_ref().map(|s| s.display_k))?;
    let ctx_opts = settings::context_options(&runtime.engine)?;
    let cspec = settings::constraint(
        constraint_args,
        existing.as_ref().and_then(|s| s.constraint.as_ref()),
    )?;
    let model_path = settings::model_path(
        runtime.engine.model.as_deref(),
        existing
            .as_ref()
            .and_then(|s| s.model.as_ref())
            .map(|m| m.path.as_str()),
    )?;
    let model = load_model(&model_path, &runtime.engine)?;
    settings::check_display_k(display_k, model.n_vocab())?;
    let mref = model_ref(&model)?;
    if let Some(s) = &existing {
        warn_if_model_changed(s, &mref, &mut std::io::stderr());
    }
    let (_text, ids) = prompt_ids(&model, &spec)?;
    adopt_inputs(&mut sc.session, &mref, &spec, reset)?;
    sc.session.params = params.clone();
    sc.session.preset = preset;
    sc.session.display_k = display_k;
    let constraint = build_constraint(&model, cspec.as_ref())?;
    sc.session.constraint = cspec;
    Ok(Prepared {
        constraint,
        sc,
        model,
        spec,
        prompt_ids: ids,
        params: settings::with_greedy(params, greedy),
        display_k,
        ctx_opts,
    })
}

/// The branch's random stream after applying --seed / --reset-rng (sampling.md, Selection):
/// the seed the branch already has continues its stream, a different one restarts it, no seed
/// at all draws one from the OS and records it.
pub fn branch_rng(branch: &mut Branch, seed: &SeedArgs) -> StreamRng {
    let state = match (seed.seed, branch.seed) {
        (Some(new), Some(old)) if new == old => RngState {
            seed: old,
            pos: if seed.reset_rng { 0 } else { branch.rng_pos },
        },
        (Some(new), _) => RngState { seed: new, pos: 0 },
        (None, Some(old)) => RngState {
            seed: old,
            pos: if seed.reset_rng { 0 } else { branch.rng_pos },
        },
        (None, None) => RngState {
            seed: StreamRng::os_seed(),
            pos: 0,
        },
    };
    branch.seed = Some(state.seed);
    branch.rng_pos = state.pos;
    StreamRng::new(state)
}

/// Pills for completion tokens from their recorded metadata (no model needed).
pub fn pills_from_branch(branch: &Branch) -> Vec<TokenPill> {
    branch
        .completion_ids
        .iter()
        .zip(&branch.appended_meta)
        .map(|(&id, m)| TokenPill {
            id,
            text: m.selected.text.clone(),
            display: display(&m.selected.text),
            special: m.selected.special,
        })
        .collect()
}

/// Completion text of a branch ([`super::text_of`]); without a model, from its records
/// (special tokens left out).
pub fn completion_text(model: Option<&Model>, branch: &Branch) -> String {
    match model {
        Some(model) => super::text_of(model, &branch.completion_ids),
        None => branch
            .appended_meta
            .iter()
            .filter(|m| !m.selected.special)
            .map(|m| m.selected.text.as_str())
            .collect(),
    }
}
