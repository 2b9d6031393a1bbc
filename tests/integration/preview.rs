//! `ntv preview` against the real model: the known chat rendering (chat.md), plain-text
//! tokenisation, every number of the pipeline over the full vocabulary (sampling.md), output
//! formats and colour, and the session (preview writes nothing unless `--save`).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::util::{KNOWN_IDS, PROMPT, Sandbox, f, m};

/// chat.md's rendered text for PROMPT with the default system prompt.
const RENDERED: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nThe capital of France is<|im_end|>\n<|im_start|>assistant\n";

/// The test model's vocabulary size.
const VOCAB: usize = 49152;

/// `ntv --no-session preview -m MODEL EXTRA... --format json`.
#[track_caller]
fn preview(sb: &Sandbox, extra: &[&str]) -> Value {
    let mut args = vec!["--no-session", "preview", "-m", m()];
    args.extend_from_slice(extra);
    args.extend(["--format", "json"]);
    sb.json(&args)
}

/// Run and return stdout as text, expecting success.
#[track_caller]
fn stdout_of(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = sb.cmd();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().expect("ntv runs");
    assert!(
        out.status.success(),
        "ntv {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

fn prompt_ids(doc: &Value) -> Vec<i64> {
    doc["prompt_tokens"]
        .as_array()
        .expect("prompt_tokens is an array")
        .iter()
        .map(|t| t["id"].as_i64().expect("token id"))
        .collect()
}

fn tokens(doc: &Value) -> &Vec<Value> {
    doc["dist"]["tokens"]
        .as_array()
        .expect("dist.tokens is an array")
}

fn id_of(c: &Value) -> i64 {
    c["id"].as_i64().expect("candidate id")
}

fn cut_by(c: &Value) -> Option<&str> {
    match &c["cut_by"] {
        Value::Null => None,
        Value::String(s) => Some(s.as_str()),
        other => panic!("cut_by is neither null nor a string: {other}"),
    }
}

/// Ids by a probability field, descending, ties by lower id.
fn order_by(cands: &[Value], field: &str) -> Vec<(i64, f64)> {
    let mut v: Vec<(i64, f64)> = cands.iter().map(|c| (id_of(c), f(&c[field]))).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// sampling.md step 5 recomputed from the p_temp values of a full-vocabulary JSON: the first
/// stage that removes each token (None = kept). `top_k` 0, `top_p` 1 and `min_p` 0 are off.
fn expected_cuts(
    cands: &[Value],
    top_k: usize,
    top_p: f64,
    min_p: f64,
) -> HashMap<i64, Option<&'static str>> {
    assert_eq!(cands.len(), VOCAB, "the recomputation needs every token");
    let order = order_by(cands, "p_temp");
    let mut cut: HashMap<i64, Option<&'static str>> = HashMap::new();

    // top_k: the k most probable.
    let k = if top_k == 0 { order.len() } else { top_k };
    let (alive, gone) = order.split_at(k.min(order.len()));
    for (id, _) in gone {
        cut.insert(*id, Some("top_k"));
    }

    // top_p on the renormalised survivors: the smallest prefix reaching top_p.
    let total: f64 = alive.iter().map(|(_, p)| p).sum();
    let mut n = alive.len();
    if top_p < 1.0 {
        let mut cum = 0.0;
        for (i, (_, p)) in alive.iter().enumerate() {
            cum += p / total;
            if cum >= top_p {
                n = i + 1;
                break;
            }
        }
    }
    let (alive, gone) = alive.split_at(n.max(1));
    for (id, _) in gone {
        cut.insert(*id, Some("top_p"));
    }

    // min_p: p >= min_p * p_max (renormalisation does not change the ratio).
    let p_max = alive[0].1;
    for (id, p) in alive {
        let kept = min_p <= 0.0 || *p >= min_p * p_max;
        cut.insert(*id, if kept { None } else { Some("min_p") });
    }
    cut
}

/// chat.md's known answer: rendered text, 25 ids, special flags.
#[test]
fn chat_template_known_answer() {
    let sb = Sandbox::new();
    let doc = preview(&sb, &["-p", PROMPT]);
    assert_eq!(doc["schema"], "ntv.preview/1");
    assert_eq!(doc["chat_template"], true);
    assert_eq!(doc["prompt"], PROMPT);
    assert_eq!(doc["system"], "You are a helpful assistant.");
    assert_eq!(
        doc["prompt_text"].as_str().expect("prompt_text"),
        RENDERED,
        "rendered chat text differs from chat.md"
    );
    assert_eq!(prompt_ids(&doc), KNOWN_IDS.to_vec());
    assert_eq!(doc["context_token_count"], 25);
    assert_eq!(doc["completion_tokens"], Value::Array(vec![]));
    for t in doc["prompt_tokens"].as_array().unwrap() {
        let id = t["id"].as_i64().unwrap();
        assert_eq!(
            t["special"],
            id == 1 || id == 2,
            "special flag of prompt token {t}"
        );
    }
    let pills = doc["prompt_tokens"].as_array().unwrap();
    assert_eq!(pills[0]["text"], "<|im_start|>");
    assert_eq!(pills[9]["text"], "<|im_end|>");
    assert_eq!(pills[2]["display"], "⏎", "a newline piece shows as ⏎");
    assert_eq!(pills[4]["text"], " are");
    assert_eq!(pills[4]["display"], "␠are");
    // The pieces put together are exactly the rendered text.
    let joined: String = pills.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(joined, RENDERED);
}

/// Without the template the raw prompt is tokenised (no BOS for this model) and special-token
/// text stays text.
#[test]
fn no_chat_template_tokenises_the_raw_prompt() {
    let sb = Sandbox::new();
    let doc = preview(&sb, &["-p", PROMPT, "--no-chat-template"]);
    assert_eq!(doc["schema"], "ntv.preview/1");
    assert_eq!(doc["model"]["add_bos"], false, "this model adds no BOS");
    assert_eq!(doc["chat_template"], false);
    assert_eq!(doc["prompt_text"], PROMPT);
    // " capital of France is" inside the template tokenises the same way as on its own.
    assert_eq!(prompt_ids(&doc), vec![504, 3575, 282, 4649, 314]);
    assert_eq!(doc["context_token_count"], 5);

    // Special-token text in a raw prompt is parsed (as HF's tokenizer(text) and llama.cpp do),
    // unless --no-parse-special keeps it literal.
    let literal = "<|im_start|>user\nhi<|im_end|>";
    let doc = preview(&sb, &["-p", literal, "--no-chat-template"]);
    let ids = prompt_ids(&doc);
    assert_eq!((ids.first(), ids.last()), (Some(&1), Some(&2)), "{ids:?}");
    let doc = preview(
        &sb,
        &["-p", literal, "--no-chat-template", "--no-parse-special"],
    );
    let ids = prompt_ids(&doc);
    assert!(
        !ids.contains(&1) && !ids.contains(&2),
        "special-token text in a plain prompt became a special token: {ids:?}"
    );
    assert!(
        ids.len() > 3,
        "the literal markers must be several text tokens: {ids:?}"
    );
    for t in doc["prompt_tokens"].as_array().unwrap() {
        assert_eq!(t["special"], false, "no special token expected: {t}");
    }
    let joined: String = doc["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, literal);
    assert_eq!(doc["prompt_text"], literal);
}

/// Every number over the full vocabulary (default parameters).
#[test]
fn full_vocabulary_distribution_is_consistent() {
    let sb = Sandbox::new();
    let doc = preview(&sb, &["-p", PROMPT, "--display-k", "49152"]);
    let dist = &doc["dist"];
    let cands = tokens(&doc);
    assert_eq!(cands.len(), VOCAB);
    assert_eq!(dist["top_k"], VOCAB);
    assert_eq!(dist["constraint_active"], false);
    let all: HashSet<i64> = cands.iter().map(id_of).collect();
    assert_eq!(all.len(), VOCAB, "every token exactly once");
    assert!(all.iter().all(|&id| (0..VOCAB as i64).contains(&id)));

    let sum = |field: &str| cands.iter().map(|c| f(&c[field])).sum::<f64>();
    let s_base = sum("p_base");
    assert!((s_base - 1.0).abs() < 1e-4, "sum p_base = {s_base}");
    let s_temp = sum("p_temp");
    assert!((s_temp - 1.0).abs() < 1e-4, "sum p_temp = {s_temp}");

    let mut kept = 0;
    let mut s_final = 0.0;
    for c in cands {
        let p = f(&c["p_final"]);
        assert_eq!(c["valid"], true, "no constraint: every token valid: {c}");
        if c["kept"] == true {
            kept += 1;
            s_final += p;
            assert!(p > 0.0, "kept token with p_final 0: {c}");
            assert_eq!(c["cut_by"], Value::Null, "kept token with a cut_by: {c}");
        } else {
            assert_eq!(c["kept"], false);
            assert_eq!(p, 0.0, "p_final of a cut token must be 0: {c}");
            assert!(cut_by(c).is_some(), "cut token without cut_by: {c}");
        }
        let lp = f(&c["logprob_base"]);
        let pb = f(&c["p_base"]);
        assert!((0.0..=1.0).contains(&pb), "p_base out of range: {c}");
        if pb > 1e-200 {
            assert!(
                (lp - pb.ln()).abs() < 1e-6,
                "logprob_base is not ln(p_base): {c}"
            );
        }
    }
    assert!(
        (s_final - 1.0).abs() < 1e-4,
        "sum of kept p_final = {s_final}"
    );
    assert_eq!(dist["kept_token_count"], kept);
    assert!(
        (1..VOCAB).contains(&kept),
        "default top_p 0.8 cuts something"
    );

    // Ordered by p_temp descending, ties by lower id.
    for w in cands.windows(2) {
        let (a, b) = (f(&w[0]["p_temp"]), f(&w[1]["p_temp"]));
        assert!(
            a > b || (a == b && id_of(&w[0]) < id_of(&w[1])),
            "candidates out of order: {} then {}",
            w[0],
            w[1]
        );
    }

    // rank = 1-based position by p_base (ties by lower id).
    let by_base = order_by(cands, "p_base");
    let rank: HashMap<i64, u64> = by_base
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i as u64 + 1))
        .collect();
    for c in cands {
        assert_eq!(
            c["rank"].as_u64(),
            Some(rank[&id_of(c)]),
            "rank of {} is not its rank by p_base",
            c
        );
    }

    let other_base = f(&dist["other_p_base"]);
    assert!(other_base.abs() < 1e-4, "other_p_base = {other_base}");
    let other_final = f(&dist["other_p_final"]);
    assert!(other_final.abs() < 1e-4, "other_p_final = {other_final}");

    // Entropies in bits.
    let entropy = |field: &str| {
        -cands
            .iter()
            .map(|c| f(&c[field]))
            .filter(|&p| p > 0.0)
            .map(|p| p * p.log2())
            .sum::<f64>()
    };
    let (hb, hf) = (entropy("p_base"), entropy("p_final"));
    assert!(
        (f(&dist["entropy_base"]) - hb).abs() < 1e-3,
        "entropy_base {} vs recomputed {hb}",
        dist["entropy_base"]
    );
    assert!(
        (f(&dist["entropy_final"]) - hf).abs() < 1e-3,
        "entropy_final {} vs recomputed {hf}",
        dist["entropy_final"]
    );

    // The cut stages agree with a recomputation from p_temp (defaults: top_p 0.8 only).
    let want = expected_cuts(cands, 0, 0.8, 0.0);
    for c in cands {
        assert_eq!(cut_by(c), want[&id_of(c)], "cut_by of {c}");
    }
}

/// The kept set is exactly top_p's nucleus over the p_temp values, and p_final renormalises it.
#[test]
fn kept_set_is_the_nucleus_of_p_temp() {
    let sb = Sandbox::new();
    let doc = preview(
        &sb,
        &[
            "-p",
            PROMPT,
            "--temp",
            "1",
            "--repeat-penalty",
            "1",
            "--top-p",
            "0.5",
            "--display-k",
            "49152",
        ],
    );
    let cands = tokens(&doc);
    assert_eq!(cands.len(), VOCAB);
    // With T = 1 and no penalty, p_temp is p_base.
    for c in cands {
        let (pb, pt) = (f(&c["p_base"]), f(&c["p_temp"]));
        assert!(
            (pb - pt).abs() <= 1e-9 * pb.max(1e-300),
            "p_temp != p_base at T 1: {c}"
        );
    }

    let order = order_by(cands, "p_temp");
    let total: f64 = order.iter().map(|(_, p)| p).sum();
    let mut cum = 0.0;
    let mut n = 0;
    for (i, (_, p)) in order.iter().enumerate() {
        cum += p / total;
        if cum >= 0.5 {
            n = i + 1;
            break;
        }
    }
    assert!(
        n >= 2,
        "pick a prompt where the nucleus holds several tokens (n = {n})"
    );
    let want: HashSet<i64> = order[..n].iter().map(|(id, _)| *id).collect();
    let got: HashSet<i64> = cands
        .iter()
        .filter(|c| c["kept"] == true)
        .map(id_of)
        .collect();
    assert_eq!(
        doc["dist"]["kept_token_count"], n,
        "kept_token_count vs nucleus size"
    );
    assert_eq!(got, want, "kept set differs from the nucleus");

    let kept_mass: f64 = order[..n].iter().map(|(_, p)| p).sum();
    for c in cands {
        let want_final = if want.contains(&id_of(c)) {
            f(&c["p_temp"]) / kept_mass
        } else {
            0.0
        };
        assert!(
            (f(&c["p_final"]) - want_final).abs() < 1e-9,
            "p_final of {c}: expected {want_final}"
        );
    }
}

/// Each truncation stage cuts something, and every cut_by names the first stage that removed
/// the token, recomputed from p_temp.
#[test]
fn cut_by_names_the_first_stage_that_removed_each_token() {
    let sb = Sandbox::new();
    let doc = preview(
        &sb,
        &[
            "-p",
            PROMPT,
            "--top-k",
            "20",
            "--top-p",
            "0.6",
            "--min-p",
            "0.5",
            "--temp",
            "1.5",
            "--display-k",
            "49152",
        ],
    );
    let params = &doc["dist"]["params"];
    assert_eq!(params["top_k"], 20);
    assert_eq!(f(&params["top_p"]), 0.6);
    assert_eq!(f(&params["min_p"]), 0.5);
    assert_eq!(f(&params["temperature"]), 1.5);
    let cands = tokens(&doc);
    let want = expected_cuts(cands, 20, 0.6, 0.5);
    let mut count: HashMap<Option<&str>, usize> = HashMap::new();
    for c in cands {
        let w = want[&id_of(c)];
        *count.entry(w).or_default() += 1;
        assert_eq!(cut_by(c), w, "cut_by of {c}");
        assert_eq!(c["kept"], w.is_none(), "kept flag of {c}");
    }
    for stage in ["top_k", "top_p", "min_p"] {
        assert!(
            count.get(&Some(stage)).copied().unwrap_or(0) > 0,
            "these parameters should make {stage} cut something: {count:?}"
        );
    }
    let kept = count.get(&None).copied().unwrap_or(0);
    assert!(kept >= 1);
    assert_eq!(doc["dist"]["kept_token_count"], kept);
    let kept_mass: f64 = cands
        .iter()
        .filter(|c| want[&id_of(c)].is_none())
        .map(|c| f(&c["p_temp"]))
        .sum();
    for c in cands.iter().filter(|c| c["kept"] == true) {
        let want_final = f(&c["p_temp"]) / kept_mass;
        assert!(
            (f(&c["p_final"]) - want_final).abs() < 1e-9,
            "p_final of {c}: expected {want_final}"
        );
    }
}

/// T = 0 is greedy: every number is computed with T = 1, and the parameters echo T = 0.
#[test]
fn temperature_zero_shows_the_numbers_of_temperature_one() {
    let sb = Sandbox::new();
    let zero = preview(&sb, &["-p", PROMPT, "--temp", "0", "--display-k", "50"]);
    let one = preview(&sb, &["-p", PROMPT, "--temp", "1", "--display-k", "50"]);
    assert_eq!(f(&zero["params"]["temperature"]), 0.0);
    assert_eq!(f(&zero["dist"]["params"]["temperature"]), 0.0);
    assert_eq!(f(&one["params"]["temperature"]), 1.0);
    let (a, b) = (tokens(&zero), tokens(&one));
    assert_eq!(a.len(), 50);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["id"], y["id"], "order differs between T 0 and T 1");
        for field in ["p_base", "p_temp", "p_final", "logprob_base"] {
            assert!(
                (f(&x[field]) - f(&y[field])).abs() < 1e-12,
                "{field} differs between T 0 ({x}) and T 1 ({y})"
            );
        }
        assert_eq!(x["kept"], y["kept"]);
        assert_eq!(x["cut_by"], y["cut_by"]);
        assert_eq!(x["rank"], y["rank"]);
    }
    assert_eq!(
        zero["dist"]["kept_token_count"],
        one["dist"]["kept_token_count"]
    );
    assert!((f(&zero["dist"]["entropy_final"]) - f(&one["dist"]["entropy_final"])).abs() < 1e-12);
}

