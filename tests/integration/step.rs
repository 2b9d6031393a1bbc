//! `ntv step`: greedy and sampled steps, forced ids and text, undo, rewind onto a new branch,
//! the random stream, and errors that must leave the session untouched (sampling.md
//! "Selection", session.md).

use serde_json::Value;

use crate::util::{PROMPT, Sandbox, f, ids, m};

/// Every field a candidate (and so `selected`) carries (sampling.md).
const CANDIDATE_FIELDS: [&str; 12] = [
    "id",
    "text",
    "display",
    "special",
    "p_base",
    "p_temp",
    "p_final",
    "logprob_base",
    "kept",
    "valid",
    "cut_by",
    "rank",
];

/// The greedy completion of the known prompt without repetition penalty (chat.md): "The
/// capital of France". (With the default penalty 1.05 the prompt's own tokens lose.)
const GREEDY4: [i64; 4] = [504, 3575, 282, 4649];

fn branch<'a>(session: &'a Value, name: &str) -> &'a Value {
    session["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no branch {name} in the session: {}", session["branches"]))
}

fn active(session: &Value) -> &Value {
    branch(
        session,
        session["active_branch"].as_str().expect("active_branch"),
    )
}

fn len(v: &Value) -> usize {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .len()
}

/// A session whose active branch holds the first `n` tokens of `GREEDY4`.
fn greedy_session(n: usize) -> Sandbox {
    let sb = Sandbox::new();
    let n_s = n.to_string();
    let doc = sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--greedy",
        "--repeat-penalty",
        "1",
        "-n",
        &n_s,
        "--format",
        "json",
    ]);
    assert_eq!(len(&doc["new_completion_ids"]), n, "{doc}");
    sb
}

/// Run, expect exit `code`, and check that the session file did not change at all.
#[track_caller]
fn fails_unchanged(sb: &Sandbox, args: &[&str], code: i32) -> String {
    let before = sb.session_bytes().expect("session exists");
    let stderr = sb.fails(args, code);
    let after = sb.session_bytes().expect("session still exists");
    assert!(
        before == after,
        "ntv {args:?} failed but changed the session file"
    );
    stderr
}

#[track_caller]
fn assert_candidate(c: &Value, what: &str) {
    for k in CANDIDATE_FIELDS {
        assert!(c.get(k).is_some(), "{what} lacks `{k}`: {c}");
    }
    for k in ["p_base", "p_temp", "p_final"] {
        let p = f(&c[k]);
        assert!((0.0..=1.0).contains(&p), "{what}.{k} = {p}");
    }
}

#[test]
fn first_greedy_step_creates_the_session() {
    let sb = Sandbox::new();
    assert!(sb.session_bytes().is_none());
    let doc = sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--greedy",
        "--format",
        "json",
    ]);
    assert_eq!(doc["schema"], "ntv.step/1", "{doc}");
    let new = ids(&doc["new_completion_ids"]);
    assert_eq!(new.len(), 1, "{doc}");
    assert_eq!(len(&doc["appended"]), 1, "{doc}");
    assert_eq!(doc["appended"][0]["id"].as_i64(), Some(new[0]));
    assert_eq!(doc["done"], false, "{doc}");
    assert!(
        doc.get("stop_reason").is_some_and(Value::is_null),
        "stop_reason must be present and null: {doc}"
    );

    let s = sb.session_json();
    assert_eq!(s["active_branch"], "main");
    let b = active(&s);
    assert_eq!(ids(&b["completion_ids"]), new);
    assert_eq!(len(&b["appended_meta"]), 1);
    let meta = &b["appended_meta"][0];
    assert!(meta["dist"]["tokens"].is_array(), "no dist in {meta}");
    assert_eq!(meta["selected_id"].as_i64(), Some(new[0]), "{meta}");
    assert_eq!(meta["forced"], false, "{meta}");
    assert_eq!(meta["selected_by"], "greedy", "{meta}");
    assert_candidate(&meta["selected"], "appended_meta.selected");
    // Greedy: the selected token is the shown candidate with the highest p_final.
    let cands = meta["dist"]["tokens"].as_array().expect("dist.tokens");
    let best = cands
        .iter()
        .map(|c| f(&c["p_final"]))
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(best > 0.0, "no kept candidate: {cands:?}");
    assert_eq!(f(&meta["selected"]["p_final"]), best, "{meta}");
    assert_eq!(
        doc["appended_meta"][0], *meta,
        "step JSON vs session snapshot"
    );
}

