//! Unit tests of traces on hand-made data: file round trips and errors, KL values, summaries,
//! checks and trace diffs.

use super::check::test_near_tie;
use super::diff::percentile;
use super::*;
use crate::record::{Candidate, Dist, SelectedBy};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[track_caller]
fn assert_close(a: f64, b: f64, tol: f64) {
    assert!(close(a, b, tol), "{a} vs {b} (tol {tol})");
}

fn cand(id: i32, p_base: f64, p_final: f64) -> TraceCandidate {
    TraceCandidate {
        id,
        p_base,
        p_final,
    }
}

/// A greedy step selecting `top[0]` (by p_base) with these candidates.
fn step(top: &[(i32, f64, f64)]) -> TraceStep {
    let mut top: Vec<TraceCandidate> = top.iter().map(|&(i, b, f)| cand(i, b, f)).collect();
    sort_by_p_base(&mut top);
    let sel = top[0];
    TraceStep {
        selected_id: sel.id,
        selected_p_base: sel.p_base,
        selected_p_final: sel.p_final,
        top,
        entropy_base: 1.0,
        entropy_final: 0.5,
        draw: None,
    }
}

fn case(steps: Vec<TraceStep>) -> TraceCase {
    TraceCase {
        id: Some("c1".into()),
        model: TraceModel {
            path: "m.gguf".into(),
            fingerprint: crate::session::Fingerprint {
                size: 123,
                sha256_head_tail: "ab".repeat(32),
            },
            architecture: "llama".into(),
            dtype: "Q4_1".into(),
            hub: None,
        },
        prompt: "Hi".into(),
        system: String::new(),
        messages: None,
        chat_template: true,
        parse_special: true,
        prompt_text: None,
        params: SamplingParams::default(),
        constraint: None,
        seed: Some(7),
        threads: 1,
        ctx_size: 512,
        max_tokens: steps.len() as u32,
        stop: Vec::new(),
        top_k: 3,
        prompt_ids: vec![1, 9690, 198],
        steps,
        stop_reason: StopReason::MaxTokens,
    }
}

fn three_steps() -> TraceCase {
    case(vec![
        step(&[(10, 0.6, 0.7), (11, 0.3, 0.3), (12, 0.05, 0.0)]),
        step(&[(20, 0.5, 0.6), (21, 0.4, 0.4), (22, 0.05, 0.0)]),
        step(&[(30, 0.9, 1.0), (31, 0.05, 0.0), (32, 0.01, 0.0)]),
    ])
}

fn trace(cases: Vec<TraceCase>) -> Trace {
    let mut t = Trace::new(BuildInfo::current("CPU"));
    t.cases = cases;
    t
}

// ---- KL ----------------------------------------------------------------------------------

#[test]
fn kl_of_identical_distributions_is_zero() {
    let p = [0.1, 0.2, 0.3, 0.4];
    assert_eq!(kl_divergence(&p, &p), 0.0);
    let a: Vec<f32> = (0..1000)
        .map(|i| ((i * 37) % 101) as f32 * 0.13 - 5.0)
        .collect();
    assert_eq!(kl_from_logits(&a, &a), 0.0);
}

#[test]
fn kl_known_values_and_asymmetry() {
    let p = [0.5, 0.5];
    let q = [0.9, 0.1];
    // 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 ln(25/9)
    let pq = kl_divergence(&p, &q);
    assert_close(pq, 0.5 * (25.0f64 / 9.0).ln(), 1e-15);
    assert_close(pq, 0.510_825_623_765_990_7, 1e-15);
    // 0.9 ln(1.8) + 0.1 ln(0.2)
    let qp = kl_divergence(&q, &p);
    assert_close(qp, 0.9 * 1.8f64.ln() + 0.1 * 0.2f64.ln(), 1e-15);
    assert_close(qp, 0.368_064_207_168_497_2, 1e-15);
    assert!((pq - qp).abs() > 0.1, "KL is not symmetric");
}

