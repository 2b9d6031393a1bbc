//! The next-token distribution of one step and token selection (sampling.md): pure maths, no model.

pub mod chain;
pub mod import;
pub mod knob;
pub mod params;
mod penalties;
mod rng;
mod truncate;
mod vexp;

#[cfg(test)]
mod tests;

pub use chain::{Adjust, ChainInputs, DryBreakers, Stage, XtcOutcome};
pub use params::{Bias, LogitBias, Preset, SamplerOrder, SamplingParams};
pub use rng::{RngState, StreamRng};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::f64::consts::LN_2;
use truncate::{Cuts, is_after, key_cmp};

/// The pipeline stage that removed a token (the first one that did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CutStage {
    /// The constraint mask forbids the token.
    Constraint,
    /// Not among the `top_k` most probable tokens.
    TopK,
    /// Outside the nucleus (`top_p`).
    TopP,
    /// Below `min_p * p_max`.
    MinP,
    /// Banned by a logit bias of `-inf`.
    LogitBias,
    /// More than n standard deviations below the largest logit (`top_n_sigma`).
    TopNSigma,
    /// Outside the locally typical set (`typical_p`).
    Typical,
    /// Removed by XTC: above its threshold, and not the least probable such token.
    Xtc,
    /// Above Mirostat's surprise limit (v2) or outside its estimated top-k (v1).
    Mirostat,
    /// A dynamic temperature of 0 keeps only the most probable token.
    Temperature,
}

impl CutStage {
    /// The JSON name (`top_k`, `xtc`, …).
    pub fn name(self) -> &'static str {
        match self {
            CutStage::Constraint => "constraint",
            CutStage::TopK => "top_k",
            CutStage::TopP => "top_p",
            CutStage::MinP => "min_p",
            CutStage::LogitBias => "logit_bias",
            CutStage::TopNSigma => "top_n_sigma",
            CutStage::Typical => "typical",
            CutStage::Xtc => "xtc",
            CutStage::Mirostat => "mirostat",
            CutStage::Temperature => "temperature",
        }
    }
}

/// Why a step's distribution could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// The model returned no logits.
    #[error("the logits are empty (n_vocab = 0)")]
    EmptyLogits,
    /// A logit is NaN or +inf.
    #[error("logit {index} is {}", nonfinite_name(.value))]
    NonFiniteLogit {
        /// Token id of the offending logit.
        index: usize,
        /// The offending value (NaN or +inf).
        value: f32,
    },
    /// Every logit is -inf: no token has a non-zero probability.
    #[error("every logit is -inf: no token has a non-zero probability")]
    AllLogitsImpossible,
    /// The constraint forbids every token.
    #[error("the constraint allows no next token here")]
    EmptyMask,
    /// Every token the constraint allows has logit -inf (probability 0).
    #[error("every token the constraint allows has probability 0 (logit -inf)")]
    MaskZeroMass,
    /// A sampling parameter is outside its allowed range.
    #[error("invalid {name} {value}: must be {allowed}")]
    InvalidParameter {
        /// Parameter name, as in [`SamplingParams`].
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// The allowed range, in words.
        allowed: &'static str,
    },
    /// The penalties pushed a token's logit out of the finite range.
    #[error("the penalties push the logit of token {id} out of the finite range")]
    PenaltyOverflow {
        /// The token whose logit overflowed.
        id: u32,
    },
    /// A token id is not in `[0, n_vocab)`.
    #[error("token id {id} is out of range [0, {n_vocab})")]
    TokenOutOfRange {
        /// The offending id.
        id: i64,
        /// Vocabulary size.
        n_vocab: usize,
    },
}

fn nonfinite_name(value: &f32) -> &'static str {
    if value.is_nan() {
        "NaN"
    } else if *value > 0.0 {
        "+inf"
    } else {
        "-inf"
    }
}