#[test]
fn n_greedy_steps_append_n() {
    let sb = greedy_session(1);
    let doc = sb.json(&["step", "-n", "3", "--greedy", "--format", "json"]);
    assert_eq!(ids(&doc["new_completion_ids"]), GREEDY4[1..], "{doc}");
    assert_eq!(len(&doc["steps"]), 3);
    assert_eq!(len(&doc["appended"]), 3);
    assert_eq!(len(&doc["appended_meta"]), 3);
    assert_eq!(ids(&doc["completion_ids"]), GREEDY4);
    let b = active(&sb.session_json()).clone();
    assert_eq!(ids(&b["completion_ids"]), GREEDY4);
    assert_eq!(len(&b["appended_meta"]), 4);
}

#[test]
fn forced_token_outside_the_shown_candidates() {
    let sb = greedy_session(1);
    let doc = sb.json(&["step", "--token", "9553", "--format", "json"]);
    assert_eq!(ids(&doc["new_completion_ids"]), [9553], "{doc}");
    let meta = &doc["appended_meta"][0];
    let shown: Vec<i64> = meta["dist"]["tokens"]
        .as_array()
        .expect("dist.tokens")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert!(
        !shown.contains(&9553),
        "test premise: 9553 should not be among the shown candidates {shown:?}"
    );
    assert_eq!(meta["selected_id"], 9553);
    assert_eq!(meta["forced"], true, "{meta}");
    assert_eq!(meta["forced_by"], "token", "{meta}");
    assert_eq!(meta["selected_by"], "forced", "{meta}");
    let sel = &meta["selected"];
    assert_candidate(sel, "selected");
    assert_eq!(sel["id"], 9553);
    assert!(f(&sel["p_base"]) > 0.0, "{sel}");
    assert!(
        sel["rank"].as_u64().expect("rank") > shown.len() as u64,
        "{sel}"
    );
    assert_eq!(doc["steps"][0]["selected"], *sel);

    let b = active(&sb.session_json()).clone();
    assert_eq!(ids(&b["completion_ids"]), [GREEDY4[0], 9553]);
    assert_eq!(b["appended_meta"][1]["forced"], true);
    assert_eq!(b["appended_meta"][1]["forced_by"], "token");
    assert_eq!(b["appended_meta"][1]["selected"]["id"], 9553);
}

#[test]
fn forced_text_appends_its_tokens_one_record_each() {
    let sb = greedy_session(4);
    let doc = sb.json(&["step", "--text", " Paris is", "--format", "json"]);
    // " Paris" and " is" are single tokens in this vocabulary (chat.md's greedy answer).
    let new = ids(&doc["new_completion_ids"]);
    assert_eq!(new, [7042, 314], "{doc}");
    assert_eq!(len(&doc["steps"]), 2);
    assert_eq!(len(&doc["appended_meta"]), 2);
    let text: String = doc["appended"]
        .as_array()
        .expect("appended")
        .iter()
        .map(|p| p["text"].as_str().expect("text"))
        .collect();
    assert_eq!(text, " Paris is");
    for (i, meta) in doc["appended_meta"]
        .as_array()
        .expect("meta")
        .iter()
        .enumerate()
    {
        assert_eq!(meta["forced"], true, "record {i}: {meta}");
        assert_eq!(meta["forced_by"], "text", "record {i}");
        assert_eq!(meta["selected_id"].as_i64(), Some(new[i]), "record {i}");
        assert!(meta["dist"]["tokens"].is_array(), "record {i} has no dist");
    }
    // Each token has its own distribution: after " Paris" the context differs.
    assert_ne!(
        doc["appended_meta"][0]["dist"], doc["appended_meta"][1]["dist"],
        "both forced tokens share one snapshot"
    );
    let b = active(&sb.session_json()).clone();
    assert_eq!(
        ids(&b["completion_ids"]),
        [GREEDY4.as_slice(), &[7042, 314]].concat()
    );
    assert_eq!(len(&b["appended_meta"]), 6);
}

