//! Failures: exit status, an `error:` line, a `hint:` line, no panic, and a session file left
//! byte-for-byte as it was.

use std::path::{Path, PathBuf};

use crate::util::{PROMPT, Sandbox, m};

/// Expect exit `code` with `error:` and `hint:` lines and no panic; return stderr.
#[track_caller]
fn fails_with_hint(sb: &Sandbox, args: &[&str], code: i32) -> String {
    let stderr = sb.fails(args, code);
    assert!(
        stderr.lines().any(|l| l.starts_with("hint:")),
        "ntv {args:?}: no `hint:` line in stderr:\n{stderr}"
    );
    stderr
}

/// A valid session with a completion in the sandbox's default path; returns its bytes.
fn valid_session(sb: &Sandbox) -> Vec<u8> {
    valid_session_for(sb, PROMPT)
}

/// [`valid_session`] for another prompt.
fn valid_session_for(sb: &Sandbox, prompt: &str) -> Vec<u8> {
    sb.json(&[
        "step",
        "-m",
        m(),
        "-p",
        prompt,
        "--greedy",
        "--format",
        "json",
    ]);
    let bytes = sb.session_bytes().expect("step wrote the session");
    let s = sb.session_json();
    assert_eq!(
        s["branches"][0]["completion_ids"].as_array().unwrap().len(),
        1
    );
    bytes
}

/// Run a failing command against the sandbox's valid session (`bytes`) and check the file is
/// unchanged, with no stray temporary file beside it.
#[track_caller]
fn fails_unchanged(sb: &Sandbox, args: &[&str], code: i32, bytes: &[u8]) -> String {
    let stderr = fails_with_hint(sb, args, code);
    assert!(
        sb.session_bytes().as_deref() == Some(bytes),
        "ntv {args:?} failed but changed the session file"
    );
    no_stray_files(sb.path());
    stderr
}

/// Only session files and their locks (and files the test made) in `dir`: no temp files.
fn no_stray_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".tmp") && !name.starts_with('.'),
            "stray file {name} left in {}",
            dir.display()
        );
    }
}

