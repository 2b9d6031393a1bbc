//! Hostile input, interrupts and limits (the hardening issue): each reproduction the
//! adversarial runs found, run against the real binary — no panic, no hang, bounded memory,
//! `error:` + `hint:` with the documented exit status, and no lost work.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Sandbox, m, std_cmd};

/// `ntv ARGS` under an address-space limit (`ulimit -v`, KiB) and a time limit: what the
/// issue's reproductions blew up (34 GB allocations, 15 GB reads) must now fail fast.
fn bounded(sb: &Sandbox, limit_kib: u64, secs: u64, args: &[&str]) -> std::process::Output {
    let script = format!("ulimit -v {limit_kib}; exec timeout {secs} \"$0\" \"$@\"",);
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ntv"))
        .args(args)
        .current_dir(sb.path());
    for (k, v) in crate::util::harness_env() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().expect("sh runs")
}

#[track_caller]
fn refused(out: &std::process::Output, code: i32, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    stderr
}

/// 3 GiB of address space: the model and llama.cpp fit many times over.
const LIMIT: u64 = 3 << 20;

#[test]
fn sizes_are_checked_before_anything_is_allocated() {
    let sb = Sandbox::new();
    // -n far beyond the context: bounded by the context, it just runs.
    let out = bounded(
        &sb,
        LIMIT,
        60,
        &[
            "step",
            "-m",
            m(),
            "--no-session",
            "-p",
            "Hi",
            "-c",
            "64",
            "-n",
            "4294967295",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Integrated gradients' node count.
    for steps in ["4294967295", "100000", "0"] {
        let out = bounded(
            &sb,
            LIMIT,
            60,
            &[
                "attribute",
                "-m",
                m(),
                "--no-session",
                "-p",
                "Hi",
                "--method",
                "ig",
                "--steps",
                steps,
            ],
        );
        refused(&out, 2, "--steps");
    }
    // Endless and huge inputs: refused after reading only the limit.
    let t = Instant::now();
    let out = bounded(
        &sb,
        LIMIT,
        60,
        &["preview", "-m", m(), "--no-session", "-f", "/dev/zero"],
    );
    refused(&out, 2, "larger than ntv's limit of 4 MiB");
    let out = bounded(
        &sb,
        LIMIT,
        60,
        &["attribute", "-m", m(), "--batch", "/dev/zero"],
    );
    refused(&out, 2, "limit");
    let big = sb.path().join("big.txt");
    std::fs::write(&big, "word ".repeat(2 << 20)).unwrap(); // 10 MiB
    let out = bounded(
        &sb,
        LIMIT,
        60,
        &[
            "preview",
            "-m",
            m(),
            "--no-session",
            "-f",
            big.to_str().unwrap(),
        ],
    );
    refused(&out, 2, "larger than ntv's limit");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // A prompt that fits no context: the hint names the model's own bound, not an impossible -c.
    std::fs::write(&big, "word ".repeat(20_000)).unwrap();
    let out = sb.run(&[
        "preview",
        "-m",
        m(),
        "--no-session",
        "-f",
        big.to_str().unwrap(),
    ]);
    let err = refused(&out, 2, "at most 8192 tokens");
    assert!(!err.contains("-c/--ctx-size 32768"), "{err}");
}

#[test]
fn threads_are_held_to_the_cores() {
    let sb = Sandbox::new();
    let t = Instant::now();
    let out = sb.run(&[
        "preview",
        "-m",
        m(),
        "--no-session",
        "-p",
        "Hi",
        "-t",
        "64",
        "--format",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --threads 64 is more than the"),
        "{stderr}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    refused(
        &sb.run(&["preview", "-m", m(), "--no-session", "-p", "Hi", "-t", "0"]),
        2,
        "not a thread count",
    );
}

#[test]
fn penalties_that_overflow_are_refused_where_the_number_is_made() {
    let sb = Sandbox::new();
    let args = [
        "step",
        "-m",
        m(),
        "-p",
        "Hi Hi Hi",
        "--frequency-penalty=-1e308",
        "--json",
    ];
    let mut with_no_session = args.to_vec();
    with_no_session.push("--no-session");
    refused(&sb.run(&with_no_session), 2, "out of the finite range");
    refused(&sb.run(&args), 2, "out of the finite range");
    assert!(
        sb.session_bytes().is_none(),
        "nothing written by a refused step"
    );
}

#[test]
fn a_model_with_nan_weights_is_refused_by_attribution_too() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let nan = crate::util::rewritten_model("smollm2-nan-norm", |_, tensors| {
        for (name, t) in tensors.iter_mut() {
            if name == "output_norm.weight" {
                let n = t.shape().elem_count();
                let v = Tensor::from_vec(vec![f32::NAN; n], n, &Device::Cpu).unwrap();
                *t = QTensor::quantize(&v, GgmlDType::F32).unwrap();
            }
        }
    });
    let sb = Sandbox::new();
    let path = nan.to_str().unwrap();
    refused(
        &sb.run(&["preview", "-m", path, "--no-session", "-p", "Hi"]),
        1,
        "NaN",
    );
    let out = sb.run(&[
        "attribute",
        "-m",
        path,
        "--no-session",
        "-p",
        "Hi",
        "--token",
        "28",
    ]);
    refused(&out, 1, "non-finite");
    assert!(out.stdout.is_empty(), "no record with NaN scores");
}

#[test]
fn a_different_model_at_the_sessions_path_is_refused_without_force() {
    let sb = Sandbox::new();
    let path = sb.path().join("model.gguf");
    std::fs::copy(m(), &path).unwrap();
    let p = path.to_str().unwrap();
    sb.json(&["step", "-m", p, "-p", "Hi", "-n", "2", "--json"]);
    let before = sb.session_bytes().unwrap();
    // Another file at the same path: same tokenizer here, but ntv cannot know that.
    let other = crate::util::rewritten_model("smollm2-renamed", |meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "general.name" {
                *v = candle_core::quantized::gguf_file::Value::String("another model".into());
            }
        }
    });
    std::fs::copy(&other, &path).unwrap();
    let err = refused(
        &sb.run(&["step", "-m", p, "--json"]),
        2,
        "changed since this session recorded it",
    );
    assert!(err.contains("--force") && err.contains("sha256"), "{err}");
    refused(
        &sb.run(&["attribute", "-m", p, "--index", "0"]),
        2,
        "changed",
    );
    assert_eq!(
        sb.session_bytes().unwrap(),
        before,
        "refusals change nothing"
    );
    // Read-only commands warn; --force goes on.
    let out = sb.run(&["preview", "-m", p, "--format", "json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: the model file"));
    let doc = sb.json(&["step", "-m", p, "--force", "--json"]);
    assert_eq!(doc["completion_ids"].as_array().unwrap().len(), 3);
}

