//! One entry point over the three engines: pick the engine a method needs, create it once
//! (lazily, sized to the longest context seen so far) and attribute targets with it.
//!
//! - `attention` and `occlusion` run through llama.cpp on the model already loaded (quantised
//!   weights, any architecture);
//! - the gradient methods run through the autograd forward ([`AutogradModel`]), loaded from the
//!   same GGUF file on first use.
//!
//! Every result carries one score per context token, the engine that computed it and the
//! target's probability under that engine.

use crate::engine::{AttentionCapture, ContextOptions, Decoder, Model, Occluder};

use super::AttributionError;
use super::attention::{self, AttentionOptions};
use super::autograd::{self, Agg, AutogradModel, Baseline, GradMethod, SharedForward, TargetFn};
use super::occlusion::{self, OcclusionAgg};

/// An attribution method.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Attention weights from the predicting position (llama.cpp; every architecture).
    Attention,
    /// Leave-one-out: the drop in log p(target) without each token (llama.cpp).
    Occlusion,
    /// |d p(target) / d embedding| (autograd).
    Saliency,
    /// embedding ⊙ gradient (autograd).
    #[value(name = "input_x_gradient", alias = "input-x-gradient", alias = "ixg")]
    #[serde(rename = "input_x_gradient")]
    InputXGradient,
    /// Gauss–Legendre path integral of the gradient from a baseline (autograd).
    #[value(
        name = "integrated_gradients",
        alias = "integrated-gradients",
        alias = "ig"
    )]
    IntegratedGradients,
}

impl Method {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::Occlusion => "occlusion",
            Self::Saliency => "saliency",
            Self::InputXGradient => "input_x_gradient",
            Self::IntegratedGradients => "integrated_gradients",
        }
    }

    /// The target function used when none is asked for: p for the gradient methods (Inseq),
    /// log p for occlusion, none for attention (it does not look at the target).
    pub fn default_target_fn(self) -> Option<TargetFn> {
        match self {
            Self::Attention => None,
            Self::Occlusion => Some(TargetFn::Logprob),
            _ => Some(TargetFn::Prob),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = AttributionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, false).map_err(|_| {
            AttributionError::BadInput(format!(
                "unknown method `{s}` (use attention, occlusion, saliency, input_x_gradient or integrated_gradients)"
            ))
        })
    }
}

/// Which engine computed a result.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum Engine {
    /// llama.cpp on the model file's own (possibly quantised) weights.
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
    /// ntv's own forward and backward passes (f32 arithmetic) over the model file's own weights.
    #[serde(rename = "autograd")]
    Autograd,
}

/// Integrated gradients' baseline, as chosen on the command line.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum BaselineChoice {
    /// The unknown/pad token's embedding at every position, end-of-turn tokens kept (Inseq).
    #[default]
    Unk,
    /// All-zero embeddings (badly conditioned for RMSNorm models such as llama: the first
    /// normalisation divides by ~0).
    Zero,
}

/// How to attribute: method and its options.
#[derive(Debug, Clone)]
pub struct Options {
    pub method: Method,
    pub agg: Agg,
    /// `None` = the method's default ([`Method::default_target_fn`]).
    pub target_fn: Option<TargetFn>,
    /// Layers, heads and layer aggregation (attention only).
    pub attention: AttentionOptions,
    /// Integrated gradients' quadrature nodes.
    pub steps: usize,
    pub baseline: BaselineChoice,
    /// Occlusion: tokens per occluded span; `None` = 1 (exact leave-one-out), not asked for.
    pub window: Option<usize>,
    /// Progress and cancellation (see [`super::Watch`]); the default reports to nobody.
    pub watch: super::Watch,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            method: Method::Attention,
            agg: Agg::Inseq,
            target_fn: None,
            attention: AttentionOptions::default(),
            steps: 50,
            baseline: BaselineChoice::Unk,
            window: None,
            watch: super::Watch::default(),
        }
    }
}

