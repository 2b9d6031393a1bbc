//! Generated docs: committed man pages match the code; every command's JSON output validates
//! against its published schema (closed: an output field missing from the schema fails).

use serde_json::Value;

use crate::util::{PROMPT, Sandbox, m};

#[test]
fn committed_man_pages_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages = ntv::docs::man_pages().expect("render man pages");
    for (name, bytes) in &pages {
        let committed = std::fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *bytes,
            "man/{name} differs from what the code generates.\nhint: regenerate with `cargo run -- man man` and commit the result"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("man/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = pages.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "stale pages in man/: regenerate with `cargo run -- man man`"
    );
}

/// Close every object schema (no additional properties) so that an output field the schema
/// does not describe is an error.
fn close(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("type") == Some(&Value::String("object".into()))
                && map.contains_key("properties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for v in map.values_mut() {
                close(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close),
        _ => {}
    }
}

#[track_caller]
pub fn validate(name: &str, instance: &Value) {
    let mut schema = ntv::docs::schema(name).expect("schema exists");
    close(&mut schema);
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "output does not match schema ntv.{name}/1:\n{}",
        errors.join("\n")
    );
}

#[test]
fn every_json_output_validates_against_its_schema() {
    let sb = Sandbox::new();
    let load = sb.json(&["load", m(), "--json"]);
    validate("load", &load);
    let preview = sb.json(&[
        "preview",
        "-p",
        PROMPT,
        "--json",
        "--prompt-logprobs",
        "--display-k",
        "3",
    ]);
    validate("preview", &preview);
    // llama.cpp's chain: its record (stages, XTC, adjustments) is in the schema too.
    let chained = sb.json(&[
        "preview",
        "--no-session",
        "-p",
        PROMPT,
        "--json",
        "--display-k",
        "5",
        "--logit-bias",
        "504-inf",
        "--logit-bias",
        "60+1",
        "--dry-multiplier",
        "0.8",
        "--xtc-probability",
        "1",
        "--mirostat",
        "0",
        "--samplers",
        "edkpmxt",
    ]);
    assert!(chained["dist"]["chain"].is_object(), "{chained}");
    validate("preview", &chained);
    let miro = sb.jsonl(&[
        "generate",
        "--no-session",
        "-p",
        PROMPT,
        "-n",
        "2",
        "--mirostat",
        "2",
        "--format",
        "jsonl",
        "--display-k",
        "3",
    ]);
    validate("generate.step", &miro[0]);
    let step = sb.json(&[
        "step",
        "-p",
        PROMPT,
        "--json",
        "--seed",
        "3",
        "--display-k",
        "3",
    ]);
    validate("step", &step);
    let forced = sb.json(&["step", "--text", " Paris", "--json", "--display-k", "3"]);
    validate("step", &forced);
    let undo = sb.json(&["step", "--undo", "--json"]);
    validate("step", &undo);
    let records = sb.jsonl(&[
        "generate",
        "-n",
        "3",
        "--format",
        "jsonl",
        "--display-k",
        "3",
    ]);
    for r in &records[..records.len() - 1] {
        validate("generate.step", r);
    }
    validate("generate", records.last().unwrap());
    let doc = sb.json(&["generate", "-n", "2", "--json", "--display-k", "3"]);
    validate("generate", &doc);
    let rewind = sb.json(&[
        "step",
        "--at",
        "1",
        "--token",
        "504",
        "--json",
        "--display-k",
        "3",
    ]);
    validate("step", &rewind);
    validate("branch.list", &sb.json(&["branch", "list", "--json"]));
    validate("branch.show", &sb.json(&["branch", "show", "--json"]));
    let diff = sb.json(&["branch", "diff", "main", "main~1", "--json"]);
    validate("branch.diff", &diff);
    validate("session", &sb.session_json());
    validate(
        "attribute",
        &sb.json(&["attribute", "--index", "0", "--json", "--layers", "0,1"]),
    );
    validate(
        "attribute",
        &sb.json(&[
            "attribute",
            "--all",
            "--method",
            "ig",
            "--steps",
            "2",
            "--json",
        ]),
    );
    let batch = sb.path().join("requests.jsonl");
    std::fs::write(
        &batch,
        format!(
            "{{\"id\": 1, \"prompt\": \"{PROMPT}\", \"method\": \"occlusion\"}}\n{{\"id\": 2, \"index\": 9}}\n"
        ),
    )
    .unwrap();
    let out = sb.run(&["attribute", "--batch", batch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "one bad line: exit 2");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["type"], "error");
    for l in &lines {
        validate("attribute.record", l);
    }
    // generate --batch: cases, a bad line in place, the summary.
    std::fs::write(
        &batch,
        format!("{{\"id\": \"a\", \"prompt\": \"{PROMPT}\", \"seed\": 3}}\n{{\"prompt\": 3}}\n"),
    )
    .unwrap();
    let out = sb.run(&[
        "generate",
        "--no-session",
        "--batch",
        batch.to_str().unwrap(),
        "-n",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2), "one bad line: exit 2");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["case", "error", "summary"]);
    assert_eq!(
        (lines[1]["line"].as_u64(), lines[2]["failed"].as_u64()),
        (Some(2), Some(1))
    );
    for l in &lines {
        validate("generate.batch", l);
    }
    validate(
        "sweep",
        &sb.json(&[
            "--no-session",
            "sweep",
            "temp=0.5,1",
            "top-p=0.5,0.9",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--display-k",
            "3",
            "--json",
        ]),
    );
    let trace = sb.path().join("t.json");
    sb.jsonl(&[
        "generate",
        "--no-session",
        "-p",
        PROMPT,
        "-n",
        "3",
        "--seed",
        "1",
        "--record",
        trace.to_str().unwrap(),
        "--format",
        "jsonl",
    ]);
    let recorded: Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    validate("trace", &recorded);
    validate(
        "check",
        &sb.json(&["check", trace.to_str().unwrap(), "--json"]),
    );
    validate(
        "diff",
        &sb.json(&[
            "diff",
            trace.to_str().unwrap(),
            trace.to_str().unwrap(),
            "--json",
        ]),
    );
}

#[test]
fn schema_command_prints_every_schema() {
    let sb = Sandbox::new();
    let all = sb.json(&["schema"]);
    for name in ntv::docs::SCHEMA_NAMES {
        assert_eq!(all[name]["$id"], format!("ntv.{name}/1"));
    }
    let one = sb.json(&["schema", "preview"]);
    assert_eq!(one["$id"], "ntv.preview/1");
    sb.fails(&["schema", "nope"], 2);
}

#[test]
fn completions_generate_for_four_shells() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = sb.run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("generate"),
            "{shell}"
        );
    }
}
