//! README's examples are real: every `$ ntv …` line of its console blocks runs, in order, in
//! one sandbox (they tell one session's story), succeeds, and prints what README shows under it.
//!
//! The output shown under a command is compared line by line with what the command prints,
//! after masking what differs from run to run (see [`normalise`]): throughput, randomly drawn
//! seeds, paths. A README line `…` stands for any number of lines. A command shown without
//! output (or piped into another tool) is not compared; a piped one must print JSON.

use std::path::Path;

use crate::util::{Sandbox, m, model};

/// One `$ ntv …` line of a console block and the output README shows under it.
#[derive(Debug)]
struct Example {
    /// 1-based line number in README.md.
    line: usize,
    /// The command after `ntv `, without a pipe or a trailing comment.
    cmd: String,
    /// The command is piped into another tool (jq): its output is not shown.
    piped: bool,
    /// The lines shown under the command, up to the next `$ ` line or the end of the block.
    shown: Vec<String>,
}

fn examples(readme: &str) -> Vec<Example> {
    let mut in_console = false;
    let mut out: Vec<Example> = Vec::new();
    let mut current: Option<Example> = None;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            out.extend(current.take());
            in_console = line == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(rest) = line.strip_prefix("$ ") {
            out.extend(current.take());
            let cmd = rest
                .strip_prefix("ntv ")
                .unwrap_or_else(|| panic!("README.md:{}: not an ntv command: {line}", i + 1));
            // A pipe into another tool (jq) is not ntv's business; a trailing comment is prose.
            let piped = cmd.contains(" | ");
            let cmd = cmd.split(" | ").next().unwrap();
            let cmd = match cmd.find("  #") {
                Some(i) => &cmd[..i],
                None => cmd,
            };
            current = Some(Example {
                line: i + 1,
                cmd: cmd.trim().to_string(),
                piped,
                shown: Vec::new(),
            });
        } else if let Some(ex) = current.as_mut() {
            ex.shown.push(line.to_string());
        } else {
            panic!("README.md:{}: console output before any command", i + 1);
        }
    }
    out.extend(current);
    out
}

/// Mask what legitimately changes from run to run, and trailing blanks (table padding):
/// - throughput: `98.1 tokens/s` → `<n> tokens/s`;
/// - seeds drawn at random (u64, 10 to 20 digits; a chosen seed such as `7` stays);
/// - the sandbox folder and the model's path → `<dir>`, `<model>`.
fn normalise(line: &str, dir: &Path) -> String {
    use std::sync::OnceLock;
    static RATE: OnceLock<regex::Regex> = OnceLock::new();
    static SEED: OnceLock<regex::Regex> = OnceLock::new();
    let rate = RATE.get_or_init(|| regex::Regex::new(r"\d+(\.\d+)? tokens/s").unwrap());
    let seed = SEED.get_or_init(|| regex::Regex::new(r"\b\d{10,20}\b").unwrap());
    let mut s = line.trim_end().to_string();
    for (path, mask) in [(dir, "<dir>"), (model(), "<model>")] {
        for p in [std::fs::canonicalize(path).ok(), Some(path.to_path_buf())]
            .into_iter()
            .flatten()
        {
            s = s.replace(p.to_str().unwrap(), mask);
        }
    }
    let s = rate.replace_all(&s, "<n> tokens/s");
    seed.replace_all(&s, "<seed>").into_owned()
}

/// `want` (README, `…` = any number of lines) matches `got` exactly otherwise.
fn matches(want: &[String], got: &[String]) -> bool {
    match want.split_first() {
        None => got.is_empty(),
        Some((w, rest)) if w.trim() == "…" => (0..=got.len()).any(|k| matches(rest, &got[k..])),
        Some((w, rest)) => got
            .split_first()
            .is_some_and(|(g, more)| g == w && matches(rest, more)),
    }
}

#[test]
fn readme_console_examples_run() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples = examples(&readme);
    assert!(
        examples.len() >= 8,
        "README lost its examples: {examples:?}"
    );
    let compared = examples
        .iter()
        .filter(|e| !e.piped && !e.shown.is_empty())
        .count();
    assert!(
        compared >= 6,
        "README shows too little output: {examples:?}"
    );
    let sb = Sandbox::new();
    let _ = m(); // the examples run the default model, which the harness makes the test model
    for ex in &examples {
        let args = shell_words::split(&ex.cmd).unwrap_or_else(|e| panic!("{}: {e}", ex.cmd));
        let out = sb.cmd().args(&args).output().unwrap();
        let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
        assert!(
            out.status.success(),
            "README.md:{} `ntv {}` failed:\n{}",
            ex.line,
            ex.cmd,
            String::from_utf8_lossy(&out.stderr)
        );
        if ex.piped {
            assert!(
                ex.shown.is_empty(),
                "README.md:{}: output shown for a piped command",
                ex.line
            );
            let doc: Result<serde_json::Value, _> = serde_json::from_str(&stdout);
            let jsonl = stdout
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok());
            assert!(
                !stdout.trim().is_empty() && (doc.is_ok() || jsonl),
                "README.md:{} `ntv {}` pipes JSON into jq, printed:\n{stdout}",
                ex.line,
                ex.cmd
            );
            continue;
        }
        if ex.shown.is_empty() {
            continue;
        }
        let want: Vec<String> = ex.shown.iter().map(|l| normalise(l, sb.path())).collect();
        let got: Vec<String> = stdout.lines().map(|l| normalise(l, sb.path())).collect();
        assert!(
            matches(&want, &got),
            "README.md:{} `ntv {}`: README shows\n{}\n---- but ntv printed (masked) ----\n{}",
            ex.line,
            ex.cmd,
            want.join("\n"),
            got.join("\n")
        );
    }
}

#[test]
fn readme_output_comparison_masks_only_what_varies() {
    let dir = Path::new("/tmp/sandbox-x");
    let n = |s: &str| normalise(s, dir);
    assert_eq!(
        n("── 7 tokens · stop: eog · 98.1 tokens/s · seed 7 · branch main   "),
        "── 7 tokens · stop: eog · <n> tokens/s · seed 7 · branch main"
    );
    assert_eq!(n("seed 510107721447498511"), "seed <seed>");
    assert_eq!(n("p = 65.4% (id 3575)"), "p = 65.4% (id 3575)");
    assert_eq!(n("wrote /tmp/sandbox-x/a.json"), "wrote <dir>/a.json");
    let v = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(matches(&v(&["a", "…", "d"]), &v(&["a", "b", "c", "d"])));
    assert!(matches(&v(&["a", "…", "d"]), &v(&["a", "d"])));
    assert!(!matches(
        &v(&["a", "…", "d"]),
        &v(&["a", "b", "c", "d", "e"])
    ));
    assert!(!matches(&v(&["a", "b"]), &v(&["a", "c"])));
    assert!(!matches(&v(&["a"]), &v(&[])));
    assert!(!matches(&v(&["a"]), &v(&["a", "b"])));
}
