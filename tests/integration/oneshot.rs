//! One-shot use in a folder with a session: a new prompt keeps the old session aside instead
//! of failing; `step` shares generate's stop rule (`--stop`, a full context is a clean stop).

use crate::util::{PROMPT, Sandbox, ids, m};

#[test]
fn a_shell_loop_over_three_prompts_keeps_every_session() {
    let sb = Sandbox::new();
    let prompts = ["Name a colour.", "Name a fruit.", "Name a planet."];
    let mut completions = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let out = sb.run(&[
            "generate",
            "-m",
            m(),
            "-p",
            p,
            "-n",
            "3",
            "--greedy",
            "--format",
            "json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iteration {i} failed: {stderr}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["new_completion_ids"].as_array().unwrap().len(), 3);
        completions.push(ids(&doc["completion_ids"]));
        if i == 0 {
            assert!(!stderr.contains("kept as"), "{stderr}");
        } else {
            let aside = format!("ntv-session.{i}.json");
            assert!(
                stderr.contains("note:") && stderr.contains(&aside),
                "iteration {i} must name the session it kept aside: {stderr}"
            );
        }
    }
    // Each earlier session is kept whole, with its own prompt and completion.
    for (i, p) in prompts[..2].iter().enumerate() {
        let path = sb.path().join(format!("ntv-session.{}.json", i + 1));
        let kept: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(kept["prompt"], *p);
        assert_eq!(ids(&kept["branches"][0]["completion_ids"]), completions[i]);
    }
    let now = sb.session_json();
    assert_eq!(now["prompt"], prompts[2]);
    assert_eq!(ids(&now["branches"][0]["completion_ids"]), completions[2]);
    assert!(!sb.path().join("ntv-session.3.json").exists());
    // The same prompt again continues the session; --reset discards instead of keeping.
    let out = sb.run(&["step", "-m", m(), "-p", prompts[2], "--greedy"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("kept as"));
    assert_eq!(
        ids(&sb.session_json()["branches"][0]["completion_ids"]).len(),
        4
    );
    let out = sb.run(&["step", "-m", m(), "-p", PROMPT, "--greedy", "--reset"]);
    assert!(out.status.success());
    assert!(!sb.path().join("ntv-session.3.json").exists());
    assert_eq!(sb.session_json()["prompt"], PROMPT);
}

#[test]
fn preview_save_keeps_a_session_with_work_aside_and_plain_preview_changes_nothing() {
    let sb = Sandbox::new();
    sb.json(&["step", "-m", m(), "-p", PROMPT, "--greedy", "--json"]);
    let before = sb.session_bytes().unwrap();
    sb.json(&["preview", "-m", m(), "-p", "Other", "--json"]);
    assert_eq!(
        sb.session_bytes().unwrap(),
        before,
        "preview without --save"
    );
    let out = sb.run(&["preview", "--save", "-m", m(), "-p", "Other", "--json"]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(sb.path().join("ntv-session.1.json")).unwrap(),
        before,
        "the kept session is the old file, byte for byte"
    );
    assert_eq!(sb.session_json()["prompt"], "Other");
}

#[test]
fn step_stops_at_a_stop_sequence_like_generate() {
    let sb = Sandbox::new();
    // Greedy "The capital of France is" completes " Paris." — stop at the period.
    let g = sb.json(&[
        "generate",
        "--no-session",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--no-chat-template",
        "--greedy",
        "-n",
        "8",
        "--stop",
        ".",
        "--json",
    ]);
    assert_eq!(g["stop_reason"], "stop_sequence");
    let n = g["n_tokens"].as_u64().unwrap() as usize;
    let s = sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--no-chat-template",
        "--greedy",
        "-n",
        "8",
        "--stop",
        ".",
        "--json",
    ]);
    assert_eq!(s["stop_reason"], "stop_sequence");
    assert_eq!(s["done"], true);
    assert_eq!(ids(&s["new_completion_ids"]), ids(&g["new_completion_ids"]));
    assert_eq!(s["steps"].as_array().unwrap().len(), n);
    assert_eq!(sb.session_json()["stop"][0], ".");
    assert_eq!(
        sb.session_json()["branches"][0]["stop_reason"],
        "stop_sequence"
    );
    // Without a stop, -n N takes N steps and reports no stop.
    let s = sb.json(&[
        "step",
        "--no-session",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--greedy",
        "-n",
        "2",
        "--json",
    ]);
    assert_eq!(
        (s["done"].as_bool(), s["stop_reason"].is_null()),
        (Some(false), true)
    );
}

#[test]
fn a_full_context_is_a_clean_stop_for_step_and_generate() {
    let sb = Sandbox::new();
    // The chat-templated prompt is 25 tokens (chat.md); a 27-token context holds two more.
    let s = sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        PROMPT,
        "-c",
        "27",
        "--greedy",
        "-n",
        "5",
        "--json",
    ]);
    assert_eq!(s["stop_reason"], "context_full");
    assert_eq!(ids(&s["new_completion_ids"]).len(), 2);
    assert_eq!(s["context_token_count"], 27);
    // The next step has no room at all: still a clean stop, nothing appended.
    let s = sb.json(&["step", "-m", m(), "-c", "27", "--greedy", "--json"]);
    assert_eq!(s["stop_reason"], "context_full");
    assert_eq!(s["done"], true);
    assert!(ids(&s["new_completion_ids"]).is_empty());
    let g = sb.json(&["generate", "-m", m(), "-c", "27", "--json"]);
    assert_eq!(g["stop_reason"], "context_full");
    assert_eq!(g["n_tokens"], 0);
    assert_eq!(
        ids(&sb.session_json()["branches"][0]["completion_ids"]).len(),
        2
    );
    // Forced text that does not fit is refused before anything is appended.
    let e = sb.fails(&["step", "-m", m(), "-c", "27", "--text", " and more"], 2);
    assert!(e.contains("room"), "{e}");
}
