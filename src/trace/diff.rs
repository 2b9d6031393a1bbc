//! `ntv diff`: how far one model's next-token distributions are from another's, step by step,
//! summarised like llama.cpp's perplexity KL-divergence report (mean / median / p99 / max KL,
//! same-top-1 rate, Δp of the chosen token).
//!
//! KL is always in nats and always `KL(a ‖ b)`: `a` is the reference (the recorded trace, or
//! `--model-a`), `b` the candidate.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Trace, TraceError, TraceStep};

/// The `schema` of `ntv diff`'s JSON report.
pub const DIFF_SCHEMA: &str = "ntv.diff/1";

/// What [`kl_divergence`] uses for a `q_i` of 0 where `p_i > 0`: the true divergence is then
/// infinite, which JSON cannot carry and a summary cannot average.
pub const KL_Q_FLOOR: f64 = 1e-12;

/// `KL(p ‖ q) = Σ p_i (ln p_i − ln q_i)` in nats, over two distributions of the same length.
///
/// Zeros: terms with `p_i = 0` contribute 0 (the limit of `x ln x`); a `q_i` of 0 (or less)
/// where `p_i > 0` is replaced by [`KL_Q_FLOOR`], so a token that `p` gives mass and `q` rules
/// out costs `p_i ln(p_i / 1e-12)` instead of infinity. Every positive `q_i`, however small,
/// is used as it is, so the result is exact whenever `q` has no zeros where `p` has mass.
/// Inputs are used as given (not renormalised); a result below 0 from rounding is returned as
/// 0. A NaN input gives NaN.
///
/// # Panics
/// When the lengths differ (a programming error: the two must cover the same outcomes).
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(
        p.len(),
        q.len(),
        "kl_divergence: the distributions have different lengths"
    );
    let kl: f64 = p
        .iter()
        .zip(q)
        .filter(|&(&pi, _)| pi != 0.0)
        .map(|(&pi, &qi)| {
            let qi = if qi > 0.0 || qi.is_nan() {
                qi
            } else {
                KL_Q_FLOOR
            };
            pi * (pi.ln() - qi.ln())
        })
        .sum();
    if kl < 0.0 { 0.0 } else { kl }
}

/// `KL(softmax(a) ‖ softmax(b))` in nats, computed in f64 from two logit vectors in one joint
/// pass (online log-sum-exp for both sides, no probability vectors allocated):
/// `KL = Σ p_i (a_i − b_i) − lse(a) + lse(b)`.
///
/// Exactly 0 for bit-identical inputs. A `-inf` logit in `a` is a token `a` rules out and
/// contributes nothing; a `-inf` logit in `b` where `a` is finite gives `+inf` (no floor here:
/// these are the model's own numbers). A result below 0 from rounding is returned as 0; a NaN
/// logit, or an `a` with no finite logit, gives NaN.
///
/// # Panics
/// When the lengths differ.
pub fn kl_from_logits(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "kl_from_logits: the logit vectors have different lengths"
    );
    // a: running max, Σ exp(a_i − max), Σ exp(a_i − max)(a_i − b_i); b: running max, Σ exp.
    let (mut ma, mut sa, mut t) = (f64::NEG_INFINITY, 0.0f64, 0.0f64);
    let (mut mb, mut sb) = (f64::NEG_INFINITY, 0.0f64);
    let mut b_rules_out_a = false;
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        if x.is_nan() || y.is_nan() {
            return f64::NAN;
        }
        if y > mb {
            sb = sb * (mb - y).exp() + 1.0;
            mb = y;
        } else if y != f64::NEG_INFINITY {
            sb += (y - mb).exp();
        }
        if x == f64::NEG_INFINITY {
            continue;
        }
        if y == f64::NEG_INFINITY {
            b_rules_out_a = true;
            continue;
        }
        let d = x - y;
        if x > ma {
            let scale = (ma - x).exp();
            sa = sa * scale + 1.0;
            t = t * scale + d;
            ma = x;
        } else {
            let w = (x - ma).exp();
            sa += w;
            t += w * d;
        }
    }
    if b_rules_out_a {
        return f64::INFINITY;
    }
    let kl = t / sa - (ma + sa.ln()) + (mb + sb.ln());
    if kl < 0.0 { 0.0 } else { kl }
}