impl SamplingError {
    /// A suggestion for the user, where one helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            SamplingError::EmptyLogits => None,
            SamplingError::NonFiniteLogit { .. } | SamplingError::AllLogitsImpossible => Some(
                "the model produced invalid numbers: try another back end (e.g. the CPU) or \
                 another model file"
                    .to_string(),
            ),
            SamplingError::EmptyMask | SamplingError::MaskZeroMass => Some(
                "the constraint cannot continue the text so far: rewind the branch, or drop or \
                 change the constraint"
                    .to_string(),
            ),
            SamplingError::InvalidParameter { name, allowed, .. } => {
                Some(format!("set {name} {allowed}, or pick a preset"))
            }
            SamplingError::PenaltyOverflow { .. } => Some(
                "use penalties of a few units (presence and frequency penalties are subtracted                  per occurrence; 0 is off)"
                    .to_string(),
            ),
            SamplingError::TokenOutOfRange { n_vocab, .. } => Some(format!(
                "token ids run from 0 to {}",
                n_vocab.saturating_sub(1)
            )),
        }
    }

    /// True for bad user input (exit code 2): an invalid parameter or an out-of-range token id.
    /// False for runtime failures (bad logits, a constraint that allows nothing).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            SamplingError::InvalidParameter { .. }
                | SamplingError::TokenOutOfRange { .. }
                | SamplingError::PenaltyOverflow { .. }
        )
    }
}

/// Max, log of the sum of `exp(x - max)`, and entropy in bits of `softmax(logits)`; rejects
/// empty logits, NaN, +inf, and all -inf.
fn softmax_stats(logits: &[f32]) -> Result<(f64, f64, f64), SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    let mut max = f64::NEG_INFINITY;
    for (index, &value) in logits.iter().enumerate() {
        if value.is_nan() || value == f32::INFINITY {
            return Err(SamplingError::NonFiniteLogit { index, value });
        }
        max = max.max(f64::from(value));
    }
    if max == f64::NEG_INFINITY {
        return Err(SamplingError::AllLogitsImpossible);
    }
    let (sum, weighted) = vexp::base_sums(logits, max);
    let log_sum = sum.ln();
    let entropy_bits = ((log_sum - weighted / sum) / LN_2).max(0.0);
    Ok((max, log_sum, entropy_bits))
}

/// Key order of the raw logits: descending, ties by lower id.
fn raw_cmp(raw: &[f32], a: u32, b: u32) -> Ordering {
    raw[b as usize]
        .partial_cmp(&raw[a as usize])
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// 1-based rank of `id` in `softmax(raw)` (ties by lower id), by counting: O(n_vocab).
fn rank_by_count(raw: &[f32], id: usize) -> u32 {
    let id = id as u32;
    let before = (0..raw.len() as u32)
        .filter(|&j| raw_cmp(raw, j, id) == Ordering::Less)
        .count();
    before as u32 + 1
}

/// Teacher-forced scoring helper: natural-log probability of `id` under `softmax(logits)`, and
/// its 1-based rank (ties by lower id).
pub fn logprob_and_rank(logits: &[f32], id: usize) -> Result<(f64, u32), SamplingError> {
    let (max, log_sum, _) = softmax_stats(logits)?;
    if id >= logits.len() {
        return Err(SamplingError::TokenOutOfRange {
            id: i64::try_from(id).unwrap_or(i64::MAX),
            n_vocab: logits.len(),
        });
    }
    let logprob = f64::from(logits[id]) - max - log_sum;
    Ok((logprob, rank_by_count(logits, id)))
}

/// Entropy in bits of `softmax(logits)`.
pub fn entropy_bits(logits: &[f32]) -> Result<f64, SamplingError> {
    softmax_stats(logits).map(|(_, _, h)| h)
}

/// Reusable buffers and the results of the latest [`Workspace::compute`]; keep one per session
/// so that no vocabulary-sized buffer is allocated after the first step.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    /// The model's logits.
    raw: Vec<f32>,
    /// Penalised logits (f64): the key of every ordering after step 2.
    zp: Vec<f64>,
    /// Stage weights: exp of the stage's scaled logit minus the largest valid one.
    w: Vec<f64>,
    /// Constraint mask (only meaningful when `constrained`).
    valid: Vec<bool>,
    constrained: bool,
    valid_count: usize,
    /// Penalty counts (all zero between calls) and the ids touched.
    counts: Vec<u32>,
    touched: Vec<u32>,
    /// Candidates; after truncation the kept ids in key order.
    cand: Vec<u32>,
    /// (id, p_final) of the kept tokens, in key order.
    kept: Vec<(u32, f64)>,
    cuts: Cuts,
    base_max: f64,
    base_log_sum: f64,
    entropy_base_bits: f64,
    /// p_temp = exp((zp - temp_max) / temp_t - temp_log_sum).
    temp_t: f64,
    temp_max: f64,
    temp_log_sum: f64,
    /// p_final = exp((zp - final_max) / temp_t) / final_sum, for kept tokens.
    final_max: f64,
    final_sum: f64,
    entropy_final_bits: f64,
    greedy: bool,
    /// The numbers come from llama.cpp's sampler chain ([`chain`]) rather than the prefix
    /// pipeline above.
    chained: bool,
    chain: chain::ChainWs,
}

