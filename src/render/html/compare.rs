//! The pages of `ntv check` and `ntv diff`: the first divergence highlighted, per-step KL as
//! a small plot, tables of the worst steps; something to attach to a failing CI job.

use maud::{Markup, html};

use super::parts::{Series, facts, fmt_num, line_plot};
use crate::render::document::Checked;
use crate::render::text::display;
use crate::trace::{CaseCheck, DiffStep, DiffSummary, Trace, TraceStep};

/// Rows of a worst-steps table.
const WORST: usize = 10;

/// What the check page draws besides the report.
#[derive(Clone, Copy)]
pub struct Traces<'a> {
    pub expected: &'a Trace,
    pub actual: &'a Trace,
    /// A token's exact text, by case index and id.
    pub text: &'a dyn Fn(usize, i32) -> String,
}

/// A recorded generation as a strip of pills, `at` marked as the divergence.
fn strip(
    ci: usize,
    steps: &[TraceStep],
    at: Option<usize>,
    text: &dyn Fn(usize, i32) -> String,
) -> Markup {
    html! {
        div.pills.strip {
            @for (i, s) in steps.iter().enumerate() {
                @let t = text(ci, s.selected_id);
                span.tok.diverge[at == Some(i)].after[at.is_some_and(|a| i > a)]
                    title=(format!("step {i} · id {} · {t:?} · p_final {}", s.selected_id, fmt_num(s.selected_p_final))) {
                    (display(&t))
                }
            }
        }
    }
}

fn case_name(c: &CaseCheck) -> String {
    match &c.id {
        Some(id) => format!("case {} ({id})", c.case_index),
        None => format!("case {}", c.case_index),
    }
}

/// `ntv check`'s page.
pub fn check_page(c: &Checked<'_>) -> Markup {
    let r = c.report;
    let body = html! {
        p.verdict.pass[r.passed].fail[!r.passed] {
            @if r.passed { "PASSED" } @else { "FAILED" }
            " · " (r.cases.iter().filter(|c| c.passed).count()) " of " (r.cases.len()) " case(s) within tolerance"
        }
        (facts(&[
            ("atol", fmt_num(r.atol)),
            ("exact tokens", r.exact_tokens.to_string()),
        ]))
        @if !c.build_notes.is_empty() {
            h2 { "Build differences" }
            ul { @for n in c.build_notes { li { (n) } } }
        }
        @for case in &r.cases {
            (check_case(c, case))
        }
    };
    super::page("check", "ntv check", None, body)
}