/// A GGUF v3 header with no tensors and the given string key-value pairs.
fn tiny_gguf(kv: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensor count
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    for (k, v) in kv {
        string(&mut b, k);
        b.extend_from_slice(&8u32.to_le_bytes()); // GGUF_TYPE_STRING
        string(&mut b, v);
    }
    b
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// One bad model file: refused with exit 2 by a one-shot preview, and by `step` and `load`
/// against a valid session, which stays as it was. Returns the one-shot stderr.
#[track_caller]
fn bad_model(sb: &Sandbox, path: &Path) -> String {
    let p = path.to_str().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let stderr = fails_with_hint(sb, &["--no-session", "preview", "-m", p, "-p", PROMPT], 2);
    assert!(
        stderr.contains(name),
        "the error should name {name}:\n{stderr}"
    );

    let bytes = valid_session(sb);
    let e = fails_unchanged(sb, &["step", "-m", p, "-p", PROMPT, "--greedy"], 2, &bytes);
    assert!(e.contains(name), "the error should name {name}:\n{e}");
    let e = fails_unchanged(sb, &["load", p], 2, &bytes);
    assert!(e.contains(name), "the error should name {name}:\n{e}");
    let e = fails_unchanged(sb, &["preview", "--save", "-m", p, "-p", PROMPT], 2, &bytes);
    assert!(e.contains(name), "the error should name {name}:\n{e}");
    stderr
}

#[test]
fn missing_model_file() {
    let sb = Sandbox::new();
    let path = sb.path().join("no-such-model.gguf");
    let e = bad_model(&sb, &path);
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn file_that_is_not_gguf() {
    let sb = Sandbox::new();
    let path = write(
        sb.path(),
        "notes.gguf",
        b"this is a text file, not a model\n",
    );
    let e = bad_model(&sb, &path);
    assert!(e.contains("GGUF"), "{e}");
}

#[test]
fn truncated_gguf() {
    let sb = Sandbox::new();
    let mut head = std::fs::read(m()).unwrap();
    head.truncate(1 << 20);
    let path = write(sb.path(), "truncated.gguf", &head);
    bad_model(&sb, &path);
}

#[test]
fn unsupported_architecture_is_named() {
    let sb = Sandbox::new();
    let bytes = tiny_gguf(&[
        ("general.architecture", "frobnicator"),
        ("general.name", "tiny"),
    ]);
    let path = write(sb.path(), "frob.gguf", &bytes);
    let e = bad_model(&sb, &path);
    assert!(
        e.contains("frobnicator"),
        "the error should name the architecture:\n{e}"
    );
}

#[test]
fn prompt_longer_than_the_context() {
    let sb = Sandbox::new();
    let long = ["word"; 100].join(" ");
    let e = fails_with_hint(
        &sb,
        &[
            "--no-session",
            "preview",
            "-m",
            m(),
            "-c",
            "32",
            "-p",
            &long,
        ],
        2,
    );
    assert!(
        e.lines()
            .any(|l| l.starts_with("hint:") && l.contains("--ctx-size")),
        "the hint should mention --ctx-size:\n{e}"
    );

    // The session's own prompt (fine with the default context) no longer fits.
    let bytes = valid_session_for(&sb, &long);
    let e = fails_unchanged(&sb, &["step", "-m", m(), "-c", "32", "--greedy"], 2, &bytes);
    assert!(e.contains("--ctx-size"), "{e}");
}

#[test]
fn invalid_parameters_are_refused() {
    let sb = Sandbox::new();
    let bytes = valid_session(&sb);
    let cases: [&[&str]; 7] = [
        &["--display-k", "0"],
        &["--display-k", "49153"],
        &["--temp=-1"],
        &["--top-p", "0"],
        &["--top-p", "1.5"],
        &["--min-p", "2"],
        &["--repeat-penalty", "0"],
    ];
    for case in cases {
        let mut one_shot = vec!["--no-session", "preview", "-m", m(), "-p", PROMPT];
        one_shot.extend_from_slice(case);
        fails_with_hint(&sb, &one_shot, 2);

        let mut save = vec!["preview", "--save", "-m", m(), "-p", PROMPT];
        save.extend_from_slice(case);
        fails_unchanged(&sb, &save, 2, &bytes);

        let mut step = vec!["step", "-m", m(), "--greedy"];
        step.extend_from_slice(case);
        fails_unchanged(&sb, &step, 2, &bytes);
    }
}

/// Each broken session file: exit 2, the file named, the bytes unchanged, for commands that
/// would write it and for a read-only preview.
fn broken_session(name: &str, bytes: &[u8]) -> String {
    let sb = Sandbox::new();
    let path = write(sb.path(), name, bytes);
    let p = path.to_str().unwrap();
    let mut first = None;
    let commands: [&[&str]; 3] = [
        &["--session", p, "step", "-m", m(), "-p", PROMPT, "--greedy"],
        &["--session", p, "preview", "--save", "-m", m(), "-p", PROMPT],
        &["--session", p, "preview", "-m", m(), "-p", PROMPT],
    ];
    for args in commands {
        let e = fails_with_hint(&sb, args, 2);
        assert!(e.contains(name), "the error should name {name}:\n{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "ntv {args:?} changed the broken session file"
        );
        no_stray_files(sb.path());
        first.get_or_insert(e);
    }
    first.unwrap()
}

/// A real session written by `ntv preview --save`.
fn real_session() -> Vec<u8> {
    let sb = Sandbox::new();
    sb.json(&[
        "preview",
        "--save",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--format",
        "json",
    ]);
    sb.session_bytes()
        .expect("preview --save wrote the session")
}

#[test]
fn corrupt_session_file() {
    let garbage: Vec<u8> = (0u8..=255).rev().cycle().take(700).collect();
    let e = broken_session("garbage.json", &garbage);
    assert!(e.contains("corrupt") || e.contains("JSON"), "{e}");
}

#[test]
fn truncated_session_file() {
    let real = real_session();
    let half = &real[..real.len() / 2];
    let e = broken_session("half.json", half);
    assert!(
        e.contains("truncated"),
        "the error should say truncated:\n{e}"
    );
}

#[test]
fn foreign_json_session_file() {
    let e = broken_session("foreign.json", b"{\"hello\":1}\n");
    assert!(e.contains("not an ntv session"), "{e}");
}

#[test]
fn newer_session_version_is_refused() {
    let real = String::from_utf8(real_session()).unwrap();
    assert!(real.contains("\"version\": 2,"), "{real}");
    let newer = real.replacen("\"version\": 2,", "\"version\": 99,", 1);
    let e = broken_session("newer.json", newer.as_bytes());
    let numbers: Vec<&str> = e
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .collect();
    assert!(
        numbers.contains(&"99") && numbers.contains(&"2"),
        "the error should name both versions (99 found, 2 supported):\n{e}"
    );
}

#[test]
fn clap_usage_errors() {
    let sb = Sandbox::new();
    let bytes = valid_session(&sb);
    let cases: [&[&str]; 4] = [
        &["frobnicate"],
        &["preview", "--no-such-flag"],
        &["step", "--greedy", "--no-such-flag"],
        &["step", "--temp", "warm"],
    ];
    for args in cases {
        let e = sb.fails(args, 2);
        assert!(
            e.contains("--help"),
            "clap should point to --help for {args:?}:\n{e}"
        );
        assert!(
            sb.session_bytes().as_deref() == Some(&bytes[..]),
            "ntv {args:?} changed the session"
        );
    }
}

/// Other failures of writing commands on a valid session leave it untouched.
#[test]
fn failing_edits_leave_a_valid_session_untouched() {
    let sb = Sandbox::new();
    let bytes = valid_session(&sb);
    fails_unchanged(&sb, &["step", "-m", m(), "--token", "49152"], 2, &bytes);
    fails_unchanged(&sb, &["step", "-m", m(), "--undo", "5"], 2, &bytes);
    // (Another prompt while the session holds a completion is no failure: the session is kept
    // aside, see `oneshot.rs`.)
    fails_unchanged(&sb, &["step", "-m", m(), "-c", "8", "--greedy"], 2, &bytes);
}