/// The repetition penalty lowers the tokens of the prompt relative to the others, and a
/// window of 0 turns it off.
#[test]
fn repetition_penalty_lowers_prompt_tokens_and_window_zero_disables_it() {
    let sb = Sandbox::new();
    let base_args = ["-p", PROMPT, "--temp", "1", "--display-k", "49152"];
    let run = |extra: &[&str]| {
        let mut a = base_args.to_vec();
        a.extend_from_slice(extra);
        preview(&sb, &a)
    };
    let off = run(&["--repeat-penalty", "1"]);
    let on = run(&["--repeat-penalty", "1.3"]);
    let window0 = run(&["--repeat-penalty", "1.3", "--penalty-last-n", "0"]);
    assert_eq!(f(&on["params"]["repetition_penalty"]), 1.3);
    assert_eq!(window0["params"]["penalty_last_n"], 0);

    let map = |doc: &Value| -> HashMap<i64, f64> {
        tokens(doc)
            .iter()
            .map(|c| (id_of(c), f(&c["p_temp"])))
            .collect()
    };
    let (p_off, p_on, p_w0) = (map(&off), map(&on), map(&window0));
    let in_prompt: HashSet<i64> = KNOWN_IDS.iter().copied().collect();

    // "The" (504) is in the prompt and is the model's favourite here.
    assert!(
        p_on[&504] < p_off[&504],
        "repeat penalty 1.3 should lower p_temp of prompt token 504: {} -> {}",
        p_off[&504],
        p_on[&504]
    );

    // Unpenalised tokens all scale by the same factor (the normaliser); penalised ones by less.
    let mut ratios_out: Vec<f64> = p_off
        .iter()
        .filter(|(id, p)| !in_prompt.contains(id) && **p > 1e-8)
        .map(|(id, p)| p_on[id] / p)
        .collect();
    ratios_out.sort_by(f64::total_cmp);
    let c = ratios_out[ratios_out.len() / 2];
    for r in &ratios_out {
        assert!(
            (r / c - 1.0).abs() < 1e-6,
            "a token outside the prompt changed relative to the others: ratio {r} vs {c}"
        );
    }
    for id in &in_prompt {
        let r = p_on[id] / p_off[id];
        assert!(
            r < c * (1.0 - 1e-6),
            "prompt token {id} was not penalised: ratio {r} vs unpenalised {c}"
        );
    }

    // penalty_last_n 0: no window, no penalty.
    for (id, p) in &p_off {
        assert!(
            (p_w0[id] - p).abs() <= 1e-9 * p.max(1e-300),
            "--penalty-last-n 0 must disable the penalty (token {id}: {p} vs {})",
            p_w0[id]
        );
    }
}

