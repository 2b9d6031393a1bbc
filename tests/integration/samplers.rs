//! llama.cpp is the oracle of ntv's sampler chain: the same real logits (the test model, several
//! prompts and positions, and after a forced repetitive completion so that DRY and the
//! penalties bite) go through llama.cpp's own sampler objects (llama-cpp-2's `LlamaSampler`
//! chain with the same settings) and through ntv's. The surviving candidates must be the same
//! set and their probabilities agree within 1e-6; for XTC and the final draw, ntv is fed the
//! very uniform numbers llama.cpp's samplers draw (C++ `std::mt19937` through libstdc++'s
//! `generate_canonical`), and must pick the same token.

use std::collections::{BTreeMap, HashMap};

use ntv::engine::{ContextOptions, Decoder, LlamaChain, LoadOptions, Model};
use ntv::sampling::{
    Bias, ChainInputs, CutStage, LogitBias, SamplerOrder, SamplingParams, Stage, Workspace,
};

use crate::util::model;

fn load() -> Model {
    Model::load(model(), &LoadOptions::default()).expect("model loads")
}

fn opts() -> ContextOptions {
    ContextOptions {
        n_ctx: 512,
        n_threads: 1,
        n_batch: 64,
    }
}

/// Neutral llama-order parameters: every stage off, T 1.
fn neutral() -> SamplingParams {
    SamplingParams {
        greedy: false,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        penalty_last_n: -1,
        sampler_order: SamplerOrder::Llama,
        ..SamplingParams::default()
    }
}

/// llama.cpp's XTC coin for `seed`: `std::uniform_real_distribution<float>(0, 1)` over
/// `std::mt19937(seed)`: one 32-bit output, as float, over 2^32.
fn xtc_coin(seed: u32) -> f64 {
    let mut mt = rand_mt::Mt::new(seed);
    let x = mt.next_u32() as f32 / 4_294_967_296.0f32;
    f64::from(if x >= 1.0 { 1.0f32.next_down() } else { x })
}

/// llama.cpp's `dist` draw for `seed`: `std::uniform_real_distribution<double>(0, 1)`: two
/// 32-bit outputs, the second the high word, over 2^64.
fn dist_uniform(seed: u32) -> f64 {
    let mut mt = rand_mt::Mt::new(seed);
    let lo = f64::from(mt.next_u32());
    let hi = f64::from(mt.next_u32());
    let u = (lo + hi * 4_294_967_296.0) / 18_446_744_073_709_551_616.0;
    if u >= 1.0 { 1.0f64.next_down() } else { u }
}

/// Logits and contexts: three prompts at their next position, one a few tokens into a greedy
/// completion, and one after a forced repetitive completion.
fn positions(m: &Model) -> Vec<(Vec<i32>, Vec<f32>)> {
    let mut dec = Decoder::new(m, &opts()).expect("context");
    let mut out = Vec::new();
    let prompts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    ];
    for (i, p) in prompts.iter().enumerate() {
        let mut ids = m.tokenize(p, true, true);
        let logits = dec.eval(&ids).expect("decode").to_vec();
        out.push((ids.clone(), logits.clone()));
        if i == 1 {
            // Four greedy tokens further.
            let mut l = logits;
            for _ in 0..4 {
                let next = l
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
                    .unwrap()
                    .0 as i32;
                ids.push(next);
                l = dec.eval(&ids).expect("decode").to_vec();
            }
            out.push((ids, l));
        }
    }
    let rep = "The cat sat on the mat: the cat sat on the mat. The cat sat on the mat; the cat sat on the";
    let ids = m.tokenize(rep, true, false);
    let logits = dec.eval(&ids).expect("decode").to_vec();
    out.push((ids, logits));
    out
}

