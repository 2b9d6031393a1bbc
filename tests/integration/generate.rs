//! `ntv generate`: determinism, replay against `ntv step`, greedy selection, the known answer,
//! stop conditions, continuation and table output (sampling.md "Selection", "Stop conditions").

use serde_json::Value;

use crate::util::{PROMPT, Sandbox, f, ids, m};

/// The step records of a JSONL stream (all but the last record).
fn steps(records: &[Value]) -> &[Value] {
    &records[..records.len() - 1]
}

/// The summary record of a JSONL stream (the last one), checked to be one.
#[track_caller]
fn summary(records: &[Value]) -> &Value {
    let s = records.last().expect("at least one record");
    assert_eq!(s["type"], "summary", "last record is not the summary: {s}");
    s
}

/// The selected id of each step record.
fn step_ids(records: &[Value]) -> Vec<i64> {
    steps(records)
        .iter()
        .map(|r| r["selected"]["id"].as_i64().expect("selected.id"))
        .collect()
}

/// The selected p_final of each step record.
fn step_p_final(records: &[Value]) -> Vec<f64> {
    steps(records)
        .iter()
        .map(|r| f(&r["selected"]["p_final"]))
        .collect()
}

/// The records with the wall-clock fields removed (they legitimately differ between runs).
fn without_timings(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let obj = r.as_object_mut().expect("record is an object");
            obj.remove("tokens_per_second");
            obj.remove("seconds");
            r
        })
        .collect()
}

/// The active branch object of a session file.
fn active_branch(session: &Value) -> Value {
    let name = session["active_branch"].as_str().expect("active_branch");
    session["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("active branch {name} missing: {session}"))
        .clone()
}

/// Decoded text of each step's selected token.
fn step_texts(records: &[Value]) -> Vec<String> {
    steps(records)
        .iter()
        .map(|r| {
            r["selected"]["text"]
                .as_str()
                .expect("selected.text")
                .to_string()
        })
        .collect()
}

/// A fresh greedy run of the known prompt (the reference for the stop tests).
fn greedy_run(extra: &[&str]) -> Vec<Value> {
    let sb = Sandbox::new();
    let mut args = vec![
        "generate",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--preset",
        "greedy",
        "-n",
        "32",
        "--format",
        "jsonl",
    ];
    args.extend_from_slice(extra);
    sb.jsonl(&args)
}

fn sampled_run(seed: &str, n: &str) -> (Sandbox, Vec<Value>) {
    let sb = Sandbox::new();
    let recs = sb.jsonl(&[
        "generate",
        "-m",
        m(),
        "-p",
        PROMPT,
        "-n",
        n,
        "--seed",
        seed,
        "--temp",
        "1.0",
        "--format",
        "jsonl",
    ]);
    (sb, recs)
}

#[test]
fn same_seed_gives_identical_jsonl_apart_from_timings() {
    let (_a, ra) = sampled_run("7", "24");
    let (_b, rb) = sampled_run("7", "24");

    assert_eq!(ra.len(), 25, "24 step records + 1 summary expected");
    for r in &ra {
        assert!(r["type"].is_string(), "record without `type`: {r}");
    }
    for r in steps(&ra) {
        assert_eq!(r["type"], "step", "{r}");
    }
    let s = summary(&ra);
    for key in [
        "completion_ids",
        "completion_text",
        "stop_reason",
        "n_tokens",
        "tokens_per_second",
        "seed",
    ] {
        assert!(
            s.get(key).is_some_and(|v| !v.is_null()),
            "summary lacks {key}: {s}"
        );
    }
    assert!(s["tokens_per_second"].is_number(), "{s}");
    assert_eq!(s["seed"].as_u64(), Some(7), "{s}");
    assert_eq!(s["n_tokens"].as_u64(), Some(24), "{s}");
    assert_eq!(s["stop_reason"], "max_tokens", "{s}");
    assert_eq!(ids(&s["completion_ids"]), step_ids(&ra));

    assert_eq!(
        without_timings(&ra),
        without_timings(&rb),
        "two runs with --seed 7 differ"
    );
}

#[test]
fn separate_step_processes_replay_one_generate() {
    let (gen_sb, generated) = sampled_run("7", "24");
    assert_eq!(generated.len(), 25, "generate -n 24 must produce 24 steps");
    let gen_ids = step_ids(&generated);
    let gen_p = step_p_final(&generated);

    let sb = Sandbox::new();
    let mut step_ids_seen = Vec::new();
    let mut step_p = Vec::new();
    let mut last_pos = 0;
    for i in 0..24 {
        let doc = if i == 0 {
            sb.json(&[
                "step",
                "-m",
                m(),
                "-p",
                PROMPT,
                "--seed",
                "7",
                "--temp",
                "1.0",
                "--format",
                "json",
            ])
        } else {
            sb.json(&["step", "--seed", "7", "--temp", "1.0", "--format", "json"])
        };
        let new = ids(&doc["new_completion_ids"]);
        assert_eq!(new.len(), 1, "step {i} appended {new:?}");
        step_ids_seen.push(new[0]);
        step_p.push(f(&doc["steps"][0]["selected"]["p_final"]));
        assert_eq!(doc["seed"].as_u64(), Some(7), "step {i}: {}", doc["seed"]);

        let branch = active_branch(&sb.session_json());
        let pos = branch["rng_pos"].as_u64().expect("rng_pos");
        assert!(
            pos > last_pos,
            "step {i}: rng_pos did not advance ({last_pos} -> {pos})"
        );
        last_pos = pos;
    }

    assert_eq!(
        step_ids_seen, gen_ids,
        "24 `step` calls vs one `generate -n 24`"
    );
    for (i, (a, b)) in step_p.iter().zip(&gen_p).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12,
            "p_final of step {i}: step {a} vs generate {b}"
        );
    }

    let branch = active_branch(&sb.session_json());
    assert_eq!(branch["seed"].as_u64(), Some(7), "{branch}");
    assert_eq!(ids(&branch["completion_ids"]), gen_ids);
    let gen_branch = active_branch(&gen_sb.session_json());
    assert_eq!(
        branch["rng_pos"], gen_branch["rng_pos"],
        "the stream positions after 24 draws differ between step and generate"
    );
    assert_eq!(gen_branch["seed"].as_u64(), Some(7), "{gen_branch}");
}