fn check_case(c: &Checked<'_>, case: &CaseCheck) -> Markup {
    let ci = case.case_index;
    let d = case.first_divergence.as_ref();
    let steps = c.traces.and_then(|t| {
        Some((
            &t.expected.cases.get(ci)?.steps,
            &t.actual.cases.get(ci)?.steps,
            t.text,
        ))
    });
    let aligned: Vec<DiffStep> = steps
        .map(|(e, a, _)| {
            e.iter()
                .zip(a.iter())
                .enumerate()
                .map(|(i, (e, a))| DiffStep::from_steps(ci, i, e, a))
                .collect()
        })
        .unwrap_or_default();
    let mut worst: Vec<&DiffStep> = aligned.iter().collect();
    worst.sort_by(|a, b| b.kl.total_cmp(&a.kl).then(a.step.cmp(&b.step)));
    worst.truncate(WORST);
    let piece = |id: Option<i32>| (c.piece)(ci, id);
    html! {
        section.case.pass[case.passed].fail[!case.passed] id=(format!("case-{ci}")) {
            h2 { (case_name(case)) " " span.badge { @if case.passed { "pass" } @else { "FAIL" } } }
            (facts(&[
                ("steps compared", case.steps_compared.to_string()),
                ("largest |Δp|", fmt_num(case.max_abs_diff)),
                ("tolerated near ties", case.tolerated.len().to_string()),
            ]))
            @if let Some(d) = d {
                div.divergence {
                    strong { "First divergence: step " (d.step) " (" (d.kind.as_str()) ")" }
                    @if d.near_tie { " · near tie" }
                    p { (d.detail) }
                    table.small {
                        tr { th { "" } th { "token" } th { "p" } }
                        tr { td { "recorded" } td { (piece(d.expected_id)) } td.num { (d.expected_p.map(fmt_num).unwrap_or_default()) } }
                        tr { td { "re-run" } td { (piece(d.actual_id)) } td.num { (d.actual_p.map(fmt_num).unwrap_or_default()) } }
                    }
                }
            }
            @if let Some((e, a, text)) = steps {
                h3 { "Recorded" }
                (strip(ci, e, d.map(|d| d.step), text))
                h3 { "Re-run" }
                (strip(ci, a, d.map(|d| d.step), text))
                (line_plot(
                    "KL(recorded ‖ re-run) per step, over the recorded candidates (nats)",
                    "KL",
                    &[Series { name: "KL", points: aligned.iter().map(|s| (s.step as f64, s.kl)).collect(), class: "s0" }],
                    &d.map(|d| vec![d.step as f64]).unwrap_or_default(),
                ))
                h3 { "Worst steps" }
                table.worst {
                    thead { tr { th { "step" } th { "KL" } th { "recorded" } th { "re-run" } th { "Δp chosen" } } }
                    tbody {
                        @for s in &worst {
                            tr.diverge[d.is_some_and(|d| d.step == s.step)] {
                                td.num { (s.step) }
                                td.num { (fmt_num(s.kl)) }
                                td { (piece(e.get(s.step).map(|x| x.selected_id))) }
                                td { (piece(a.get(s.step).map(|x| x.selected_id))) }
                                td.num { (fmt_num(s.delta_p_chosen)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `ntv diff`'s page.
pub fn diff_page(s: &DiffSummary) -> Markup {
    let mut cases: Vec<(usize, Vec<&DiffStep>)> = Vec::new();
    for st in &s.steps {
        match cases.last_mut() {
            Some((c, v)) if *c == st.case_index => v.push(st),
            _ => cases.push((st.case_index, vec![st])),
        }
    }
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(ci, steps)| {
            let first = steps.iter().find(|s| !s.same_top1).map(|s| s.step);
            let mut worst = steps.clone();
            worst.sort_by(|a, b| b.kl.total_cmp(&a.kl).then(a.step.cmp(&b.step)));
            worst.truncate(WORST);
            (ci, steps, first, worst)
        })
        .collect();
    let body = html! {
        (facts(&[
            ("steps", s.n_steps.to_string()),
            ("KL mean", fmt_num(s.kl_mean)),
            ("KL median", fmt_num(s.kl_median)),
            ("KL p99", fmt_num(s.kl_p99)),
            ("KL max", fmt_num(s.kl_max)),
            ("same top-1", format!("{:.1}%", s.same_top1_pct)),
            ("Δp chosen mean", fmt_num(s.delta_p_mean)),
            ("Δp chosen rms", fmt_num(s.delta_p_rms)),
        ]))
        @for (ci, steps, first, worst) in &cases {
            section.case id=(format!("case-{ci}")) {
                h2 { "case " (ci) }
                div.divergence.none[first.is_none()] {
                    @match first {
                        Some(f) => { strong { "First top-1 divergence: step " (f) } }
                        None => { "same top-1 token at every step" }
                    }
                }
                (line_plot(
                    "KL(a ‖ b) per step (nats)",
                    "KL",
                    &[Series { name: "KL", points: steps.iter().map(|s| (s.step as f64, s.kl)).collect(), class: "s0" }],
                    &first.map(|f| vec![f as f64]).unwrap_or_default(),
                ))
                h3 { "Worst steps" }
                table.worst {
                    thead { tr { th { "step" } th { "KL" } th { "same top-1" } th { "Δp chosen" } th { "top-1 a" } th { "top-1 b" } } }
                    tbody {
                        @for st in worst.iter() {
                            tr.diverge[*first == Some(st.step)] {
                                td.num { (st.step) }
                                td.num { (fmt_num(st.kl)) }
                                td { (if st.same_top1 { "yes" } else { "no" }) }
                                td.num { (fmt_num(st.delta_p_chosen)) }
                                td.num { (st.top1_a) }
                                td.num { (st.top1_b) }
                            }
                        }
                    }
                }
            }
        }
    };
    super::page("diff", "ntv diff", None, body)
}
