//! The step machinery shared by preview, step and generate: keeps the context ids in the KV
//! cache (engine), turns logits into a distribution (sampling) and into records (record).

use crate::constraint::{Constraint, ConstraintError, Mask};
use crate::engine::{ContextOptions, Decoder, EngineError, Model};
use crate::record::{
    AdjustStage, AppendedMeta, Candidate, ChainInfo, Dist, ForcedBy, LogitAdjust, SelectedBy,
    TokenPill,
};
use crate::sampling::{
    ChainInputs, Distribution, DryBreakers, SamplingError, SamplingParams, StreamRng, Workspace,
};

/// Failure of a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
}

impl crate::error::Diagnose for StepError {
    fn is_input(&self) -> bool {
        match self {
            Self::Engine(e) => e.is_input(),
            Self::Sampling(e) => e.is_input(),
            Self::Constraint(e) => e.is_input(),
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            Self::Engine(e) => e.hint(),
            Self::Sampling(e) => e.hint(),
            Self::Constraint(e) => e.hint(),
        }
    }
}

/// How to choose the next token.
#[derive(Debug, Clone, Copy)]
pub enum Choice {
    /// Argmax of p_final.
    Greedy,
    /// One draw from the branch's stream.
    Sample,
    /// This id, whatever the distribution says (must be in the vocabulary).
    Force(i32, ForcedBy),
}

impl Choice {
    /// Greedy when the parameters say so, else a draw.
    pub fn for_params(params: &SamplingParams) -> Self {
        if params.greedy {
            Self::Greedy
        } else {
            Self::Sample
        }
    }
}

/// Token pill for an id.
pub fn pill(model: &Model, id: i32) -> TokenPill {
    let bytes = model.piece_bytes(id);
    TokenPill {
        id,
        display: crate::render::text::display_bytes(&bytes),
        text: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        special: model.is_special(id),
    }
}

fn candidate(model: &Model, d: &Distribution<'_>, id: u32, rank: u32) -> Candidate {
    let p = pill(model, id as i32);
    let i = id as usize;
    Candidate {
        id: p.id,
        text: p.text,
        bytes: p.bytes,
        display: p.display,
        special: p.special,
        p_base: d.p_base(i),
        p_temp: d.p_temp(i),
        p_final: d.p_final(i),
        // A -inf logit (masked by the model itself) has no finite log-probability; JSON has
        // no -inf, so it is written as the most negative finite number.
        logprob_base: d.logprob_base(i).max(f64::MIN),
        kept: d.kept(i),
        valid: d.valid(i),
        cut_by: d.cut_by(i),
        rank,
        logit_adjust: logit_adjust(d, i),
    }
}

fn logit_adjust(d: &Distribution<'_>, i: usize) -> Vec<LogitAdjust> {
    let a = d.adjustments(i);
    [
        (AdjustStage::LogitBias, a.logit_bias),
        (AdjustStage::Penalties, a.penalties),
        (AdjustStage::Dry, a.dry),
    ]
    .into_iter()
    .filter(|&(_, x)| x != 0.0 && x.is_finite())
    .map(|(stage, x)| LogitAdjust {
        stage,
        amount: f64::from(x),
    })
    .collect()
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// The record of one distribution: the `display_k` most probable candidates by p_temp.
pub fn dist_record(
    model: &Model,
    d: &Distribution<'_>,
    display_k: usize,
    params: &SamplingParams,
) -> Dist {
    let ids = d.top_by_p_temp(display_k.min(d.n_vocab()));
    let ranks = d.base_ranks(&ids);
    let tokens: Vec<Candidate> = ids
        .iter()
        .zip(ranks)
        .map(|(&id, rank)| candidate(model, d, id, rank))
        .collect();
    let shown_base: f64 = tokens.iter().map(|c| c.p_base).sum();
    let shown_final: f64 = tokens.iter().map(|c| c.p_final).sum();
    Dist {
        top_k: display_k,
        other_p_base: (1.0 - shown_base).max(0.0),
        other_p_final: (1.0 - shown_final).max(0.0),
        kept_token_count: d.kept_count(),
        valid_token_count: d.valid_count(),
        constraint_active: d.valid_count().is_some(),
        constraint_type: None,
        entropy_base: finite(d.entropy_base_bits()),
        entropy_final: finite(d.entropy_final_bits()),
        params: params.clone(),
        tokens,
        chain: d.chained().then(|| ChainInfo {
            stages: d.stages().to_vec(),
            temperature_used: d.temperature_used(),
            xtc: d.xtc(),
            mirostat_mu: d.mirostat_mu(),
        }),
    }
}

/// DRY's breakers for `params`, processed once per breaker list and model.
fn breakers<'c>(
    cache: &'c mut Option<(Vec<String>, DryBreakers)>,
    model: &Model,
    params: &SamplingParams,
) -> Option<&'c DryBreakers> {
    if !crate::sampling::chain::dry_on(params) {
        return None;
    }
    if cache
        .as_ref()
        .is_none_or(|(key, _)| key != &params.dry_sequence_breakers)
    {
        *cache = Some((
            params.dry_sequence_breakers.clone(),
            model.dry_breakers(&params.dry_sequence_breakers),
        ));
    }
    cache.as_ref().map(|(_, b)| b)
}