impl Workspace {
    /// An empty workspace; buffers grow on the first step.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the whole pipeline of one step (sampling.md, steps 1 to 6).
    ///
    /// `logits` are the model's logits (`-inf` allowed as probability 0; NaN and +inf are
    /// errors), `context` the prompt and completion ids (the penalty window is taken from its
    /// end), `mask`: `None` = unconstrained, `Some(f)` where `f(id)` says whether `id` is allowed.
    pub fn compute<'a>(
        &'a mut self,
        logits: &[f32],
        context: &[i32],
        params: &SamplingParams,
        mask: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<Distribution<'a>, SamplingError> {
        self.compute_with(logits, context, params, mask, &ChainInputs::default())
    }

    /// [`Workspace::compute`] with the chain's own inputs (DRY's breakers, XTC's coin,
    /// Mirostat's state). Parameters that need llama.cpp's chain ([`SamplingParams::chained`])
    /// run it; the others run the prefix pipeline of sampling.md.
    pub fn compute_with<'a>(
        &'a mut self,
        logits: &[f32],
        context: &[i32],
        params: &SamplingParams,
        mask: Option<&dyn Fn(usize) -> bool>,
        inputs: &ChainInputs<'_>,
    ) -> Result<Distribution<'a>, SamplingError> {
        params.validate()?;
        let n = logits.len();
        if u32::try_from(n).is_err() {
            return Err(SamplingError::InvalidParameter {
                name: "n_vocab",
                value: n.to_string(),
                allowed: "below 2^32",
            });
        }

        // 1. p_base.
        let (base_max, base_log_sum, entropy_base_bits) = softmax_stats(logits)?;
        self.base_max = base_max;
        self.base_log_sum = base_log_sum;
        self.entropy_base_bits = entropy_base_bits;
        self.raw.clear();
        self.raw.extend_from_slice(logits);

        self.chained = params.chained();
        if self.chained {
            self.constrained = mask.is_some();
            self.valid.clear();
            self.valid_count = n;
            if let Some(allowed) = mask {
                self.valid.extend((0..n).map(allowed));
                self.valid_count = self.valid.iter().filter(|&&ok| ok).count();
                if self.valid_count == 0 {
                    return Err(SamplingError::EmptyMask);
                }
            }
            self.compute_chain(logits, context, params, inputs)?;
            return Ok(Distribution { ws: self });
        }

        // 2. Penalties.
        self.zp.clear();
        self.zp.extend(logits.iter().map(|&x| f64::from(x)));
        self.counts.resize(n, 0);
        penalties::apply(
            &mut self.zp,
            context,
            params,
            &mut self.counts,
            &mut self.touched,
        )?;

        // 3. Temperature (T = 1 for greedy).
        self.greedy = params.greedy || params.temperature == 0.0;
        let t = if self.greedy { 1.0 } else { params.temperature };
        let zp = &self.zp;
        let temp_max = zp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        self.w.resize(n, 0.0);
        let sum = vexp::scaled_exp(zp, temp_max, t, &mut self.w);
        self.temp_t = t;
        self.temp_max = temp_max;
        self.temp_log_sum = sum.ln();

        // 4. Constraint mask; stage weights over the valid tokens.
        let stage_t = match params.sampler_order {
            SamplerOrder::Hf => t,
            SamplerOrder::Llama => 1.0,
        };
        self.cand.clear();
        self.constrained = mask.is_some();
        if let Some(allowed) = mask {
            self.valid.clear();
            self.valid.extend((0..n).map(allowed));
            self.cand.extend(
                self.valid
                    .iter()
                    .enumerate()
                    .filter(|&(_, &ok)| ok)
                    .map(|(id, _)| id as u32),
            );
            if self.cand.is_empty() {
                return Err(SamplingError::EmptyMask);
            }
            let stage_max = self
                .cand
                .iter()
                .map(|&id| zp[id as usize])
                .fold(f64::NEG_INFINITY, f64::max);
            if stage_max == f64::NEG_INFINITY {
                return Err(SamplingError::MaskZeroMass);
            }
            for &id in &self.cand {
                let i = id as usize;
                self.w[i] = ((zp[i] - stage_max) / stage_t).exp();
            }
        } else if stage_t != t {
            vexp::scaled_exp(zp, temp_max, stage_t, &mut self.w);
        }
        self.valid_count = if self.constrained { self.cand.len() } else { n };

        // 5. Truncation.
        self.cuts = truncate::truncate(
            &mut self.cand,
            (!self.constrained).then_some(n),
            zp,
            &self.w,
            params.top_k,
            params.top_p,
            params.min_p,
        );

        // 6. p_final over the kept tokens, at temperature t (llama order: temperature last).
        let final_max = zp[self.cand[0] as usize];
        self.kept.clear();
        let mut sum = 0.0;
        for &id in &self.cand {
            let w = ((zp[id as usize] - final_max) / t).exp();
            sum += w;
            self.kept.push((id, w));
        }
        let mut entropy = 0.0;
        for (_, p) in &mut self.kept {
            *p /= sum;
            if *p > 0.0 {
                entropy -= *p * p.ln();
            }
        }
        self.final_max = final_max;
        self.final_sum = sum;
        self.entropy_final_bits = (entropy / LN_2).max(0.0);

        Ok(Distribution { ws: self })
    }
}

