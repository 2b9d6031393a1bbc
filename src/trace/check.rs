//! `ntv check`: compare a re-run with a recorded case, step by step.
//!
//! Per step, in this order:
//! 1. **token**: the selected ids must be equal. After a different token the two contexts
//!    differ, so nothing later is comparable and the comparison of the case ends there.
//! 2. **probability**: for every token recorded on both sides, `p_base` and `p_final` must be
//!    within `atol`, and so must the selected token's `p_base` and `p_final`. A token recorded
//!    on one side only (the recorded sets are top-k lists, so a boundary swap can happen) is
//!    accepted when its `p_base` is at most the other side's smallest recorded `p_base` plus
//!    `atol`, i.e. when it plausibly fell just outside the other side's list.
//! 3. **entropy**: `entropy_base` and `entropy_final` must be within 100 × `atol` bits.
//! 4. **top1**: the most probable recorded token by `p_base` must be the same.
//!
//! Then the **length** (number of steps) and the stop reason must agree; before any step, the
//! **prompt** token ids must be equal.
//!
//! A *near tie* is a recorded step where a change within `atol` could flip the choice: the gap
//! between the two largest recorded `p_base` values is under `atol`, or, for a sampled step,
//! the recorded draw lies within `atol` of an inner boundary of the selected token's interval
//! of cumulative `p_final` (kept tokens by `p_final` descending, ties by lower id, as the
//! sampler walks them). A top-1 flip at a near tie is tolerated (listed in
//! [`CaseCheck::tolerated`]); a token flip at a near tie is tolerated only when
//! [`CheckOptions::exact_tokens`] is off. Anything else fails the case.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Trace, TraceCandidate, TraceCase, TraceStep};

/// The `schema` of `ntv check`'s JSON report.
pub const CHECK_SCHEMA: &str = "ntv.check/1";

/// How strict a check is.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq)]
pub struct CheckOptions {
    /// Largest accepted absolute difference of a probability (`--atol`, default 1e-4).
    pub atol: f64,
    /// Require the same token at every step (default true); when false, a token flip at a
    /// near tie is tolerated and ends the comparison of the case.
    pub exact_tokens: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            atol: 1e-4,
            exact_tokens: true,
        }
    }
}

/// What differed.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    /// The prompt token ids differ (tokenizer or template change); `step` is 0.
    Prompt,
    /// A different token was selected.
    Token,
    /// A probability moved by more than `atol`.
    Probability,
    /// The most probable token (by p_base) changed.
    Top1,
    /// An entropy (before or after the sampler) moved by more than 100 × `atol` bits.
    Entropy,
    /// The number of steps or the stop reason differs; `step` is the shorter length.
    Length,
}

impl DivergenceKind {
    /// The JSON name (`"token"`, `"probability"`, `"top1"`, `"length"`, `"prompt"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Token => "token",
            Self::Probability => "probability",
            Self::Top1 => "top1",
            Self::Entropy => "entropy",
            Self::Length => "length",
        }
    }
}

/// A difference between the recorded case ("expected") and the re-run ("actual"). Token texts
/// are left to the caller, who has the model.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct Divergence {
    /// Completion step (0-based).
    pub step: usize,
    /// What differed.
    pub kind: DivergenceKind,
    /// The recorded token: the selected one (token, length), the one whose probability moved
    /// (probability), the recorded top-1 (top1), or the first differing prompt id (prompt).
    pub expected_id: Option<i32>,
    /// The re-run's token, chosen the same way.
    pub actual_id: Option<i32>,
    /// The recorded probability: `p_final` of the selected token (token, length), the value
    /// that moved (probability; `detail` says which), `p_base` of the top-1 (top1).
    pub expected_p: Option<f64>,
    /// The re-run's probability, chosen the same way.
    pub actual_p: Option<f64>,
    /// The recorded step was a near tie (see the module documentation: top-2 `p_base` gap
    /// under `atol`, or a sampled draw within `atol` of a boundary), so a flip there is not
    /// evidence of a model change.
    pub near_tie: bool,
    /// One line for people.
    pub detail: String,
}

/// The result of checking one case.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct CaseCheck {
    /// Index of the case in the trace (0-based). [`check_case`] leaves it 0;
    /// [`check_trace`] and callers that loop over cases set it.
    pub case_index: usize,
    /// The case's `id`, echoed.
    pub id: Option<String>,
    /// Within tolerance.
    pub passed: bool,
    /// Steps compared and found within tolerance.
    pub steps_compared: usize,
    /// Largest absolute difference of any compared probability.
    pub max_abs_diff: f64,
    /// The first difference beyond tolerance (present exactly when `passed` is false).
    pub first_divergence: Option<Divergence>,
    /// Differences accepted as near ties.
    pub tolerated: Vec<Divergence>,
}