#[test]
fn another_seed_changes_the_sample() {
    let (_a, r7) = sampled_run("7", "24");
    let (_b, r8) = sampled_run("8", "24");
    assert_eq!(summary(&r8)["seed"].as_u64(), Some(8));
    assert_ne!(
        step_ids(&r7),
        step_ids(&r8),
        "--seed 7 and --seed 8 sampled the same 24 tokens at temperature 1"
    );
}

#[test]
fn greedy_takes_the_argmax_of_p_final() {
    let sb = Sandbox::new();
    let recs = sb.jsonl(&[
        "generate",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--greedy",
        "-n",
        "8",
        "--format",
        "jsonl",
    ]);
    assert!(recs.len() >= 2, "no steps: {recs:?}");
    for (i, r) in steps(&recs).iter().enumerate() {
        let meta = &r["appended_meta"];
        let cands = meta["dist"]["tokens"].as_array().expect("dist.tokens");
        assert!(!cands.is_empty(), "step {i}: no candidates");
        let best = cands
            .iter()
            .max_by(|a, b| {
                f(&a["p_final"])
                    .total_cmp(&f(&b["p_final"]))
                    // ties: the lower id wins, so it must compare as the greater one
                    .then_with(|| b["id"].as_i64().cmp(&a["id"].as_i64()))
            })
            .expect("a candidate");
        assert_eq!(
            r["selected"]["id"], best["id"],
            "step {i}: selected {} but the argmax of p_final is {}",
            r["selected"], best
        );
        assert_eq!(meta["selected_id"], best["id"], "step {i}");
        assert_eq!(meta["selected_by"], "greedy", "step {i}");
        assert_eq!(meta["forced"], false, "step {i}");
        assert!(
            meta.get("draw").is_none_or(Value::is_null),
            "step {i}: a greedy step drew from the stream: {}",
            meta["draw"]
        );
    }
}

#[test]
fn greedy_known_answer() {
    let recs = greedy_run(&[]);
    let s = summary(&recs);
    assert_eq!(
        s["completion_text"], "The capital of France is Paris.",
        "{s}"
    );
    assert_eq!(s["stop_reason"], "eog", "{s}");
    let c = ids(&s["completion_ids"]);
    assert_eq!(c.last(), Some(&2), "last id must be <|im_end|> (2): {c:?}");
    assert_eq!(c, step_ids(&recs));
    let last = &steps(&recs)[c.len() - 1];
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["stop_reason"], "eog", "{last}");
    for r in &steps(&recs)[..c.len() - 1] {
        assert_eq!(r["done"], false, "{r}");
        assert!(r["stop_reason"].is_null(), "{r}");
    }
}

#[test]
fn without_seed_the_drawn_seed_is_recorded_and_replays() {
    let sb = Sandbox::new();
    let recs = sb.jsonl(&[
        "generate",
        "-m",
        m(),
        "-p",
        PROMPT,
        "-n",
        "12",
        "--temp",
        "1.0",
        "--format",
        "jsonl",
    ]);
    let s = summary(&recs);
    let seed = s["seed"]
        .as_u64()
        .unwrap_or_else(|| panic!("summary seed is not a number: {s}"));
    let branch = active_branch(&sb.session_json());
    assert_eq!(
        branch["seed"].as_u64(),
        Some(seed),
        "session seed vs summary seed"
    );

    let seed_s = seed.to_string();
    let (_b, again) = sampled_run(&seed_s, "12");
    assert_eq!(summary(&again)["seed"].as_u64(), Some(seed));
    assert_eq!(
        step_ids(&again),
        step_ids(&recs),
        "replaying with the recorded seed {seed} gives other tokens"
    );
}

