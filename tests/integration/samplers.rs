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
    (softmax(&r.survivors), r.selected)
}

/// The survivors' probabilities: softmax of their final logits, in f64.
fn softmax(survivors: &[(u32, f32)]) -> BTreeMap<u32, f64> {
    let max = survivors
        .iter()
        .map(|&(_, l)| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = survivors
        .iter()
        .map(|&(_, l)| (f64::from(l) - max).exp())
        .sum();
    survivors
        .iter()
        .map(|&(id, l)| (id, (f64::from(l) - max).exp() / sum))
        .collect()
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
            let want = softmax(&r.survivors);
            same(&format!("mirostat v{version}"), step, &got.kept, &want);
            cut_seen |= got.cut.values().any(|&s| s == CutStage::Mirostat);
            mu = got.next_mu;
            assert!(mu.is_some_and(f64::is_finite));
            ids.push(selected as i32);
        }
        assert!(cut_seen, "mirostat v{version} cut nothing");
    }
}

// ---- From the command line -------------------------------------------------------------------

use crate::util::{Sandbox, f, ids};
use serde_json::Value;

const PROMPT: &str = "The capital of France is";

fn candidates(doc: &Value) -> &Vec<Value> {
    doc["dist"]["tokens"]
        .as_array()
        .or_else(|| doc["tokens"].as_array())
        .unwrap_or_else(|| panic!("no candidates in {doc}"))
}

#[test]
fn preview_names_the_stage_that_cut_and_the_adjustments() {
    let sb = Sandbox::new();
    // Token 504 ("The") leads here; ban it, raise 15319 ("La"), let XTC remove the top.
    let doc = sb.json(&[
        "preview",
        "--no-session",
        "-t",
        "1",
        "-p",
        PROMPT,
        "--top-k",
        "40",
        "--logit-bias",
        "504-inf",
        "--logit-bias",
        "15319+1.5",
        "--dry-multiplier",
        "0.8",
        "--xtc-probability",
        "1",
        "--xtc-threshold",
        "0.05",
        "--display-k",
        "12",
        "--json",
    ]);
    let toks = candidates(&doc);
    let by_id = |id: i64| {
        toks.iter()
            .find(|c| c["id"].as_i64() == Some(id))
            .unwrap_or_else(|| panic!("{id} not shown: {doc}"))
    };
    let banned = by_id(504);
    assert_eq!(banned["cut_by"], "logit_bias", "{banned}");
    assert_eq!(f(&banned["p_final"]), 0.0);
    let raised = by_id(15319);
    assert!(
        raised["logit_adjust"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["stage"] == "logit_bias" && f(&a["amount"]) == 1.5),
        "{raised}"
    );
    assert!(
        toks.iter().any(|c| c["cut_by"] == "xtc"),
        "XTC with probability 1 cut nothing: {doc}"
    );
    // The demo's (hf) order: temperature right after the logit adjustments.
    let chain = &doc["dist"]["chain"];
    assert_eq!(
        chain["stages"],
        serde_json::json!([
            "penalties",
            "dry",
            "temperature",
            "top_n_sigma",
            "top_k",
            "typ_p",
            "top_p",
            "min_p",
            "xtc"
        ]),
        "{doc}"
    );
    assert!(chain["xtc"]["removed"].as_u64().unwrap() >= 1, "{chain}");
    // The prompt's "The" is penalised (repetition 1.05) and shows it.
    assert!(
        toks.iter()
            .flat_map(|c| c["logit_adjust"].as_array().into_iter().flatten())
            .any(|a| a["stage"] == "penalties"),
        "{doc}"
    );
    // People see it too.
    let table = sb.run(&[
        "preview",
        "--no-session",
        "-t",
        "1",
        "-p",
        PROMPT,
        "--logit-bias",
        "504-inf",
        "--samplers",
        "kt",
        "--top-k",
        "5",
        "--color",
        "never",
    ]);
    let out = String::from_utf8_lossy(&table.stdout);
    assert!(out.contains("cut: logit_bias"), "{out}");
    assert!(out.contains("samplers kt"), "{out}");
}

