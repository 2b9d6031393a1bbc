//! `ntv branch`: list, new, switch, delete, show and diff on a real session (session.md).

use serde_json::Value;

use crate::util::{PROMPT, Sandbox, f, ids, m};

/// The greedy completion of the known prompt without repetition penalty (chat.md): "The
/// capital of France". (With the default penalty 1.05 the prompt's own tokens lose.)
const GREEDY4: [i64; 4] = [504, 3575, 282, 4649];

/// A session whose `main` branch holds the 4 greedy tokens of the known prompt.
fn session4() -> Sandbox {
    let sb = Sandbox::new();
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
        "4",
        "--format",
        "json",
    ]);
    assert_eq!(ids(&doc["completion_ids"]), GREEDY4, "{doc}");
    sb
}

/// `session4()` plus branch `alt` forked at 2 from main, where 504 was forced; `main` active.
fn diverged() -> Sandbox {
    let sb = session4();
    sb.json(&["branch", "new", "alt", "--at", "2", "--format", "json"]);
    sb.json(&["branch", "switch", "alt", "--format", "json"]);
    let doc = sb.json(&["step", "--token", "504", "--format", "json"]);
    assert_eq!(ids(&doc["completion_ids"]), [GREEDY4[0], GREEDY4[1], 504]);
    sb.json(&["branch", "switch", "main", "--format", "json"]);
    sb
}

fn rows(list: &Value) -> &Vec<Value> {
    list["branches"]
        .as_array()
        .unwrap_or_else(|| panic!("no branches array: {list}"))
}

fn row<'a>(list: &'a Value, name: &str) -> &'a Value {
    rows(list)
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}: {list}"))
}

fn names(list: &Value) -> Vec<String> {
    rows(list)
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_string())
        .collect()
}

fn list(sb: &Sandbox) -> Value {
    let l = sb.json(&["branch", "list", "--format", "json"]);
    assert_eq!(l["schema"], "ntv.branch.list/1", "{l}");
    l
}

/// Run, expect exit `code`, and check that the session file did not change at all.
#[track_caller]
fn fails_unchanged(sb: &Sandbox, args: &[&str], code: i32) -> String {
    let before = sb.session_bytes().expect("session exists");
    let stderr = sb.fails(args, code);
    assert!(
        before == sb.session_bytes().expect("session still exists"),
        "ntv {args:?} failed but changed the session file"
    );
    stderr
}