/// The survivors of llama.cpp's chain (id → p, softmax of the final logits in f64) and its
/// selection.
fn llama(
    m: &Model,
    p: &SamplingParams,
    ctx: &[i32],
    logits: &[f32],
    seed: u32,
    with_dist: bool,
) -> (BTreeMap<u32, f64>, Option<u32>) {
    let mut chain = LlamaChain::new(m, p, ctx.len(), seed, with_dist);
    chain.accept(ctx);
    let r = chain.apply(logits);
    let max = r
        .survivors
        .iter()
        .map(|&(_, l)| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = r
        .survivors
        .iter()
        .map(|&(_, l)| (f64::from(l) - max).exp())
        .sum();
    let set = r
        .survivors
        .iter()
        .map(|&(id, l)| (id, (f64::from(l) - max).exp() / sum))
        .collect();
    (set, r.selected)
}

struct Ntv {
    kept: BTreeMap<u32, f64>,
    cut: HashMap<u32, CutStage>,
    drawn: u32,
    next_mu: Option<f64>,
}

#[allow(clippy::too_many_arguments)]
fn ntv_chain(
    ws: &mut Workspace,
    m: &Model,
    p: &SamplingParams,
    ctx: &[i32],
    logits: &[f32],
    seed: u32,
    mu: Option<f64>,
    select: Option<u32>,
) -> Ntv {
    let breakers = m.dry_breakers(&p.dry_sequence_breakers);
    let inputs = ChainInputs {
        dry_breakers: Some(&breakers),
        xtc_coin: Some(xtc_coin(seed)),
        mirostat_mu: mu,
    };
    let d = ws
        .compute_with(logits, ctx, p, None, &inputs)
        .expect("distribution");
    assert!(d.chained());
    let kept: BTreeMap<u32, f64> = d
        .kept_tokens()
        .iter()
        .copied()
        .filter(|&(_, q)| q > 0.0)
        .collect();
    let cut = (0..d.n_vocab())
        .filter_map(|i| d.cut_by(i).map(|s| (i as u32, s)))
        .collect();
    let drawn = d.sample(dist_uniform(seed));
    let next_mu = d.mirostat_next_mu(p, select.unwrap_or(drawn));
    Ntv {
        kept,
        cut,
        drawn,
        next_mu,
    }
}

#[track_caller]
fn same(name: &str, at: usize, ntv: &BTreeMap<u32, f64>, llama: &BTreeMap<u32, f64>) -> f64 {
    let a: Vec<u32> = ntv.keys().copied().collect();
    let b: Vec<u32> = llama.keys().copied().collect();
    assert_eq!(
        a,
        b,
        "{name} at position {at}: the surviving sets differ ({} vs {} tokens)",
        a.len(),
        b.len()
    );
    assert!(!a.is_empty());
    let worst = ntv
        .iter()
        .map(|(id, p)| (p - llama[id]).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-6,
        "{name} at position {at}: probabilities differ by {worst:e}"
    );
    worst
}

/// Every configuration: each sampler alone, then realistic chains.
fn configs() -> Vec<(&'static str, SamplingParams, Option<CutStage>)> {
    let n = neutral;
    vec![
        (
            "logit_bias",
            SamplingParams {
                logit_bias: vec![
                    LogitBias {
                        id: 12,
                        bias: Bias::Add(5.0),
                    },
                    LogitBias {
                        id: 30,
                        bias: Bias::Add(-3.5),
                    },
                    LogitBias {
                        id: 28,
                        bias: Bias::from_value(f64::NEG_INFINITY),
                    },
                ],
                top_k: 200,
                ..n()
            },
            Some(CutStage::LogitBias),
        ),
        (
            "penalties",
            SamplingParams {
                repetition_penalty: 1.3,
                frequency_penalty: 0.5,
                presence_penalty: 0.3,
                penalty_last_n: 64,
                top_k: 100,
                ..n()
            },
            Some(CutStage::TopK),
        ),
        (
            "dry",
            SamplingParams {
                dry_multiplier: 0.8,
                top_k: 100,
                ..n()
            },
            Some(CutStage::TopK),
        ),
        (
            "top_n_sigma",
            SamplingParams {
                top_n_sigma: 1.5,
                ..n()
            },
            Some(CutStage::TopNSigma),
        ),
        (
            "top_k",
            SamplingParams { top_k: 20, ..n() },
            Some(CutStage::TopK),
        ),
        (
            "typical",
            SamplingParams {
                typical_p: 0.9,
                ..n()
            },
            Some(CutStage::Typical),
        ),
        (
            "top_p",
            SamplingParams { top_p: 0.9, ..n() },
            Some(CutStage::TopP),
        ),
        (
            "min_p",
            SamplingParams { min_p: 0.1, ..n() },
            Some(CutStage::MinP),
        ),
        (
            "xtc",
            SamplingParams {
                xtc_probability: 1.0,
                xtc_threshold: 0.02,
                top_k: 100,
                ..n()
            },
            Some(CutStage::Xtc),
        ),
        (
            "xtc coin",
            SamplingParams {
                xtc_probability: 0.5,
                xtc_threshold: 0.02,
                top_k: 100,
                ..n()
            },
            None,
        ),
        (
            "temperature",
            SamplingParams {
                temperature: 0.6,
                top_k: 50,
                ..n()
            },
            None,
        ),
        (
            "dynatemp",
            SamplingParams {
                temperature: 1.0,
                dynatemp_range: 0.5,
                dynatemp_exponent: 1.5,
                top_k: 50,
                ..n()
            },
            None,
        ),
        (
            "dynatemp to zero",
            SamplingParams {
                temperature: 0.5,
                dynatemp_range: 0.5,
                dynatemp_exponent: 1000.0,
                top_k: 50,
                ..n()
            },
            Some(CutStage::Temperature),
        ),
        (
            "min_keep",
            SamplingParams {
                top_p: 0.3,
                min_keep: 7,
                ..n()
            },
            Some(CutStage::TopP),
        ),
        (
            "llama-server defaults",
            SamplingParams {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                min_p: 0.05,
                penalty_last_n: 64,
                ..n()
            },
            None,
        ),
        (
            "DRY + XTC + min-p chat",
            SamplingParams {
                temperature: 1.0,
                min_p: 0.05,
                dry_multiplier: 0.8,
                dry_base: 1.75,
                dry_allowed_length: 2,
                xtc_probability: 0.5,
                xtc_threshold: 0.1,
                repetition_penalty: 1.05,
                penalty_last_n: 128,
                ..n()
            },
            None,
        ),
        (
            "full chain",
            SamplingParams {
                temperature: 0.9,
                dry_multiplier: 0.5,
                top_n_sigma: 2.0,
                min_p: 0.02,
                xtc_probability: 1.0,
                xtc_threshold: 0.1,
                ..n()
            },
            None,
        ),
        (
            "custom order",
            SamplingParams {
                temperature: 0.7,
                top_k: 30,
                top_p: 0.9,
                min_p: 0.05,
                repetition_penalty: 1.2,
                penalty_last_n: 32,
                samplers: Some(vec![
                    Stage::TopK,
                    Stage::Temperature,
                    Stage::Penalties,
                    Stage::MinP,
                    Stage::TopP,
                ]),
                ..n()
            },
            None,
        ),
    ]
}

#[test]
fn every_sampler_and_realistic_chains_match_llama_cpp() {
    let m = load();
    let pos = positions(&m);
    let mut ws = Workspace::new();
    let mut seen: HashMap<CutStage, usize> = HashMap::new();
    let mut draws = 0;
    let mut worst = 0.0f64;
    for (name, p, must_cut) in configs() {
        p.validate().unwrap();
        let mut cut_here = false;
        for (at, (ctx, logits)) in pos.iter().enumerate() {
            for seed in [7u32, 1234, 99_999] {
                let (want, selected) = llama(&m, &p, ctx, logits, seed, true);
                let (want_set, _) = llama(&m, &p, ctx, logits, seed, false);
                let got = ntv_chain(&mut ws, &m, &p, ctx, logits, seed, None, None);
                worst = worst.max(same(name, at, &got.kept, &want_set));
                // `dist` renormalises without changing the survivors.
                assert_eq!(
                    want.keys().collect::<Vec<_>>(),
                    want_set.keys().collect::<Vec<_>>()
                );
                assert_eq!(
                    Some(got.drawn),
                    selected,
                    "{name} at {at}, seed {seed}: the same uniform draw picks another token"
                );
                draws += 1;
                for s in got.cut.values() {
                    *seen.entry(*s).or_default() += 1;
                }
                if let Some(stage) = must_cut {
                    cut_here |= got.cut.values().any(|&s| s == stage);
                }
            }
        }
        if let Some(stage) = must_cut {
            assert!(cut_here, "{name}: no token was cut by {stage:?}");
        }
    }
    for stage in [
        CutStage::LogitBias,
        CutStage::TopNSigma,
        CutStage::TopK,
        CutStage::Typical,
        CutStage::TopP,
        CutStage::MinP,
        CutStage::Xtc,
        CutStage::Temperature,
    ] {
        assert!(seen.contains_key(&stage), "{stage:?} never cut");
    }
    eprintln!(
        "{draws} draws agree with llama.cpp; largest probability difference {worst:.2e}; cuts by stage: {seen:?}"
    );
}

/// Mirostat v1 and v2 over a few steps: llama.cpp's sampler keeps its own `mu` and draws with
/// its own generator; ntv is told the token llama.cpp chose and must keep the same candidates
/// at every step (so its `mu` follows llama.cpp's).
#[test]
fn mirostat_follows_llama_cpp_step_by_step() {
    let m = load();
    let mut dec = Decoder::new(&m, &opts()).expect("context");
    let mut ws = Workspace::new();
    for version in [1u8, 2] {
        let p = SamplingParams {
            mirostat: version,
            mirostat_ent: 5.0,
            mirostat_lr: 0.1,
            temperature: 0.8,
            ..neutral()
        };
        let mut ids = m.tokenize("Once upon a time, there was a", true, false);
        let mut chain = LlamaChain::new(&m, &p, ids.len(), 42, false);
        let mut mu = None;
        let mut cut_seen = false;
        for step in 0..8 {
            let logits = dec.eval(&ids).expect("decode").to_vec();
            let r = chain.apply(&logits);
            let selected = r.selected.expect("mirostat selects");
            let got = ntv_chain(&mut ws, &m, &p, &ids, &logits, 42, mu, Some(selected));
            let max = r
                .survivors
                .iter()
                .map(|&(_, l)| f64::from(l))
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = r
                .survivors
                .iter()
                .map(|&(_, l)| (f64::from(l) - max).exp())
                .sum();
            let want: BTreeMap<u32, f64> = r
                .survivors
                .iter()
                .map(|&(id, l)| (id, (f64::from(l) - max).exp() / sum))
                .collect();
            same(&format!("mirostat v{version}"), step, &got.kept, &want);
            cut_seen |= got.cut.values().any(|&s| s == CutStage::Mirostat);
            mu = got.next_mu;
            assert!(mu.is_some_and(f64::is_finite));
            ids.push(selected as i32);
        }
        assert!(cut_seen, "mirostat v{version} cut nothing");
    }
}
