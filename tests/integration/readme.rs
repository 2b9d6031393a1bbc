//! README's examples are real: every `$ ntv …` line of its console blocks runs, in order, in
//! one sandbox (they tell one session's story), and succeeds.

use crate::util::{Sandbox, model};

#[test]
fn readme_console_examples_run() {
    model(); // the examples use the default model: make sure it is cached
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut in_console = false;
    let mut commands = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_console = line == "```console";
            continue;
        }
        if in_console && let Some(cmd) = line.strip_prefix("$ ntv ") {
            // A pipe into another tool (jq) is not ntv's business; a trailing comment is prose.
            let cmd = cmd.split(" | ").next().unwrap();
            let cmd = match cmd.find("  #") {
                Some(i) => &cmd[..i],
                None => cmd,
            };
            commands.push(cmd.trim().to_string());
        }
    }
    assert!(
        commands.len() >= 8,
        "README lost its examples: {commands:?}"
    );
    let sb = Sandbox::new();
    for cmd in &commands {
        let args = shell_words::split(cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let out = sb.cmd().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "README example `ntv {cmd}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
