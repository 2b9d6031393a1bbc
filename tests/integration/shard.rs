//! Sharded batches as schedulers run them: four `ntv attribute --batch --shard …` processes side
//! by side (two as Slurm job array tasks, two as Kubernetes Indexed Job pods, through
//! `--shard auto`), merged with `--merge` into exactly what one un-sharded run writes; and the
//! merge's refusals (a missing part, a part twice, parts of different batches, un-sharded
//! output).

use std::process::Stdio;

use serde_json::{Value, json};

use crate::util::{Sandbox, m, std_cmd};

/// Every variable `--shard auto` reads, removed from a child so that a test run under a
/// scheduler does not leak its own task index into the children.
const SCHEDULER_VARS: [&str; 7] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_JOB_ID",
    "JOB_COMPLETION_INDEX",
];

fn write(sb: &Sandbox, name: &str, text: &str) -> String {
    let path = sb.path().join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_str().expect("utf-8").to_string()
}

fn records(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL line {l}: {e}")))
        .collect()
}

/// A record without its wall-clock field and its shard place (what an un-sharded run lacks).
fn unplaced(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("elapsed_ms");
        o.remove("shard");
    }
    v
}

/// Eight requests (a blank line among them): attention and saliency on short contexts, one
/// `all` request with two targets, one unknown method and one line that is not JSON (error
/// records).
fn batch_text() -> String {
    let lines = [
        json!({"id": "a", "prompt": "Hi", "method": "attention"}).to_string(),
        json!({"id": "b", "prompt": "Hi", "completion_ids": [504, 3575], "all": true, "method": "saliency"}).to_string(),
        String::new(),
        json!({"id": "c", "prompt": "The sky is", "method": "saliency"}).to_string(),
        json!({"id": "d", "prompt": "Hi", "method": "lime"}).to_string(),
        json!({"id": "e", "prompt": "Paris", "token": 7042}).to_string(),
        json!({"id": "f", "prompt": "One two", "completion_ids": [504], "index": 0}).to_string(),
        json!({"id": "g", "prompt": "Hi there", "method": "saliency"}).to_string(),
        "not json".to_string(),
    ];
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn four_shard_processes_side_by_side_merge_to_the_unsharded_run() {
    let sb = Sandbox::new();
    let batch = write(&sb, "requests.jsonl", &batch_text());
    let common = [
        "attribute",
        "-m",
        m(),
        "--no-session",
        "--no-chat-template",
        "-t",
        "1",
        "--batch",
        &batch,
    ];
    // Tasks 1-4 of `sbatch --array=1-4` are shards 0 and 1 (k = id − min); pods 2 and 3 of an
    // Indexed Job with completions: 4 are shards 2 and 3.
    let slurm = |id: &str| {
        vec![
            ("SLURM_ARRAY_TASK_ID", id.to_string()),
            ("SLURM_ARRAY_TASK_MIN", "1".into()),
            ("SLURM_ARRAY_TASK_MAX", "4".into()),
            ("SLURM_ARRAY_TASK_STEP", "1".into()),
            ("SLURM_ARRAY_TASK_COUNT", "4".into()),
            ("SLURM_JOB_ID", "4242".into()),
        ]
    };
    let tasks: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("auto", slurm("1")),
        ("auto", slurm("2")),
        ("auto/4", vec![("JOB_COMPLETION_INDEX", "2".into())]),
        ("auto/4", vec![("JOB_COMPLETION_INDEX", "3".into())]),
    ];
    let mut children = Vec::new();
    let mut parts = Vec::new();
    for (k, (shard, vars)) in tasks.iter().enumerate() {
        let part = sb.path().join(format!("part{k}.jsonl"));
        let mut c = std_cmd();
        c.current_dir(sb.path())
            .args(common)
            .args(["--shard", shard])
            .stdout(std::fs::File::create(&part).expect("part file"))
            .stderr(Stdio::piped());
        for v in SCHEDULER_VARS {
            c.env_remove(v);
        }
        c.envs(vars.iter().map(|(k, v)| (k, v)));
        children.push(c.spawn().expect("ntv starts"));
        parts.push(part.to_str().expect("utf-8").to_string());
    }
    for (k, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("ntv runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "shard {k}: {stderr}");
        assert!(
            stderr.contains(&format!("shard {k}/4 of ")),
            "shard {k} says which shard it took: {stderr}"
        );
        let from = if k < 2 {
            format!("SLURM_ARRAY_TASK_ID={}", k + 1)
        } else {
            format!("JOB_COMPLETION_INDEX={k}")
        };
        assert!(
            stderr.contains(&from),
            "shard {k} says from where: {stderr}"
        );
        // Shard 3 holds requests 3 and 7, the two bad lines: exit 2 as any batch with bad lines.
        let code = if k == 3 { 2 } else { 0 };
        assert_eq!(out.status.code(), Some(code), "shard {k}: {stderr}");
    }

    let whole = sb.run(&common);
    assert_eq!(
        whole.status.code(),
        Some(2),
        "the bad lines fail the whole run too"
    );
    let whole = records(&whole.stdout);
    assert!(
        whole.iter().all(|r| r.get("shard").is_none()),
        "an un-sharded run writes no shard places"
    );

    let mut merge = vec!["attribute", "--merge"];
    // The order of the parts on the command line does not matter.
    merge.extend(parts.iter().rev().map(String::as_str));
    let out = sb.run(&merge);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "merge: {stderr}");
    assert!(
        stderr.contains("merged 8 requests (9 records, 2 of them errors) from 4 parts"),
        "{stderr}"
    );
    let merged = records(&out.stdout);
    let ids: Vec<&str> = merged
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(ids, ["a", "b", "b", "c", "d", "e", "f", "g", "-"]);
    let kinds: Vec<&str> = merged.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|&&k| k == "error").count(), 2);
    for r in &merged {
        // The published schema (closed) describes the shard place of both kinds of record.
        crate::docs::validate("attribute.record", r);
        let place = &r["shard"];
        assert_eq!(place["requests"], 8, "{r}");
        assert_eq!(place["n"], 4, "{r}");
        let request = place["request"].as_u64().unwrap();
        assert_eq!(place["k"].as_u64().unwrap(), request % 4, "{r}");
        assert_eq!(place["batch_sha256"].as_str().unwrap().len(), 64, "{r}");
    }
    let requests: Vec<u64> = merged
        .iter()
        .map(|r| r["shard"]["request"].as_u64().unwrap())
        .collect();
    assert_eq!(requests, [0, 1, 1, 2, 3, 4, 5, 6, 7]);
    // The same records in the same order, scores equal to the last bit (timings aside).
    let merged_plain: Vec<Value> = merged.into_iter().map(unplaced).collect();
    let whole_plain: Vec<Value> = whole.into_iter().map(unplaced).collect();
    assert_eq!(merged_plain, whole_plain);
    assert!(
        merged_plain
            .iter()
            .any(|r| r["method"] == "saliency"
                && r["scores"].as_array().is_some_and(|s| !s.is_empty())),
        "the comparison covers scored records"
    );

    // --format html: the batch page of the merged records, one section per request in order.
    let mut html = merge.clone();
    html.extend(["--format", "html"]);
    let out = sb.run(&html);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8(out.stdout).expect("utf-8");
    assert!(page.contains("<html"), "an HTML page");
    let anchors: Vec<usize> = page
        .match_indices("<article class=\"request\" id=\"req-")
        .map(|(i, s)| {
            let rest = &page[i + s.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(
        anchors,
        [1, 2, 4, 5, 6, 7, 8, 9],
        "one section per request, by line"
    );
}

#[test]
fn merge_refuses_missing_duplicate_and_foreign_parts() {
    let sb = Sandbox::new();
    let text = [
        json!({"id": 1, "prompt": "Hi"}),
        json!({"id": 2, "prompt": "Ok"}),
        json!({"id": 3, "prompt": "Yes"}),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect::<String>();
    let batch = write(&sb, "a.jsonl", &text);
    // Another batch file: the same requests, one more line.
    let other = write(
        &sb,
        "b.jsonl",
        &format!("{text}{}\n", json!({"prompt": "No"})),
    );
    let run = |batch: &str, shard: &str, name: &str| {
        let args = [
            "attribute",
            "-m",
            m(),
            "--no-session",
            "--no-chat-template",
            "--batch",
            batch,
            "--shard",
            shard,
        ];
        let out = sb.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        write(&sb, name, std::str::from_utf8(&out.stdout).unwrap())
    };
    let p0 = run(&batch, "0/2", "p0.jsonl");
    let p1 = run(&batch, "1/2", "p1.jsonl");
    let q1 = run(&other, "1/2", "q1.jsonl");
    let merge = |parts: &[&str], code: i32| {
        let mut args = vec!["attribute", "--merge"];
        args.extend(parts);
        let out = sb.run(&args);
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout when the merge fails"
        );
        let err = sb.fails(&args, code);
        assert!(err.contains("hint:"), "{err}");
        err
    };
    // The parts together are fine.
    let out = sb.run(&["attribute", "--merge", &p0, &p1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(records(&out.stdout).len(), 3);

    // A missing part: its requests named (and their lines, given the batch file).
    let err = merge(&[&p0], 2);
    assert!(
        err.contains("1 of 3 requests are missing from the parts: request 1 of shard 1/2"),
        "{err}"
    );
    let err = merge(&[&p0, "--batch", &batch], 2);
    assert!(err.contains(&format!("(lines 2 of {batch})")), "{err}");
    // A part given twice.
    let err = merge(&[&p0, &p1, &p1], 2);
    assert!(
        err.contains("request 1 (batch line 2) is in the parts twice"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p1} line 1 and {p1} line 1")),
        "{err}"
    );
    // Parts of different batches, and parts of another batch than --batch says.
    let err = merge(&[&p0, &q1], 2);
    assert!(err.contains("the parts are of different batches"), "{err}");
    let err = merge(&[&p0, &p1, "--batch", &other], 2);
    assert!(err.contains("not made from"), "{err}");
    // The output of an un-sharded run cannot be merged.
    let out = sb.run(&[
        "attribute",
        "-m",
        m(),
        "--no-session",
        "--no-chat-template",
        "--batch",
        &batch,
    ]);
    let whole = write(
        &sb,
        "whole.jsonl",
        std::str::from_utf8(&out.stdout).unwrap(),
    );
    let err = merge(&[&whole], 2);
    assert!(err.contains("has no \"shard\" field"), "{err}");
    // A missing file is an input error too.
    merge(&["nope.jsonl"], 2);
}
