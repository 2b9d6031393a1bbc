//! Attribution in the core: targets resolved over a context, the engines run once per call,
//! outcomes turned into records. One [`Explainer`] serves a single request, a batch, or the
//! active branch of a [`super::Workbench`].

use std::time::Instant;

use crate::attribution::request::{Merged, Resolved, TargetSel, resolve_targets};
use crate::attribution::{Attributor, Method, Options, Outcome, Target};
use crate::driver::pill;
use crate::engine::{ContextOptions, Model};
use crate::error::{Error, Result, input_err};
use crate::record::{
    AttentionSelection, AttributionRecord, AttributionTarget, ScoredToken, TargetKind, TokenPill,
};

use super::{ms, prompt_ids};

/// One attribution with its context, ready to run on any thread's [`Explainer`].
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<i32>,
    pub completion: Vec<i32>,
    pub sel: TargetSel,
    pub opts: Options,
}

impl Job {
    pub fn run(&self, explainer: &mut Explainer<'_>) -> Result<Vec<AttributionRecord>> {
        explainer.explain(&self.prompt, &self.completion, self.sel, &self.opts)
    }
}

/// The attribution engines of one model, created on first use and kept for later targets.
pub struct Explainer<'m> {
    model: &'m Model,
    attributor: Attributor<'m>,
    /// Where notes for the user go (the front-end's stderr), and whether the long-occlusion
    /// note was given already (once per explainer).
    notice: Option<Box<dyn FnMut(String) + 'm>>,
    noted_long_occlusion: bool,
}

/// Contexts longer than this get a note when occlusion runs without a window.
const LONG_OCCLUSION: usize = 256;

impl<'m> Explainer<'m> {
    pub fn new(model: &'m Model, ctx: &ContextOptions) -> Self {
        Self {
            model,
            attributor: Attributor::new(model, ctx),
            notice: None,
            noted_long_occlusion: false,
        }
    }

    /// Send notes for the user (such as the cost of a long occlusion) to `f`.
    pub fn on_notice(&mut self, f: impl FnMut(String) + 'm) {
        self.notice = Some(Box::new(f));
    }

    /// Occlusion's window against the contexts, and a note on the cost of a long context
    /// without one.
    fn check_occlusion(&mut self, targets: &[Resolved], opts: &Options) -> Result<()> {
        if opts.method != Method::Occlusion {
            return Ok(());
        }
        let lens = targets.iter().map(|r| r.target.context_len);
        let (Some(shortest), Some(longest)) = (lens.clone().min(), lens.max()) else {
            return Ok(());
        };
        let window = opts.effective_window();
        if window > shortest {
            return Err(input_err(
                format!("--window {window} is longer than the {shortest}-token context"),
                "a window is at most the context's length (--window 1, the default, is exact leave-one-out)",
            ));
        }
        if opts.window.is_none() && longest > LONG_OCCLUSION && !self.noted_long_occlusion {
            self.noted_long_occlusion = true;
            let cost: usize = targets
                .iter()
                .map(|r| crate::engine::occlusion_cost(r.target.context_len, 1))
                .sum();
            if let Some(f) = &mut self.notice {
                f(format!(
                    "note: leave-one-out occlusion of a {longest}-token context decodes about {cost} tokens; --window N removes N tokens at a time, about N times fewer"
                ));
            }
        }
        Ok(())
    }

    /// The gradient methods' activation budget in bytes (`--max-memory`).
    pub fn set_activation_budget(&mut self, bytes: usize) {
        self.attributor.set_activation_budget(bytes);
    }

    /// The id of `text` when it is exactly one token (for `--text`).
    pub fn single_token(&self, text: &str) -> Result<i32> {
        let ids = self.model.tokenize(text, false, false);
        match ids.as_slice() {
            [one] => Ok(*one),
            _ => Err(input_err(
                format!(
                    "--text {text:?} is {} tokens ({:?}), not one",
                    ids.len(),
                    ids
                ),
                "attribute one token: pass one of these ids with --token, or a shorter --text",
            )),
        }
    }