impl CaseCheck {
    fn fail(&mut self, d: Divergence) {
        self.passed = false;
        self.first_divergence = Some(d);
    }
}

/// `ntv check`'s report (`ntv.check/1`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// Always `"ntv.check/1"`.
    pub schema: String,
    /// Every case passed.
    pub passed: bool,
    /// One result per case.
    pub cases: Vec<CaseCheck>,
    /// The tolerance used.
    pub atol: f64,
    /// Whether tokens had to match exactly.
    pub exact_tokens: bool,
}

impl CheckReport {
    /// The report over `cases`, checked with `opts`.
    pub fn new(cases: Vec<CaseCheck>, opts: &CheckOptions) -> Self {
        Self {
            schema: CHECK_SCHEMA.to_string(),
            passed: cases.iter().all(|c| c.passed),
            cases,
            atol: opts.atol,
            exact_tokens: opts.exact_tokens,
        }
    }
}

/// Checks every case of `actual` against the case of `expected` with the same index. A case
/// present on one side only fails with a `length` divergence.
pub fn check_trace(expected: &Trace, actual: &Trace, opts: &CheckOptions) -> CheckReport {
    let n = expected.cases.len().max(actual.cases.len());
    let cases = (0..n)
        .map(|i| {
            let mut c = match (expected.cases.get(i), actual.cases.get(i)) {
                (Some(e), Some(a)) => check_case(e, a, opts),
                (e, a) => {
                    let id = e.or(a).and_then(|c| c.id.clone());
                    let detail = if e.is_some() {
                        "the re-run has no such case"
                    } else {
                        "the recorded trace has no such case"
                    };
                    CaseCheck {
                        case_index: i,
                        id,
                        passed: false,
                        steps_compared: 0,
                        max_abs_diff: 0.0,
                        first_divergence: Some(Divergence {
                            step: 0,
                            kind: DivergenceKind::Length,
                            expected_id: None,
                            actual_id: None,
                            expected_p: None,
                            actual_p: None,
                            near_tie: false,
                            detail: detail.to_string(),
                        }),
                        tolerated: Vec::new(),
                    }
                }
            };
            c.case_index = i;
            c
        })
        .collect();
    CheckReport::new(cases, opts)
}

