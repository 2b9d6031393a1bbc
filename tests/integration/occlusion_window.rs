//! Occlusion with `--window N`: spans of N tokens removed at a time. Window 1 is exactly the
//! leave-one-out; with a window every token of a span carries the drop computed by decoding the
//! context without that span from scratch; the engine decodes about n²/2N tokens; the window is
//! recorded, settable per batch line and validated (exit 2 with a hint).

use ntv::attribution::occlusion::{self, OcclusionAgg};
use ntv::attribution::{TargetFn, Watch};
use ntv::engine::{
    ContextOptions, Decoder, LoadOptions, Model, Occluder, occlusion_cost, occlusion_spans,
};
use serde_json::{Value, json};

use crate::util::{KNOWN_IDS, PROMPT, Sandbox, f, m, model};

fn load() -> Model {
    Model::load(model(), &LoadOptions::default()).expect("model loads")
}

fn known() -> Vec<i32> {
    KNOWN_IDS.iter().map(|&i| i as i32).collect()
}

fn logp(logits: &[f32], t: i32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits[t as usize] as f64 - max - z.ln()
}

#[test]
fn window_one_is_exactly_leave_one_out() {
    let m = load();
    let ctx = known();
    let mut occ = Occluder::new(&m, 64, 1).unwrap();
    let target = 504;
    let loo =
        occlusion::attribute(&mut occ, &ctx, target, TargetFn::Logprob, OcclusionAgg::Raw).unwrap();
    let watch = Watch::new();
    let w1 = occlusion::attribute_windowed(
        &mut occ,
        &ctx,
        target,
        TargetFn::Logprob,
        OcclusionAgg::Raw,
        1,
        &watch,
    )
    .unwrap();
    assert_eq!(loo.delta, w1.delta);
    assert_eq!(loo.decoded_tokens, w1.decoded_tokens);
    assert_eq!(w1.window, 1);
    // The watch counted every decoded token.
    assert_eq!(watch.progress().0, w1.decoded_tokens as u64);
    assert_eq!(w1.decoded_tokens, occlusion_cost(ctx.len(), 1));
}

#[test]
fn a_span_scores_every_token_in_it_with_the_drop_of_removing_it() {
    let m = load();
    let ctx = known();
    let n = ctx.len();
    let target = 504;
    let mut occ = Occluder::new(&m, 64, 1).unwrap();
    // An independent reference: the ordinary decoder on each shortened context, from scratch
    // (ubatches of 32, as the occluder's).
    let mut dec = Decoder::new(
        &m,
        &ContextOptions {
            n_ctx: 64,
            n_threads: 1,
            n_batch: 32,
        },
    )
    .unwrap();
    let full = logp(dec.eval(&ctx).unwrap(), target);
    let loo_cost = occlusion_cost(n, 1);
    for window in [2, 4, 7, n] {
        let o = occlusion::attribute_windowed(
            &mut occ,
            &ctx,
            target,
            TargetFn::Logprob,
            OcclusionAgg::Raw,
            window,
            &Watch::default(),
        )
        .unwrap();
        assert_eq!(o.delta.len(), n);
        assert!((o.full_logprob - full).abs() < 1e-4);
        let spans = occlusion_spans(n, window);
        assert_eq!(spans.len(), n.div_ceil(window));
        for span in &spans {
            let d = o.delta[span.start];
            assert!(
                o.delta[span.clone()].iter().all(|&x| x == d),
                "window {window}, span {span:?}: {:?}",
                &o.delta[span.clone()]
            );
            let mut short = ctx.clone();
            short.drain(span.clone());
            // Removing everything leaves nothing to condition on: 0 by convention.
            let want = if short.is_empty() {
                0.0
            } else {
                full - logp(dec.eval(&short).unwrap(), target)
            };
            assert!(
                (want - d).abs() < 1e-4,
                "window {window}, span {span:?}: scratch Δ {want} vs occluder Δ {d}"
            );
        }
        // Cost: the full context once plus the suffix after each span but the last, about
        // n + n²/2N; far below leave-one-out's.
        assert_eq!(o.decoded_tokens, occlusion_cost(n, window));
        let approx = n + n * n / (2 * window);
        assert!(
            o.decoded_tokens <= approx,
            "window {window}: {} > {approx}",
            o.decoded_tokens
        );
        assert!(o.decoded_tokens * window <= loo_cost + n * window);
        eprintln!(
            "window {window}: {} tokens decoded (leave-one-out {loo_cost}) in {} decodes",
            o.decoded_tokens, o.decode_calls
        );
    }
    // Too wide a window is refused, not clamped.
    assert!(
        occlusion::attribute_windowed(
            &mut occ,
            &ctx,
            target,
            TargetFn::Logprob,
            OcclusionAgg::Raw,
            n + 1,
            &Watch::default(),
        )
        .is_err()
    );
}