/// Teacher-forced prompt scores: one per prompt token after the first.
#[test]
fn prompt_logprobs_score_every_prompt_token_after_the_first() {
    let sb = Sandbox::new();
    let plain = preview(&sb, &["-p", PROMPT]);
    assert!(
        plain.get("prompt_logprobs").is_none(),
        "prompt_logprobs only when asked for"
    );

    let doc = preview(&sb, &["-p", PROMPT, "--prompt-logprobs"]);
    let rows = doc["prompt_logprobs"]
        .as_array()
        .expect("prompt_logprobs is an array");
    assert_eq!(rows.len(), 24);
    let pills = doc["prompt_tokens"].as_array().unwrap();
    for (i, r) in rows.iter().enumerate() {
        let index = i + 1;
        assert_eq!(r["index"], index, "row {i}: {r}");
        assert_eq!(r["id"], KNOWN_IDS[index], "row {i}: {r}");
        assert_eq!(r["text"], pills[index]["text"]);
        assert_eq!(r["special"], pills[index]["special"]);
        let lp = f(&r["logprob"]);
        assert!(lp.is_finite() && lp <= 0.0, "logprob must be <= 0: {r}");
        assert!(r["rank"].as_u64().expect("rank") >= 1, "rank >= 1: {r}");
        assert!(r["rank"].as_u64().unwrap() <= VOCAB as u64);
        let s = f(&r["surprisal_bits"]);
        assert!(
            (s - (-lp / std::f64::consts::LN_2)).abs() < 1e-9,
            "surprisal_bits != -logprob/ln 2: {r}"
        );
    }
    // Template boilerplate is predictable: "<|im_start|>" after "\n" is the model's top guess
    // somewhere; at least one prompt token is rank 1 and at least one is not.
    assert!(rows.iter().any(|r| r["rank"] == 1));
    assert!(rows.iter().any(|r| r["rank"].as_u64().unwrap() > 1));

    let table = stdout_of(
        &sb,
        &[
            "--no-session",
            "preview",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--prompt-logprobs",
            "--color",
            "never",
        ],
        &[],
    );
    assert!(
        table.contains("prompt log-probabilities"),
        "table lacks the prompt log-probabilities section:\n{table}"
    );
}

