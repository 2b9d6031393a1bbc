//! Golden tables: what people see, pinned with insta snapshots (tests/integration/snapshots/).
//! The model, its build and one thread make every number deterministic; paths and times are
//! masked. A change to a table shows up as a snapshot diff to review, not as a silent drift.

use crate::util::{PROMPT, Sandbox, m};

/// Run a command that prints a table; mask what differs between machines and runs.
fn table(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.run(args);
    assert!(
        out.status.success(),
        "ntv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let text = text.replace(m(), "[MODEL]");
    let text = text.replace(&sb.path().display().to_string(), "[DIR]");
    let secs = regex::Regex::new(r"\d+(\.\d+)? ?(ms|s|tokens/s)\b").unwrap();
    secs.replace_all(&text, "[TIME]").into_owned()
}

#[test]
fn tables_of_a_session() {
    let sb = Sandbox::new();
    let base = ["--format", "table", "--color", "never"];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&base);
        table(&sb, &all)
    };
    insta::assert_snapshot!(
        "preview",
        run(&["preview", "-m", m(), "-p", PROMPT, "--display-k", "5"])
    );
    insta::assert_snapshot!(
        "step",
        run(&[
            "step",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--greedy",
            "-n",
            "3",
            "--display-k",
            "4",
            "--seed",
            "7",
        ])
    );
    insta::assert_snapshot!("generate", run(&["generate", "--greedy", "-n", "4"]));
    insta::assert_snapshot!("rewind", run(&["step", "--at", "1", "--token", "504"]));
    insta::assert_snapshot!("branch_list", run(&["branch", "list"]));
    insta::assert_snapshot!("branch_show", run(&["branch", "show", "main"]));
    let alt = sb.session_json()["active_branch"]
        .as_str()
        .unwrap()
        .to_string();
    insta::assert_snapshot!("branch_diff", run(&["branch", "diff", "main", &alt]));
    insta::assert_snapshot!("undo", run(&["step", "--undo", "2"]));
    insta::assert_snapshot!("switch", run(&["branch", "switch", "main"]));
    insta::assert_snapshot!(
        "attribute",
        run(&["attribute", "--index", "0", "--top", "3"])
    );
}

#[test]
fn a_coloured_preview() {
    let sb = Sandbox::new();
    insta::assert_snapshot!(
        "preview_colour",
        table(
            &sb,
            &[
                "--no-session",
                "preview",
                "-m",
                m(),
                "-p",
                PROMPT,
                "--display-k",
                "3",
                "--top-k",
                "2",
                "--format",
                "table",
                "--color",
                "always",
            ]
        )
    );
}
