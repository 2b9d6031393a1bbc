//! The autograd attribution engine (ntv's own f32 passes over the GGUF's weights expanded tile
//! by tile) on the real test model: parity of its forward with llama.cpp, the public worked
//! example, IG's completeness, and the activation budget (blocks kept or recomputed, batches
//! of interpolated inputs) leaving the numbers as they are.

use std::sync::OnceLock;

use ntv::attribution::{
    Agg, AttributionError, AutogradModel, Baseline, GradMethod, SharedForward, TargetFn, attribute,
    next_token_logits,
};
use ntv::engine::{ContextOptions, Decoder, LoadOptions, Model, WeightFile};
use serde_json::Value;

use crate::util::{KNOWN_IDS, attribution_example, model, spearman};

fn autograd_model() -> &'static AutogradModel {
    static M: OnceLock<AutogradModel> = OnceLock::new();
    M.get_or_init(|| AutogradModel::load(model()).expect("autograd model loads"))
}

fn known_ids() -> Vec<u32> {
    KNOWN_IDS.iter().map(|&i| i as u32).collect()
}

fn ig(steps: usize) -> GradMethod {
    GradMethod::IntegratedGradients {
        steps,
        baseline: autograd_model().default_baseline(),
    }
}

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    l.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(l: &[f32]) -> usize {
    l.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

#[test]
fn autograd_forward_matches_llama_cpp() {
    let am = autograd_model();
    assert_eq!(am.architecture(), "llama");
    let lm = Model::load(model(), &LoadOptions::default()).expect("llama.cpp model loads");
    assert_parity(&lm, am, 0.0);
}

/// The autograd forward's next-token distribution agrees with llama.cpp's on four prompts:
/// same top-1 on each (or, with `tie` > 0, the two top-1s within `tie` of each other in
/// probability under both engines: a near tie that quantisation may flip), mean
/// KL(llama.cpp ‖ autograd) under 0.01 nats.
pub fn assert_parity(lm: &Model, am: &AutogradModel, tie: f64) {
    let mut prompts: Vec<Vec<i32>> = vec![KNOWN_IDS.iter().map(|&i| i as i32).collect()];
    for text in [
        "The quick brown fox jumps over the lazy dog. The dog",
        "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{}\", x",
        "<|im_start|>user\nWhat is 7 times 8?<|im_end|>\n<|im_start|>assistant\n",
    ] {
        prompts.push(lm.tokenize(text, false, true));
    }
    let mut kls = Vec::new();
    for ids in &prompts {
        let opts = ContextOptions {
            n_threads: 1,
            ..ContextOptions::default()
        };
        let mut dec = Decoder::new(lm, &opts).expect("context");
        let ll = dec.eval(ids).expect("llama.cpp eval").to_vec();
        let uids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let al = next_token_logits(am, &uids).expect("autograd logits");
        assert_eq!(ll.len(), al.len(), "vocabulary sizes differ");
        let (lp, ap) = (log_softmax(&ll), log_softmax(&al));
        let kl: f64 = lp
            .iter()
            .zip(&ap)
            .map(|(l, a)| {
                if l.is_finite() {
                    l.exp() * (l - a)
                } else {
                    0.0
                }
            })
            .sum();
        let (tl, ta) = (argmax(&ll), argmax(&al));
        eprintln!(
            "parity ({}): {} tokens, top-1 llama.cpp {tl} (p={:.4}) autograd {ta} (p={:.4}), KL {kl:.5}",
            am.architecture(),
            ids.len(),
            lp[tl].exp(),
            ap[ta].exp()
        );
        let near_tie =
            (lp[tl].exp() - lp[ta].exp()).abs() < tie && (ap[tl].exp() - ap[ta].exp()).abs() < tie;
        assert!(
            tl == ta || near_tie,
            "top-1 differs for prompt {ids:?}: llama.cpp {tl} p {:.4}/{:.4}, autograd {ta} p {:.4}/{:.4}",
            lp[tl].exp(),
            lp[ta].exp(),
            ap[tl].exp(),
            ap[ta].exp()
        );
        kls.push(kl);
    }
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    eprintln!(
        "parity ({}): mean KL(llama.cpp || autograd) = {mean:.5} nats",
        am.architecture()
    );
    assert!(mean < 0.01, "mean KL {mean} nats ≥ 0.01: {kls:?}");
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn check_inseq_scores(scores: &[f64], n: usize, what: &str) {
    assert_eq!(scores.len(), n, "{what}: one score per context token");
    assert!(
        scores.iter().all(|s| s.is_finite() && *s >= 0.0),
        "{what}: scores finite and non-negative: {scores:?}"
    );
    let total: f64 = scores.iter().sum();
    assert!((total - 1.0).abs() < 1e-9, "{what}: scores sum to {total}");
}

#[test]
fn public_example_is_reproduced() {
    let am = autograd_model();
    assert_eq!(
        am.default_baseline(),
        Baseline::Token {
            id: 0,
            keep: vec![2]
        },
        "the example's baseline: id 0, <|im_end|> (id 2) kept"
    );
    let ex = attribution_example();
    for case in ex["cases"].as_array().expect("cases") {
        let context = ids(&case["context_ids"]);
        let target = case["target_id"].as_u64().expect("target") as u32;
        for (name, method) in [
            ("saliency", GradMethod::Saliency),
            ("input_x_gradient", GradMethod::InputXGradient),
            ("integrated_gradients", ig(50)),
        ] {
            let got = attribute(am, &context, target, method, TargetFn::Prob, Agg::Inseq)
                .expect("attribution");
            let want = floats(&case["scores"][name]);
            check_inseq_scores(&got.scores, context.len(), name);
            assert_eq!(got.raw.len(), context.len());
            assert_eq!(
                want.len(),
                got.scores.len(),
                "{name}: one reference per score"
            );
            let max_diff = got
                .scores
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let rho = spearman(&got.scores, &want);
            eprintln!(
                "example target {target} ({} tokens) {name}: max |Δ| {max_diff:.2e}, Spearman {rho:.4}, p(target) {:.4}, completeness {:?}",
                context.len(),
                got.target_prob,
                got.completeness_error
            );
            assert!(
                max_diff < 1e-3,
                "{name} for target {target}: max |Δ| {max_diff} (Spearman {rho})\n got {:?}\nwant {want:?}",
                got.scores
            );
        }
    }
}

#[test]
fn integrated_gradients_completeness_improves_with_steps() {
    let am = autograd_model();
    let context = known_ids();
    let err = |steps| {
        let a = attribute(am, &context, 504, ig(steps), TargetFn::Prob, Agg::Sum).expect("IG");
        assert_eq!(a.scores, a.raw, "--agg sum gives the raw signed scores");
        a.completeness_error
            .expect("IG reports its completeness error")
    };
    let (e8, e64) = (err(8), err(64));
    eprintln!("IG completeness error: 8 steps {e8:.3e}, 64 steps {e64:.3e}");
    assert!(e64 < e8, "completeness error 8 steps {e8}, 64 steps {e64}");
}

#[test]
fn scores_are_well_formed_for_every_target_function_and_aggregation() {
    let am = autograd_model();
    let context = known_ids();
    let n = context.len();
    for target_fn in [TargetFn::Prob, TargetFn::Logprob, TargetFn::Logit] {
        for method in [GradMethod::Saliency, GradMethod::InputXGradient, ig(4)] {
            let inseq = attribute(am, &context, 504, method.clone(), target_fn, Agg::Inseq)
                .expect("attribution");
            check_inseq_scores(&inseq.scores, n, &format!("{method:?} {target_fn:?}"));
            assert!(inseq.target_prob > 0.0 && inseq.target_prob <= 1.0);
            let l2 = attribute(am, &context, 504, method.clone(), target_fn, Agg::L2)
                .expect("attribution");
            assert_eq!(l2.scores.len(), n);
            assert!(l2.scores.iter().all(|s| s.is_finite() && *s >= 0.0));
            let total: f64 = l2.scores.iter().sum();
            for (a, b) in inseq.scores.iter().zip(&l2.scores) {
                assert!((a - b / total).abs() < 1e-9, "inseq = l2 normalised");
            }
            assert!(l2.raw.iter().all(|s| s.is_finite()));
        }
    }
    // A candidate next token other than the top one, and a one-token context.
    let a = attribute(
        am,
        &[1],
        504,
        GradMethod::Saliency,
        TargetFn::Prob,
        Agg::Inseq,
    )
    .expect("one-token context");
    assert_eq!(a.scores, vec![1.0]);
    // Bad input is an error, not a panic.
    assert!(matches!(
        attribute(
            am,
            &[],
            504,
            GradMethod::Saliency,
            TargetFn::Prob,
            Agg::Inseq
        ),
        Err(AttributionError::BadInput(_))
    ));
    assert!(matches!(
        attribute(
            am,
            &context,
            1 << 20,
            GradMethod::Saliency,
            TargetFn::Prob,
            Agg::Inseq
        ),
        Err(AttributionError::BadInput(_))
    ));
}

#[test]
fn unsupported_architecture_is_a_clear_error() {
    use candle_core::quantized::gguf_file::{Value as GValue, write};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gpt2.gguf");
    let mut f = std::fs::File::create(&path).expect("create");
    let arch = GValue::String("gpt2".into());
    write(&mut f, &[("general.architecture", &arch)], &[]).expect("write GGUF");
    drop(f);
    let err = AutogradModel::load(&path)
        .err()
        .expect("gpt2 is not supported");
    let msg = err.to_string();
    assert!(matches!(
        err,
        AttributionError::UnsupportedArchitecture { .. }
    ));
    for needle in ["gpt2", "llama", "qwen2", "qwen3", "attention", "occlusion"] {
        assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    }
}

/// The activation budget changes how the backward pass runs, not what it computes: with a
/// budget of one byte every block is recomputed from its saved input and integrated gradients
/// takes its nodes one at a time; with the default every block keeps its graph and the nodes
/// are batched (f(input) and f(baseline) riding in the first batch). Saliency and IG scores,
/// p(target) and IG's completeness error agree to float rounding (the batched matmuls sum in
/// another order).
#[test]
fn the_activation_budget_changes_the_schedule_not_the_scores() {
    let context = known_ids();
    let mut tight = AutogradModel::load(model()).expect("autograd model loads");
    tight.set_activation_budget(1);
    let roomy = autograd_model();
    assert!(roomy.activation_budget() >= 256 << 20);
    let n = context.len();
    assert_eq!(
        tight.schedule(6, n),
        (1, 0),
        "one input at a time, every block recomputed"
    );
    let (batch, kept) = roomy.schedule(6, n);
    assert!(
        batch > 1 && kept == roomy.n_layer(),
        "default: {batch} inputs, {kept} blocks kept"
    );
    for method in [GradMethod::Saliency, ig(6)] {
        let a = attribute(
            roomy,
            &context,
            504,
            method.clone(),
            TargetFn::Prob,
            Agg::Sum,
        )
        .expect("default budget");
        let b = attribute(
            &tight,
            &context,
            504,
            method.clone(),
            TargetFn::Prob,
            Agg::Sum,
        )
        .expect("one-byte budget");
        let scale = a.raw.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0);
        for (x, y) in a.raw.iter().zip(&b.raw) {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{method:?}: {x} vs {y} (largest score {scale})"
            );
        }
        assert!((a.target_prob - b.target_prob).abs() < 1e-6);
        // f(input) and f(baseline): in the default budget they ride in the first batch's
        // forward pass, in the tight one they take a pass of their own.
        match (a.completeness_error, b.completeness_error) {
            (Some(x), Some(y)) => assert!(
                (x - y).abs() <= 1e-3 * x.abs().max(1.0),
                "completeness {x} vs {y}"
            ),
            (None, None) => assert_eq!(method, GradMethod::Saliency),
            other => panic!("{method:?}: completeness {other:?}"),
        }
    }
}

