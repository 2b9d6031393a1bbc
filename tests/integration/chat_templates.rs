//! Chat templates as Hugging Face renders them (issue 20) and untrusted templates (issue 14).
//!
//! The corpus in `fixtures/chat/*.jinja` was written for these tests (no model repository's
//! template): each exercises rendering features real templates use. Every template is rendered
//! by ntv and by Python jinja2 with Hugging Face's environment (`fixtures/chat/hf_render.py`,
//! a real oracle run here: python3 with jinja2 must be installed, as `.ci/run` does), and the
//! texts must be identical; each template is also put into a GGUF copy of the test model and
//! the prompt ids of `ntv preview` checked end to end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Sandbox, m, model, model_with_chat_template};

const TEMPLATES: &[&str] = &[
    "whitespace",
    "loops",
    "namespace",
    "selectattr",
    "tojson",
    "raise",
    "strings",
    "generation",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/chat")
        .join(name)
}

fn template(name: &str) -> String {
    std::fs::read_to_string(fixture(&format!("{name}.jinja"))).expect("template fixture")
}

fn msg(role: &str, content: &str) -> Value {
    json!({"role": role, "content": content})
}

/// The conversations every template renders.
fn conversations() -> Vec<Value> {
    vec![
        json!([
            msg("system", "You are terse."),
            msg("user", "Hi there, what is a cat?")
        ]),
        three_turns(),
        json!([
            msg("user", "Write a haiku."),
            msg("assistant", "  Sure, here it is:")
        ]),
        // Roles that do not alternate, and an unknown role: raise.jinja refuses them.
        json!([msg("user", "one"), msg("user", "two")]),
        json!([msg("tool", "{\"x\": 1}")]),
    ]
}

/// A system prompt and three turns, with non-ASCII text and words the loops template skips.
fn three_turns() -> Value {
    json!([
        msg("system", "Réponds en français, s'il te plaît 🙂"),
        msg("user", "  Grüße! What is a cat?  "),
        msg("assistant", "A cat is a small \"domestic\" animal, 世界."),
        msg("user", "And a dog? skip this stop here"),
    ])
}