#[test]
fn stop_sequence_within_one_token() {
    let reference = greedy_run(&[]);
    let ref_ids = step_ids(&reference);
    let texts = step_texts(&reference);
    let paris = texts
        .iter()
        .position(|t| t == " Paris")
        .unwrap_or_else(|| panic!("greedy output has no \" Paris\" token: {texts:?}"));

    let recs = greedy_run(&["--stop", "Par"]);
    let s = summary(&recs);
    assert_eq!(s["stop_reason"], "stop_sequence", "{s}");
    assert_eq!(s["stop_sequence"], "Par", "{s}");
    let c = ids(&s["completion_ids"]);
    assert_eq!(
        c,
        ref_ids[..=paris],
        "the completion must keep every token up to and including \" Paris\""
    );
    let text = s["completion_text"].as_str().expect("completion_text");
    assert!(text.contains("Par"), "{text:?}");
    assert!(text.ends_with(" Paris"), "{text:?}");
    let last = steps(&recs).last().expect("a step");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["stop_reason"], "stop_sequence", "{last}");
}

#[test]
fn stop_sequence_across_two_tokens() {
    let reference = greedy_run(&[]);
    let ref_ids = step_ids(&reference);
    let texts = step_texts(&reference);
    let france = texts
        .windows(2)
        .position(|w| w[0] == " of" && w[1] == " France")
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("greedy output has no \" of\" + \" France\": {texts:?}"));

    let recs = greedy_run(&["--stop", "of France"]);
    let s = summary(&recs);
    assert_eq!(s["stop_reason"], "stop_sequence", "{s}");
    assert_eq!(s["stop_sequence"], "of France", "{s}");
    assert_eq!(
        ids(&s["completion_ids"]),
        ref_ids[..=france],
        "the stop text spans \" of\" + \" France\"; generation must end at \" France\""
    );
    assert!(
        s["completion_text"]
            .as_str()
            .expect("completion_text")
            .ends_with("of France"),
        "{s}"
    );
}

#[test]
fn max_tokens_then_continue_the_branch() {
    let sb = Sandbox::new();
    let first = sb.jsonl(&[
        "generate",
        "-m",
        m(),
        "-p",
        PROMPT,
        "-n",
        "3",
        "--seed",
        "7",
        "--temp",
        "1.0",
        "--format",
        "jsonl",
    ]);
    let s1 = summary(&first);
    assert_eq!(s1["stop_reason"], "max_tokens", "{s1}");
    assert_eq!(s1["n_tokens"].as_u64(), Some(3), "{s1}");
    let c1 = ids(&s1["completion_ids"]);
    assert_eq!(c1.len(), 3, "{s1}");
    assert_eq!(ids(&s1["new_completion_ids"]), c1);
    assert_eq!(steps(&first).len(), 3);
    let last = steps(&first).last().expect("a step");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["stop_reason"], "max_tokens", "{last}");

    let second = sb.jsonl(&[
        "generate", "-n", "3", "--seed", "7", "--temp", "1.0", "--format", "jsonl",
    ]);
    let s2 = summary(&second);
    assert_eq!(s2["stop_reason"], "max_tokens", "{s2}");
    assert_eq!(s2["n_tokens"].as_u64(), Some(3), "{s2}");
    let c2 = ids(&s2["completion_ids"]);
    assert_eq!(
        c2.len(),
        6,
        "the second generate must continue the branch: {s2}"
    );
    assert_eq!(c2[..3], c1[..], "the first 3 tokens changed");
    assert_eq!(ids(&s2["new_completion_ids"]), c2[3..]);
    let idx: Vec<u64> = steps(&second)
        .iter()
        .map(|r| r["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(idx, [3, 4, 5], "completion indices of the continued steps");
    let branch = active_branch(&sb.session_json());
    assert_eq!(ids(&branch["completion_ids"]), c2);
    assert_eq!(
        branch["appended_meta"].as_array().map(Vec::len),
        Some(6),
        "{branch}"
    );

    // The same six tokens and numbers as one uninterrupted run: the continuation decoded the
    // same context and continued the same random stream.
    let (_b, whole) = sampled_run("7", "6");
    assert_eq!(step_ids(&whole), c2, "3 + 3 tokens vs one -n 6 run");
    let p_split: Vec<f64> = step_p_final(&first)
        .into_iter()
        .chain(step_p_final(&second))
        .collect();
    for (i, (a, b)) in p_split.iter().zip(step_p_final(&whole)).enumerate() {
        assert!((a - b).abs() <= 1e-12, "p_final at {i}: {a} vs {b}");
    }
}

#[test]
fn table_output_ends_with_a_summary_line() {
    let sb = Sandbox::new();
    let out = sb.run(&[
        "generate",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--preset",
        "greedy",
        "-n",
        "32",
        "--format",
        "table",
        "--color",
        "never",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !stdout.contains('\x1b'),
        "--color never printed escapes: {stdout:?}"
    );
    assert!(
        stdout.contains("The capital of France is Paris."),
        "the streamed completion is missing: {stdout:?}"
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("some output");
    assert!(
        last.contains("tokens") && last.contains("stop:"),
        "last line is not a summary: {last:?}"
    );
    assert!(
        last.contains("eog"),
        "summary does not name the stop reason: {last:?}"
    );
    assert!(
        serde_json::from_str::<Value>(last).is_err(),
        "table output printed JSON"
    );
}