    /// The most probable next token after `context` (the attributor's decoder keeps the
    /// context, so a batch reuses the KV prefix its requests share and attention does not
    /// decode it again).
    fn top_next(&mut self, context: &[i32]) -> Result<i32> {
        let logits = self.attributor.next_logits(context)?;
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as i32)
            .ok_or_else(|| Error::runtime("the model returned no logits"))
    }

    /// Attribute the targets `sel` picks in `prompt ++ completion`.
    pub fn explain(
        &mut self,
        prompt: &[i32],
        completion: &[i32],
        sel: TargetSel,
        opts: &Options,
    ) -> Result<Vec<AttributionRecord>> {
        let tokens: Vec<i32> = prompt.iter().chain(completion).copied().collect();
        let targets = resolve_targets(sel, prompt.len(), completion, &mut || {
            self.top_next(&tokens)
        })?;
        self.check_occlusion(&targets, opts)?;
        let t = Instant::now();
        let plain: Vec<Target> = targets.iter().map(|r| r.target).collect();
        let outcomes = self.attributor.run(&tokens, &plain, opts)?;
        // Time split evenly when one engine call served several targets.
        let each = ms(t) / targets.len().max(1) as f64;
        // Each token's text once, however many targets (--all) show it.
        let longest = targets
            .iter()
            .map(|r| r.target.context_len)
            .max()
            .unwrap_or(0);
        let pills: Vec<TokenPill> = tokens[..longest]
            .iter()
            .map(|&id| pill(self.model, id))
            .collect();
        Ok(targets
            .iter()
            .zip(outcomes)
            .map(|(r, o)| self.record(&pills, prompt.len(), r, o, opts, each))
            .collect())
    }

    /// Attribute one merged batch request (its prompt rendered, its completion checked).
    pub fn explain_request(&mut self, m: &Merged) -> Result<Vec<AttributionRecord>> {
        let (_, prompt) = prompt_ids(self.model, &m.prompt)?;
        let completion: Vec<i32> = m
            .completion_ids
            .iter()
            .map(|&id| {
                i32::try_from(id)
                    .ok()
                    .filter(|&i| self.model.in_range(i))
                    .ok_or_else(|| {
                        input_err(
                            format!(
                                "completion id {id} is outside the vocabulary (0..{})",
                                self.model.n_vocab()
                            ),
                            "completion_ids are token ids of this model",
                        )
                    })
            })
            .collect::<Result<_>>()?;
        self.explain(&prompt, &completion, m.sel, &m.options)
    }

    /// The JSON record of one attributed target; `pills` are the sequence's tokens as shown.
    fn record(
        &self,
        pills: &[TokenPill],
        prompt_len: usize,
        r: &Resolved,
        o: Outcome,
        opts: &Options,
        elapsed_ms: f64,
    ) -> AttributionRecord {
        let t = pill(self.model, r.target.id);
        let n = r.target.context_len;
        let scores = pills[..n]
            .iter()
            .zip(&o.scores)
            .enumerate()
            .map(|(index, (p, &score))| ScoredToken {
                index,
                id: p.id,
                text: p.text.clone(),
                bytes: p.bytes.clone(),
                display: p.display.clone(),
                special: p.special,
                completion: index >= prompt_len,
                score,
            })
            .collect();
        let ig = opts.method == Method::IntegratedGradients;
        AttributionRecord {
            kind: "attribution".into(),
            id: None,
            line: None,
            shard: None,
            method: opts.method,
            aggregation: opts.agg,
            target_fn: o.target_fn,
            engine: o.engine,
            target: AttributionTarget {
                kind: if r.index.is_some() {
                    TargetKind::Completion
                } else {
                    TargetKind::Candidate
                },
                index: r.index,
                id: t.id,
                text: t.text,
                bytes: t.bytes,
                display: t.display,
                special: t.special,
                prob: o.target_prob,
            },
            context_len: n,
            scores,
            steps: ig.then_some(opts.steps),
            baseline: ig.then_some(opts.baseline),
            window: (opts.method == Method::Occlusion).then(|| opts.effective_window()),
            completeness_error: o.completeness_error,
            attention: (opts.method == Method::Attention).then(|| AttentionSelection {
                layers: opts.attention.layers.clone(),
                heads: opts.attention.heads.clone(),
                layer_agg: opts.attention.layer_agg,
            }),
            elapsed_ms,
        }
    }
}