/// One forward pass serves several targets: saliency and input×gradient of targets after two
/// prefixes of one sequence, each from a backward pass with its own seed, equal the same
/// attributions computed one by one from their own contexts.
#[test]
fn targets_on_one_sequence_share_a_forward_pass() {
    let am = autograd_model();
    let seq = known_ids();
    let mut shared = SharedForward::new(am, &seq).expect("forward pass");
    let short = &seq[..seq.len() - 3];
    assert!(shared.covers(short) && shared.covers(&seq));
    assert!(!shared.covers(&[seq[1]]));
    for (ctx, target) in [(&seq[..], 504u32), (short, 260)] {
        for method in [GradMethod::Saliency, GradMethod::InputXGradient] {
            let a = shared
                .attribute(am, ctx, target, &method, TargetFn::Prob, Agg::Inseq)
                .expect("shared");
            let b = attribute(am, ctx, target, method.clone(), TargetFn::Prob, Agg::Inseq)
                .expect("alone");
            assert_eq!(a.scores.len(), ctx.len());
            for (x, y) in a.scores.iter().zip(&b.scores) {
                assert!(
                    (x - y).abs() < 1e-5,
                    "{method:?} after {}: {x} vs {y}",
                    ctx.len()
                );
            }
            assert!((a.target_prob - b.target_prob).abs() < 1e-6);
        }
    }
    assert_eq!(
        shared.backward_passes(),
        2,
        "one backward pass per target; input×gradient reused saliency's gradient"
    );
}