#[test]
fn kl_zeros_are_guarded() {
    // p = 0 terms vanish.
    assert_close(
        kl_divergence(&[1.0, 0.0], &[0.5, 0.5]),
        std::f64::consts::LN_2,
        1e-15,
    );
    // q = 0 where p > 0: floored at 1e-12, finite.
    let kl = kl_divergence(&[0.5, 0.5], &[1.0, 0.0]);
    assert!(kl.is_finite());
    assert_close(kl, 0.5 * 0.5f64.ln() + 0.5 * (0.5 / KL_Q_FLOOR).ln(), 1e-12);
    // A tiny but positive q is used as it is (no floor).
    assert_close(
        kl_divergence(&[0.5, 0.5], &[1.0 - 1e-300, 1e-300]),
        0.5 * 0.5f64.ln() + 0.5 * (0.5f64.ln() + 300.0 * 10f64.ln()),
        1e-12,
    );
    // Both zero: nothing.
    assert_eq!(kl_divergence(&[0.0, 1.0], &[0.0, 1.0]), 0.0);
    assert!(kl_divergence(&[f64::NAN, 1.0], &[0.5, 0.5]).is_nan());
}

fn softmax(z: &[f32]) -> Vec<f64> {
    let m = z
        .iter()
        .map(|&x| f64::from(x))
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|&x| (f64::from(x) - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[test]
fn kl_from_logits_matches_the_two_softmaxes() {
    let a: Vec<f32> = (0..49152)
        .map(|i| (((i * 7919) % 1000) as f32) * 0.02 - 10.0)
        .collect();
    let b: Vec<f32> = a
        .iter()
        .enumerate()
        .map(|(i, &x)| x + ((i % 13) as f32 - 6.0) * 0.05)
        .collect();
    let want = kl_divergence(&softmax(&a), &softmax(&b));
    let got = kl_from_logits(&a, &b);
    assert!(got > 0.0);
    assert_close(got, want, 1e-12);
    // Reversed: asymmetric but both defined.
    let rev = kl_from_logits(&b, &a);
    assert_close(rev, kl_divergence(&softmax(&b), &softmax(&a)), 1e-12);
    // Small hand example: a = ln[0.5, 0.5], b = ln[0.9, 0.1].
    let a2 = [0.5f32.ln(), 0.5f32.ln()];
    let b2 = [0.9f32.ln(), 0.1f32.ln()];
    assert_close(kl_from_logits(&a2, &b2), 0.5 * (25.0f64 / 9.0).ln(), 1e-7);
    // Softmax is shift-invariant.
    let shifted: Vec<f32> = a.iter().map(|x| x + 3.0).collect();
    assert!(kl_from_logits(&a, &shifted) < 1e-12);
}

#[test]
fn kl_from_logits_handles_minus_infinity() {
    let ninf = f32::NEG_INFINITY;
    // a rules token 2 out: it contributes nothing.
    let a = [1.0, 2.0, ninf];
    let b = [1.0, 2.0, 0.0];
    let want = kl_divergence(&softmax(&a), &softmax(&b));
    assert_close(kl_from_logits(&a, &b), want, 1e-12);
    // b rules out a token a gives mass: infinite.
    assert_eq!(kl_from_logits(&b, &a), f64::INFINITY);
    assert!(kl_from_logits(&[f32::NAN, 1.0], &[0.0, 1.0]).is_nan());
}

// ---- summaries ---------------------------------------------------------------------------

fn dstep(kl: f64, same: bool, dp: f64) -> DiffStep {
    DiffStep {
        case_index: 0,
        step: 0,
        kl,
        same_top1: same,
        delta_p_chosen: dp,
        top1_a: 1,
        top1_b: if same { 1 } else { 2 },
    }
}

#[test]
fn summarize_uses_linear_interpolation() {
    // KL 1..=100, three of four steps with the same top-1.
    let steps: Vec<DiffStep> = (1..=100)
        .rev()
        .map(|k| dstep(k as f64, k % 4 != 0, if k % 2 == 0 { 0.1 } else { -0.1 }))
        .collect();
    let s = summarize(steps);
    assert_eq!(s.schema, "ntv.diff/1");
    assert_eq!(s.n_steps, 100);
    assert_close(s.kl_mean, 50.5, 1e-12);
    assert_close(s.kl_median, 50.5, 1e-12);
    // position 0.99 * 99 = 98.01 → 99 + 0.01 * (100 - 99)
    assert_close(s.kl_p99, 99.01, 1e-9);
    assert_eq!(s.kl_max, 100.0);
    assert_close(s.same_top1_pct, 75.0, 1e-12);
    assert_close(s.delta_p_mean, 0.0, 1e-12);
    assert_close(s.delta_p_rms, 0.1, 1e-12);
    assert_eq!(s.steps.len(), 100);

    assert_eq!(percentile(&[3.0], 0.99), 3.0);
    assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    assert_eq!(percentile(&[1.0, 2.0], 0.5), 1.5);
    let odd = summarize(vec![
        dstep(0.3, true, 0.0),
        dstep(0.1, true, 0.0),
        dstep(0.2, false, 0.0),
    ]);
    assert_close(odd.kl_median, 0.2, 1e-15);
    assert_close(odd.kl_p99, 0.2 + 0.98 * 0.1, 1e-12);
}

#[test]
fn summarize_of_nothing_is_zeros() {
    let s = summarize(Vec::new());
    assert_eq!(s.n_steps, 0);
    assert_eq!(
        (s.kl_mean, s.kl_median, s.kl_p99, s.kl_max),
        (0.0, 0.0, 0.0, 0.0)
    );
    assert_eq!(s.same_top1_pct, 0.0);
    // The empty report serialises to exactly these fields, zeros and no steps.
    let text = serde_json::to_string(&s).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "schema": "ntv.diff/1",
            "n_steps": 0,
            "kl_mean": 0.0,
            "kl_median": 0.0,
            "kl_p99": 0.0,
            "kl_max": 0.0,
            "same_top1_pct": 0.0,
            "delta_p_mean": 0.0,
            "delta_p_rms": 0.0,
            "steps": [],
        })
    );
    // And it reads back as the same summary.
    let back: DiffSummary = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
}