/// Schema tags, one-line JSONL, visible whitespace and colour rules.
#[test]
fn formats_schema_and_colour() {
    let sb = Sandbox::new();
    let base = [
        "--no-session",
        "preview",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--no-chat-template",
    ];
    let with = |extra: &[&'static str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        a
    };

    let json = stdout_of(&sb, &with(&["--format", "json"]), &[]);
    let doc: Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!(doc["schema"], "ntv.preview/1");
    let short = stdout_of(&sb, &with(&["--json"]), &[]);
    let short: Value = serde_json::from_str(&short).expect("--json gives one JSON document");
    assert_eq!(short["schema"], "ntv.preview/1");

    let jsonl = stdout_of(&sb, &with(&["--format", "jsonl"]), &[]);
    assert!(jsonl.ends_with('\n'), "JSONL ends with a newline");
    assert_eq!(
        jsonl.lines().count(),
        1,
        "preview --format jsonl is one line:\n{jsonl}"
    );
    let line: Value = serde_json::from_str(jsonl.trim_end()).expect("the line is JSON");
    assert_eq!(line["schema"], "ntv.preview/1");
    assert_eq!(line["prompt_tokens"], doc["prompt_tokens"]);
    assert_eq!(line["dist"]["tokens"], doc["dist"]["tokens"]);

    // JSON is never coloured.
    let coloured_json = stdout_of(&sb, &with(&["--format", "json", "--color", "always"]), &[]);
    assert!(
        !coloured_json.contains("\x1b["),
        "JSON must never be coloured"
    );

    let plain = stdout_of(&sb, &with(&["--color", "never"]), &[]);
    assert!(
        plain.contains("␠Paris"),
        "the table should show the leading-space candidate as ␠Paris:\n{plain}"
    );
    assert!(
        !plain.contains("\x1b["),
        "--color never printed ANSI escapes:\n{plain}"
    );

    let always = stdout_of(&sb, &with(&["--color", "always"]), &[]);
    assert!(
        always.contains("\x1b["),
        "--color always printed no ANSI escape"
    );
    assert!(always.contains("Paris"));

    // auto: CLICOLOR_FORCE colours even into a pipe, NO_COLOR wins over it.
    let forced = stdout_of(&sb, &with(&["--color", "auto"]), &[("CLICOLOR_FORCE", "1")]);
    assert!(
        forced.contains("\x1b["),
        "CLICOLOR_FORCE=1 with --color auto should colour"
    );
    let no_color = stdout_of(
        &sb,
        &with(&["--color", "auto"]),
        &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")],
    );
    assert!(
        !no_color.contains("\x1b["),
        "NO_COLOR=1 with --color auto must not colour:\n{no_color}"
    );
    let piped = stdout_of(&sb, &with(&["--color", "auto"]), &[("NO_COLOR", "1")]);
    assert!(!piped.contains("\x1b["));
    // auto into a pipe with neither variable set (the harness removes NO_COLOR and
    // CLICOLOR_FORCE): not a terminal, so no colour. The default is auto too.
    for args in [with(&["--color", "auto"]), with(&[])] {
        let clean = stdout_of(&sb, &args, &[]);
        assert!(clean.contains("␠Paris"), "{clean}");
        assert!(
            !clean.contains('\x1b'),
            "{args:?} into a pipe with a clean environment printed escapes:\n{clean}"
        );
    }
}