#[test]
fn bad_sampler_flags_exit_2_with_a_hint() {
    let sb = Sandbox::new();
    for args in [
        &["--samplers", "top_k;warp"][..],
        &["--samplers", "kqz"][..],
        &["--logit-bias", "abc"][..],
        &["--logit-bias", "5+inf"][..],
        &["--mirostat", "3"][..],
        &["--xtc-probability", "1.5"][..],
        &["--typical", "2"][..],
    ] {
        let mut a = vec!["preview", "--no-session", "-p", PROMPT];
        a.extend_from_slice(args);
        let err = sb.fails(&a, 2);
        assert!(
            err.contains("error:") && err.contains("hint:"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn params_files_from_llama_server_and_openai_requests() {
    let sb = Sandbox::new();
    let server = sb.path().join("completion.json");
    std::fs::write(
        &server,
        serde_json::to_vec(&serde_json::json!({
            "prompt": PROMPT,
            "n_predict": 8,
            "temperature": 0.8,
            "top_k": 40,
            "top_p": 0.95,
            "min_p": 0.05,
            "repeat_penalty": 1.1,
            "repeat_last_n": 64,
            "dry_multiplier": 0.8,
            "dry_base": 1.75,
            "dry_allowed_length": 2,
            "dry_penalty_last_n": -1,
            "xtc_probability": 0.5,
            "xtc_threshold": 0.1,
            "seed": 1234,
            "n_probs": 4,
            "samplers": ["penalties", "dry", "top_k", "top_p", "min_p", "xtc", "temperature"],
            "cache_prompt": true,
            "my_extension": 3
        }))
        .unwrap(),
    )
    .unwrap();
    let out = sb.run(&[
        "step",
        "--no-session",
        "-t",
        "1",
        "-p",
        PROMPT,
        "--params",
        server.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown fields, ignored: my_extension"),
        "{err}"
    );
    assert!(
        err.contains("cache_prompt") && err.contains("n_predict"),
        "{err}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &doc["steps"][0]["appended_meta"]["dist"]["params"];
    assert_eq!(f(&p["temperature"]), 0.8, "{p}");
    assert_eq!(p["top_k"], 40);
    assert_eq!(f(&p["dry_multiplier"]), 0.8);
    assert_eq!(p["sampler_order"], "llama");
    assert_eq!(
        p["samplers"],
        serde_json::json!([
            "penalties",
            "dry",
            "top_k",
            "top_p",
            "min_p",
            "xtc",
            "temperature"
        ])
    );
    assert_eq!(doc["seed"].as_u64(), Some(1234), "{doc}");
    assert_eq!(
        doc["steps"][0]["appended_meta"]["dist"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // A flag overrides the file.
    let doc = sb.json(&[
        "preview",
        "--no-session",
        "-t",
        "1",
        "-p",
        PROMPT,
        "--params",
        server.to_str().unwrap(),
        "--top-k",
        "5",
        "--json",
    ]);
    assert_eq!(doc["params"]["top_k"], 5, "{doc}");

    let openai = sb.path().join("chat.json");
    std::fs::write(
        &openai,
        serde_json::to_vec(&serde_json::json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 1.1,
            "top_p": 0.9,
            "presence_penalty": 0.4,
            "frequency_penalty": 0.2,
            "logit_bias": {"504": -100, "60": 2},
            "max_tokens": 5,
            "top_logprobs": 3
        }))
        .unwrap(),
    )
    .unwrap();
    let doc = sb.json(&[
        "preview",
        "--no-session",
        "-t",
        "1",
        "-p",
        PROMPT,
        "--params",
        openai.to_str().unwrap(),
        "--json",
    ]);
    let p = &doc["params"];
    assert_eq!(f(&p["temperature"]), 1.1, "{p}");
    assert_eq!(f(&p["presence_penalty"]), 0.4);
    assert_eq!(p["logit_bias"].as_array().unwrap().len(), 2, "{p}");
    let toks = candidates(&doc);
    assert_eq!(toks.len(), 3, "top_logprobs sets the shown candidates");
    assert!(
        !toks.iter().any(|c| c["id"] == 504),
        "a bias of -100 pushes 504 out of the top: {doc}"
    );
    // Not JSON, not an object, a bad field: exit 2.
    let bad = sb.path().join("bad.json");
    std::fs::write(&bad, "{\"temperature\": \"warm\"}").unwrap();
    let err = sb.fails(
        &[
            "preview",
            "--no-session",
            "-p",
            PROMPT,
            "--params",
            bad.to_str().unwrap(),
        ],
        2,
    );
    assert!(err.contains("temperature"), "{err}");
}

/// XTC's coin and Mirostat's mu come from the branch: N separate `ntv step` calls give exactly
/// the tokens (and numbers) of one `ntv generate -n N`, and a recorded trace re-runs.
#[test]
fn stepping_replays_generate_with_xtc_and_mirostat() {
    for chain in [
        &[
            "--xtc-probability",
            "0.5",
            "--xtc-threshold",
            "0.05",
            "--dry-multiplier",
            "0.8",
        ][..],
        &["--mirostat", "2", "--mirostat-ent", "3"][..],
    ] {
        let gen_sb = Sandbox::new();
        let mut a = vec![
            "generate", "-t", "1", "-p", PROMPT, "-n", "8", "--seed", "11", "--temp", "1",
            "--format", "jsonl",
        ];
        a.extend_from_slice(chain);
        let lines = gen_sb.jsonl(&a);
        let summary = lines.last().unwrap();
        let gen_ids = ids(&summary["completion_ids"]);
        assert_eq!(gen_ids.len(), 8);
        let p_gen: Vec<f64> = lines[..8]
            .iter()
            .map(|l| f(&l["selected"]["p_final"]))
            .collect();

        let sb = Sandbox::new();
        let mut got = Vec::new();
        let mut p_step = Vec::new();
        for i in 0..8 {
            let mut a = vec!["step", "-t", "1", "--seed", "11", "--temp", "1", "--json"];
            if i == 0 {
                a.extend_from_slice(&["-p", PROMPT]);
            }
            a.extend_from_slice(chain);
            let doc = sb.json(&a);
            got.extend(ids(&doc["new_completion_ids"]));
            p_step.push(f(&doc["steps"][0]["selected"]["p_final"]));
            if chain.contains(&"--mirostat") {
                assert!(
                    doc["steps"][0]["appended_meta"]["dist"]["chain"]["mirostat_mu"].is_number(),
                    "{doc}"
                );
            }
        }
        assert_eq!(got, gen_ids, "{chain:?}: steps vs generate");
        assert_eq!(p_step, p_gen, "{chain:?}");

        // Record and check.
        let trace = gen_sb.path().join("trace.json");
        let mut a = vec![
            "generate",
            "--no-session",
            "-t",
            "1",
            "-p",
            PROMPT,
            "-n",
            "8",
            "--seed",
            "11",
            "--temp",
            "1",
            "--record",
            trace.to_str().unwrap(),
            "--format",
            "jsonl",
        ];
        a.extend_from_slice(chain);
        gen_sb.jsonl(&a);
        let out = gen_sb.run(&["check", trace.to_str().unwrap(), "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{chain:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