// ---- check -------------------------------------------------------------------------------

#[test]
fn identical_case_passes() {
    let c = three_steps();
    let r = check_case(&c, &c.clone(), &CheckOptions::default());
    assert!(r.passed);
    assert_eq!(r.steps_compared, 3);
    assert_eq!(r.max_abs_diff, 0.0);
    assert!(r.first_divergence.is_none() && r.tolerated.is_empty());
    assert_eq!(r.id.as_deref(), Some("c1"));
}

#[test]
fn changed_token_fails_at_that_step() {
    let expected = three_steps();
    let mut edited = expected.clone();
    edited.steps[1].selected_id = 21;
    edited.steps[1].selected_p_final = 0.4;
    let r = check_case(&edited, &expected, &CheckOptions::default());
    assert!(!r.passed);
    assert_eq!(r.steps_compared, 1);
    let d = r.first_divergence.unwrap();
    assert_eq!(d.kind, DivergenceKind::Token);
    assert_eq!(d.kind.as_str(), "token");
    assert_eq!(d.step, 1);
    assert_eq!((d.expected_id, d.actual_id), (Some(21), Some(20)));
    assert_eq!((d.expected_p, d.actual_p), (Some(0.4), Some(0.6)));
    assert!(!d.near_tie, "gap 0.1 is no tie");
}

#[test]
fn probability_beyond_atol_fails_and_within_passes() {
    let expected = three_steps();
    let mut actual = expected.clone();
    actual.steps[2].top[1].p_base += 5e-5;
    let r = check_case(&expected, &actual, &CheckOptions::default());
    assert!(r.passed);
    assert_close(r.max_abs_diff, 5e-5, 1e-12);

    actual.steps[1].top[1].p_final -= 3e-4; // token 21
    let r = check_case(&expected, &actual, &CheckOptions::default());
    assert!(!r.passed);
    assert_eq!(r.steps_compared, 1);
    let d = r.first_divergence.unwrap();
    assert_eq!(d.kind, DivergenceKind::Probability);
    assert_eq!(d.step, 1);
    assert_eq!(d.expected_id, Some(21));
    assert_eq!(d.expected_p, Some(0.4));
    assert_close(d.actual_p.unwrap(), 0.4 - 3e-4, 1e-15);
    assert!(d.detail.contains("p_final"), "{}", d.detail);
    // A looser tolerance accepts it.
    let loose = CheckOptions {
        atol: 1e-3,
        ..CheckOptions::default()
    };
    assert!(check_case(&expected, &actual, &loose).passed);
}