#[test]
fn new_list_switch_delete() {
    let sb = session4();

    let l = list(&sb);
    assert_eq!(names(&l), ["main"]);
    assert_eq!(l["active"], "main");

    sb.json(&["branch", "new", "alt", "--at", "1", "--format", "json"]);
    let l = list(&sb);
    assert_eq!(names(&l), ["main", "alt"]);
    for r in rows(&l) {
        for k in ["name", "parent", "fork_position", "length", "active"] {
            assert!(r.get(k).is_some(), "row lacks {k}: {r}");
        }
    }
    let main = row(&l, "main");
    assert!(main["parent"].is_null(), "{main}");
    assert!(main["fork_position"].is_null(), "{main}");
    assert_eq!(main["length"].as_u64(), Some(4));
    assert_eq!(main["active"], true);
    let alt = row(&l, "alt");
    assert_eq!(alt["parent"], "main");
    assert_eq!(alt["fork_position"].as_u64(), Some(1));
    assert_eq!(alt["length"].as_u64(), Some(1));
    assert_eq!(alt["active"], false, "`branch new` must not switch");
    assert_eq!(l["active"], "main");

    let s = sb.session_json();
    let alt_b = s["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .find(|b| b["name"] == "alt")
        .expect("alt in the session");
    assert_eq!(ids(&alt_b["completion_ids"]), GREEDY4[..1]);
    assert_eq!(alt_b["appended_meta"].as_array().map(Vec::len), Some(1));

    sb.json(&["branch", "switch", "alt", "--format", "json"]);
    let l = list(&sb);
    assert_eq!(l["active"], "alt");
    assert_eq!(row(&l, "alt")["active"], true);
    assert_eq!(row(&l, "main")["active"], false);
    assert_eq!(sb.session_json()["active_branch"], "alt");

    // The active branch is refused without --force.
    let e = fails_unchanged(&sb, &["branch", "delete", "alt"], 2);
    assert!(e.contains("alt"), "{e}");
    assert!(e.contains("--force"), "the error should name --force: {e}");

    let after = sb.json(&["branch", "delete", "alt", "--force", "--format", "json"]);
    assert_eq!(names(&after), ["main"], "{after}");
    let l = list(&sb);
    assert_eq!(names(&l), ["main"]);
    assert_eq!(l["active"], "main");

    // A branch that is not active is deleted without --force.
    sb.json(&["branch", "new", "other", "--format", "json"]);
    let l = list(&sb);
    assert_eq!(row(&l, "other")["length"].as_u64(), Some(4));
    assert_eq!(l["active"], "main");
    sb.json(&["branch", "delete", "other", "--format", "json"]);
    let l = list(&sb);
    assert_eq!(names(&l), ["main"]);
    assert_eq!(row(&l, "main")["length"].as_u64(), Some(4));
}

#[test]
fn unknown_and_bad_names_are_refused_without_changes() {
    let sb = session4();
    sb.json(&["branch", "new", "alt", "--at", "1", "--format", "json"]);

    for args in [
        &["branch", "switch", "nope"][..],
        &["branch", "delete", "nope"],
        &["branch", "delete", "nope", "--force"],
        &["branch", "show", "nope"],
        &["branch", "diff", "main", "nope"],
        &["branch", "diff", "nope", "alt"],
        &["branch", "new", "x", "--from", "nope"],
    ] {
        let e = fails_unchanged(&sb, args, 2);
        assert!(
            e.contains("nope"),
            "ntv {args:?}: the error names no branch: {e}"
        );
        assert!(
            e.contains("main") && e.contains("alt"),
            "ntv {args:?}: the error should list the existing branches: {e}"
        );
    }

    fails_unchanged(&sb, &["branch", "new", "alt"], 2);
    fails_unchanged(&sb, &["branch", "new", "bad/name"], 2);
    fails_unchanged(&sb, &["branch", "new", "far", "--at", "5"], 2);
    assert_eq!(names(&list(&sb)), ["main", "alt"]);
}

#[test]
fn show_lists_tokens_with_p_final() {
    let sb = diverged();
    let s = sb.session_json();
    let main_b = s["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .find(|b| b["name"] == "main")
        .expect("main")
        .clone();

    let doc = sb.json(&["branch", "show", "--format", "json"]);
    assert_eq!(doc["schema"], "ntv.branch.show/1", "{doc}");
    assert_eq!(doc["branch"]["name"], "main");
    let toks = doc["tokens"].as_array().expect("tokens");
    let tok_ids: Vec<i64> = toks.iter().map(|t| t["id"].as_i64().expect("id")).collect();
    assert_eq!(tok_ids, GREEDY4);
    for (i, t) in toks.iter().enumerate() {
        assert_eq!(t["index"].as_u64(), Some(i as u64), "{t}");
        let p = f(&t["p_final"]);
        assert!(p > 0.0 && p <= 1.0, "greedy token {i} has p_final {p}");
        let recorded = f(&main_b["appended_meta"][i]["selected"]["p_final"]);
        assert_eq!(p, recorded, "token {i}: shown vs recorded p_final");
        assert_eq!(t["forced"], false, "{t}");
    }
    assert_eq!(doc["completion_text"], "The capital of France");

    let alt = sb.json(&["branch", "show", "alt", "--format", "json"]);
    assert_eq!(alt["branch"]["name"], "alt");
    assert_eq!(alt["branch"]["parent"], "main");
    assert_eq!(alt["branch"]["fork_position"].as_u64(), Some(2));
    assert_eq!(alt["tokens"][2]["id"].as_i64(), Some(504));
    assert_eq!(alt["tokens"][2]["forced"], true);

    // The table marks the fork point: something between token 1 and token 2 of `alt` that
    // `main`'s table does not have there.
    let table = |name: &str| {
        let out = sb.run(&[
            "branch", "show", name, "--format", "table", "--color", "never",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let alt_t = table("alt");
    let main_t = table("main");
    assert!(!alt_t.contains('\x1b'), "{alt_t:?}");
    assert!(
        alt_t.contains("main") && alt_t.contains('2'),
        "alt's table does not say where it forked: {alt_t}"
    );
    assert!(
        alt_t.contains('┃'),
        "no fork marker in alt's table:\n{alt_t}"
    );
    assert!(
        !main_t.contains('┃'),
        "main has no fork point but is marked:\n{main_t}"
    );
    let line = alt_t
        .lines()
        .find(|l| l.contains('┃'))
        .expect("marker line");
    let (before, after) = line.split_once('┃').expect("marker");
    assert!(
        before.contains("capital") && after.trim_start().starts_with("The"),
        "the marker must sit between token 1 (\" capital\") and token 2 (\"The\"): {line:?}"
    );
}

#[test]
fn diff_after_diverging_and_against_itself() {
    let sb = diverged();
    let d = sb.json(&["branch", "diff", "main", "alt", "--format", "json"]);
    assert_eq!(d["schema"], "ntv.branch.diff/1", "{d}");
    assert_eq!(d["a"], "main");
    assert_eq!(d["b"], "alt");
    assert_eq!(d["shared_prefix"].as_u64(), Some(2), "{d}");
    assert_eq!(d["first_divergence"].as_u64(), Some(2), "{d}");
    let steps = d["steps"].as_array().expect("steps");
    assert!(!steps.is_empty(), "{d}");
    let s0 = &steps[0];
    assert_eq!(s0["index"].as_u64(), Some(2), "{s0}");
    assert_eq!(s0["a"]["id"].as_i64(), Some(GREEDY4[2]), "{s0}");
    assert_eq!(s0["b"]["id"].as_i64(), Some(504), "{s0}");
    assert!(f(&s0["a"]["p_final"]) > 0.0, "{s0}");
    // Both branches saw the same context at index 2, so main's token has the same p_final
    // under alt's snapshot as under its own.
    if let Some(p) = s0["a_token_p_final_under_b"].as_f64() {
        assert!(
            (p - f(&s0["a"]["p_final"])).abs() < 1e-9,
            "same context, different p_final: {s0}"
        );
    } else {
        panic!("main's greedy token is among alt's shown candidates at index 2: {s0}");
    }
    // Past alt's end only main has a token.
    let s1 = steps
        .iter()
        .find(|s| s["index"].as_u64() == Some(3))
        .unwrap_or_else(|| panic!("no step 3 in {d}"));
    assert_eq!(s1["a"]["id"].as_i64(), Some(GREEDY4[3]), "{s1}");
    assert!(s1["b"].is_null(), "{s1}");

    let same = sb.json(&["branch", "diff", "main", "main", "--format", "json"]);
    assert_eq!(same["schema"], "ntv.branch.diff/1");
    assert!(
        same.get("first_divergence").is_none_or(Value::is_null),
        "a branch differs from itself: {same}"
    );
    assert_eq!(same["shared_prefix"].as_u64(), Some(4), "{same}");
    assert_eq!(
        same["steps"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{same}"
    );
}