/// Hugging Face's renderings of `cases` (`{"text"}` or `{"error"}` each), from the oracle.
fn oracle(cases: &[Value]) -> Vec<Value> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(fixture("hf_render.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "python3 runs (the oracle of these tests: install python3 and jinja2, as .ci/run does)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(cases).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Hugging Face oracle failed (is jinja2 installed? `python3 -m pip install jinja2`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle output")
}

fn ntv_render(template: &str, messages: &Value) -> Result<String, ntv::chat::ChatError> {
    let messages: Vec<ntv::chat::ChatMessage> = serde_json::from_value(messages.clone()).unwrap();
    ntv::chat::render(&ntv::chat::ChatInput {
        template,
        messages: &messages,
        bos_token: "<|im_start|>",
        eos_token: "<|im_end|>",
        limits: ntv::chat::Limits::default(),
    })
}

#[test]
fn the_corpus_renders_as_hugging_face_renders_it() {
    let mut cases = Vec::new();
    for name in TEMPLATES {
        for conv in conversations() {
            cases.push(json!({
                "name": name,
                "template": template(name),
                "messages": conv,
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
            }));
        }
    }
    let want = oracle(&cases);
    assert_eq!(want.len(), cases.len());
    let mut texts = 0;
    for (case, want) in cases.iter().zip(&want) {
        let name = case["name"].as_str().unwrap();
        let got = ntv_render(case["template"].as_str().unwrap(), &case["messages"]);
        match (want.get("text"), got) {
            (Some(w), Ok(g)) => {
                assert_eq!(g, w.as_str().unwrap(), "{name}: {}", case["messages"]);
                texts += 1;
            }
            (None, Err(ntv::chat::ChatError::Raised(g))) => {
                assert_eq!(g, want["error"].as_str().unwrap(), "{name}");
            }
            (None, Err(ntv::chat::ChatError::FinalMessage))
                if want.get("final_message_missing").is_some() => {}
            (w, g) => panic!(
                "{name} {}: Hugging Face gives {w:?}, ntv {g:?}",
                case["messages"]
            ),
        }
    }
    // Most cases render (raise.jinja refuses two conversations; templates that rewrite
    // the content cannot continue a final assistant message).
    assert!(texts >= cases.len() * 3 / 5, "{texts} of {}", cases.len());
}

/// The ids the model sees for `text` rendered by a template (special tokens parsed, no BOS).
fn ids_of(text: &str) -> Vec<i64> {
    static MODEL: std::sync::OnceLock<ntv::engine::Model> = std::sync::OnceLock::new();
    let model = MODEL.get_or_init(|| {
        ntv::engine::Model::load(model(), &ntv::engine::LoadOptions::default()).expect("model")
    });
    model
        .tokenize(text, false, true)
        .into_iter()
        .map(i64::from)
        .collect()
}

#[test]
fn each_template_in_a_gguf_gives_the_oracles_prompt_ids() {
    let sb = Sandbox::new();
    let conv = three_turns();
    let file = sb.path().join("conversation.json");
    std::fs::write(&file, conv.to_string()).unwrap();
    let cases: Vec<Value> = TEMPLATES
        .iter()
        .filter(|n| **n != "raise")
        .map(|n| {
            json!({"template": template(n), "messages": conv,
                   "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
        })
        .collect();
    let want = oracle(&cases);
    for (case, want) in cases.iter().zip(&want) {
        let text = want["text"].as_str().expect("the oracle renders it");
        let gguf = model_with_chat_template("corpus", case["template"].as_str().unwrap());
        let doc = sb.json(&[
            "--no-session",
            "preview",
            "-m",
            gguf.to_str().unwrap(),
            "--messages",
            file.to_str().unwrap(),
            "--display-k",
            "1",
            "--json",
        ]);
        assert_eq!(doc["prompt_text"], text);
        let got: Vec<i64> = doc["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect();
        assert_eq!(got, ids_of(text));
        assert!(
            got.contains(&1) || !text.contains("<|im_start|>"),
            "special tokens parsed"
        );
        std::fs::remove_file(&gguf).unwrap();
    }
}

/// Hostile templates of issue 14 (generated here; the big ones are small sources).
const HOSTILE: &[(&str, &str)] = &[
    (
        "loops",
        "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
    ),
    (
        "macros",
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    ),
    ("repeat", "{{ 'x' * 100000000 }}"),
    (
        "doubling",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    ),
    ("specials", "{{ '<|im_start|>' * 300000 }}"),
];

/// Address-space limit of a hostile run: far below what the unguarded renderings reached
/// (8.5 GB, and aborts on 4 GB allocations).
const MEMORY_LIMIT: u64 = 3 << 30;

fn limited(sb: &Sandbox, args: &[&str]) -> (std::process::Output, Duration) {
    use std::os::unix::process::CommandExt;
    let mut c = crate::util::std_cmd();
    c.current_dir(sb.path()).args(args);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let out = c.output().expect("ntv runs");
    (out, t.elapsed())
}

#[test]
fn hostile_templates_fail_fast_in_bounded_memory_and_raw_mode_still_works() {
    let sb = Sandbox::new();
    for (name, source) in HOSTILE {
        let gguf = model_with_chat_template(&format!("hostile-{name}"), source);
        let g = gguf.to_str().unwrap();
        let (out, took) = limited(
            &sb,
            &["--no-session", "preview", "-m", g, "-p", "Hi", "--json"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("error:") && stderr.contains("hint:"),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("--no-chat-template"), "{name}: {stderr}");
        assert!(took < Duration::from_secs(8), "{name} took {took:?}");
        if *name == "doubling" {
            let (out, _) = limited(
                &sb,
                &[
                    "--no-session",
                    "preview",
                    "-m",
                    g,
                    "-p",
                    "Hi",
                    "--no-chat-template",
                    "--json",
                ],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_file(&gguf).unwrap();
    }
}

#[test]
fn raw_prompts_parse_special_tokens_unless_told_not_to() {
    let sb = Sandbox::new();
    let ids = |doc: &Value| -> Vec<i64> {
        doc["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect()
    };
    let base = [
        "--no-session",
        "preview",
        "-m",
        m(),
        "--no-chat-template",
        "--display-k",
        "1",
        "--json",
    ];
    let text = "<|im_start|>user\nHi<|im_end|>";
    let parsed = sb.json(&[&base[..], &["-p", text]].concat());
    let p = ids(&parsed);
    assert_eq!(p.first(), Some(&1), "{p:?}");
    assert!(p.contains(&2));
    assert!(parsed["prompt_tokens"][0]["special"].as_bool().unwrap());
    let literal = sb.json(&[&base[..], &["-p", text, "--no-parse-special"]].concat());
    let l = ids(&literal);
    assert!(!l.contains(&1) && !l.contains(&2), "{l:?}");
    assert!(l.len() > p.len() + 10, "{l:?} vs {p:?}");
    let joined: String = literal["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text);
}

#[test]
fn pills_carry_their_bytes_and_show_partial_characters_readably() {
    let sb = Sandbox::new();
    let doc = sb.json(&[
        "--no-session",
        "preview",
        "-m",
        m(),
        "--no-chat-template",
        "-p",
        "<｜User｜>",
        "--display-k",
        "1",
        "--json",
    ]);
    let pills = doc["prompt_tokens"].as_array().unwrap();
    let bytes: Vec<u8> = pills
        .iter()
        .flat_map(|t| {
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(bytes, "<｜User｜>".as_bytes());
    // The full-width bar splits over byte-level tokens: their pills show bytes, not U+FFFD.
    let partial: Vec<&Value> = pills
        .iter()
        .filter(|t| {
            std::str::from_utf8(&serde_json::from_value::<Vec<u8>>(t["bytes"].clone()).unwrap())
                .is_err()
        })
        .collect();
    assert!(!partial.is_empty(), "{pills:?}");
    for t in partial {
        let d = t["display"].as_str().unwrap();
        assert!(d.contains("<0x") && !d.contains('\u{FFFD}'), "{d}");
    }
    // The candidates of the distribution have bytes too.
    assert!(doc["dist"]["tokens"][0]["bytes"].is_array());
}

#[test]
fn a_streamed_emoji_is_never_printed_broken() {
    let sb = Sandbox::new();
    let out = sb.run(&[
        "--no-session",
        "generate",
        "-m",
        m(),
        "-p",
        "Smile",
        "--choice",
        "🙂🙂",
        "-n",
        "12",
        "--format",
        "table",
        "--color",
        "never",
    ]);
    let stdout = String::from_utf8(out.stdout).expect("whole UTF-8 characters");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("🙂🙂"), "{stdout}");
    assert!(!stdout.contains('\u{FFFD}'), "{stdout}");
}

#[test]
fn a_three_turn_conversation_with_and_without_the_template() {
    let sb = Sandbox::new();
    let conv = json!([
        msg("system", "You are a helpful assistant."),
        msg("user", "What is the capital of France?"),
        msg("assistant", "Paris."),
        msg("user", "And of Italy?"),
    ]);
    let file = sb.path().join("conv.json");
    std::fs::write(&file, conv.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let chatml = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n";
    // With the model's own template, recorded in the session.
    let step = sb.json(&["step", "-m", m(), "--messages", f, "--greedy", "--json"]);
    assert_eq!(step["steps"].as_array().unwrap().len(), 1);
    let s = sb.session_json();
    assert_eq!(s["messages"], conv);
    assert_eq!(s["prompt_text"], chatml);
    assert!(s["prompt"].is_null());
    let doc = sb.json(&["preview", "--display-k", "1", "--json"]);
    assert_eq!(doc["prompt_text"], chatml);
    assert_eq!(
        doc["completion_tokens"].as_array().unwrap().len(),
        1,
        "the session's completion applies"
    );
    let ids: Vec<i64> = doc["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, ids_of(chatml));
    // Raw: the contents joined by newlines, BOS by the model's rule, stdin as the file.
    let out = sb
        .cmd()
        .args([
            "--no-session",
            "preview",
            "-m",
            m(),
            "--messages",
            "-",
            "--no-chat-template",
            "--display-k",
            "1",
            "--json",
        ])
        .write_stdin(conv.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        raw["prompt_text"],
        "You are a helpful assistant.\nWhat is the capital of France?\nParis.\nAnd of Italy?"
    );
    // Bad conversations are input errors.
    std::fs::write(&file, r#"[{"role": "user"}]"#).unwrap();
    let e = sb.fails(&["--no-session", "preview", "-m", m(), "--messages", f], 2);
    assert!(e.contains("hint:"), "{e}");
}

#[test]
fn traces_record_the_conversation_and_check_names_a_changed_prompt() {
    let sb = Sandbox::new();
    let batch = sb.path().join("b.jsonl");
    let line = json!({"id": "conv", "messages": [msg("user", "Name a colour."), msg("assistant", "Blue."), msg("user", "Another?")], "max_tokens": 3, "greedy": true});
    std::fs::write(&batch, format!("{line}\n")).unwrap();
    let trace = sb.path().join("t.json");
    let b = batch.to_str().unwrap();
    let t = trace.to_str().unwrap();
    sb.jsonl(&[
        "--no-session",
        "generate",
        "-m",
        m(),
        "--batch",
        b,
        "--record",
        t,
    ]);
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let case = &doc["cases"][0];
    assert_eq!(case["messages"], line["messages"]);
    assert!(
        case["prompt_text"]
            .as_str()
            .unwrap()
            .ends_with("Another?<|im_end|>\n<|im_start|>assistant\n")
    );
    assert!(sb.run(&["check", t]).status.success());
    // A template change shows as "the prompt changed", not as a mystery divergence.
    doc["cases"][0]["prompt_text"] = json!("<|im_start|>user\nsomething else");
    std::fs::write(&trace, doc.to_string()).unwrap();
    let out = sb.run(&["check", t, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &report["cases"][0]["first_divergence"];
    assert_eq!(d["kind"], "prompt");
    assert!(
        d["detail"].as_str().unwrap().contains("the prompt changed"),
        "{d}"
    );
}