/// Compares a re-run (`actual`) with a recorded case (`expected`); see the module
/// documentation for the rules. `case_index` of the result is 0: the caller sets it.
pub fn check_case(expected: &TraceCase, actual: &TraceCase, opts: &CheckOptions) -> CaseCheck {
    let atol = opts.atol;
    let mut out = CaseCheck {
        case_index: 0,
        id: expected.id.clone(),
        passed: true,
        steps_compared: 0,
        max_abs_diff: 0.0,
        first_divergence: None,
        tolerated: Vec::new(),
    };

    let text_changed = match (&expected.prompt_text, &actual.prompt_text) {
        (Some(e), Some(a)) if e != a => Some(
            e.char_indices()
                .zip(a.chars())
                .find(|((_, x), y)| x != y)
                .map(|((i, _), _)| i)
                .unwrap_or(e.len().min(a.len())),
        ),
        _ => None,
    };
    if expected.prompt_ids != actual.prompt_ids || text_changed.is_some() {
        let (e, a) = (&expected.prompt_ids, &actual.prompt_ids);
        let at = e.iter().zip(a).take_while(|(x, y)| x == y).count();
        let detail = match text_changed {
            Some(byte) => format!(
                "the prompt changed: the rendered prompt text differs from byte {byte} on (the chat template or its rendering changed); prompt tokens differ from position {at} on ({} recorded, {} now)",
                e.len(),
                a.len()
            ),
            None => format!(
                "the prompt tokens differ from prompt position {at} on ({} recorded, {} now): {}",
                e.len(),
                a.len(),
                if expected.prompt_text.is_some() && actual.prompt_text.is_some() {
                    "the prompt text is the same, so the tokenizer changed"
                } else {
                    "the prompt, template or tokenizer changed"
                }
            ),
        };
        out.fail(Divergence {
            step: 0,
            kind: DivergenceKind::Prompt,
            expected_id: e.get(at).copied(),
            actual_id: a.get(at).copied(),
            expected_p: None,
            actual_p: None,
            near_tie: false,
            detail,
        });
        return out;
    }

    let n = expected.steps.len().min(actual.steps.len());
    for i in 0..n {
        let (e, a) = (&expected.steps[i], &actual.steps[i]);
        let (max_diff, worst) = compare_probs(i, e, a, atol);
        out.max_abs_diff = out.max_abs_diff.max(max_diff);

        if e.selected_id != a.selected_id {
            let tie = near_tie(e, atol);
            let d = Divergence {
                step: i,
                kind: DivergenceKind::Token,
                expected_id: Some(e.selected_id),
                actual_id: Some(a.selected_id),
                expected_p: Some(e.selected_p_final),
                actual_p: Some(a.selected_p_final),
                near_tie: tie,
                detail: format!(
                    "expected token {} (p_final {:.6}), got token {} (p_final {:.6}){}",
                    e.selected_id,
                    e.selected_p_final,
                    a.selected_id,
                    a.selected_p_final,
                    match (&worst, tie) {
                        (Some(w), _) => format!("; {}", w.detail),
                        (None, true) => "; the recorded step was a near tie".to_string(),
                        (None, false) => String::new(),
                    }
                ),
            };
            if !opts.exact_tokens && tie && worst.is_none() {
                out.tolerated.push(d);
            } else {
                out.fail(d);
            }
            // The contexts differ from here on: nothing later is comparable.
            return out;
        }
        if let Some(d) = worst {
            out.fail(d);
            return out;
        }
        if let Some(d) = compare_entropies(i, e, a, atol) {
            out.fail(d);
            return out;
        }
        let (t_e, t_a) = (e.top1(), a.top1());
        if t_e != t_a {
            let tie = base_gap(e) < atol;
            let d = Divergence {
                step: i,
                kind: DivergenceKind::Top1,
                expected_id: Some(t_e),
                actual_id: Some(t_a),
                expected_p: e.candidate(t_e).map(|c| c.p_base),
                actual_p: a.candidate(t_a).map(|c| c.p_base),
                near_tie: tie,
                detail: format!(
                    "the most probable token changed from {t_e} to {t_a} (top-2 p_base gap of \
                     the recorded step {:.3e}, atol {atol:.1e})",
                    base_gap(e)
                ),
            };
            if tie {
                out.tolerated.push(d);
            } else {
                out.fail(d);
                return out;
            }
        }
        out.steps_compared = i + 1;
    }

    let (ne, na) = (expected.steps.len(), actual.steps.len());
    if ne != na || expected.stop_reason != actual.stop_reason {
        out.fail(Divergence {
            step: n,
            kind: DivergenceKind::Length,
            expected_id: expected.steps.get(n).map(|s| s.selected_id),
            actual_id: actual.steps.get(n).map(|s| s.selected_id),
            expected_p: expected.steps.get(n).map(|s| s.selected_p_final),
            actual_p: actual.steps.get(n).map(|s| s.selected_p_final),
            near_tie: false,
            detail: format!(
                "expected {ne} steps (stop: {}), got {na} (stop: {})",
                expected.stop_reason, actual.stop_reason
            ),
        });
    }
    out
}

/// |x - y|, with NaN counted as an infinite difference.
fn abs_diff(x: f64, y: f64) -> f64 {
    let d = (x - y).abs();
    if d.is_nan() { f64::INFINITY } else { d }
}

fn min_p_base(top: &[TraceCandidate]) -> f64 {
    top.iter().map(|c| c.p_base).fold(f64::INFINITY, f64::min)
}

/// Entropies may move by [`ENTROPY_TOL_PER_ATOL`] × `atol` bits (they sum over the whole
/// vocabulary, so they move more than any one probability).
pub const ENTROPY_TOL_PER_ATOL: f64 = 100.0;

/// The first of the step's two entropies that moved beyond tolerance.
fn compare_entropies(i: usize, e: &TraceStep, a: &TraceStep, atol: f64) -> Option<Divergence> {
    let tol = ENTROPY_TOL_PER_ATOL * atol;
    [
        ("entropy_base", e.entropy_base, a.entropy_base),
        ("entropy_final", e.entropy_final, a.entropy_final),
    ]
    .into_iter()
    .find(|(_, x, y)| (x - y).abs() > tol)
    .map(|(what, x, y)| Divergence {
        step: i,
        kind: DivergenceKind::Entropy,
        expected_id: Some(e.selected_id),
        actual_id: Some(a.selected_id),
        expected_p: None,
        actual_p: None,
        near_tie: false,
        detail: format!(
            "{what} moved from {x:.6} to {y:.6} bits (by {:.3e}, tolerance {tol:.1e} = {ENTROPY_TOL_PER_ATOL} × atol)",
            (x - y).abs()
        ),
    })
}