#[test]
fn selected_probability_is_compared_too() {
    let expected = three_steps();
    let mut actual = expected.clone();
    actual.steps[0].selected_p_final = 0.69;
    let r = check_case(&expected, &actual, &CheckOptions::default());
    let d = r.first_divergence.unwrap();
    assert_eq!(
        (d.kind, d.step, d.expected_id),
        (DivergenceKind::Probability, 0, Some(10))
    );
}

#[test]
fn near_tie_token_flip_is_flagged_and_tolerated_only_without_exact_tokens() {
    // Step 1 is a near tie on p_base: 0.45003 vs 0.45 (gap 3e-5 < 1e-4).
    let mut expected = three_steps();
    expected.steps[1] = step(&[(20, 0.45003, 0.50002), (21, 0.45, 0.49998), (22, 0.05, 0.0)]);
    assert!(test_near_tie(&expected.steps[1], 1e-4));
    assert!(!test_near_tie(&expected.steps[0], 1e-4));
    // The re-run picked 21 with probabilities within atol.
    let mut actual = expected.clone();
    actual.steps[1].selected_id = 21;
    actual.steps[1].selected_p_base = 0.45;
    actual.steps[1].selected_p_final = 0.49998;
    let strict = check_case(&expected, &actual, &CheckOptions::default());
    assert!(!strict.passed);
    let d = strict.first_divergence.unwrap();
    assert_eq!(d.kind, DivergenceKind::Token);
    assert!(d.near_tie);
    assert!(d.detail.contains("near tie"), "{}", d.detail);

    let lenient = CheckOptions {
        exact_tokens: false,
        ..CheckOptions::default()
    };
    let r = check_case(&expected, &actual, &lenient);
    assert!(r.passed, "{r:?}");
    assert_eq!(r.steps_compared, 1, "the comparison ends at the flip");
    assert_eq!(r.tolerated.len(), 1);
    assert!(r.first_divergence.is_none());

    // Not a tie: still fails without exact tokens.
    let mut actual = three_steps();
    actual.steps[0].selected_id = 11;
    let r = check_case(&three_steps(), &actual, &lenient);
    assert!(!r.passed);
    assert!(!r.first_divergence.unwrap().near_tie);
}

#[test]
fn sampled_draw_near_a_boundary_is_a_near_tie() {
    // Kept tokens by p_final: 10 (0.7), 11 (0.3). Token 11 covers [0.7, 1.0).
    let mut s = step(&[(10, 0.6, 0.7), (11, 0.3, 0.3), (12, 0.05, 0.0)]);
    s.selected_id = 11;
    s.draw = Some(0.70004);
    assert!(test_near_tie(&s, 1e-4));
    s.draw = Some(0.85);
    assert!(!test_near_tie(&s, 1e-4));
    // The first token's lower boundary (0) is not a boundary.
    s.selected_id = 10;
    s.draw = Some(0.00001);
    assert!(!test_near_tie(&s, 1e-4));
}

