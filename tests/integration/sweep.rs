//! `ntv sweep`: every column is the distribution `ntv preview` shows with that knob value,
//! from one decode; enter/leave values follow the top-p rule.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::util::{PROMPT, Sandbox, f, m};

fn preview(sb: &Sandbox, extra: &[&str]) -> Value {
    let mut args = vec![
        "--no-session",
        "preview",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--display-k",
        "2000",
        "--json",
    ];
    args.extend_from_slice(extra);
    sb.json(&args)
}

/// The kept set and each kept token's p_final, from a preview listing every kept token.
fn kept_of(doc: &Value) -> (BTreeSet<i64>, Vec<(i64, f64)>) {
    let dist = &doc["dist"];
    let tokens: Vec<(i64, f64)> = dist["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kept"] == true)
        .map(|t| (t["id"].as_i64().unwrap(), f(&t["p_final"])))
        .collect();
    assert_eq!(
        tokens.len() as u64,
        dist["kept_token_count"].as_u64().unwrap(),
        "the preview lists every kept token"
    );
    (tokens.iter().map(|t| t.0).collect(), tokens)
}

#[test]
fn every_column_equals_preview_with_that_value() {
    let sb = Sandbox::new();
    for (knob, flag, values) in [
        ("top-p", "--top-p", ["0.5", "0.8", "0.95"]),
        ("temp", "--temp", ["0.3", "0.7", "1.2"]),
        ("min-p", "--min-p", ["0", "0.05", "0.2"]),
    ] {
        let spec = format!("{knob}={}", values.join(","));
        let doc = sb.json(&[
            "--no-session",
            "sweep",
            &spec,
            "-m",
            m(),
            "-p",
            PROMPT,
            "--display-k",
            "8",
            "--max-kept",
            "5000",
            "--json",
        ]);
        assert_eq!(doc["schema"], "ntv.sweep/1");
        assert_eq!(
            doc["cache"]["decoded_tokens"], 25,
            "one decode for the whole sweep"
        );
        let points = doc["points"].as_array().unwrap();
        assert_eq!(points.len(), 3);
        let rows: Vec<i64> = doc["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_i64().unwrap())
            .collect();
        assert_eq!(rows.len(), 8);
        let p_base: Vec<f64> = doc["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| f(&c["p_base"]))
            .collect();
        assert!(p_base.windows(2).all(|w| w[0] >= w[1]), "rows by p_base");
        for (point, v) in points.iter().zip(values) {
            let pv = preview(&sb, &[flag, v]);
            let (set, kept) = kept_of(&pv);
            let sweep_set: BTreeSet<i64> = point["kept_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            assert_eq!(point["kept_truncated"], false);
            assert_eq!(sweep_set, set, "{knob}={v}: the same kept set");
            assert_eq!(point["kept_token_count"].as_u64(), Some(set.len() as u64));
            let entropy = f(&pv["dist"]["entropy_final"]);
            assert!((f(&point["entropy_final"]) - entropy).abs() <= 1e-12);
            for (cell, id) in point["cells"].as_array().unwrap().iter().zip(&rows) {
                assert_eq!(cell["id"].as_i64(), Some(*id));
                let want = kept.iter().find(|k| k.0 == *id).map_or(0.0, |k| k.1);
                assert!(
                    (f(&cell["p_final"]) - want).abs() <= 1e-12,
                    "{knob}={v} id {id}: {} vs preview {want}",
                    cell["p_final"]
                );
                assert_eq!(cell["kept"] == true, want > 0.0);
                assert_eq!(cell["cut_by"].is_null(), want > 0.0, "{cell}");
            }
        }
    }
}

#[test]
fn a_candidate_enters_the_nucleus_right_after_the_mass_above_it() {
    let sb = Sandbox::new();
    // top-p keeps the smallest prefix (by p_temp) whose mass reaches p: ` The` (504) is kept
    // exactly when p exceeds the p_temp mass of the tokens ranked above it.
    let full = preview(&sb, &["--top-p", "1"]);
    let tokens = full["dist"]["tokens"].as_array().unwrap();
    let at = tokens.iter().position(|t| t["id"] == 504).unwrap();
    assert!(at > 0, "some token ranks above ` The` at T 0.7");
    let above: f64 = tokens[..at].iter().map(|t| f(&t["p_temp"])).sum();
    let lo = (above * 100.0).floor() / 100.0 - 0.03;
    let spec = format!("top-p={lo:.2}:{:.2}:0.01", lo + 0.08);
    let doc = sb.json(&[
        "--no-session",
        "sweep",
        &spec,
        "-m",
        m(),
        "-p",
        PROMPT,
        "--display-k",
        "10",
        "--json",
    ]);
    let values: Vec<f64> = doc["axes"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .collect();
    let expected = values.iter().copied().find(|&v| v > above).unwrap();
    let t = doc["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == 504)
        .unwrap_or_else(|| panic!("` The` is a row: {}", doc["candidates"]));
    assert_eq!(t["kept_at_start"], false, "{t}");
    assert!(
        (f(&t["enters_at"]) - expected).abs() < 1e-9,
        "{t} vs {expected} (mass {above})"
    );
    assert!(t["leaves_at"].is_null());
    // The table names the stage that cut it before it enters.
    let out = sb.run(&[
        "--no-session",
        "sweep",
        &spec,
        "-m",
        m(),
        "-p",
        PROMPT,
        "--display-k",
        "6",
        "--format",
        "table",
        "--color",
        "never",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("·top_p") && text.contains("(kept)"), "{text}");
}

#[test]
fn two_knobs_at_an_earlier_position_and_bad_input() {
    let sb = Sandbox::new();
    sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--greedy",
        "-n",
        "2",
        "--json",
    ]);
    let before = sb.session_bytes().unwrap();
    let doc = sb.json(&["sweep", "temp=0.5,1", "top-k=0,3", "--at", "0", "--json"]);
    assert_eq!(doc["position"], 0);
    assert_eq!(doc["context_token_count"], 25);
    let points = doc["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    assert_eq!(points[1]["values"], serde_json::json!([1.0, 0.0]));
    assert_eq!(points[3]["kept_token_count"], 3, "top-k 3 keeps three");
    assert_eq!(doc["transitions"].as_array().unwrap().len(), 2 * 10);
    // --at 0 is the distribution of the first completion token: preview of the prompt alone.
    let pv = preview(&sb, &["--temp", "0.5"]);
    assert_eq!(
        points[0]["kept_token_count"],
        pv["dist"]["kept_token_count"]
    );
    assert_eq!(
        sb.session_bytes().unwrap(),
        before,
        "a sweep changes nothing"
    );
    // Bad specs fail before the model loads; a position past the completion fails too.
    for bad in ["warmth=1", "temp=1:0:0.1", "top-p=0.5:2:0.5", "top-k=1.5"] {
        let e = sb.fails(&["sweep", bad, "-m", "/no/such/model.gguf"], 2);
        assert!(
            e.contains("hint:") && !e.contains("model file"),
            "{bad}: {e}"
        );
    }
    let e = sb.fails(&["sweep", "temp=1", "--at", "3"], 2);
    assert!(e.contains("past the completion"), "{e}");
    assert_eq!(sb.session_bytes().unwrap(), before);
}