#[test]
fn forced_text_is_not_parsed_for_special_tokens() {
    let sb = greedy_session(1);
    let doc = sb.json(&["step", "--text", "<|im_end|>", "--format", "json"]);
    let new = ids(&doc["new_completion_ids"]);
    assert!(
        !new.contains(&2),
        "--text \"<|im_end|>\" appended the special token 2: {new:?}"
    );
    assert!(new.len() > 1, "expected plain-text pieces, got {new:?}");
    let pills = doc["appended"].as_array().expect("appended");
    let text: String = pills
        .iter()
        .map(|p| p["text"].as_str().expect("text"))
        .collect();
    assert_eq!(text, "<|im_end|>");
    assert!(pills.iter().all(|p| p["special"] == false), "{pills:?}");
    assert_eq!(
        doc["done"], false,
        "plain text must not end the generation: {doc}"
    );
    for meta in doc["appended_meta"].as_array().expect("meta") {
        assert_eq!(meta["forced_by"], "text", "{meta}");
    }
    let b = active(&sb.session_json()).clone();
    assert_eq!(len(&b["completion_ids"]), 1 + new.len());
    assert_eq!(len(&b["appended_meta"]), 1 + new.len());
}

#[test]
fn undo_drops_tokens() {
    let sb = greedy_session(4);

    let doc = sb.json(&["step", "--undo", "--format", "json"]);
    assert_eq!(ids(&doc["removed_ids"]), [GREEDY4[3]], "{doc}");
    assert_eq!(ids(&doc["completion_ids"]), GREEDY4[..3]);
    let b = active(&sb.session_json()).clone();
    assert_eq!(ids(&b["completion_ids"]), GREEDY4[..3]);
    assert_eq!(len(&b["appended_meta"]), 3);

    let doc = sb.json(&["step", "--undo", "2", "--format", "json"]);
    assert_eq!(ids(&doc["removed_ids"]), GREEDY4[1..3], "{doc}");
    let b = active(&sb.session_json()).clone();
    assert_eq!(ids(&b["completion_ids"]), GREEDY4[..1]);
    assert_eq!(len(&b["appended_meta"]), 1);
    assert_eq!(
        b["appended_meta"][0]["selected_id"].as_i64(),
        Some(GREEDY4[0])
    );

    // The remaining snapshot is still the one recorded at append time.
    let again = sb.json(&["step", "--greedy", "--format", "json"]);
    assert_eq!(ids(&again["new_completion_ids"]), [GREEDY4[1]]);
}

#[test]
fn rewind_creates_a_branch_and_keeps_the_old_one() {
    let sb = greedy_session(4);
    let before = sb.session_json();
    let old_main = branch(&before, "main").clone();

    let doc = sb.json(&["step", "--at", "2", "--token", "504", "--format", "json"]);
    let created = doc["created_branch"]
        .as_str()
        .unwrap_or_else(|| panic!("no created_branch in {doc}"))
        .to_string();
    assert_ne!(created, "main");
    assert_eq!(doc["branch"], created.as_str(), "{doc}");
    assert_eq!(ids(&doc["new_completion_ids"]), [504]);
    assert_eq!(ids(&doc["completion_ids"]), [GREEDY4[0], GREEDY4[1], 504]);

    let s = sb.session_json();
    assert_eq!(s["active_branch"], created.as_str());
    let nb = branch(&s, &created);
    assert_eq!(ids(&nb["completion_ids"]), [GREEDY4[0], GREEDY4[1], 504]);
    assert_eq!(len(&nb["appended_meta"]), 3);
    assert_eq!(nb["parent"], "main", "{nb}");
    assert_eq!(nb["fork_position"].as_u64(), Some(2), "{nb}");
    assert_eq!(nb["appended_meta"][2]["forced"], true);
    // The kept prefix carries the original snapshots.
    assert_eq!(nb["appended_meta"][0], old_main["appended_meta"][0]);
    assert_eq!(nb["appended_meta"][1], old_main["appended_meta"][1]);
    assert_eq!(
        *branch(&s, "main"),
        old_main,
        "the old branch changed on rewind"
    );
}

