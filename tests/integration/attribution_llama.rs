//! Attention and occlusion attribution through llama.cpp on the real test model: raw attention
//! rows are probability distributions over the context, the public worked example's attention
//! ranking is reproduced (Spearman ≥ 0.998 on quantised weights, as README claims), occlusion
//! gives one finite score per token, reuses the KV prefix (counted decoded tokens), agrees with
//! decoding each shortened context from scratch, and both methods take completion and
//! candidate targets.

use ntv::attribution::TargetFn;
use ntv::attribution::attention::{self, AttentionOptions, LayerAgg};
use ntv::attribution::occlusion::{self, OcclusionAgg};
use ntv::engine::{AttentionCapture, ContextOptions, Decoder, LoadOptions, Model, Occluder};

use crate::util::{KNOWN_IDS, attribution_example, model, spearman};

fn load() -> Model {
    Model::load(model(), &LoadOptions::default()).expect("model loads")
}

fn known() -> Vec<i32> {
    KNOWN_IDS.iter().map(|&i| i as i32).collect()
}

/// (context ids, target id, reference attention scores) of each example case.
fn cases() -> Vec<(Vec<i32>, i32, Vec<f64>)> {
    attribution_example()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let ids = c["context_ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|x| x.as_i64().expect("id") as i32)
                .collect();
            let att = c["scores"]["attention"]
                .as_array()
                .expect("scores")
                .iter()
                .map(|x| x.as_f64().expect("score"))
                .collect();
            (ids, c["target_id"].as_i64().expect("target") as i32, att)
        })
        .collect()
}

/// Probabilities of logits, in f64.
/// The ordinary decoder attention takes its logits from (one thread, contexts of up to 64).
fn logits_decoder(m: &Model) -> Decoder<'_> {
    Decoder::new(
        m,
        &ContextOptions {
            n_ctx: 64,
            n_threads: 1,
            n_batch: 64,
        },
    )
    .unwrap()
}