/// A model context over `prompt ++ completion` with a reusable sampling workspace.
pub struct Driver<'m> {
    model: &'m Model,
    dec: Decoder<'m>,
    ws: Workspace,
    /// prompt ids followed by the completion ids.
    ids: Vec<i32>,
    n_prompt: usize,
    /// The active constraint, positioned after the current completion.
    constraint: Option<Constraint>,
    /// DRY's processed sequence breakers, by breaker list.
    dry: Option<(Vec<String>, DryBreakers)>,
}

impl<'m> Driver<'m> {
    /// A context for `model` whose input starts with `prompt_ids`.
    pub fn new(
        model: &'m Model,
        opts: &ContextOptions,
        prompt_ids: &[i32],
    ) -> Result<Self, EngineError> {
        Ok(Self {
            model,
            dec: Decoder::new(model, opts)?,
            ws: Workspace::new(),
            ids: prompt_ids.to_vec(),
            n_prompt: prompt_ids.len(),
            constraint: None,
            dry: None,
        })
    }

    /// Constrain the completion; the current completion is replayed through it (a token it
    /// rejects is an error naming the position).
    pub fn set_constraint(
        &mut self,
        constraint: Option<Constraint>,
    ) -> Result<(), ConstraintError> {
        self.constraint = constraint;
        self.replay_constraint()
    }

    fn replay_constraint(&mut self) -> Result<(), ConstraintError> {
        if let Some(c) = &mut self.constraint {
            let ids: Vec<u32> = self.ids[self.n_prompt..]
                .iter()
                .map(|&i| i as u32)
                .collect();
            c.replay(&ids)?;
        }
        Ok(())
    }

    /// True when a constraint is active and the completion so far is a complete match with no
    /// way to continue but end-of-generation (`constraint_complete`).
    pub fn constraint_complete(&mut self) -> Result<bool, ConstraintError> {
        match &mut self.constraint {
            Some(c) => c.is_complete(),
            None => Ok(false),
        }
    }

    fn mask(&mut self) -> Result<Option<Mask>, ConstraintError> {
        self.constraint.as_mut().map(Constraint::mask).transpose()
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The decoder (for teacher forcing and statistics).
    pub fn decoder(&mut self) -> &mut Decoder<'m> {
        &mut self.dec
    }