#[test]
fn errors_leave_the_session_unchanged() {
    let sb = greedy_session(3);

    let e = fails_unchanged(&sb, &["step", "--token", "49152", "--format", "json"], 2);
    assert!(e.contains("49152"), "{e}");
    fails_unchanged(&sb, &["step", "--token", "-1", "--format", "json"], 2);
    let e = fails_unchanged(&sb, &["step", "--token=-1", "--format", "json"], 2);
    assert!(e.contains("-1"), "{e}");
    let e = fails_unchanged(&sb, &["step", "--undo", "99", "--format", "json"], 2);
    assert!(e.contains("99"), "{e}");
    let e = fails_unchanged(
        &sb,
        &["step", "--at", "99", "--token", "5", "--format", "json"],
        2,
    );
    assert!(e.contains("99"), "{e}");
    let e = fails_unchanged(&sb, &["step", "--at", "1", "--format", "json"], 2);
    assert!(e.contains("--token"), "{e}");

    // And nothing was lost: the branch still has its three tokens.
    let b = active(&sb.session_json()).clone();
    assert_eq!(ids(&b["completion_ids"]), GREEDY4[..3]);
    assert_eq!(len(&sb.session_json()["branches"]), 1);
}

#[test]
fn reset_rng_restarts_the_stream() {
    let sb = Sandbox::new();
    let d1 = sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--seed",
        "7",
        "--temp",
        "1",
        "--format",
        "json",
    ]);
    let d2 = sb.json(&["step", "--seed", "7", "--temp", "1", "--format", "json"]);
    let first: Vec<i64> = [&d1, &d2]
        .iter()
        .map(|d| ids(&d["new_completion_ids"])[0])
        .collect();
    let draws: Vec<f64> = [&d1, &d2]
        .iter()
        .map(|d| f(&d["appended_meta"][0]["draw"]))
        .collect();
    assert_ne!(draws[0], draws[1], "two draws of one stream are equal");
    let pos_after_two = active(&sb.session_json())["rng_pos"].clone();

    // --reset-rng in the middle of the branch: the next draw is the stream's first one again.
    let d3 = sb.json(&["step", "--reset-rng", "--temp", "1", "--format", "json"]);
    assert_eq!(
        f(&d3["appended_meta"][0]["draw"]),
        draws[0],
        "after --reset-rng the draw must be the first of the stream"
    );
    let b = active(&sb.session_json()).clone();
    assert_eq!(b["seed"].as_u64(), Some(7));
    assert_eq!(
        b["rng_pos"], d1["appended_meta"][0]["rng_after"]["pos"],
        "after --reset-rng and one draw the stream must stand where it stood after the first step"
    );
    assert_ne!(b["rng_pos"], pos_after_two);

    // Back to the empty branch, then two steps starting from a reset stream: the same two
    // tokens and draws as the first two steps.
    sb.json(&["step", "--undo", "3", "--format", "json"]);
    assert_eq!(len(&active(&sb.session_json())["completion_ids"]), 0);
    let r1 = sb.json(&["step", "--reset-rng", "--temp", "1", "--format", "json"]);
    let r2 = sb.json(&["step", "--temp", "1", "--format", "json"]);
    let again: Vec<i64> = [&r1, &r2]
        .iter()
        .map(|d| ids(&d["new_completion_ids"])[0])
        .collect();
    assert_eq!(again, first, "the restarted stream gives other tokens");
    assert_eq!(f(&r1["appended_meta"][0]["draw"]), draws[0]);
    assert_eq!(f(&r2["appended_meta"][0]["draw"]), draws[1]);
    assert_eq!(r2["seed"].as_u64(), Some(7));

    // Without --reset-rng the stream would have gone on: the third draw of an uninterrupted
    // run differs from the first, so the check above can fail.
    let other = Sandbox::new();
    let recs = other.jsonl(&[
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
        "1",
        "--format",
        "jsonl",
    ]);
    assert_eq!(f(&recs[0]["appended_meta"]["draw"]), draws[0]);
    assert_eq!(f(&recs[1]["appended_meta"]["draw"]), draws[1]);
    assert_ne!(f(&recs[2]["appended_meta"]["draw"]), draws[0]);
}