#[test]
fn top1_flip_is_tolerated_at_a_near_tie_and_fails_otherwise() {
    // Sampled steps that selected token 3 both times; tokens 1 and 2 swap places.
    let mk = |p1: f64, p2: f64| {
        let mut s = step(&[(1, p1, 0.3), (2, p2, 0.3), (3, 0.1, 0.4)]);
        s.selected_id = 3;
        s.selected_p_base = 0.1;
        s.selected_p_final = 0.4;
        s
    };
    let opts = CheckOptions::default();
    // gap 5e-5 < atol: tolerated.
    let e = case(vec![mk(0.40005, 0.4)]);
    let a = case(vec![mk(0.39996, 0.40004)]);
    let r = check_case(&e, &a, &opts);
    assert!(r.passed, "{r:?}");
    assert_eq!(r.tolerated[0].kind, DivergenceKind::Top1);
    assert!(r.tolerated[0].near_tie);
    // gap 1.5e-4 >= atol, each value within atol: a real top-1 change.
    let e = case(vec![mk(0.40015, 0.4)]);
    let a = case(vec![mk(0.40006, 0.40009)]);
    let r = check_case(&e, &a, &opts);
    assert!(!r.passed);
    let d = r.first_divergence.unwrap();
    assert_eq!(
        (d.kind, d.expected_id, d.actual_id),
        (DivergenceKind::Top1, Some(1), Some(2))
    );
    assert!(!d.near_tie);
}

#[test]
fn length_stop_reason_and_prompt_differences_fail() {
    let expected = three_steps();
    let mut shorter = expected.clone();
    shorter.steps.pop();
    shorter.stop_reason = StopReason::Eog;
    let r = check_case(&expected, &shorter, &CheckOptions::default());
    assert!(!r.passed);
    assert_eq!(r.steps_compared, 2);
    let d = r.first_divergence.unwrap();
    assert_eq!((d.kind, d.step), (DivergenceKind::Length, 2));
    assert_eq!((d.expected_id, d.actual_id), (Some(30), None));
    assert!(
        d.detail.contains("3 steps") && d.detail.contains("eog"),
        "{}",
        d.detail
    );

    let mut other_stop = expected.clone();
    other_stop.stop_reason = StopReason::StopSequence;
    let r = check_case(&expected, &other_stop, &CheckOptions::default());
    assert_eq!(r.first_divergence.unwrap().kind, DivergenceKind::Length);

    let mut other_prompt = expected.clone();
    other_prompt.prompt_ids[2] = 199;
    let r = check_case(&expected, &other_prompt, &CheckOptions::default());
    let d = r.first_divergence.unwrap();
    assert_eq!((d.kind, d.step), (DivergenceKind::Prompt, 0));
    assert_eq!((d.expected_id, d.actual_id), (Some(198), Some(199)));
    assert_eq!(r.steps_compared, 0);
}

#[test]
fn a_boundary_swap_of_the_recorded_set_is_tolerated() {
    // The last recorded candidates 12 (0.05) and 13 (0.04995) swap places in the re-run.
    let e = case(vec![step(&[
        (10, 0.6, 0.7),
        (11, 0.3, 0.3),
        (12, 0.05, 0.0),
    ])]);
    let a = case(vec![step(&[
        (10, 0.6, 0.7),
        (11, 0.3, 0.3),
        (13, 0.05004, 0.0),
    ])]);
    assert!(check_case(&e, &a, &CheckOptions::default()).passed);
    // A missing candidate far above the other side's list is a failure.
    let a = case(vec![step(&[
        (10, 0.6, 0.7),
        (11, 0.3, 0.3),
        (13, 0.01, 0.0),
    ])]);
    let e2 = case(vec![step(&[
        (10, 0.6, 0.7),
        (11, 0.3, 0.3),
        (12, 0.05, 0.0),
    ])]);
    let r = check_case(&e2, &a, &CheckOptions::default());
    let d = r.first_divergence.unwrap();
    assert_eq!(
        (d.kind, d.expected_id, d.actual_id),
        (DivergenceKind::Probability, Some(12), None)
    );
}

#[test]
fn check_trace_matches_cases_by_index_and_reports() {
    let e = trace(vec![three_steps(), three_steps()]);
    let mut a = e.clone();
    a.cases[1].steps[2].selected_id = 31;
    let r = check_trace(&e, &a, &CheckOptions::default());
    assert_eq!(r.schema, "ntv.check/1");
    assert!(!r.passed);
    assert!(r.cases[0].passed);
    assert_eq!(r.cases[1].case_index, 1);
    assert_eq!(r.cases[1].first_divergence.as_ref().unwrap().step, 2);
    a.cases.pop();
    let r = check_trace(&e, &a, &CheckOptions::default());
    assert_eq!(r.cases.len(), 2);
    assert!(r.cases[0].passed && !r.cases[1].passed);
    // The report serialises with the kinds as strings.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["cases"][1]["first_divergence"]["kind"], "length");
    assert_eq!(json["atol"], 1e-4);
}