/// preview writes nothing unless --save; with --save the prompt and parameters go in.
#[test]
fn preview_changes_the_session_only_with_save() {
    let sb = Sandbox::new();
    sb.json(&["preview", "-m", m(), "-p", PROMPT, "--format", "json"]);
    assert!(
        sb.session_bytes().is_none(),
        "preview without --save created {}",
        sb.session().display()
    );

    sb.json(&["load", m(), "--format", "json"]);
    let before = sb.session_bytes().expect("load wrote the session");
    sb.json(&[
        "preview",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--temp",
        "0.3",
        "--display-k",
        "7",
        "--format",
        "json",
    ]);
    assert_eq!(
        sb.session_bytes().expect("session still there"),
        before,
        "preview without --save modified the session"
    );
    assert_eq!(sb.session_json()["prompt"], Value::Null);

    let doc = sb.json(&[
        "preview",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--temp",
        "0.3",
        "--top-p",
        "0.9",
        "--top-k",
        "40",
        "--display-k",
        "7",
        "--system",
        "Be brief.",
        "--save",
        "--format",
        "json",
    ]);
    assert_eq!(doc["schema"], "ntv.preview/1");
    let s = sb.session_json();
    assert_eq!(s["format"], "ntv-session");
    assert_eq!(s["prompt"], PROMPT);
    assert_eq!(s["system"], "Be brief.");
    assert_eq!(s["chat_template"], true);
    assert_eq!(f(&s["params"]["temperature"]), 0.3);
    assert_eq!(f(&s["params"]["top_p"]), 0.9);
    assert_eq!(s["params"]["top_k"], 40);
    assert_eq!(s["display_k"], 7);
    let canon = std::fs::canonicalize(m()).unwrap();
    assert_eq!(s["model"]["path"], canon.to_str().unwrap());

    // A later preview without flags uses what was saved.
    let doc = sb.json(&["preview", "-m", m(), "--format", "json"]);
    assert_eq!(doc["prompt"], PROMPT);
    assert_eq!(doc["system"], "Be brief.");
    assert_eq!(f(&doc["params"]["temperature"]), 0.3);
    assert_eq!(doc["params"]["top_k"], 40);
    assert_eq!(doc["dist"]["top_k"], 7);
    assert_eq!(tokens(&doc).len(), 7);
}