/// Integrated gradients' node count `n`, as given in `field` (`--steps`, a batch line's
/// `"steps"`): at least 1, at most [`crate::limits::MAX_IG_STEPS`], refused before any work.
pub fn check_steps(n: usize, field: &str) -> crate::error::Result<usize> {
    const HINT: &str =
        "50 nodes is Inseq's default; more lower the completeness error each record reports";
    if n == 0 {
        return Err(crate::error::input_err(
            format!("{field} 0: integrated gradients needs at least one node"),
            HINT,
        ));
    }
    if n > crate::limits::MAX_IG_STEPS {
        return Err(crate::error::input_err(
            format!(
                "{field} {n} is more than ntv's limit of {} nodes",
                crate::limits::MAX_IG_STEPS
            ),
            HINT,
        ));
    }
    Ok(n)
}

/// Occlusion's window `n`, as given in `field` (`--window`, a batch line's `"window"`): at
/// least 1 (its upper bound, the context length, is checked once the context is known).
pub fn check_window(n: usize, field: &str) -> crate::error::Result<usize> {
    if n == 0 {
        return Err(crate::error::input_err(
            format!("{field} 0: occlusion removes spans of at least one token"),
            "--window 1 is exact leave-one-out (the default); --window N removes N tokens at a time",
        ));
    }
    Ok(n)
}

impl Options {
    /// Occlusion's span length in effect (1 = leave-one-out).
    pub fn effective_window(&self) -> usize {
        self.window.unwrap_or(1)
    }

    /// The target function in effect (`None` for attention).
    pub fn effective_target_fn(&self) -> Option<TargetFn> {
        match self.method {
            Method::Attention => None,
            m => self.target_fn.or(m.default_target_fn()),
        }
    }
}

/// One target: the token predicted after `tokens[..context_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub context_len: usize,
    pub id: i32,
}

/// The attribution of one target.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One score per context token, aggregated as asked.
    pub scores: Vec<f64>,
    /// Signed per-token values before aggregation (gradient methods: sum over the hidden
    /// dimension; occlusion: the drop), when the method has them.
    pub raw: Option<Vec<f64>>,
    /// p(target) under the engine that computed the scores.
    pub target_prob: f64,
    pub engine: Engine,
    /// The target function differentiated / occluded (`None` for attention).
    pub target_fn: Option<TargetFn>,
    /// Integrated gradients: |Σ signed scores − (f(input) − f(baseline))|.
    pub completeness_error: Option<f64>,
}

/// Engines for one model, created on first use and kept for the next targets.
pub struct Attributor<'m> {
    model: &'m Model,
    threads: i32,
    max_tokens: usize,
    capture: Option<AttentionCapture<'m>>,
    capture_len: usize,
    /// The ordinary decoder: it finds default targets ([`Attributor::next_logits`]) and gives
    /// attention its p(target), so a context it chose a target for is not decoded again.
    decoder: Option<Decoder<'m>>,
    decoder_len: usize,
    /// The largest logical batch the decoder may use.
    n_batch: u32,
    occluder: Option<Occluder<'m>>,
    occluder_len: usize,
    autograd: Option<AutogradModel>,
    /// The autograd engine's activation budget (bytes).
    budget: usize,
    /// The last saliency / input×gradient forward pass, kept for the next targets on the
    /// same sequence (dropped before integrated gradients, which needs the budget).
    shared: Option<SharedForward>,
    /// The autograd engine's threads when fewer than the cores were asked for (`-t`): its
    /// products and element-wise steps split their work on the current rayon pool.
    pool: Option<rayon::ThreadPool>,
}

/// Room for `n` tokens, rounded up so that slightly longer contexts reuse the engine.
fn room(n: usize, max: usize) -> usize {
    n.max(64).next_power_of_two().min(max.max(n))
}