// ---- trace diff --------------------------------------------------------------------------

#[test]
fn diff_of_a_trace_with_itself_is_zero() {
    let t = trace(vec![three_steps(), three_steps()]);
    let s = diff_traces(&t, &t).unwrap();
    assert_eq!(s.n_steps, 6);
    assert_eq!(s.kl_max, 0.0);
    assert_eq!(s.same_top1_pct, 100.0);
    assert_eq!(s.delta_p_rms, 0.0);
}

#[test]
fn diff_of_full_vocabulary_records_is_exact() {
    let a = trace(vec![case(vec![step(&[
        (0, 0.7, 0.7),
        (1, 0.2, 0.2),
        (2, 0.1, 0.1),
    ])])]);
    let b = trace(vec![case(vec![step(&[
        (0, 0.6, 0.6),
        (1, 0.3, 0.3),
        (2, 0.1, 0.1),
    ])])]);
    let s = diff_traces(&a, &b).unwrap();
    assert_eq!(s.n_steps, 1);
    assert_close(
        s.kl_mean,
        kl_divergence(&[0.7, 0.2, 0.1], &[0.6, 0.3, 0.1]),
        1e-12,
    );
    assert_close(s.steps[0].delta_p_chosen, -0.1, 1e-12);
    assert!(s.steps[0].same_top1);
}

#[test]
fn diff_of_top_k_records_uses_the_shared_tokens_and_a_rest_bucket() {
    // a: 5 → 0.5, 6 → 0.3 (selected 6), rest 0.2; b: 5 → 0.4, 7 → 0.35, rest 0.25.
    let mut sa = step(&[(5, 0.5, 0.5), (6, 0.3, 0.5)]);
    sa.selected_id = 6;
    sa.selected_p_base = 0.3;
    let mut sb = step(&[(5, 0.4, 0.6), (7, 0.35, 0.4)]);
    sb.selected_id = 6; // the same token, recorded outside b's top list
    sb.selected_p_base = 0.2;
    let s = diff_traces(
        &trace(vec![case(vec![sa.clone()])]),
        &trace(vec![case(vec![sb])]),
    )
    .unwrap();
    // Shared: token 5; rest a = 0.5, rest b = 0.6.
    assert_close(s.kl_mean, kl_divergence(&[0.5, 0.5], &[0.4, 0.6]), 1e-15);
    assert_close(s.steps[0].delta_p_chosen, 0.2 - 0.3, 1e-15);
    assert!(s.steps[0].same_top1);
    // When b neither selected nor recorded a's token, its probability counts as 0.
    let mut sb = step(&[(5, 0.4, 0.6), (7, 0.35, 0.4)]);
    sb.selected_id = 5;
    let s = diff_traces(&trace(vec![case(vec![sa])]), &trace(vec![case(vec![sb])])).unwrap();
    assert_close(s.steps[0].delta_p_chosen, -0.3, 1e-15);
}

#[test]
fn diff_stops_after_the_first_different_token() {
    let a = three_steps();
    let mut b = a.clone();
    b.steps[1].selected_id = 21;
    let s = diff_traces(&trace(vec![a]), &trace(vec![b])).unwrap();
    assert_eq!(
        s.n_steps, 2,
        "steps 0 and 1 share a context; step 2 does not"
    );
}

#[test]
fn diff_refuses_traces_that_do_not_fit() {
    let a = trace(vec![three_steps()]);
    let b = trace(vec![three_steps(), three_steps()]);
    let e = diff_traces(&a, &b).unwrap_err();
    assert!(matches!(e, TraceError::CaseCount { a: 1, b: 2 }));
    assert!(e.is_input() && e.hint().is_some());
    let mut c = three_steps();
    c.prompt_ids.push(5);
    let e = diff_traces(&a, &trace(vec![c])).unwrap_err();
    assert!(matches!(e, TraceError::CaseMismatch { case: 0, .. }));
}

