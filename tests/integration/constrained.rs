//! Constrained decoding through the CLI (constraints.md) on the real model: every kind, the
//! visible mask, stop reasons, forced tokens, persistence across processes, malformed input.

use serde_json::Value;

use crate::util::{Sandbox, m};

fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn summary(records: &[Value]) -> &Value {
    let s = records.last().expect("records");
    assert_eq!(s["type"], "summary");
    s
}

#[test]
fn multiple_choice_completes_with_exactly_one_option() {
    let options = ["Yes", "No", "Maybe"];
    for seed in ["1", "2", "3"] {
        let sb = Sandbox::new();
        let records = sb.jsonl(&[
            "generate",
            "-m",
            m(),
            "-p",
            "Is Paris the capital of France? Answer yes or no.",
            "--choice",
            "Yes",
            "--choice",
            "No",
            "--choice",
            "Maybe",
            "--choice",
            "Yes",
            "-n",
            "16",
            "--temp",
            "1",
            "--seed",
            seed,
            "--format",
            "jsonl",
            "--display-k",
            "40",
        ]);
        let s = summary(&records);
        let text = s["completion_text"].as_str().unwrap();
        assert!(
            options.contains(&text),
            "completion {text:?} is not an option"
        );
        let reason = s["stop_reason"].as_str().unwrap();
        assert!(
            reason == "constraint_complete" || reason == "eog",
            "{reason}"
        );
        assert_eq!(s["constraint"]["kind"], "choice");
        // Deduplicated, order kept.
        assert_eq!(s["constraint"]["source"], r#"["Yes","No","Maybe"]"#);
        // Every shown candidate outside the allowed prefixes is invalid, cut by the constraint.
        let mut so_far = String::new();
        for r in &records[..records.len() - 1] {
            let dist = &r["appended_meta"]["dist"];
            assert_eq!(dist["constraint_active"], true);
            assert_eq!(dist["constraint_type"], "choice");
            assert!(dist["valid_token_count"].as_u64().unwrap() >= 1);
            for c in dist["tokens"].as_array().unwrap() {
                let t = c["text"].as_str().unwrap();
                let candidate = format!("{so_far}{t}");
                let allowed = !t.is_empty()
                    && !c["special"].as_bool().unwrap()
                    && options.iter().any(|o| o.starts_with(&candidate));
                if !allowed {
                    assert_eq!(c["valid"], false, "{candidate:?} should be invalid");
                    assert_eq!(c["cut_by"], "constraint");
                    assert_eq!(c["p_final"].as_f64().unwrap(), 0.0);
                } else {
                    assert_eq!(c["valid"], true, "{candidate:?} should be valid");
                }
            }
            // Allowed choices' probabilities sum to 1 (llama.cpp PR #12643's complaint).
            let kept: f64 = dist["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["p_final"].as_f64().unwrap())
                .sum::<f64>()
                + dist["other_p_final"].as_f64().unwrap();
            assert!((kept - 1.0).abs() < 1e-9);
            so_far.push_str(r["selected"]["text"].as_str().unwrap());
        }
    }
}

#[test]
fn regex_completion_fully_matches() {
    let re = regex::Regex::new(r"^[0-9]{3}-[0-9]{4}$").unwrap();
    for seed in ["3", "4"] {
        let sb = Sandbox::new();
        let records = sb.jsonl(&[
            "generate",
            "--no-session",
            "-m",
            m(),
            "-p",
            "Give me a phone number.",
            "--regex",
            "[0-9]{3}-[0-9]{4}",
            "-n",
            "20",
            "--temp",
            "1",
            "--seed",
            seed,
            "--format",
            "jsonl",
        ]);
        let s = summary(&records);
        let text = s["completion_text"].as_str().unwrap();
        assert!(re.is_match(text), "{text:?}");
        assert_eq!(s["stop_reason"], "constraint_complete");
    }
}

#[test]
fn json_schema_completions_validate_over_several_seeds() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("person.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for seed in ["1", "2", "3", "4"] {
        let sb = Sandbox::new();
        let records = sb.jsonl(&[
            "generate",
            "--no-session",
            "-m",
            m(),
            "-p",
            "Describe a person as JSON.",
            "--json-schema",
            &fixture("person.schema.json"),
            "-n",
            "120",
            "--temp",
            "1",
            "--seed",
            seed,
            "--format",
            "jsonl",
        ]);
        let s = summary(&records);
        assert_ne!(
            s["stop_reason"], "max_tokens",
            "seed {seed}: did not finish"
        );
        let text = s["completion_text"].as_str().unwrap();
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("seed {seed}: {text:?} is not JSON: {e}"));
        assert!(
            validator.is_valid(&value),
            "seed {seed}: {value} does not validate"
        );
    }
}