/// The tiled products over a weight in place (`x · Wᵀ` forward, `g · W` backward) equal the
/// same products over the whole matrix dequantised, for a single row, a saliency-sized batch
/// and an integrated-gradients-sized one, on a Q4_1 block weight and the Q8_0 embedding.
#[test]
fn weight_products_match_the_dequantised_matrix() {
    let file = WeightFile::open(model()).expect("open GGUF");
    for (name, cols) in [("blk.3.ffn_down.weight", 1536), ("token_embd.weight", 576)] {
        let w = file.matrix(name, cols).expect("readable").expect("present");
        // The embedding has 49,152 rows: its first 2,000 are enough and keep the test short.
        let rows = w.rows().min(2000);
        let mut dense = vec![0f32; w.rows() * cols];
        w.dequantise(0..w.rows(), &mut dense);
        for m in [1usize, 25, 70] {
            let x: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let mut y = vec![0f32; m * w.rows()];
            w.matmul_t(&x, &mut y);
            for i in 0..m {
                for j in (0..rows).step_by(37) {
                    let want: f64 = (0..cols)
                        .map(|c| f64::from(x[i * cols + c]) * f64::from(dense[j * cols + c]))
                        .sum();
                    let got = f64::from(y[i * w.rows() + j]);
                    assert!(
                        (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "{name} x·Wᵀ m={m} ({i},{j}): {got} vs {want}"
                    );
                }
            }
            // Added to what the output holds: the product twice, rounded like the products
            // above (their sums run over thousands of terms).
            let twice = |once: &[f32], added: &[f32], what: &str| {
                for (t, o) in added.iter().zip(once) {
                    assert!(
                        (t - 2.0 * o).abs() <= 1e-3 * (1.0 + o.abs()),
                        "{name} {what} added, m={m}: {t} vs twice {o}"
                    );
                }
            };
            let mut added = y.clone();
            w.matmul_t_add(&x, &mut added);
            twice(&y, &added, "x·Wᵀ");
            let g: Vec<f32> = (0..m * w.rows())
                .map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0)
                .collect();
            let mut out = vec![0f32; m * cols];
            w.matmul(&g, &mut out);
            let mut added = out.clone();
            w.matmul_add(&g, &mut added);
            twice(&out, &added, "g·W");
            for i in 0..m {
                for c in (0..cols).step_by(13) {
                    let want: f64 = (0..w.rows())
                        .map(|r| f64::from(g[i * w.rows() + r]) * f64::from(dense[r * cols + c]))
                        .sum();
                    let got = f64::from(out[i * cols + c]);
                    assert!(
                        (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "{name} g·W m={m} ({i},{c}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