/// The trace of a short greedy generation.
fn recorded(sb: &Sandbox) -> Value {
    let out = sb.run(&[
        "generate",
        "-m",
        m(),
        "--no-session",
        "-p",
        "Hi",
        "-n",
        "3",
        "--greedy",
        "--record",
        "t.json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(sb.path().join("t.json")).unwrap()).unwrap()
}

#[test]
fn traces_are_validated_like_sessions() {
    let sb = Sandbox::new();
    let trace = recorded(&sb);
    let check = |name: &str, edit: &dyn Fn(&mut Value)| {
        let mut t = trace.clone();
        edit(&mut t);
        std::fs::write(sb.path().join(name), serde_json::to_vec(&t).unwrap()).unwrap();
        sb.run(&["check", name])
    };
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let cases: [(&str, Edit, i32, &str); 7] = [
        (
            "kind.json",
            &|t| t["cases"][0]["constraint"] = json!({"kind": "zzz", "source": "x"}),
            2,
            "constraint.kind",
        ),
        (
            "empty-kind.json",
            &|t| t["cases"][0]["constraint"] = json!({"kind": "", "source": "x"}),
            2,
            "constraint.kind",
        ),
        ("no-cases.json", &|t| t["cases"] = json!([]), 2, "no cases"),
        (
            "threads0.json",
            &|t| t["cases"][0]["threads"] = json!(0),
            2,
            "threads",
        ),
        (
            "oov.json",
            &|t| t["cases"][0]["steps"][0]["selected_id"] = json!(999_999),
            2,
            "outside the model's vocabulary",
        ),
        (
            "oov-prompt.json",
            &|t| t["cases"][0]["prompt_ids"][0] = json!(999_999),
            2,
            "prompt_ids[0]",
        ),
        (
            "entropy.json",
            &|t| {
                let h = t["cases"][0]["steps"][1]["entropy_base"].as_f64().unwrap();
                t["cases"][0]["steps"][1]["entropy_base"] = json!(h + 1.0);
            },
            1,
            "step 1: entropy",
        ),
    ];
    for (name, edit, code, needle) in cases {
        refused(&check(name, edit), code, needle);
    }
    // The report names what moved.
    let out = sb.run(&["check", "entropy.json", "--format", "json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("entropy_base moved"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Absurd thread counts are clamped (with a warning), not obeyed.
    let t = Instant::now();
    let out = check("threads.json", &|t| {
        t["cases"][0]["threads"] = json!(100_000)
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than the"));
    assert!(t.elapsed() < Duration::from_secs(30));
    // diff of steps against none is not a silent pass.
    check("nosteps.json", &|t| {
        t["cases"][0]["steps"] = json!([]);
        t["cases"][0]["stop_reason"] = json!("max_tokens");
    });
    refused(
        &sb.run(&["diff", "t.json", "nosteps.json"]),
        2,
        "nothing to compare",
    );
}

#[test]
fn choice_lists_beyond_the_limit_are_bad_input() {
    let sb = Sandbox::new();
    let list: Vec<String> = (0..10_000).map(|i| format!("option{i}")).collect();
    let file = sb.path().join("choices.json");
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = sb.run(&[
        "preview",
        "-m",
        m(),
        "--no-session",
        "-p",
        "Pick",
        "--choices",
        file.to_str().unwrap(),
    ]);
    refused(&out, 2, "more than ntv's limit of 1000");
}

#[test]
fn batch_summaries_stay_short() {
    let sb = Sandbox::new();
    let file = sb.path().join("bad.jsonl");
    std::fs::write(&file, "{\"prompt\": \"Hi\", \"steps\": 0}\n".repeat(10_000)).unwrap();
    let out = sb.run(&["attribute", "-m", m(), "--batch", file.to_str().unwrap()]);
    let err = refused(&out, 2, "10000 of 10000");
    // Each line's own error came as it failed; the closing summary is the last one.
    let line = err.lines().rfind(|l| l.starts_with("error:")).unwrap();
    assert!(line.len() < 300 && line.contains("9990 more"), "{line}");
}

#[test]
fn a_read_only_session_is_never_overwritten() {
    let sb = Sandbox::new();
    sb.json(&["step", "-m", m(), "-p", "Hi", "--json"]);
    let before = sb.session_bytes().unwrap();
    let mut perm = std::fs::metadata(sb.session()).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(sb.session(), perm).unwrap();
    let err = refused(
        &sb.run(&["step", "-m", m(), "--json"]),
        1,
        "ntv-session.json",
    );
    assert!(
        err.contains("read-only") && err.contains("chmod u+w"),
        "{err}"
    );
    assert!(
        !err.contains(".tmp"),
        "the temporary file is not the user's business: {err}"
    );
    assert_eq!(sb.session_bytes().unwrap(), before);
}

/// Lines of a JSONL stream until `stop` says enough.
fn read_until(
    out: &mut BufReader<std::process::ChildStdout>,
    mut stop: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut buf = String::new();
    while out.read_line(&mut buf).unwrap() > 0 {
        // A process killed mid-write may leave half a line at the very end.
        let Ok(v) = serde_json::from_str::<Value>(buf.trim()) else {
            assert!(!buf.ends_with('\n'), "a whole line that is not JSON: {buf}");
            break;
        };
        buf.clear();
        let done = stop(&v);
        lines.push(v);
        if done {
            break;
        }
    }
    lines
}

fn tokens_of(lines: &[Value], kind: &str) -> Vec<i64> {
    lines
        .iter()
        .filter(|l| l["type"] == kind)
        .map(|l| l["selected"]["id"].as_i64().unwrap())
        .collect()
}

fn active(session: &Value) -> &Value {
    let name = &session["active_branch"];
    session["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| &b["name"] == name)
        .unwrap()
}

#[test]
fn ctrl_c_keeps_the_streamed_tokens_and_exits_130() {
    let sb = Sandbox::new();
    let mut child = std_cmd()
        .current_dir(sb.path())
        .args([
            "generate",
            "-m",
            m(),
            "-p",
            "Tell me a long story.",
            "-n",
            "200",
            "--format",
            "jsonl",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = read_until(&mut out, |l| l["type"] == "step" && l["index"] == 5);
    // SIGINT, as Ctrl-C sends it.
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    lines.extend(read_until(&mut out, |_| false));
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted:"), "{stderr}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["stop_reason"], "interrupted", "{summary}");
    let streamed = tokens_of(&lines, "step");
    assert!(streamed.len() > 5 && streamed.len() < 200);
    let s = sb.session_json();
    let b = active(&s);
    assert_eq!(b["stop_reason"], "interrupted");
    let kept: Vec<i64> = b["completion_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(
        kept, streamed,
        "the session holds exactly what was streamed"
    );
}

/// `kill -9` at random moments of a `generate`: the session is always valid and holds a prefix
/// of the streamed tokens at least as long as the last checkpoint. `NTV_KILL_TRIALS` sets the
/// count (CI: 12; the full run: 200).
#[test]
fn kill_9_loses_at_most_the_tokens_since_the_last_checkpoint() {
    let trials: usize = std::env::var("NTV_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let sb = Sandbox::new();
    let mut seen_checkpoint = false;
    for trial in 0..trials {
        let _ = std::fs::remove_file(sb.session());
        let mut child = std_cmd()
            .current_dir(sb.path())
            .env("NTV_CHECKPOINT_TOKENS", "4")
            .args([
                "generate",
                "-m",
                m(),
                "-p",
                "Count to one hundred.",
                "-n",
                "60",
                "--seed",
                "1",
                "--format",
                "jsonl",
                "--no-cache",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // Kill after a varying number of streamed lines (some trials right after a checkpoint).
        let at = 1 + (trial * 7) % 40;
        let mut n = 0;
        let lines = read_until(&mut out, |_| {
            n += 1;
            n >= at
        });
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Everything it wrote before dying is still in the pipe.
        let mut lines = lines;
        lines.extend(read_until(&mut out, |_| false));
        let streamed = tokens_of(&lines, "step");
        let last_checkpoint = lines
            .iter()
            .filter(|l| l["type"] == "checkpoint")
            .map(|l| l["tokens"].as_u64().unwrap() as usize)
            .max();
        seen_checkpoint |= last_checkpoint.is_some();
        // Whatever is on disk must load (ntv itself reads it back).
        let shown = sb.run(&["branch", "show", "--format", "json"]);
        if !sb.session().exists() {
            assert!(
                last_checkpoint.is_none(),
                "trial {trial}: checkpoint streamed, no session"
            );
            continue;
        }
        assert!(
            shown.status.success(),
            "trial {trial}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        let s = sb.session_json();
        let kept: Vec<i64> = active(&s)["completion_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert!(
            streamed.starts_with(&kept),
            "trial {trial}: kept {kept:?} is not a prefix of the streamed {streamed:?}"
        );
        assert!(
            kept.len() >= last_checkpoint.unwrap_or(0),
            "trial {trial}: kept {} < checkpoint {last_checkpoint:?}",
            kept.len()
        );
    }
    assert!(
        seen_checkpoint || trials == 0,
        "some trial saw a checkpoint"
    );
}