#[test]
fn diff_step_from_logits() {
    let a = [2.0f32, 1.0, 0.0];
    let b = [1.0f32, 2.0, 0.0];
    let d = DiffStep::from_logits(3, 4, &a, &b, 0);
    assert_eq!((d.case_index, d.step), (3, 4));
    assert_eq!((d.top1_a, d.top1_b, d.same_top1), (0, 1, false));
    let (pa, pb) = (softmax(&a), softmax(&b));
    assert_close(d.kl, kl_divergence(&pa, &pb), 1e-12);
    assert_close(d.delta_p_chosen, pb[0] - pa[0], 1e-12);
    let same = DiffStep::from_logits(0, 0, &a, &a, 1);
    assert_eq!(
        (same.kl, same.delta_p_chosen, same.same_top1),
        (0.0, 0.0, true)
    );
}

// ---- from_meta ---------------------------------------------------------------------------

fn candidate(id: i32, p_base: f64, p_temp: f64, p_final: f64) -> Candidate {
    Candidate {
        id,
        text: format!("t{id}"),
        bytes: format!("t{id}").into_bytes(),
        display: format!("t{id}"),
        special: false,
        p_base,
        p_temp,
        p_final,
        logprob_base: p_base.ln(),
        kept: p_final > 0.0,
        valid: true,
        cut_by: None,
        rank: 0,
        logit_adjust: Vec::new(),
    }
}

#[test]
fn from_meta_records_the_shown_candidates_by_p_base() {
    // Shown by p_temp: 7 (penalised less) before 3, although 3 has the higher p_base.
    let tokens = vec![
        candidate(7, 0.30, 0.45, 0.6),
        candidate(3, 0.35, 0.30, 0.4),
        candidate(9, 0.10, 0.05, 0.0),
    ];
    let meta = AppendedMeta {
        dist: Dist {
            top_k: 3,
            tokens: tokens.clone(),
            other_p_base: 0.25,
            other_p_final: 0.0,
            kept_token_count: 2,
            valid_token_count: None,
            constraint_active: false,
            constraint_type: None,
            entropy_base: 2.5,
            entropy_final: 0.97,
            params: SamplingParams::default(),
            chain: None,
        },
        selected_id: 7,
        selected: tokens[0].clone(),
        selected_by: SelectedBy::Sampled,
        forced: false,
        forced_by: None,
        draw: Some(0.25),
        rng_after: None,
        mirostat_mu_after: None,
    };
    let s = TraceStep::from_meta(&meta);
    let ids: Vec<i32> = s.top.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![3, 7, 9]);
    assert_eq!(
        (s.selected_id, s.selected_p_base, s.selected_p_final),
        (7, 0.30, 0.6)
    );
    assert_eq!(
        (s.entropy_base, s.entropy_final, s.draw),
        (2.5, 0.97, Some(0.25))
    );
    assert_eq!(s.top1(), 3);
    let s2 = TraceStep::from_meta_top(&meta, 2);
    assert_eq!(s2.top.iter().map(|c| c.id).collect::<Vec<_>>(), vec![3, 7]);
}

// ---- files -------------------------------------------------------------------------------