/// The largest compared difference at a step, and the worst difference beyond `atol`.
fn compare_probs(
    step: usize,
    e: &TraceStep,
    a: &TraceStep,
    atol: f64,
) -> (f64, Option<Divergence>) {
    let mut max = 0.0f64;
    let mut worst: Option<(f64, Divergence)> = None;
    let mut note = |excess: f64, d: Divergence| {
        if excess > atol && worst.as_ref().is_none_or(|(w, _)| excess > *w) {
            worst = Some((excess, d));
        }
    };
    let moved = |id: i32, what: &str, x: f64, y: f64, diff: f64| Divergence {
        step,
        kind: DivergenceKind::Probability,
        expected_id: Some(id),
        actual_id: Some(id),
        expected_p: Some(x),
        actual_p: Some(y),
        near_tie: false,
        detail: format!(
            "{what} of token {id} moved from {x:.6} to {y:.6} (by {diff:.3e}, atol {atol:.1e})"
        ),
    };

    if e.selected_id == a.selected_id {
        for (what, x, y) in [
            ("p_base", e.selected_p_base, a.selected_p_base),
            ("p_final", e.selected_p_final, a.selected_p_final),
        ] {
            let diff = abs_diff(x, y);
            max = max.max(diff);
            note(diff, moved(e.selected_id, what, x, y, diff));
        }
    }
    for ce in &e.top {
        match a.candidate(ce.id) {
            Some(ca) => {
                for (what, x, y) in [
                    ("p_base", ce.p_base, ca.p_base),
                    ("p_final", ce.p_final, ca.p_final),
                ] {
                    let diff = abs_diff(x, y);
                    max = max.max(diff);
                    note(diff, moved(ce.id, what, x, y, diff));
                }
            }
            None => {
                let floor = if a.top.is_empty() {
                    0.0
                } else {
                    min_p_base(&a.top)
                };
                let excess = abs_diff(ce.p_base, floor.min(ce.p_base));
                let d = Divergence {
                    step,
                    kind: DivergenceKind::Probability,
                    expected_id: Some(ce.id),
                    actual_id: None,
                    expected_p: Some(ce.p_base),
                    actual_p: None,
                    near_tie: false,
                    detail: format!(
                        "token {} (recorded p_base {:.6}) is missing from the re-run's {} \
                         recorded candidates (smallest p_base there {:.6})",
                        ce.id,
                        ce.p_base,
                        a.top.len(),
                        floor
                    ),
                };
                note(excess, d);
            }
        }
    }
    for ca in a.top.iter().filter(|c| e.candidate(c.id).is_none()) {
        let floor = if e.top.is_empty() {
            0.0
        } else {
            min_p_base(&e.top)
        };
        let excess = abs_diff(ca.p_base, floor.min(ca.p_base));
        let d = Divergence {
            step,
            kind: DivergenceKind::Probability,
            expected_id: None,
            actual_id: Some(ca.id),
            expected_p: None,
            actual_p: Some(ca.p_base),
            near_tie: false,
            detail: format!(
                "token {} (p_base {:.6} now) is missing from the {} recorded candidates \
                 (smallest recorded p_base {:.6})",
                ca.id,
                ca.p_base,
                e.top.len(),
                floor
            ),
        };
        note(excess, d);
    }
    (max, worst.map(|(_, d)| d))
}

/// Gap between the two largest recorded p_base values (infinite with fewer than two).
fn base_gap(step: &TraceStep) -> f64 {
    let (mut p1, mut p2) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for c in &step.top {
        if c.p_base > p1 {
            p2 = p1;
            p1 = c.p_base;
        } else if c.p_base > p2 {
            p2 = c.p_base;
        }
    }
    if p2.is_finite() {
        p1 - p2
    } else {
        f64::INFINITY
    }
}

/// A change within `atol` could have flipped this step's choice (see the module docs).
fn near_tie(step: &TraceStep, atol: f64) -> bool {
    base_gap(step) < atol || draw_near_boundary(step, atol)
}

/// A sampled step whose draw lies within `atol` of an inner boundary of the selected token's
/// cumulative-p_final interval, computed from the recorded candidates.
fn draw_near_boundary(step: &TraceStep, atol: f64) -> bool {
    let Some(u) = step.draw else {
        return false;
    };
    let mut kept: Vec<&TraceCandidate> = step.top.iter().filter(|c| c.p_final > 0.0).collect();
    kept.sort_by(|a, b| b.p_final.total_cmp(&a.p_final).then(a.id.cmp(&b.id)));
    let mut cum = 0.0;
    for (i, c) in kept.iter().enumerate() {
        let next = cum + c.p_final;
        if c.id == step.selected_id {
            return (i > 0 && (u - cum).abs() < atol) || (u - next).abs() < atol;
        }
        cum = next;
    }
    false
}

#[cfg(test)]
pub(super) fn test_near_tie(step: &TraceStep, atol: f64) -> bool {
    near_tie(step, atol)
}