/// Attention attribution with the default options.
fn attend(
    cap: &mut AttentionCapture<'_>,
    lg: &mut Decoder<'_>,
    ctx: &[i32],
    target: i32,
) -> Result<attention::AttentionAttribution, ntv::attribution::AttributionError> {
    attention::attribute(cap, lg, ctx, target, &AttentionOptions::default())
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

#[test]
fn attention_rows_are_distributions_for_every_layer_and_head() {
    let m = load();
    let ctx = known();
    let mut cap = AttentionCapture::new(&m, 64, 1).unwrap();
    let mut lg = logits_decoder(&m);
    let rows = cap.capture_last(&ctx, &mut lg).unwrap();
    let (n_layer, n_head) = (m.info().n_layer as usize, m.info().n_head as usize);
    assert_eq!(rows.n_layer, n_layer);
    assert_eq!(rows.n_head, n_head);
    assert_eq!(rows.n_pos, ctx.len());
    assert_eq!(rows.layers, (0..n_layer).collect::<Vec<_>>(), "every layer");
    assert_eq!(rows.masked_max, 0.0, "cells past the context are masked");
    for l in 0..n_layer {
        for h in 0..n_head {
            let r = rows.row(l, h);
            assert!(
                r.iter().all(|x| x.is_finite() && *x >= 0.0),
                "{l}/{h}: {r:?}"
            );
            let s: f32 = r.iter().sum();
            assert!((s - 1.0).abs() < 1e-3, "layer {l} head {h} sums to {s}");
        }
    }
    // The capture's logits are llama.cpp's ordinary next-token logits.
    let mut dec = Decoder::new(
        &m,
        &ContextOptions {
            n_ctx: 64,
            n_threads: 1,
            n_batch: 64,
        },
    )
    .unwrap();
    let plain = dec.eval(&ctx).unwrap();
    let top = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    assert_eq!(top(&rows.logits), top(plain));
    // A second capture on the same context (cache cleared in between) gives the same rows.
    let again = cap.capture_last(&ctx[..10], &mut lg).unwrap();
    assert_eq!(again.n_pos, 10);
    let s: f32 = again.row(3, 2).iter().sum();
    assert!((s - 1.0).abs() < 1e-3);
    // Several query positions in one decode: row p equals a capture of the prefix ..=p.
    let multi = cap.capture(&ctx, &[9, ctx.len() - 1], &mut lg).unwrap();
    let diff = multi[0]
        .data
        .iter()
        .zip(&again.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 1e-3,
        "row 9 of the full decode vs the 10-token prefix: {diff}"
    );
    // Bad input is refused, not a crash.
    assert!(cap.capture_last(&[], &mut lg).is_err());
    assert!(cap.capture_last(&[1, 999_999], &mut lg).is_err());
    assert!(cap.capture(&ctx, &[ctx.len()], &mut lg).is_err());
}

#[test]
fn attention_reproduces_the_public_example_ranking() {
    let m = load();
    let mut cap = AttentionCapture::new(&m, 64, 1).unwrap();
    let mut lg = logits_decoder(&m);
    for (ctx, target, reference) in cases() {
        let a = attend(&mut cap, &mut lg, &ctx, target).unwrap();
        assert_eq!(a.scores.len(), ctx.len());
        assert!(a.scores.iter().all(|x| x.is_finite() && *x >= 0.0));
        assert!((a.scores.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let rho = spearman(&a.scores, &reference);
        let max_diff = a
            .scores
            .iter()
            .zip(&reference)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "attention, {}-token context, target {target}: Spearman {rho:.4}, max |diff| {max_diff:.4}, p(target) {:.4}",
            ctx.len(),
            a.target_prob
        );
        // README's claim: Spearman ≥ 0.998 against the public example (measured 0.9985 and
        // 0.9996 for its two cases on the Q4_1 test model).
        assert_eq!(reference.len(), a.scores.len());
        assert!(rho >= 0.998, "Spearman {rho} < 0.998");
        assert!(a.target_prob > 0.0 && a.target_prob < 1.0);
        // The other layer aggregations and subsets give distributions too.
        for layer_agg in [LayerAgg::Max, LayerAgg::Last] {
            let o = AttentionOptions {
                layers: Some(vec![0, 5, 29]),
                heads: Some(vec![0, 8]),
                layer_agg,
                raw: false,
            };
            let s = attention::aggregate(&a.rows, &o).unwrap();
            assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
}

#[test]
fn occlusion_scores_the_example_and_reuses_the_kv_prefix() {
    let m = load();
    let mut occ = Occluder::new(&m, 64, 1).unwrap();
    // The occluder decodes in ubatches of 32 tokens; so does this reference.
    let mut dec = Decoder::new(
        &m,
        &ContextOptions {
            n_ctx: 64,
            n_threads: 1,
            n_batch: 32,
        },
    )
    .unwrap();
    let logp = |logits: &[f32], t: i32| {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        logits[t as usize] as f64 - max - z.ln()
    };
    for (ctx, target, _) in cases() {
        let n = ctx.len();
        let o = occlusion::attribute(&mut occ, &ctx, target, TargetFn::Logprob, OcclusionAgg::Raw)
            .unwrap();
        eprintln!(
            "occlusion, {n}-token context, target {target}: {} tokens in {} decodes, Δlog p {:?}",
            o.decoded_tokens,
            o.decode_calls,
            o.delta
                .iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
        assert_eq!(o.scores.len(), n);
        assert!(o.scores.iter().all(|x| x.is_finite()));
        // KV reuse: the full context once, then only the suffix after each removed token.
        let bound = n + (0..n).map(|j| n - j).sum::<usize>();
        assert!(o.decoded_tokens <= bound, "{} > {bound}", o.decoded_tokens);
        assert_eq!(
            o.decoded_tokens,
            n + (0..n - 1).map(|j| n - 1 - j).sum::<usize>()
        );
        assert!(o.decoded_tokens < n * n, "no full re-decode per token");
        assert!(
            o.decode_calls < n / 2,
            "variants are batched: {}",
            o.decode_calls
        );
        // The same numbers as decoding each shortened context from scratch.
        let full = logp(dec.eval(&ctx).unwrap(), target);
        assert!(
            (full - o.full_logprob).abs() < 1e-4,
            "{full} vs {}",
            o.full_logprob
        );
        for j in 0..n {
            let mut short = ctx.clone();
            short.remove(j);
            let without = logp(dec.eval(&short).unwrap(), target);
            let want = full - without;
            assert!(
                (want - o.delta[j]).abs() < 1e-4,
                "token {j}: scratch Δ {want} vs reused-prefix Δ {}",
                o.delta[j]
            );
        }
        // Aggregations.
        let norm = occlusion::aggregate(&o.delta, OcclusionAgg::Inseq);
        assert!((norm.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(norm.iter().all(|&x| x >= 0.0));
    }
}

#[test]
fn occlusion_sanity_the_key_token_matters_more_than_filler() {
    let m = load();
    let mut occ = Occluder::new(&m, 64, 1).unwrap();
    // Case 2: "... The capital of France is Paris" → "." : removing "Paris" (the last token)
    // changes p(".") far more than removing "a" of the system prompt's "You are a helpful ...".
    let (ctx, target, _) = cases().remove(1);
    let o =
        occlusion::attribute(&mut occ, &ctx, target, TargetFn::Logprob, OcclusionAgg::Raw).unwrap();
    let key = o.delta[ctx.len() - 1].abs();
    let filler = o.delta[5].abs();
    assert!(key > filler, "|Δ| key {key} vs filler {filler}");
}

#[test]
fn candidate_targets_as_well_as_completion_tokens() {
    let m = load();
    let ctx = known();
    let mut cap = AttentionCapture::new(&m, 64, 1).unwrap();
    let mut lg = logits_decoder(&m);
    let mut occ = Occluder::new(&m, 64, 1).unwrap();
    let mut dec = Decoder::new(
        &m,
        &ContextOptions {
            n_ctx: 64,
            n_threads: 1,
            n_batch: 32,
        },
    )
    .unwrap();
    let plain = softmax(dec.eval(&ctx).unwrap());
    // 504 = "The" (the completion's first token), 7042 and 12 = arbitrary candidates.
    for target in [504, 7042, 12] {
        let want = plain[target as usize];
        let a = attend(&mut cap, &mut lg, &ctx, target).unwrap();
        assert_eq!(a.scores.len(), ctx.len());
        assert!(a.scores.iter().all(|x| x.is_finite()));
        assert!(a.target_prob > 0.0 && a.target_prob < 1.0);
        let rel_a = (a.target_prob - want).abs() / want;
        eprintln!(
            "target {target}: p decoder {want:.6e}, attention {:.6e} (relative {rel_a:.2e})",
            a.target_prob
        );
        // The capture's logits come from an ordinary decode context (measured 0 relative for
        // these three targets, whose p spans 1e-10 to 0.14; its own non-flash forward was 9 to
        // 16 % off); 25 % still catches a wrong row, token or position.
        assert!(
            rel_a < 0.25,
            "target {target}: attention's p relative difference {rel_a:.2e}"
        );
        for agg in [OcclusionAgg::Raw, OcclusionAgg::Abs, OcclusionAgg::Inseq] {
            let o = occlusion::attribute(&mut occ, &ctx, target, TargetFn::Logprob, agg).unwrap();
            assert_eq!(o.scores.len(), ctx.len());
            assert!(o.scores.iter().all(|x| x.is_finite()));
            let rel_o = (o.target_prob() - want).abs() / want;
            eprintln!(
                "target {target} {agg:?}: p occlusion {:.6e} (relative {rel_o:.2e})",
                o.target_prob()
            );
            // Occlusion's full-context decode is the ordinary decoder's (measured 3e-15).
            assert!(
                rel_o < 1e-9,
                "target {target}: occlusion's p relative difference {rel_o:.2e}"
            );
        }
    }
    // Out-of-vocabulary targets are refused.
    assert!(attend(&mut cap, &mut lg, &ctx, 1 << 20).is_err());
    assert!(
        occlusion::attribute(&mut occ, &ctx, -1, TargetFn::Logprob, OcclusionAgg::Raw).is_err()
    );
}

/// p(target) under the attention capture and under the ordinary decoder (llama.cpp's decode
/// path, `ntv preview`'s p_base), for the most probable next token and a runner-up after
/// `ctx`. Returns the largest |Δp| seen.
fn attention_vs_decode(m: &Model, ctx: &[i32], label: &str) -> f64 {
    let mut cap = AttentionCapture::new(m, 64, 1).unwrap();
    let mut lg = logits_decoder(m);
    let mut dec = Decoder::new(
        m,
        &ContextOptions {
            n_ctx: 128,
            n_threads: 1,
            n_batch: 512,
        },
    )
    .unwrap();
    let plain = softmax(dec.eval(ctx).unwrap());
    let mut order: Vec<usize> = (0..plain.len()).collect();
    order.sort_by(|&a, &b| plain[b].total_cmp(&plain[a]));
    let mut worst = 0f64;
    for &target in &order[..2] {
        let a = attend(&mut cap, &mut lg, ctx, target as i32).unwrap();
        let d = (a.target_prob - plain[target]).abs();
        eprintln!(
            "{label}: target {target}: p decode {:.4}, p attention {:.4}, |Δp| {d:.4}",
            plain[target], a.target_prob
        );
        worst = worst.max(d);
    }
    worst
}

/// A chat prompt other than the public example's, in the test model's ChatML.
fn other_chat_prompt(m: &Model) -> Vec<i32> {
    m.tokenize(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
         Name a fruit that is yellow and curved.<|im_end|>\n<|im_start|>assistant\n",
        false,
        true,
    )
}

#[test]
fn attention_and_decode_give_the_same_target_probability() {
    let m = load();
    let mut worst = 0f64;
    for (k, (ctx, _, _)) in cases().into_iter().enumerate() {
        worst = worst.max(attention_vs_decode(&m, &ctx, &format!("example case {k}")));
    }
    let other = other_chat_prompt(&m);
    assert!(other.len() > 20, "{other:?}");
    worst = worst.max(attention_vs_decode(&m, &other, "other chat prompt"));
    // The capture context keeps its KV cache in f32 (see AttentionCapture::new): with llama.cpp's
    // default f16 cache the non-flash path measured |Δp| up to 0.03 on these prompts.
    assert!(worst <= 0.01, "|p_attention - p_decode| up to {worst:.4}");
}

#[test]
fn attention_and_decode_give_the_same_target_probability_on_qwen3() {
    let m = Model::load(crate::second_arch::qwen3_gguf(), &LoadOptions::default()).unwrap();
    let (ctx, _, _) = cases().remove(0);
    let mut worst = attention_vs_decode(&m, &ctx, "qwen3 example case 0");
    worst = worst.max(attention_vs_decode(
        &m,
        &other_chat_prompt(&m),
        "qwen3 other prompt",
    ));
    assert!(worst <= 0.01, "|p_attention - p_decode| up to {worst:.4}");
}

/// Attention's p(target) comes from the ordinary decoder it is given: a context that decoder
/// holds already (it chose the target) is not decoded again, and for several rows only what
/// follows the first row asked for is.
#[test]
fn attention_reuses_a_context_the_decoder_holds() {
    let m = load();
    let mut cap = AttentionCapture::new(&m, 64, 1).unwrap();
    let mut lg = logits_decoder(&m);
    let ctx = known();
    assert!(ctx.len() > 10);
    let want = lg.eval(&ctx).unwrap().to_vec();
    let before = lg.decoded_total();
    let rows = cap.capture_last(&ctx, &mut lg).unwrap();
    assert_eq!(
        lg.decoded_total(),
        before,
        "the held context was decoded again"
    );
    assert_eq!(rows.logits[..], want[..rows.logits.len()]);
    let before = lg.decoded_total();
    let two = cap.capture(&ctx, &[9, ctx.len() - 1], &mut lg).unwrap();
    assert_eq!(lg.decoded_total() - before, ctx.len() - 9);
    // Decoded again in another batch: equal to rounding.
    let worst = two[1]
        .logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "logits moved by {worst}");
}