#[test]
fn a_cancelled_watch_stops_between_decodes() {
    let m = load();
    let ctx = known();
    let mut occ = Occluder::new(&m, 64, 1).unwrap();
    let watch = Watch::new();
    watch.cancel();
    let r = occlusion::attribute_windowed(
        &mut occ,
        &ctx,
        504,
        TargetFn::Logprob,
        OcclusionAgg::Raw,
        2,
        &watch,
    );
    assert!(matches!(
        r,
        Err(ntv::attribution::AttributionError::Cancelled)
    ));
}

fn scores(record: &Value) -> Vec<f64> {
    record["scores"]
        .as_array()
        .expect("scores")
        .iter()
        .map(|s| f(&s["score"]))
        .collect()
}

#[test]
fn the_cli_records_the_window_and_takes_it_per_batch_line() {
    let sb = Sandbox::new();
    let base = [
        "attribute",
        "-m",
        m(),
        "--no-session",
        "-p",
        PROMPT,
        "-t",
        "1",
        "--method",
        "occlusion",
        "--agg",
        "sum",
        "--json",
    ];
    let plain = sb.run(&base);
    assert!(plain.status.success());
    let plain_stderr = String::from_utf8_lossy(&plain.stderr).into_owned();
    let plain: Value = serde_json::from_slice(&plain.stdout).unwrap();
    let one = sb.json(&[&base[..], &["--window", "1"]].concat());
    let r0 = &plain["targets"][0];
    let r1 = &one["targets"][0];
    assert_eq!(r0["window"], json!(1), "{r0}");
    assert_eq!(scores(r0), scores(r1), "--window 1 is the default");
    // No bar and no long-context note when stderr is not a terminal and the context is short.
    assert!(!plain_stderr.contains("left"), "{plain_stderr}");
    assert!(!plain_stderr.contains("note:"), "{plain_stderr}");
    let three = sb.json(&[&base[..], &["--window", "3"]].concat());
    let r3 = &three["targets"][0];
    assert_eq!(r3["window"], json!(3));
    let s = scores(r3);
    for span in s.chunks(3) {
        assert!(span.iter().all(|&x| x == span[0]), "{s:?}");
    }
    assert_ne!(s, scores(r0));
    // The probability is the same decode's whatever the window.
    assert_eq!(r3["target"]["prob"], r0["target"]["prob"]);
    // A batch line's "window" wins over the flag.
    let path = sb.path().join("w.jsonl");
    std::fs::write(
        &path,
        format!(
            "{}\n{}\n",
            json!({"prompt": PROMPT, "window": 3}),
            json!({"prompt": PROMPT, "window": 0})
        ),
    )
    .unwrap();
    let out = sb.run(&[
        "attribute",
        "-m",
        m(),
        "-t",
        "1",
        "--no-chat-template",
        "--batch",
        path.to_str().unwrap(),
        "--method",
        "occlusion",
        "--agg",
        "sum",
        "--window",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2), "the bad line fails the batch");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["window"], json!(3), "{}", lines[0]);
    assert_eq!(lines[1]["type"], json!("error"));
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("\"window\": 0"),
        "{}",
        lines[1]
    );
}

#[test]
fn bad_windows_are_input_errors_with_a_hint() {
    let sb = Sandbox::new();
    let base = [
        "attribute",
        "-m",
        m(),
        "--no-session",
        "-p",
        PROMPT,
        "--no-chat-template",
        "--method",
        "occlusion",
    ];
    let err = sb.fails(&[&base[..], &["--window", "0"]].concat(), 2);
    assert!(err.contains("--window 0") && err.contains("hint:"), "{err}");
    let err = sb.fails(&[&base[..], &["--window", "99"]].concat(), 2);
    assert!(
        err.contains("longer than the 5-token context") && err.contains("hint:"),
        "{err}"
    );
    sb.fails(&[&base[..], &["--window", "-1"]].concat(), 2);
}

#[test]
fn a_long_context_without_a_window_gets_a_note_on_the_cost() {
    let sb = Sandbox::new();
    // About 300 tokens: leave-one-out would decode ~45,000. The note comes before the engines
    // run, so the refused target function (checked by the occlusion engine) keeps this cheap.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(30);
    let args = [
        "attribute",
        "-m",
        m(),
        "--no-session",
        "-p",
        &long,
        "--no-chat-template",
        "-t",
        "1",
        "--method",
        "occlusion",
        "--target-fn",
        "logit",
    ];
    let err = sb.fails(&args, 2);
    assert_eq!(err.matches("note:").count(), 1, "{err}");
    assert!(err.contains("--window N"), "{err}");
    let tokens: usize = err
        .split("occlusion of a ")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count: {err}"));
    assert!(tokens > 256, "{err}");
    let cost = (tokens + tokens * (tokens - 1) / 2).to_string();
    assert!(err.contains(&format!("about {cost} tokens")), "{err}");
    // With a window, no note.
    let err = sb.fails(&[&args[..], &["--window", "8"]].concat(), 2);
    assert!(!err.contains("note:"), "{err}");
}