/// `ln softmax(logits)[id]` in f64 (log-sum-exp with the maximum subtracted).
fn log_softmax_at(logits: &[f32], id: usize) -> f64 {
    let max = logits
        .iter()
        .map(|&x| f64::from(x))
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    f64::from(logits[id]) - max - sum.ln()
}

/// Index of the largest logit (ties: lower index).
fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

/// One aligned step of a comparison.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct DiffStep {
    /// Case index (0-based).
    pub case_index: usize,
    /// Completion step (0-based).
    pub step: usize,
    /// `KL(p_a ‖ p_b)` of the raw model distributions (p_base), in nats.
    pub kl: f64,
    /// Both sides have the same most probable token.
    pub same_top1: bool,
    /// `p_b(chosen) − p_a(chosen)` on p_base, where `chosen` is a's token at this step.
    pub delta_p_chosen: f64,
    /// a's most probable token.
    pub top1_a: i32,
    /// b's most probable token.
    pub top1_b: i32,
}

impl DiffStep {
    /// The exact step comparison from two full logit vectors at the same position (teacher
    /// forcing along a's tokens): KL over the whole vocabulary, top-1 by logit (ties: lower id)
    /// and Δp of `chosen` from the two softmaxes.
    ///
    /// # Panics
    /// When the lengths differ or `chosen` is not an index of them.
    pub fn from_logits(case_index: usize, step: usize, a: &[f32], b: &[f32], chosen: i32) -> Self {
        let c = usize::try_from(chosen).expect("chosen token id is negative");
        let pa = log_softmax_at(a, c).exp();
        let pb = log_softmax_at(b, c).exp();
        Self {
            case_index,
            step,
            kl: kl_from_logits(a, b),
            same_top1: argmax(a) == argmax(b),
            delta_p_chosen: pb - pa,
            top1_a: argmax(a) as i32,
            top1_b: argmax(b) as i32,
        }
    }

    /// The approximate step comparison from two recorded steps (top-k only).
    ///
    /// KL is computed on a coarse-graining of the vocabulary: one outcome per token recorded
    /// on **both** sides, plus one "rest" outcome holding everything else (`1 − Σ recorded`,
    /// clamped at 0, on each side), with [`kl_divergence`]. Tokens recorded on one side only
    /// go to the rest bucket, because the other side's probability for them is unknown. By the
    /// data-processing inequality this is a lower bound of the true KL, and it is exact when
    /// both steps recorded the full vocabulary.
    ///
    /// `chosen` is a's selected token; its p_base under b is b's recorded value (selected or
    /// in the top list), or 0 when b did not record it (so Δp is then a lower bound).
    pub fn from_steps(case_index: usize, step: usize, a: &TraceStep, b: &TraceStep) -> Self {
        let mut p = Vec::with_capacity(a.top.len() + 1);
        let mut q = Vec::with_capacity(a.top.len() + 1);
        for ca in &a.top {
            if let Some(cb) = b.candidate(ca.id) {
                p.push(ca.p_base);
                q.push(cb.p_base);
            }
        }
        let rest = |v: &[f64]| (1.0 - v.iter().sum::<f64>()).max(0.0);
        let (rp, rq) = (rest(&p), rest(&q));
        p.push(rp);
        q.push(rq);
        let chosen = a.selected_id;
        let pb = if b.selected_id == chosen {
            b.selected_p_base
        } else {
            b.candidate(chosen).map_or(0.0, |c| c.p_base)
        };
        let (top1_a, top1_b) = (a.top1(), b.top1());
        Self {
            case_index,
            step,
            kl: kl_divergence(&p, &q),
            same_top1: top1_a == top1_b,
            delta_p_chosen: pb - a.selected_p_base,
            top1_a,
            top1_b,
        }
    }
}