#[test]
fn write_then_read_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("golden.trace.json");
    let mut t = trace(vec![three_steps()]);
    t.cases[0].steps[0].top[0].p_base = 0.1 + 0.2; // not exactly representable in decimal
    t.cases[0].steps[1].draw = Some(0.123_456_789_012_345_67);
    write(&path, &t).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with("}\n"));
    assert!(text.contains("\"schema\": \"ntv.trace/1\""));
    assert_eq!(read(&path).unwrap(), t);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn bad_files_are_input_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);

    let e = read(&p("missing.json")).unwrap_err();
    assert!(matches!(e, TraceError::NotFound { .. }), "{e}");
    assert!(e.is_input() && e.to_string().contains("missing.json"));

    std::fs::write(p("trunc.json"), "{\"schema\": \"ntv.tr").unwrap();
    let e = read(&p("trunc.json")).unwrap_err();
    assert!(
        matches!(
            e,
            TraceError::Corrupt {
                truncated: true,
                ..
            }
        ),
        "{e}"
    );

    std::fs::write(p("foreign.json"), r#"{"schema": "ntv.check/1"}"#).unwrap();
    let e = read(&p("foreign.json")).unwrap_err();
    assert!(matches!(e, TraceError::Foreign { .. }), "{e}");
    std::fs::write(p("array.json"), "[1, 2]").unwrap();
    assert!(matches!(
        read(&p("array.json")).unwrap_err(),
        TraceError::Foreign { .. }
    ));
    std::fs::write(p("noschema.json"), "{}").unwrap();
    assert!(matches!(
        read(&p("noschema.json")).unwrap_err(),
        TraceError::Foreign { .. }
    ));

    std::fs::write(p("newer.json"), r#"{"schema": "ntv.trace/2"}"#).unwrap();
    let e = read(&p("newer.json")).unwrap_err();
    assert!(matches!(e, TraceError::NewerVersion { .. }), "{e}");
    assert!(e.to_string().contains("ntv.trace/2") && e.to_string().contains("ntv.trace/1"));
    assert!(e.is_input() && e.hint().unwrap().contains("upgrade"));

    let mut v = serde_json::to_value(trace(vec![three_steps()])).unwrap();
    v["cases"][0]["steps"][1]["top"][0]["p_base"] = serde_json::json!(1.5);
    std::fs::write(p("invalid.json"), v.to_string()).unwrap();
    let e = read(&p("invalid.json")).unwrap_err();
    match &e {
        TraceError::Invalid { field, .. } => assert_eq!(field, "cases[0].steps[1].top[0].p_base"),
        other => panic!("{other}"),
    }
    v["cases"][0]["steps"][1]["top"][0]["p_base"] = serde_json::json!("high");
    std::fs::write(p("typed.json"), v.to_string()).unwrap();
    match read(&p("typed.json")).unwrap_err() {
        TraceError::Invalid { field, .. } => assert_eq!(field, "cases[0].steps[1].top[0].p_base"),
        other => panic!("{other}"),
    }
}

#[test]
fn an_unreadable_trace_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let good = trace(vec![three_steps()]);
    write(&path, &good).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad.cases[0].steps[0].entropy_base = f64::NAN;
    let e = write(&path, &bad).unwrap_err();
    assert!(matches!(e, TraceError::Unwritable { .. }), "{e}");
    assert!(!e.is_input());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn build_info_and_schemas() {
    let b = BuildInfo::current("CPU");
    assert_eq!(b.ntv_version, env!("CARGO_PKG_VERSION"));
    assert!(b.target.contains('-'));
    assert!(b.llama_cpp.contains("llama"));
    assert!(b.differences(&b).is_empty());
    let mut other = b.clone();
    other.backend = "CUDA0".into();
    assert_eq!(
        other.differences(&b),
        vec!["backend: CUDA0 → CPU".to_string()]
    );
    for schema in [
        schemars::schema_for!(Trace),
        schemars::schema_for!(CheckReport),
        schemars::schema_for!(DiffSummary),
    ] {
        assert!(
            serde_json::to_string(&schema)
                .unwrap()
                .contains("properties")
        );
    }
}

proptest::proptest! {
    /// Mutated traces parse or are refused with a typed error; one that parses passes the
    /// reader's own checks again when written out.
    #[test]
    fn fuzz_any_mutated_trace_parses_consistently_or_is_refused(
        bytes in crate::fuzz::mutated(serde_json::to_value(trace(vec![three_steps()])).unwrap())
    ) {
        let p = std::path::Path::new("fuzz.json");
        if let Ok(t) = parse(p, &bytes) {
            proptest::prop_assert!(!t.cases.is_empty());
            let again = serde_json::to_vec(&t).unwrap();
            proptest::prop_assert!(parse(p, &again).is_ok());
        }
    }
}