/// The distribution of one step: every number of the pipeline, per token. Borrows the
/// [`Workspace`] it was computed in. Methods taking an `id` panic if `id >= n_vocab`.
#[derive(Debug, Clone, Copy)]
pub struct Distribution<'a> {
    ws: &'a Workspace,
}

impl Distribution<'_> {
    /// Vocabulary size (length of the logits).
    pub fn n_vocab(&self) -> usize {
        self.ws.raw.len()
    }

    /// The model's probability: `softmax(z)[id]`.
    pub fn p_base(&self, id: usize) -> f64 {
        self.logprob_base(id).exp()
    }

    /// Natural log of [`Distribution::p_base`] (`-inf` for a `-inf` logit).
    pub fn logprob_base(&self, id: usize) -> f64 {
        f64::from(self.ws.raw[id]) - self.ws.base_max - self.ws.base_log_sum
    }

    /// Probability after penalties and temperature (T = 1 when greedy), over all tokens,
    /// before the constraint and truncation.
    pub fn p_temp(&self, id: usize) -> f64 {
        let ws = self.ws;
        ((ws.zp[id] - ws.temp_max) / ws.temp_t - ws.temp_log_sum).exp()
    }

    /// Final probability: renormalised over the kept tokens; 0 for cut or invalid tokens.
    pub fn p_final(&self, id: usize) -> f64 {
        if self.ws.chained {
            return if self.kept(id) {
                self.ws.chain.pfin[id]
            } else {
                0.0
            };
        }
        if self.kept(id) {
            let ws = self.ws;
            ((ws.zp[id] - ws.final_max) / ws.temp_t).exp() / ws.final_sum
        } else {
            0.0
        }
    }

    /// Whether the constraint allows `id` (always true when unconstrained).
    pub fn valid(&self, id: usize) -> bool {
        !self.ws.constrained || self.ws.valid[id]
    }

    /// Whether `id` survived truncation and is valid.
    pub fn kept(&self, id: usize) -> bool {
        let ws = self.ws;
        if ws.chained {
            return self.valid(id) && ws.chain.fate[id] == 0;
        }
        let last = ws.cand[ws.cand.len() - 1];
        self.valid(id) && !is_after(&ws.zp, id as u32, last)
    }

    /// The first stage that removed `id`; `None` when it is kept.
    pub fn cut_by(&self, id: usize) -> Option<CutStage> {
        if !self.valid(id) {
            return Some(CutStage::Constraint);
        }
        if self.kept(id) {
            return None;
        }
        let ws = self.ws;
        if ws.chained {
            return chain::fate_stage(ws.chain.fate[id]);
        }
        let id = id as u32;
        let cut = |boundary: Option<u32>| boundary.is_some_and(|b| is_after(&ws.zp, id, b));
        if cut(ws.cuts.top_k) {
            Some(CutStage::TopK)
        } else if cut(ws.cuts.top_p) {
            Some(CutStage::TopP)
        } else {
            Some(CutStage::MinP)
        }
    }

    /// The kept tokens as `(id, p_final)`, `p_final` descending, ties by lower id.
    pub fn kept_tokens(&self) -> &[(u32, f64)] {
        &self.ws.kept
    }

    /// Number of kept tokens.
    pub fn kept_count(&self) -> usize {
        self.ws.kept.len()
    }

    /// Number of tokens the constraint allows; `None` when unconstrained.
    pub fn valid_count(&self) -> Option<usize> {
        self.ws.constrained.then_some(self.ws.valid_count)
    }

    /// Entropy of `p_base` in bits, over the full vocabulary.
    pub fn entropy_base_bits(&self) -> f64 {
        self.ws.entropy_base_bits
    }

    /// Entropy of `p_final` in bits, over the kept tokens.
    pub fn entropy_final_bits(&self) -> f64 {
        self.ws.entropy_final_bits
    }

    /// The `k` most probable tokens by `p_temp` (all tokens, valid or not), descending, ties by
    /// lower id; `k` may be `n_vocab` or more (then every token is returned). Exactly: penalised
    /// logit descending, then lower id, so tokens whose probability underflows to 0 keep their
    /// logit order.
    pub fn top_by_p_temp(&self, k: usize) -> Vec<u32> {
        let zp = &self.ws.zp;
        let cmp = |a: &u32, b: &u32| key_cmp(zp, *a, *b);
        let n = self.n_vocab() as u32;
        if k == 0 {
            return Vec::new();
        }
        if k <= 64 && k < n as usize {
            // One pass keeping a small sorted list: most tokens cost one comparison.
            let mut top: Vec<u32> = Vec::with_capacity(k + 1);
            for j in 0..n {
                if top.len() == k {
                    if cmp(&j, &top[k - 1]) != Ordering::Less {
                        continue;
                    }
                    top.pop();
                }
                let at = top.partition_point(|x| cmp(x, &j) == Ordering::Less);
                top.insert(at, j);
            }
            return top;
        }
        let mut ids: Vec<u32> = (0..n).collect();
        if k < ids.len() {
            ids.select_nth_unstable_by(k - 1, cmp);
            ids.truncate(k);
        }
        ids.sort_unstable_by(cmp);
        ids
    }

    /// 1-based rank of each id in `p_base` (ties by lower id). For a few ids, one pass over the
    /// vocabulary with a binary search among them (O(n_vocab log k)); for many, one full sort.
    pub fn base_ranks(&self, ids: &[u32]) -> Vec<u32> {
        let raw = &self.ws.raw;
        let n = raw.len();
        if ids.len() > 1024 {
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_unstable_by(|a, b| raw_cmp(raw, *a, *b));
            let mut rank = vec![0u32; n];
            for (r, &id) in order.iter().enumerate() {
                rank[id as usize] = r as u32 + 1;
            }
            return ids.iter().map(|&id| rank[id as usize]).collect();
        }
        let mut queries: Vec<u32> = ids.to_vec();
        queries.sort_unstable_by(|a, b| raw_cmp(raw, *a, *b));
        queries.dedup();
        let Some(&last) = queries.last() else {
            return Vec::new();
        };
        // ahead[i]: tokens that come before queries[i] but not before queries[i - 1].
        let mut ahead = vec![0u32; queries.len()];
        for j in 0..n as u32 {
            if raw_cmp(raw, j, last) != Ordering::Less {
                continue;
            }
            let first = queries.partition_point(|&q| raw_cmp(raw, q, j) != Ordering::Greater);
            ahead[first] += 1;
        }
        let mut before = 0;
        for a in &mut ahead {
            before += *a;
            *a = before + 1;
        }
        ids.iter()
            .map(|&id| {
                let i = queries
                    .binary_search_by(|&q| raw_cmp(raw, q, id))
                    .expect("every id is among the queries");
                ahead[i]
            })
            .collect()
    }

    /// The kept token with the highest `p_final` (ties by lower id).
    pub fn greedy(&self) -> u32 {
        self.ws.kept[0].0
    }

    /// Walks the kept tokens in order accumulating `p_final` and returns the first whose
    /// cumulative sum exceeds `u` (`u` in [0, 1)); if rounding leaves `u` unreached, the last
    /// kept token with a non-zero probability.
    pub fn sample(&self, u: f64) -> u32 {
        if self.ws.chained {
            return self.ws.chain.draw(u);
        }
        let mut cumulative = 0.0;
        for &(id, p) in &self.ws.kept {
            cumulative += p;
            if cumulative > u {
                return id;
            }
        }
        self.ws
            .kept
            .iter()
            .rev()
            .find(|&&(_, p)| p > 0.0)
            .map_or(self.ws.kept[0].0, |&(id, _)| id)
    }

    /// Whether the selection is greedy: the greedy flag is set or the temperature is 0.
    pub fn is_greedy_params(&self) -> bool {
        self.ws.greedy
    }

    /// Whether llama.cpp's chain computed these numbers.
    pub fn chained(&self) -> bool {
        self.ws.chained
    }

    /// The stages the chain ran, in order (empty for the prefix pipeline and for Mirostat).
    pub fn stages(&self) -> &[Stage] {
        if self.ws.chained {
            &self.ws.chain.stages
        } else {
            &[]
        }
    }

    /// The temperature the numbers were computed with (the dynamic one when
    /// `dynatemp_range > 0`; 1 when greedy).
    pub fn temperature_used(&self) -> f64 {
        self.ws.temp_t
    }

    /// What XTC did (absent when it did not draw).
    pub fn xtc(&self) -> Option<XtcOutcome> {
        if self.ws.chained {
            self.ws.chain.xtc
        } else {
            None
        }
    }

    /// Mirostat's `mu` at this step (absent without Mirostat).
    pub fn mirostat_mu(&self) -> Option<f64> {
        if self.ws.chained {
            self.ws.chain.mirostat_mu
        } else {
            None
        }
    }

    /// Mirostat's `mu` for the next step once `id` is chosen (absent without Mirostat).
    pub fn mirostat_next_mu(&self, params: &SamplingParams, id: u32) -> Option<f64> {
        if !self.ws.chained {
            return None;
        }
        self.ws
            .chain
            .mirostat_next(params, id, self.p_temp(id as usize))
    }

    /// How the stages before truncation changed `id`'s logit: the logit bias, the penalties
    /// and DRY (zero where nothing changed).
    pub fn adjustments(&self, id: usize) -> Adjust {
        let ws = self.ws;
        if ws.chained {
            return ws
                .chain
                .adjust
                .binary_search_by_key(&(id as u32), |&(i, _)| i)
                .map_or(Adjust::default(), |j| ws.chain.adjust[j].1);
        }
        let d = ws.zp[id] - f64::from(ws.raw[id]);
        Adjust {
            penalties: d as f32,
            ..Adjust::default()
        }
    }
}

impl crate::error::Diagnose for SamplingError {
    fn is_input(&self) -> bool {
        SamplingError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        SamplingError::hint(self)
    }
}