impl<'m> Attributor<'m> {
    /// Engines for `model` with the threads of `ctx`, for contexts of at most `ctx.n_ctx`
    /// tokens.
    pub fn new(model: &'m Model, ctx: &ContextOptions) -> Self {
        let (threads, max_tokens) = (ctx.n_threads, ctx.n_ctx as usize);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = (threads >= 1 && (threads as usize) < cores)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads as usize)
                    .thread_name(|i| format!("ntv-autograd-{i}"))
                    .build()
                    .ok()
            })
            .flatten();
        Self {
            model,
            threads,
            max_tokens,
            capture: None,
            capture_len: 0,
            decoder: None,
            decoder_len: 0,
            n_batch: ctx.n_batch.max(1),
            occluder: None,
            occluder_len: 0,
            autograd: None,
            budget: autograd::DEFAULT_ACTIVATION_BUDGET,
            shared: None,
            pool,
        }
    }

    /// The gradient methods' activation budget in bytes (`--max-memory`; default
    /// [`autograd::DEFAULT_ACTIVATION_BUDGET`]).
    pub fn set_activation_budget(&mut self, bytes: usize) {
        self.budget = bytes;
        self.shared = None;
        if let Some(m) = &mut self.autograd {
            m.set_activation_budget(bytes);
        }
    }

    /// The autograd model, loading (dequantising) it on first use.
    pub fn autograd(&mut self) -> Result<&AutogradModel, AttributionError> {
        if self.autograd.is_none() {
            let mut m = AutogradModel::load(&self.model.info().path)?;
            m.set_activation_budget(self.budget);
            self.autograd = Some(m);
        }
        Ok(self.autograd.as_ref().expect("loaded above"))
    }

    fn check_len(&self, n: usize) -> Result<(), AttributionError> {
        if n == 0 {
            return Err(AttributionError::BadInput(
                "the target has no context: there is nothing to attribute it to".into(),
            ));
        }
        if n > self.max_tokens {
            return Err(crate::engine::EngineError::ContextFull {
                needed: n,
                n_ctx: self.max_tokens,
                trained: self.model.info().n_ctx_train as usize,
            }
            .into());
        }
        Ok(())
    }

    fn ensure_capture(&mut self, n: usize) -> Result<(), AttributionError> {
        if self.capture.is_none() || self.capture_len < n {
            self.capture = None; // free the old context first
            let len = room(n, self.max_tokens);
            self.capture = Some(AttentionCapture::new(self.model, len, self.threads)?);
            self.capture_len = len;
        }
        Ok(())
    }

    fn ensure_decoder(&mut self, n: usize) -> Result<(), AttributionError> {
        if self.decoder.is_none() || self.decoder_len < n {
            self.decoder = None; // free the old context first
            let len = room(n, self.max_tokens);
            let opts = ContextOptions {
                n_ctx: len as u32,
                n_threads: self.threads,
                n_batch: self.n_batch.min(len as u32),
            };
            self.decoder = Some(Decoder::new(self.model, &opts)?);
            self.decoder_len = len;
        }
        Ok(())
    }

    /// The model's next-token logits after `context`, from the ordinary decoder (which keeps
    /// the context in its KV cache for the next request, and for attention's p(target)).
    pub fn next_logits(&mut self, context: &[i32]) -> Result<&[f32], AttributionError> {
        self.check_len(context.len())?;
        self.ensure_decoder(context.len())?;
        let dec = self.decoder.as_mut().expect("created above");
        Ok(dec.eval(context)?)
    }

    fn occluder(&mut self, n: usize) -> Result<&mut Occluder<'m>, AttributionError> {
        if self.occluder.is_none() || self.occluder_len < n {
            self.occluder = None;
            let len = room(n, self.max_tokens);
            self.occluder = Some(Occluder::new(self.model, len, self.threads)?);
            self.occluder_len = len;
        }
        Ok(self.occluder.as_mut().expect("created above"))
    }

    /// Attribute each target (context `tokens[..t.context_len]`) with `opts`. Attention serves
    /// every target from one decode of the longest context; the other methods take the targets
    /// one by one.
    pub fn run(
        &mut self,
        tokens: &[i32],
        targets: &[Target],
        opts: &Options,
    ) -> Result<Vec<Outcome>, AttributionError> {
        let out = self.run_engines(tokens, targets, opts)?;
        // Checked where the numbers are made: a model with NaN weights (or an engine that
        // overflowed) must not produce a record with NaN scores.
        for (t, o) in targets.iter().zip(&out) {
            if !o.target_prob.is_finite() || o.scores.iter().any(|x| !x.is_finite()) {
                return Err(AttributionError::NonFinite {
                    id: t.id,
                    context_len: t.context_len,
                });
            }
        }
        Ok(out)
    }

    fn run_engines(
        &mut self,
        tokens: &[i32],
        targets: &[Target],
        opts: &Options,
    ) -> Result<Vec<Outcome>, AttributionError> {
        for t in targets {
            if t.context_len > tokens.len() {
                return Err(AttributionError::BadInput(format!(
                    "a target's context ({} tokens) is longer than the sequence ({})",
                    t.context_len,
                    tokens.len()
                )));
            }
            self.check_len(t.context_len)?;
            if t.id < 0 || t.id as usize >= self.model.n_vocab() {
                return Err(crate::engine::EngineError::TokenOutOfRange {
                    id: t.id.into(),
                    n_vocab: self.model.n_vocab(),
                }
                .into());
            }
        }
        let target_fn = opts.effective_target_fn();
        match opts.method {
            Method::Attention => {
                let longest = targets.iter().map(|t| t.context_len).max().unwrap_or(0);
                if longest == 0 {
                    return Ok(Vec::new());
                }
                let mut aopts = opts.attention.clone();
                aopts.raw = opts.agg != Agg::Inseq;
                let rows: Vec<(usize, i32)> =
                    targets.iter().map(|t| (t.context_len - 1, t.id)).collect();
                opts.watch.add_total(1);
                opts.watch.check()?;
                self.ensure_capture(longest)?;
                self.ensure_decoder(longest)?;
                let cap = self.capture.as_mut().expect("created above");
                let dec = self.decoder.as_mut().expect("created above");
                let out = attention::attribute_many(cap, dec, &tokens[..longest], &rows, &aopts)?;
                opts.watch.advance(1);
                Ok(out
                    .into_iter()
                    .map(|a| Outcome {
                        scores: a.scores,
                        raw: None,
                        target_prob: a.target_prob,
                        engine: Engine::LlamaCpp,
                        target_fn: None,
                        completeness_error: None,
                    })
                    .collect())
            }
            Method::Occlusion => {
                let agg = match opts.agg {
                    Agg::Inseq => OcclusionAgg::Inseq,
                    Agg::Sum => OcclusionAgg::Raw,
                    Agg::L2 => OcclusionAgg::Abs,
                };
                let f = target_fn.unwrap_or(TargetFn::Logprob);
                let window = opts.effective_window();
                let mut out = Vec::with_capacity(targets.len());
                // Units: decoded tokens, which the time is proportional to.
                opts.watch.add_total(
                    targets
                        .iter()
                        .map(|t| crate::engine::occlusion_cost(t.context_len, window) as u64)
                        .sum(),
                );
                for t in targets {
                    opts.watch.check()?;
                    let occ = self.occluder(t.context_len)?;
                    let o = occlusion::attribute_windowed(
                        occ,
                        &tokens[..t.context_len],
                        t.id,
                        f,
                        agg,
                        window,
                        &opts.watch,
                    )?;
                    out.push(Outcome {
                        target_prob: o.target_prob(),
                        scores: o.scores,
                        raw: Some(o.delta),
                        engine: Engine::LlamaCpp,
                        target_fn: Some(f),
                        completeness_error: None,
                    });
                }
                Ok(out)
            }
            m => {
                let f = target_fn.unwrap_or(TargetFn::Prob);
                let steps = opts.steps;
                let baseline_choice = opts.baseline;
                let agg = opts.agg;
                self.autograd()?;
                let model = self.autograd.as_ref().expect("loaded above");
                let method = match m {
                    Method::Saliency => GradMethod::Saliency,
                    Method::InputXGradient => GradMethod::InputXGradient,
                    _ => GradMethod::IntegratedGradients {
                        steps,
                        baseline: match baseline_choice {
                            BaselineChoice::Unk => model.default_baseline(),
                            BaselineChoice::Zero => Baseline::Zero,
                        },
                    },
                };
                if matches!(m, Method::Saliency | Method::InputXGradient) {
                    return self.shared_gradients(tokens, targets, &method, f, agg, &opts.watch);
                }
                // Integrated gradients needs the whole budget.
                self.shared = None;
                let model = self.autograd.as_ref().expect("loaded above");
                let mut out = Vec::with_capacity(targets.len());
                for t in targets {
                    let ctx: Vec<u32> = tokens[..t.context_len].iter().map(|&i| i as u32).collect();
                    let run = || {
                        autograd::attribute_watched(
                            model,
                            &ctx,
                            t.id as u32,
                            method.clone(),
                            f,
                            agg,
                            &opts.watch,
                        )
                    };
                    let g = match &self.pool {
                        Some(pool) => pool.install(run)?,
                        None => run()?,
                    };
                    out.push(grad_outcome(g, f));
                }
                Ok(out)
            }
        }
    }

    /// Saliency or input×gradient of every target from one forward pass of the longest
    /// context, kept for later calls on the same sequence: each target costs one backward
    /// pass, and a target already done (the other of the two methods) none.
    fn shared_gradients(
        &mut self,
        tokens: &[i32],
        targets: &[Target],
        method: &GradMethod,
        f: TargetFn,
        agg: Agg,
        watch: &super::Watch,
    ) -> Result<Vec<Outcome>, AttributionError> {
        let longest = targets.iter().map(|t| t.context_len).max().unwrap_or(0);
        if longest == 0 {
            return Ok(Vec::new());
        }
        let seq: Vec<u32> = tokens[..longest].iter().map(|&i| i as u32).collect();
        let model = self.autograd.as_ref().expect("loaded by the caller");
        let (shared, pool) = (&mut self.shared, &self.pool);
        let install = |f: &mut (dyn FnMut() -> Result<(), AttributionError> + Send)| match pool {
            Some(p) => p.install(f),
            None => f(),
        };
        watch.add_total(targets.len() as u64);
        if !shared.as_ref().is_some_and(|s| s.covers(&seq)) {
            *shared = None; // free the old pass first
            watch.check()?;
            install(&mut || {
                *shared = Some(SharedForward::new(model, &seq)?);
                Ok(())
            })?;
        }
        let pass = shared.as_mut().expect("made above");
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            watch.check()?;
            let ctx = &seq[..t.context_len];
            let mut g = None;
            install(&mut || {
                g = Some(pass.attribute(model, ctx, t.id as u32, method, f, agg)?);
                Ok(())
            })?;
            watch.advance(1);
            out.push(grad_outcome(g.expect("computed above"), f));
        }
        Ok(out)
    }
}