fn language_of(sb: &Sandbox, flag: &str, file: &str, seeds: u32) -> Vec<String> {
    (0..seeds)
        .map(|seed| {
            let records = sb.jsonl(&[
                "generate",
                "--no-session",
                "-m",
                m(),
                "-p",
                "Say something.",
                flag,
                file,
                "-n",
                "16",
                "--temp",
                "1.5",
                "--top-p",
                "1",
                "--seed",
                &seed.to_string(),
                "--format",
                "jsonl",
            ]);
            let s = summary(&records);
            assert_ne!(s["stop_reason"], "max_tokens");
            s["completion_text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn lark_grammar_produces_only_its_language() {
    let sb = Sandbox::new();
    let language = ["yes.", "no.", "yes!", "no!"];
    for text in language_of(&sb, "--grammar", &fixture("small.lark"), 6) {
        assert!(
            language.contains(&text.as_str()),
            "{text:?} is not in the language"
        );
    }
}

#[test]
fn gbnf_grammar_produces_only_its_language() {
    let sb = Sandbox::new();
    let re = regex::Regex::new(r"^[12][0-9] (km|mi)$").unwrap();
    for text in language_of(&sb, "--gbnf", &fixture("small.gbnf"), 6) {
        assert!(re.is_match(&text), "{text:?} is not in the language");
    }
}

#[test]
fn malformed_constraints_are_refused_before_the_model_runs() {
    let sb = Sandbox::new();
    let bad_schema = sb.path().join("bad.json");
    std::fs::write(&bad_schema, "{\"type\": \"object\", ").unwrap();
    let bad_lark = sb.path().join("bad.lark");
    std::fs::write(&bad_lark, "start: (\"a\" | \n").unwrap();
    let bad_gbnf = sb.path().join("bad.gbnf");
    std::fs::write(&bad_gbnf, "root ::= \"a\" | [b-\n").unwrap();
    // Each kind with what its parser says about the problem.
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--regex", "[0-9"],
            &["malformed regex", "unclosed character class"],
        ),
        (
            &["--grammar", bad_lark.to_str().unwrap()],
            &["malformed Lark grammar", "Expected token ')'"],
        ),
        (
            &["--json-schema", bad_schema.to_str().unwrap()],
            &["malformed JSON schema", "not valid JSON"],
        ),
        (
            &["--gbnf", bad_gbnf.to_str().unwrap()],
            &["malformed GBNF grammar", "out of order"],
        ),
        (
            &["--choices", "/nonexistent/choices.txt"],
            &["cannot read choices file /nonexistent/choices.txt"],
        ),
        (&["--choice", ""], &["the choice list is empty"]),
    ];
    // A model that does not exist: were it opened first, that would be the error.
    let missing = sb.path().join("no-such-model.gguf");
    let missing = missing.to_str().unwrap();
    let check = |err: &str, flags: &[&str], said: &[&str]| {
        for s in said {
            assert!(err.contains(s), "{flags:?}: the parser's message: {err}");
        }
        assert!(err.contains("hint:"), "{flags:?}: {err}");
        assert!(
            !err.contains("model file"),
            "{flags:?}: refused before the model is opened: {err}"
        );
    };
    for cmd in ["step", "generate", "preview"] {
        let one_shot = [cmd, "--no-session", "-m", missing, "-p", "Hi"];
        let err = sb.fails(&one_shot, 2);
        assert!(
            err.contains("model file") && err.contains("does not exist"),
            "without a constraint the missing model is the error: {err}"
        );
        for (flags, said) in cases {
            let err = sb.fails(&[&one_shot[..], flags].concat(), 2);
            check(&err, flags, said);
        }
    }
    assert_eq!(sb.session_bytes(), None, "one-shot: no session written");

    // Against a session: refused the same way, and the session is left as it was.
    sb.json(&["step", "-m", m(), "-p", "Hi", "--greedy", "--json"]);
    let before = sb.session_bytes().unwrap();
    for (flags, said) in cases {
        for cmd in ["step", "generate", "preview"] {
            let mut args = vec![cmd, "-m", missing];
            args.extend_from_slice(flags);
            if cmd == "preview" {
                args.push("--save");
            }
            let err = sb.fails(&args, 2);
            check(&err, flags, said);
            assert_eq!(
                sb.session_bytes().unwrap(),
                before,
                "{cmd} {flags:?} changed the session"
            );
        }
    }
}

#[test]
fn constraint_persists_across_processes_and_edits() {
    let sb = Sandbox::new();
    let first = sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        "Give me a phone number.",
        "--regex",
        "[0-9]{3}-[0-9]{4}",
        "--greedy",
        "--json",
    ]);
    assert_eq!(first["constraint"]["kind"], "regex");
    assert_eq!(sb.session_json()["constraint"]["kind"], "regex");
    // Later processes rebuild the matcher from the session and replay the completion.
    for _ in 0..3 {
        let step = sb.json(&["step", "--greedy", "--json"]);
        assert_eq!(
            step["steps"][0]["appended_meta"]["dist"]["constraint_active"],
            true
        );
    }
    let session = sb.session_json();
    let text: String = session["branches"][0]["appended_meta"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["selected"]["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        text.chars().all(|c| c.is_ascii_digit() || c == '-'),
        "{text:?}"
    );

    // A forced token the constraint forbids is refused; the session is unchanged.
    let before = sb.session_bytes().unwrap();
    let err = sb.fails(&["step", "--token", "504"], 2);
    assert!(
        err.contains("constraint") || err.contains("reject"),
        "{err}"
    );
    sb.fails(&["step", "--text", " hello"], 2);
    assert_eq!(sb.session_bytes().unwrap(), before);

    // Rewind onto a branch under the constraint, then finish it.
    let digit = sb.json(&["preview", "--json", "--display-k", "200"])["dist"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["valid"] == true)
        .map(|c| c["id"].as_i64().unwrap())
        .expect("a valid candidate");
    let rewind = sb.json(&["step", "--at", "1", "--token", &digit.to_string(), "--json"]);
    assert!(rewind["created_branch"].is_string());
    let done = sb.jsonl(&["generate", "-n", "20", "--greedy", "--format", "jsonl"]);
    let s = summary(&done);
    assert_eq!(s["stop_reason"], "constraint_complete");
    let re = regex::Regex::new(r"^[0-9]{3}-[0-9]{4}$").unwrap();
    assert!(
        re.is_match(s["completion_text"].as_str().unwrap()),
        "{}",
        s["completion_text"]
    );

    // Switching to a constraint the completion violates names the position; dropping works.
    let before = sb.session_bytes().unwrap();
    let err = sb.fails(&["step", "--greedy", "--regex", "[a-z]+"], 2);
    assert!(err.contains("position") || err.contains("rewind"), "{err}");
    assert_eq!(sb.session_bytes().unwrap(), before);
    let free = sb.json(&["preview", "--no-constraint", "--json"]);
    assert_eq!(free["dist"]["constraint_active"], false);
}