/// `ntv diff`'s report (`ntv.diff/1`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct DiffSummary {
    /// Always `"ntv.diff/1"`.
    pub schema: String,
    /// Steps compared (all cases together).
    pub n_steps: usize,
    /// Mean KL in nats.
    pub kl_mean: f64,
    /// Median KL (linear interpolation between closest ranks).
    pub kl_median: f64,
    /// 99th percentile of KL (linear interpolation between closest ranks).
    pub kl_p99: f64,
    /// Largest KL.
    pub kl_max: f64,
    /// Percentage of steps with the same top-1 token (0–100).
    pub same_top1_pct: f64,
    /// Mean of Δp of the chosen token.
    pub delta_p_mean: f64,
    /// Root mean square of Δp of the chosen token.
    pub delta_p_rms: f64,
    /// Every compared step.
    pub steps: Vec<DiffStep>,
}

/// The `q`-quantile (0 ≤ q ≤ 1) of sorted values, by linear interpolation between the closest
/// ranks (position `q · (n − 1)`; numpy's default, R type 7). `sorted` must not be empty.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let h = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    let (a, b) = (sorted[lo], sorted[hi]);
    if lo == hi || a == b {
        a
    } else {
        a + (h - lo as f64) * (b - a)
    }
}

/// Summary statistics over compared steps. Percentiles (median, p99) interpolate linearly
/// between the closest ranks (numpy's default). With no steps every statistic is 0.
pub fn summarize(steps: Vec<DiffStep>) -> DiffSummary {
    let n = steps.len();
    let mut out = DiffSummary {
        schema: DIFF_SCHEMA.to_string(),
        n_steps: n,
        kl_mean: 0.0,
        kl_median: 0.0,
        kl_p99: 0.0,
        kl_max: 0.0,
        same_top1_pct: 0.0,
        delta_p_mean: 0.0,
        delta_p_rms: 0.0,
        steps: Vec::new(),
    };
    if n == 0 {
        return out;
    }
    let nf = n as f64;
    let mut kl: Vec<f64> = steps.iter().map(|s| s.kl).collect();
    kl.sort_by(f64::total_cmp);
    out.kl_mean = kl.iter().sum::<f64>() / nf;
    out.kl_median = percentile(&kl, 0.5);
    out.kl_p99 = percentile(&kl, 0.99);
    out.kl_max = kl[n - 1];
    out.same_top1_pct = 100.0 * steps.iter().filter(|s| s.same_top1).count() as f64 / nf;
    out.delta_p_mean = steps.iter().map(|s| s.delta_p_chosen).sum::<f64>() / nf;
    out.delta_p_rms = (steps
        .iter()
        .map(|s| s.delta_p_chosen * s.delta_p_chosen)
        .sum::<f64>()
        / nf)
        .sqrt();
    out.steps = steps;
    out
}

/// Compares two traces from their recorded top-k (see [`DiffStep::from_steps`] for the KL
/// approximation). Cases are matched by index and must have the same prompt token ids. Steps
/// are aligned by index up to the shorter case and up to (including) the first step whose
/// selected tokens differ: after it the two contexts differ, so the distributions no longer
/// answer the same question. For a comparison beyond that point, teacher-force the second
/// model along the first one's tokens ([`DiffStep::from_logits`]).
pub fn diff_traces(a: &Trace, b: &Trace) -> Result<DiffSummary, TraceError> {
    if a.cases.len() != b.cases.len() {
        return Err(TraceError::CaseCount {
            a: a.cases.len(),
            b: b.cases.len(),
        });
    }
    let mut steps = Vec::new();
    for (i, (ca, cb)) in a.cases.iter().zip(&b.cases).enumerate() {
        if ca.prompt_ids != cb.prompt_ids {
            return Err(TraceError::CaseMismatch {
                case: i,
                message: format!(
                    "the prompt token ids differ ({} and {} tokens)",
                    ca.prompt_ids.len(),
                    cb.prompt_ids.len()
                ),
            });
        }
        if ca.steps.is_empty() != cb.steps.is_empty() {
            return Err(TraceError::CaseMismatch {
                case: i,
                message: format!(
                    "one trace has no steps for it ({} and {} steps): there is nothing to compare",
                    ca.steps.len(),
                    cb.steps.len()
                ),
            });
        }
        for (j, (sa, sb)) in ca.steps.iter().zip(&cb.steps).enumerate() {
            steps.push(DiffStep::from_steps(i, j, sa, sb));
            if sa.selected_id != sb.selected_id {
                break;
            }
        }
    }
    Ok(summarize(steps))
}