fn grad_outcome(g: autograd::GradAttribution, f: TargetFn) -> Outcome {
    Outcome {
        scores: g.scores,
        raw: Some(g.raw),
        target_prob: g.target_prob,
        engine: Engine::Autograd,
        target_fn: Some(f),
        completeness_error: g.completeness_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for m in [
            Method::Attention,
            Method::Occlusion,
            Method::Saliency,
            Method::InputXGradient,
            Method::IntegratedGradients,
        ] {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::String(m.name().into())
            );
        }
        assert_eq!("ig".parse::<Method>().unwrap(), Method::IntegratedGradients);
        assert!("lime".parse::<Method>().is_err());
    }

    #[test]
    fn target_function_defaults() {
        let mut o = Options::default();
        assert_eq!(o.effective_target_fn(), None);
        o.method = Method::Occlusion;
        assert_eq!(o.effective_target_fn(), Some(TargetFn::Logprob));
        o.method = Method::Saliency;
        assert_eq!(o.effective_target_fn(), Some(TargetFn::Prob));
        o.target_fn = Some(TargetFn::Logit);
        assert_eq!(o.effective_target_fn(), Some(TargetFn::Logit));
        o.method = Method::Attention;
        assert_eq!(o.effective_target_fn(), None);
    }

    #[test]
    fn occlusion_window_defaults_to_leave_one_out_and_refuses_zero() {
        let mut o = Options::default();
        assert_eq!(o.effective_window(), 1);
        o.window = Some(8);
        assert_eq!(o.effective_window(), 8);
        assert_eq!(check_window(3, "--window").unwrap(), 3);
        assert!(check_window(0, "--window").unwrap_err().is_input());
    }

    #[test]
    fn engine_room_rounds_up_within_the_limit() {
        assert_eq!(room(10, 4096), 64);
        assert_eq!(room(300, 4096), 512);
        assert_eq!(room(3000, 4096), 4096);
        assert_eq!(room(3000, 2000), 3000);
    }
}