    /// The decoder, to read its statistics.
    pub fn decoder_ref(&self) -> &Decoder<'m> {
        &self.dec
    }

    /// Context length.
    pub fn n_ctx(&self) -> usize {
        self.dec.n_ctx()
    }

    /// The completion part of the context.
    pub fn completion(&self) -> &[i32] {
        &self.ids[self.n_prompt..]
    }

    /// The whole context (prompt ++ completion).
    pub fn context(&self) -> &[i32] {
        &self.ids
    }

    /// Replace the prompt and the completion at once (the KV cache keeps the common prefix of
    /// the old and the new context; a constraint replays the completion).
    pub fn set_context(
        &mut self,
        prompt_ids: &[i32],
        completion: &[i32],
    ) -> Result<(), ConstraintError> {
        self.ids.clear();
        self.ids.extend_from_slice(prompt_ids);
        self.n_prompt = prompt_ids.len();
        self.set_completion(completion)
    }

    /// Replace the completion (the KV cache keeps the common prefix; a constraint replays it).
    pub fn set_completion(&mut self, completion: &[i32]) -> Result<(), ConstraintError> {
        self.ids.truncate(self.n_prompt);
        self.ids.extend_from_slice(completion);
        self.replay_constraint()
    }

    /// Decode what is needed and hand the distribution at the current position under `params`
    /// to `f` (the logits stay in the KV state: another call with other parameters decodes
    /// nothing).
    pub fn inspect<R>(
        &mut self,
        params: &SamplingParams,
        f: impl FnOnce(&Distribution<'_>) -> R,
    ) -> Result<R, StepError> {
        self.inspect_with(params, None, f)
    }

    /// [`Driver::inspect`] with the branch's stream, peeked (not advanced): XTC's coin is the
    /// one the next step would draw, Mirostat's `mu` the branch's. Without a stream, XTC does
    /// not act and Mirostat starts from `2 * tau`.
    pub fn inspect_with<R>(
        &mut self,
        params: &SamplingParams,
        stream: Option<&StreamRng>,
        f: impl FnOnce(&Distribution<'_>) -> R,
    ) -> Result<R, StepError> {
        let mask = self.mask()?;
        let allowed = mask.as_ref().map(|m| move |id: usize| m.is_allowed(id));
        let logits = self.dec.eval(&self.ids)?;
        let xtc_coin = stream
            .filter(|_| params.draws_xtc_coin())
            .map(|s| s.clone().next_uniform());
        let inputs = ChainInputs {
            dry_breakers: breakers(&mut self.dry, self.model, params),
            xtc_coin,
            mirostat_mu: stream.and_then(|s| s.mirostat_mu),
        };
        let d = self.ws.compute_with(
            logits,
            &self.ids,
            params,
            allowed.as_ref().map(|f| f as &dyn Fn(usize) -> bool),
            &inputs,
        )?;
        Ok(f(&d))
    }

    /// [`Driver::inspect`] for many parameter sets at once: the logits are decoded (at most)
    /// once and the maths of the sets run side by side on rayon's pool, one workspace per
    /// thread. Results come in the order of `params`.
    pub fn inspect_all<R: Send>(
        &mut self,
        params: &[SamplingParams],
        f: impl Fn(&Distribution<'_>) -> R + Sync,
    ) -> Result<Vec<R>, StepError> {
        use rayon::prelude::*;
        let mask = self.mask()?;
        let logits = self.dec.eval(&self.ids)?;
        let ids = &self.ids;
        let allowed = mask.as_ref().map(|m| move |id: usize| m.is_allowed(id));
        let allowed = allowed
            .as_ref()
            .map(|f| f as &(dyn Fn(usize) -> bool + Sync));
        // DRY's breakers for every breaker list among the sets (usually one).
        let mut lists: Vec<(Vec<String>, DryBreakers)> = Vec::new();
        for p in params {
            if crate::sampling::chain::dry_on(p)
                && !lists.iter().any(|(k, _)| k == &p.dry_sequence_breakers)
            {
                lists.push((
                    p.dry_sequence_breakers.clone(),
                    self.model.dry_breakers(&p.dry_sequence_breakers),
                ));
            }
        }
        let lists = &lists;
        params
            .par_iter()
            .map_init(Workspace::new, |ws, p| {
                let mask = allowed.map(|a| a as &dyn Fn(usize) -> bool);
                let inputs = ChainInputs {
                    dry_breakers: lists
                        .iter()
                        .find(|(k, _)| {
                            crate::sampling::chain::dry_on(p) && k == &p.dry_sequence_breakers
                        })
                        .map(|(_, b)| b),
                    ..ChainInputs::default()
                };
                ws.compute_with(logits, ids, p, mask, &inputs)
                    .map(|d| f(&d))
            })
            .collect::<Result<Vec<R>, SamplingError>>()
            .map_err(StepError::from)
    }

    /// Decode what is needed and return the distribution record at the current position.
    pub fn preview(
        &mut self,
        params: &SamplingParams,
        display_k: usize,
    ) -> Result<Dist, StepError> {
        self.preview_with(params, display_k, None)
    }

    /// [`Driver::preview`] with the branch's stream peeked (see [`Driver::inspect_with`]).
    pub fn preview_with(
        &mut self,
        params: &SamplingParams,
        display_k: usize,
        stream: Option<&StreamRng>,
    ) -> Result<Dist, StepError> {
        let kind = self.constraint.as_ref().map(|c| c.kind());
        let model = self.model;
        let mut dist =
            self.inspect_with(params, stream, |d| dist_record(model, d, display_k, params))?;
        dist.constraint_type = kind;
        Ok(dist)
    }

    /// Choose the next token, append it, and return its metadata.
    pub fn step(
        &mut self,
        params: &SamplingParams,
        display_k: usize,
        choice: Choice,
        rng: &mut StreamRng,
    ) -> Result<AppendedMeta, StepError> {
        if let Choice::Force(id, _) = choice
            && !self.model.in_range(id)
        {
            return Err(EngineError::TokenOutOfRange {
                id: id.into(),
                n_vocab: self.model.n_vocab(),
            }
            .into());
        }
        if self.ids.len() >= self.dec.n_ctx() {
            return Err(EngineError::ContextFull {
                needed: self.ids.len() + 1,
                n_ctx: self.dec.n_ctx(),
                trained: self.dec.model().info().n_ctx_train as usize,
            }
            .into());
        }
        let mask = self.mask()?;
        if let (Choice::Force(id, _), Some(m)) = (choice, &mask)
            && !m.is_allowed(id as usize)
        {
            return Err(ConstraintError::Rejected {
                id: id as u32,
                position: self.ids.len() - self.n_prompt,
            }
            .into());
        }
        let kind = self.constraint.as_ref().map(|c| c.kind());
        let allowed = mask.as_ref().map(|m| move |id: usize| m.is_allowed(id));
        let logits = self.dec.eval(&self.ids)?;
        // XTC's coin comes first from the branch's stream, then the final draw.
        let xtc_coin = params.draws_xtc_coin().then(|| rng.next_uniform());
        let inputs = ChainInputs {
            dry_breakers: breakers(&mut self.dry, self.model, params),
            xtc_coin,
            mirostat_mu: rng.mirostat_mu,
        };
        let d = self.ws.compute_with(
            logits,
            &self.ids,
            params,
            allowed.as_ref().map(|f| f as &dyn Fn(usize) -> bool),
            &inputs,
        )?;
        let greedy = d.is_greedy_params();
        let (id, selected_by, forced_by, draw) = match choice {
            Choice::Force(id, by) => (id as u32, SelectedBy::Forced, Some(by), None),
            Choice::Greedy => (d.greedy(), SelectedBy::Greedy, None, None),
            Choice::Sample if greedy => (d.greedy(), SelectedBy::Greedy, None, None),
            Choice::Sample => {
                let u = rng.next_uniform();
                (d.sample(u), SelectedBy::Sampled, None, Some(u))
            }
        };
        let mut dist = dist_record(self.model, &d, display_k, params);
        dist.constraint_type = kind;
        let mirostat_mu_after = d.mirostat_next_mu(params, id);
        if mirostat_mu_after.is_some() {
            rng.mirostat_mu = mirostat_mu_after;
        }
        if let Some(c) = &mut self.constraint {
            c.consume(id)?;
        }
        let selected = match dist.tokens.iter().find(|c| c.id == id as i32) {
            Some(c) => c.clone(),
            None => {
                let rank = d.base_ranks(&[id])[0];
                candidate(self.model, &d, id, rank)
            }
        };
        self.ids.push(id as i32);
        Ok(AppendedMeta {
            dist,
            selected_id: id as i32,
            selected,
            selected_by,
            forced: forced_by.is_some(),
            forced_by,
            draw,
            rng_after: Some(rng.state()),
            mirostat_mu_after,
        })
    }
}
