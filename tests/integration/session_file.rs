//! The session file (session.md): what `load` writes, how the file is chosen, atomic writes
//! and the lock that serialises concurrent writers.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::util::{PROMPT, Sandbox, m};

/// session.md's fingerprint, computed here independently: SHA-256 of the first MiB followed
/// by the last MiB (the whole file under 2 MiB), lowercase hex.
fn head_tail_sha256(path: &Path) -> (u64, String) {
    const MIB: u64 = 1 << 20;
    let mut file = std::fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut h = Sha256::new();
    if size < 2 * MIB {
        let mut all = Vec::new();
        file.read_to_end(&mut all).unwrap();
        h.update(&all);
    } else {
        let mut buf = vec![0u8; MIB as usize];
        file.read_exact(&mut buf).unwrap();
        h.update(&buf);
        file.seek(SeekFrom::Start(size - MIB)).unwrap();
        file.read_exact(&mut buf).unwrap();
        h.update(&buf);
    }
    let hex = h
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    (size, hex)
}

/// File names in `dir`.
fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn read_json(path: &Path) -> Value {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

#[test]
fn load_creates_the_session() {
    let sb = Sandbox::new();
    let doc = sb.json(&["load", m(), "--format", "json"]);
    assert_eq!(doc["schema"], "ntv.load/1");
    let facts = &doc["model"];
    assert_eq!(facts["vocab_size"], 49152);
    assert_eq!(facts["architecture"], "llama");
    assert_eq!(facts["dtype"], "Q4_1");
    assert_eq!(facts["has_chat_template"], true);
    assert_eq!(facts["eos_token_id"], 2);

    let (size, sha) = head_tail_sha256(Path::new(m()));
    assert_eq!(doc["fingerprint"], sha.as_str());

    let text = String::from_utf8(sb.session_bytes().expect("load wrote ./ntv-session.json"))
        .expect("UTF-8");
    assert!(
        text.starts_with("{\n  \"format\": \"ntv-session\",\n  \"version\": 2,"),
        "the session should be pretty JSON starting with format and version:\n{}",
        &text[..text.len().min(200)]
    );
    assert!(text.ends_with('\n'));
    let s = sb.session_json();
    assert_eq!(s["format"], "ntv-session");
    assert_eq!(s["version"], 2);
    assert!(s["created"].is_string() && s["updated"].is_string());
    let model = &s["model"];
    let canon = std::fs::canonicalize(m()).unwrap();
    assert_eq!(model["path"], canon.to_str().unwrap());
    assert_eq!(model["fingerprint"]["size"], size);
    let hex = model["fingerprint"]["sha256_head_tail"]
        .as_str()
        .expect("sha256_head_tail is a string");
    assert_eq!(hex.len(), 64);
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(hex, sha, "fingerprint is not sha256(first MiB ++ last MiB)");
    let facts = &model["facts"];
    assert_eq!(facts["vocab_size"], 49152);
    assert_eq!(facts["architecture"], "llama");
    assert_eq!(facts["has_chat_template"], true);
    assert_eq!(facts["eos_token_id"], 2);
    assert_eq!(facts["file_size"], size);
    assert_eq!(s["active_branch"], "main");
    assert_eq!(s["branches"][0]["name"], "main");
    assert_eq!(s["branches"][0]["completion_ids"], Value::Array(vec![]));

    // The table names the facts.
    let out = sb.run(&["load", m(), "--color", "never"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("architecture"), "{table}");
    assert!(table.contains("Q4_1"), "{table}");
    assert!(table.contains("llama"), "{table}");
    assert!(!table.contains("\x1b["), "{table}");
}

#[test]
fn session_flag_env_and_no_session_choose_the_file() {
    let sb = Sandbox::new();
    let dir = sb.path();

    // --session FILE
    sb.json(&["--session", "a.json", "load", m(), "--format", "json"]);
    assert!(dir.join("a.json").is_file());
    assert!(
        !sb.session().exists(),
        "--session must not write the default file"
    );
    assert_eq!(read_json(&dir.join("a.json"))["format"], "ntv-session");

    // NTV_SESSION
    let out = sb
        .cmd()
        .env("NTV_SESSION", "b.json")
        .args([
            "preview",
            "--save",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("b.json").is_file(), "NTV_SESSION was not used");
    assert!(!sb.session().exists());
    assert_eq!(read_json(&dir.join("b.json"))["prompt"], PROMPT);
    // ... and read: a preview without -p finds the prompt saved in b.json.
    let out = sb
        .cmd()
        .env("NTV_SESSION", "b.json")
        .args(["preview", "-m", m(), "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["prompt"], PROMPT);

    // --session wins over NTV_SESSION.
    let b_before = std::fs::read(dir.join("b.json")).unwrap();
    let out = sb
        .cmd()
        .env("NTV_SESSION", "b.json")
        .args([
            "--session",
            "c.json",
            "preview",
            "--save",
            "-m",
            m(),
            "-p",
            "Hello",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_json(&dir.join("c.json"))["prompt"], "Hello");
    assert_eq!(std::fs::read(dir.join("b.json")).unwrap(), b_before);

    // --no-session writes nothing, even for commands that write sessions.
    let empty = Sandbox::new();
    empty.json(&["--no-session", "load", m(), "--format", "json"]);
    empty.json(&[
        "--no-session",
        "step",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--greedy",
        "--format",
        "json",
    ]);
    empty.json(&[
        "--no-session",
        "preview",
        "--save",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--format",
        "json",
    ]);
    assert_eq!(
        listing(empty.path()),
        BTreeSet::new(),
        "--no-session wrote files"
    );
}

/// `--no-session` on the command line wins over an exported NTV_SESSION (one-shot use in a
/// shell or pipeline that has a session selected), and writes nothing.
#[test]
fn no_session_flag_wins_over_ntv_session_env() {
    let sb = Sandbox::new();
    for args in [
        &["--no-session", "load", m(), "--format", "json"][..],
        &[
            "--no-session",
            "step",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--greedy",
            "--format",
            "json",
        ][..],
    ] {
        let out = sb
            .cmd()
            .env("NTV_SESSION", "d.json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "NTV_SESSION=d.json ntv {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            listing(sb.path()),
            BTreeSet::new(),
            "--no-session wrote files"
        );
    }
}

#[test]
fn writes_leave_no_temporary_files() {
    let sb = Sandbox::new();
    sb.json(&["load", m(), "--format", "json"]);
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
    sb.json(&["step", "-m", m(), "--greedy", "--format", "json"]);
    sb.json(&["step", "-m", m(), "--greedy", "-n", "2", "--format", "json"]);
    sb.json(&["step", "-m", m(), "--undo", "--format", "json"]);
    sb.json(&["preview", "-m", m(), "--format", "json"]);
    assert_eq!(
        listing(sb.path()),
        set(&[
            "ntv-session.json",
            "ntv-session.json.lock",
            "ntv-session.json.kvcache"
        ]),
        "only the session and its lock may be left"
    );
    let s = sb.session_json();
    assert_eq!(s["prompt"], PROMPT);
    let main = &s["branches"][0];
    assert_eq!(main["completion_ids"].as_array().unwrap().len(), 2);
    assert_eq!(main["appended_meta"].as_array().unwrap().len(), 2);
}

#[test]
fn concurrent_steps_are_serialised_by_the_lock() {
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
    let spawn = || {
        crate::util::std_cmd()
            .current_dir(sb.path())
            .args(["step", "-m", m(), "--greedy", "--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ntv")
    };
    let mut indices = Vec::new();
    for round in 0..2 {
        let (a, b) = (spawn(), spawn());
        for child in [a, b] {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: a concurrent step failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: Value = serde_json::from_slice(&out.stdout).expect("step JSON");
            indices.push(doc["steps"][0]["index"].as_u64().expect("step index"));
        }
        let s = sb.session_json();
        let main = &s["branches"][0];
        let n = 2 * (round + 1);
        assert_eq!(
            main["completion_ids"].as_array().unwrap().len(),
            n,
            "round {round}: a concurrent write was lost"
        );
        assert_eq!(main["appended_meta"].as_array().unwrap().len(), n);
    }
    indices.sort_unstable();
    assert_eq!(
        indices,
        vec![0, 1, 2, 3],
        "each step appended at its own index"
    );

    // The same four greedy tokens as one process stepping four times.
    let solo = Sandbox::new();
    solo.json(&[
        "preview",
        "--save",
        "-m",
        m(),
        "-p",
        PROMPT,
        "--format",
        "json",
    ]);
    solo.json(&["step", "-m", m(), "--greedy", "-n", "4", "--format", "json"]);
    assert_eq!(
        sb.session_json()["branches"][0]["completion_ids"],
        solo.session_json()["branches"][0]["completion_ids"]
    );
    assert_eq!(
        listing(sb.path()),
        set(&[
            "ntv-session.json",
            "ntv-session.json.lock",
            "ntv-session.json.kvcache"
        ])
    );
}

#[test]
fn a_changed_model_file_is_refused_and_forced_loudly() {
    let sb = Sandbox::new();
    let copy = sb.path().join("model.gguf");
    std::fs::copy(m(), &copy).unwrap();
    sb.json(&[
        "step",
        "-m",
        copy.to_str().unwrap(),
        "-p",
        PROMPT,
        "--greedy",
        "--json",
    ]);
    // Same path, different bytes (a trailing byte llama.cpp ignores): the fingerprint moves.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .unwrap();
    std::io::Write::write_all(&mut f, b"\0").unwrap();
    drop(f);
    // Extending the completion with another file is refused (session.md)…
    let before = sb.session_bytes().unwrap();
    let err = sb.fails(&["step", "--greedy", "--json"], 2);
    assert!(err.contains("changed") && err.contains("--force"), "{err}");
    assert_eq!(sb.session_bytes().unwrap(), before);
    // …unless forced, and then still loudly.
    let out = sb.run(&["step", "--greedy", "--json", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("changed"),
        "no loud warning: {stderr}"
    );
}
