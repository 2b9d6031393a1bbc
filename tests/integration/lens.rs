//! `ntv lens`, the logit lens: the last layer is the model's own distribution (same
//! computation as llama.cpp's head, on the llama test model and its qwen2/qwen3 copies), the
//! middle layers follow the autograd engine's f32 forward through its own norm and head, a
//! factual answer climbs the ranks as layers rise, and the outputs keep their shapes.

use std::path::Path;

use ntv::attribution::AutogradModel;
use ntv::engine::{LensHead, LoadOptions, Model, ResidualCapture};
use serde_json::Value;

use crate::second_arch::{qwen2_gguf, qwen3_gguf};
use crate::util::{KNOWN_IDS, PROMPT, Sandbox, f, m};

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{}\", x",
    "The quick brown fox jumps over the lazy dog. The dog",
];

/// The last layer's lens against `ntv preview`'s p_base (a different context and decode) on
/// every prompt: the same tokens in the same order, max |Δp| over the top 20.
fn last_layer_is_p_base(model: &str) {
    let sb = Sandbox::new();
    let mut worst = 0f64;
    for prompt in PROMPTS {
        let common = [
            "--no-session",
            "-m",
            model,
            "-p",
            prompt,
            "--no-chat-template",
        ];
        let pre = sb.json(&[&["preview"], &common[..], &["--display-k", "40", "--json"]].concat());
        let lens = sb.json(&[&["lens"], &common[..], &["--top", "20", "--json"]].concat());
        crate::docs::validate("lens", &lens);
        let pos = &lens["positions"][0];
        let layers = pos["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), lens["n_layers"].as_u64().unwrap() as usize);
        let last = layers.last().unwrap();
        // preview lists its tokens by p_final; compare by id, against p_base.
        let base: std::collections::HashMap<i64, f64> = pre["dist"]["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| (t["id"].as_i64().unwrap(), f(&t["p_base"])))
            .collect();
        let (&best, _) = base
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
            .unwrap();
        assert_eq!(
            pos["tracked"]["id"].as_i64(),
            Some(best),
            "{prompt}: the model's prediction"
        );
        assert_eq!(last["rank"], 1);
        let mut compared = 0;
        for l in last["top"].as_array().unwrap() {
            if let Some(b) = base.get(&l["id"].as_i64().unwrap()) {
                worst = worst.max((f(&l["p"]) - b).abs());
                compared += 1;
            }
        }
        assert!(compared >= 10, "{prompt}: only {compared} common tokens");
    }
    eprintln!("lens last layer vs p_base ({model}): max |Δp| {worst:.2e}");
    assert!(worst <= 1e-4, "max |Δp| {worst}");
}

#[test]
fn the_last_layer_is_the_models_own_distribution() {
    last_layer_is_p_base(m());
}

#[test]
fn the_last_layer_is_the_models_own_distribution_on_qwen2() {
    last_layer_is_p_base(qwen2_gguf().to_str().unwrap());
}

#[test]
fn the_last_layer_is_the_models_own_distribution_on_qwen3() {
    last_layer_is_p_base(qwen3_gguf().to_str().unwrap());
}

fn log_softmax(z: &[f32]) -> Vec<f64> {
    let mx = z
        .iter()
        .fold(f64::NEG_INFINITY, |a, &x| a.max(f64::from(x)));
    let lse = z
        .iter()
        .map(|&x| (f64::from(x) - mx).exp())
        .sum::<f64>()
        .ln()
        + mx;
    z.iter().map(|&x| f64::from(x) - lse).collect()
}

fn argmax(z: &[f32]) -> usize {
    (0..z.len()).fold(0, |b, i| if z[i] > z[b] { i } else { b })
}

/// Every (layer, position) of `ids`: the lens over llama.cpp's residuals and quantised head
/// against the autograd engine's f32 hidden states through its own f32 norm and head.
/// Returns (pairs, same top-1, mean KL(lens ‖ autograd) in nats).
fn lens_vs_autograd(lm: &Model, am: &AutogradModel, ids: &[i32]) -> (usize, usize, f64) {
    let head = LensHead::open(&lm.info().path).expect("lens head");
    let mut cap = ResidualCapture::new(lm, &head, ids.len(), 1).expect("capture context");
    let all: Vec<usize> = (0..ids.len()).collect();
    let res = cap.capture(ids, &all).expect("capture");
    let uids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let hidden = am.hidden_states(&uids).expect("autograd hidden states");
    assert_eq!(hidden.len(), res.n_block + 1);
    let d = res.n_embd;
    let nv = head.n_vocab();
    let (mut pairs, mut same, mut kl_sum) = (0, 0, 0.0);
    for (layer, h) in hidden.iter().enumerate() {
        let input = head.prepare(&res.data[layer * ids.len() * d..(layer + 1) * ids.len() * d]);
        let mut z = vec![0f32; ids.len() * nv];
        head.logits(&input, 0..ids.len(), &mut z);
        for p in 0..ids.len() {
            let ours = &z[p * nv..(p + 1) * nv];
            let theirs = am
                .lens_logits(&h[p * d..(p + 1) * d])
                .expect("autograd head");
            let (lo, la) = (log_softmax(ours), log_softmax(&theirs));
            let kl: f64 = lo.iter().zip(&la).map(|(a, b)| a.exp() * (a - b)).sum();
            pairs += 1;
            same += usize::from(argmax(ours) == argmax(&theirs));
            kl_sum += kl;
        }
    }
    (pairs, same, kl_sum / pairs as f64)
}

#[test]
fn middle_layers_follow_the_autograd_forward() {
    let lm = Model::load(Path::new(m()), &LoadOptions::default()).expect("model");
    let am = AutogradModel::load(Path::new(m())).expect("autograd model");
    let mut prompts: Vec<Vec<i32>> = vec![KNOWN_IDS.iter().map(|&i| i as i32).collect()];
    prompts.push(lm.tokenize(PROMPTS[2], false, true));
    let (mut pairs, mut same, mut kl) = (0, 0, 0.0);
    for ids in &prompts {
        let (p, s, k) = lens_vs_autograd(&lm, &am, ids);
        eprintln!(
            "lens vs autograd: {} tokens, {p} (layer, position) pairs, same top-1 {s} ({:.1}%), mean KL {k:.5} nats",
            ids.len(),
            100.0 * s as f64 / p as f64
        );
        pairs += p;
        same += s;
        kl += k * p as f64;
    }
    let rate = same as f64 / pairs as f64;
    let mean_kl = kl / pairs as f64;
    eprintln!(
        "lens vs autograd overall: same top-1 on {:.1}% of {pairs} pairs, mean KL {mean_kl:.5} nats",
        100.0 * rate
    );
    assert!(rate >= 0.95, "same top-1 on only {:.1}%", 100.0 * rate);
    assert!(mean_kl < 0.05, "mean KL {mean_kl}");
}

#[test]
fn a_factual_answer_climbs_the_ranks_as_layers_rise() {
    let sb = Sandbox::new();
    let doc = sb.json(&[
        "lens",
        "--no-session",
        "-p",
        "The capital of France is",
        "--no-chat-template",
        "--json",
    ]);
    let pos = &doc["positions"][0];
    assert_eq!(pos["tracked"]["text"], " Paris");
    let ranks: Vec<u64> = pos["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rank"].as_u64().unwrap())
        .collect();
    eprintln!("rank of ' Paris' by layer: {ranks:?}");
    // The guard: split the layers into four quarters; the median rank of each quarter is
    // below the one before, the answer is outside the top 100 throughout the first half, and
    // it is top-1 at the last layer.
    let n = ranks.len();
    let median = |q: usize| {
        let mut v = ranks[q * n / 4..(q + 1) * n / 4].to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let medians: Vec<u64> = (0..4).map(median).collect();
    eprintln!("median rank per quarter: {medians:?}");
    assert!(medians.windows(2).all(|w| w[1] < w[0]), "{medians:?}");
    assert!(ranks[..n / 2].iter().all(|&r| r > 100), "{ranks:?}");
    assert_eq!(ranks[n - 1], 1);
    assert_eq!(
        pos["first_top1_layer"].as_u64(),
        ranks.iter().position(|&r| r == 1).map(|l| l as u64)
    );
}

#[track_caller]
fn layer_ps(pos: &Value) -> Vec<f64> {
    pos["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| f(&l["p"]))
        .collect()
}

#[test]
fn all_index_and_token_select_positions_and_the_tracked_token() {
    let sb = Sandbox::new();
    sb.json(&["generate", "-p", PROMPT, "-n", "3", "--seed", "7", "--json"]);
    let all = sb.json(&["lens", "--all", "--top", "3", "--json"]);
    crate::docs::validate("lens", &all);
    let n_ctx = all["context_tokens"].as_array().unwrap().len();
    let positions = all["positions"].as_array().unwrap();
    assert_eq!(positions.len(), n_ctx);
    let n_layers = all["n_layers"].as_u64().unwrap() as usize;
    for (i, p) in positions.iter().enumerate() {
        assert_eq!(p["position"].as_u64(), Some(i as u64));
        assert_eq!(p["layers"].as_array().unwrap().len(), n_layers);
        assert_eq!(p["tracked_is"], "final_top1");
        assert_eq!(p["layers"][n_layers - 1]["rank"], 1);
        assert_eq!(p["layers"][0]["layer"], 0);
        for l in p["layers"].as_array().unwrap() {
            let top = l["top"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            assert!(top.windows(2).all(|w| f(&w[0]["p"]) >= f(&w[1]["p"])));
            assert!(f(&l["entropy_bits"]) >= 0.0);
        }
    }
    // --index 0: the position predicting completion token 0, the same numbers as in --all.
    let one = sb.json(&["lens", "--index", "0", "--top", "3", "--json"]);
    let p = &one["positions"][0];
    let completion = sb.session_json()["branches"][0]["completion_ids"].clone();
    let n_prompt = n_ctx - 3;
    assert_eq!(p["position"].as_u64(), Some(n_prompt as u64 - 1));
    assert_eq!(p["completion_index"], 0);
    assert_eq!(p["next"]["id"], completion[0]);
    let same = &positions[n_prompt - 1];
    for (a, b) in layer_ps(p).iter().zip(layer_ps(same)) {
        assert!(
            (a - b).abs() < 1e-9,
            "--index 0 and --all differ: {a} vs {b}"
        );
    }
    // --token follows another token at every layer: at the last layer its probability is the
    // one the untracked lens lists for it (when it is among the top 100), else its rank > 100.
    let id = completion[1].as_i64().unwrap();
    let tok = sb.json(&[
        "lens",
        "--index",
        "-2",
        "--token",
        &id.to_string(),
        "--json",
    ]);
    let p = &tok["positions"][0];
    assert_eq!(p["tracked_is"], "token");
    assert_eq!(p["tracked"]["id"].as_i64(), Some(id));
    assert_eq!(p["position"].as_u64(), Some(n_prompt as u64));
    let free = sb.json(&["lens", "--index", "-2", "--top", "100", "--json"]);
    let last = &p["layers"][n_layers - 1];
    match free["positions"][0]["layers"][n_layers - 1]["top"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t["id"].as_i64() == Some(id))
    {
        Some(k) => {
            let listed = &free["positions"][0]["layers"][n_layers - 1]["top"][k];
            assert!((f(&last["p"]) - f(&listed["p"])).abs() < 1e-12);
            assert_eq!(last["rank"].as_u64(), Some(k as u64 + 1));
        }
        None => assert!(last["rank"].as_u64().unwrap() > 100),
    }

    // Tables for people: one position, and the grid.
    let out = sb.run(&["lens", "--index", "0"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("▶"), "first top-1 layer marked:\n{table}");
    assert!(table.contains(&format!("{} out", n_layers - 1)), "{table}");
    let out = sb.run(&["lens", "--all"]);
    assert!(out.status.success());
    let grid = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        grid.lines().filter(|l| l.contains('→')).count(),
        n_ctx + 1,
        "one row per position, plus the header:\n{grid}"
    );
}

#[test]
fn bad_lens_requests_are_input_errors() {
    let sb = Sandbox::new();
    let e = sb.fails(&["lens", "--no-session", "-p", PROMPT, "--index", "0"], 2);
    assert!(e.contains("--index"), "{e}");
    let e = sb.fails(&["lens", "--no-session", "-p", PROMPT, "--top", "0"], 2);
    assert!(e.contains("--top"), "{e}");
    let e = sb.fails(
        &["lens", "--no-session", "-p", PROMPT, "--token", "99999999"],
        2,
    );
    assert!(e.contains("99999999"), "{e}");
}

/// A copy of the test model as `granite` (llama.cpp runs it; the lens does not know its
/// scaled head).
fn granite_gguf() -> std::path::PathBuf {
    crate::util::rewritten_model("smollm2-as-granite", |metadata, _| {
        for (key, value) in metadata.iter_mut() {
            if key == "general.architecture" {
                *value = candle_core::quantized::gguf_file::Value::String("granite".into());
            }
            if let Some(rest) = key.strip_prefix("llama.") {
                *key = format!("granite.{rest}");
            }
        }
        metadata.push((
            "granite.logit_scale".into(),
            candle_core::quantized::gguf_file::Value::F32(1.0),
        ));
    })
}

#[test]
fn an_architecture_the_lens_does_not_know_is_named() {
    let path = granite_gguf();
    let sb = Sandbox::new();
    let e = sb.fails(
        &[
            "lens",
            "--no-session",
            "-m",
            path.to_str().unwrap(),
            "-p",
            PROMPT,
        ],
        2,
    );
    assert!(e.contains("'granite'") && e.contains("qwen3"), "{e}");
}
