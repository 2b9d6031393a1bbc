//! The prefix cache through the CLI: cached and uncached steps record the same numbers, and a
//! corrupt, truncated or missing cache is ignored, never trusted.

use serde_json::Value;

use crate::util::{PROMPT, Sandbox, m};

fn cache_files(sb: &Sandbox) -> Vec<std::path::PathBuf> {
    let dir = sb.path().join("ntv-session.json.kvcache");
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ntvkv"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn branch(sb: &Sandbox) -> Value {
    sb.session_json()["branches"][0].clone()
}

/// Take `n` steps; returns each step's `cache` report and its context length before the step.
fn steps(sb: &Sandbox, n: usize, extra: &[&str]) -> Vec<(Value, u64)> {
    (0..n)
        .map(|_| {
            let mut args = vec!["step", "--temp", "1", "--seed", "3", "--json"];
            args.extend_from_slice(extra);
            let doc = sb.json(&args);
            (
                doc["cache"].clone(),
                doc["context_token_count"].as_u64().unwrap() - 1,
            )
        })
        .collect()
}

/// Each step restored all but the last context token from the cache and decoded just that one.
#[track_caller]
fn all_hits(reports: &[(Value, u64)]) {
    for (cache, before) in reports {
        assert_eq!(cache["enabled"], true, "{cache}");
        assert_eq!(
            cache["restored_tokens"].as_u64(),
            Some(before - 1),
            "a hit: {cache}"
        );
        assert_eq!(
            cache["decoded_tokens"], 1,
            "only the new token is decoded: {cache}"
        );
    }
}

/// Each step decoded its whole context: nothing came from the cache.
#[track_caller]
fn all_misses(reports: &[(Value, u64)]) {
    for (cache, before) in reports {
        assert_eq!(cache["restored_tokens"], 0, "a miss: {cache}");
        assert_eq!(cache["decoded_tokens"].as_u64(), Some(*before), "{cache}");
    }
}

#[test]
fn cached_and_uncached_steps_record_identical_numbers() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    for sb in [&a, &b] {
        sb.json(&[
            "step",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--greedy",
            "--seed",
            "1",
            "--json",
        ]);
    }
    all_hits(&steps(&a, 6, &[]));
    let uncached = steps(&b, 6, &["--no-cache"]);
    all_misses(&uncached);
    assert!(uncached.iter().all(|(c, _)| c["enabled"] == false));
    assert!(
        !cache_files(&a).is_empty(),
        "the cached run keeps a prefix cache"
    );
    assert_eq!(branch(&a)["completion_ids"], branch(&b)["completion_ids"]);
    assert_eq!(
        branch(&a)["appended_meta"],
        branch(&b)["appended_meta"],
        "cached steps must record exactly the numbers of uncached ones"
    );
    // generate and preview use the cache too, with the same results.
    let ga = a.jsonl(&[
        "generate", "-n", "4", "--seed", "5", "--temp", "1", "--format", "jsonl",
    ]);
    let gb = b.jsonl(&[
        "generate",
        "-n",
        "4",
        "--seed",
        "5",
        "--temp",
        "1",
        "--format",
        "jsonl",
        "--no-cache",
    ]);
    assert_eq!(
        ga.last().unwrap()["completion_ids"],
        gb.last().unwrap()["completion_ids"]
    );
    assert!(
        ga.last().unwrap()["cache"]["restored_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let pa = a.json(&["preview", "--json"]);
    let pb = b.json(&["preview", "--json", "--no-cache"]);
    assert_eq!(pa["dist"], pb["dist"]);
    // generate saved its whole context but the last token: preview decodes only that one.
    assert_eq!(pa["cache"]["decoded_tokens"], 1, "{}", pa["cache"]);
    assert_eq!(
        pa["cache"]["restored_tokens"].as_u64(),
        Some(pa["context_token_count"].as_u64().unwrap() - 1)
    );
}

#[test]
fn corrupt_truncated_or_missing_cache_entries_are_ignored() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    for sb in [&a, &b] {
        sb.json(&[
            "step",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--greedy",
            "--seed",
            "1",
            "--json",
        ]);
        steps(sb, 2, &[]);
    }
    all_hits(&steps(&a, 1, &[]));
    // Flip bytes in the middle of every entry of a.
    for f in cache_files(&a) {
        let mut bytes = std::fs::read(&f).unwrap();
        let mid = bytes.len() / 2;
        for x in &mut bytes[mid..mid + 64] {
            *x ^= 0xA5;
        }
        std::fs::write(&f, bytes).unwrap();
    }
    all_misses(&steps(&a, 1, &[]));
    steps(&b, 2, &["--no-cache"]);
    assert_eq!(branch(&a)["appended_meta"], branch(&b)["appended_meta"]);
    // The corrupt entry was replaced by a good one: the next step hits again.
    all_hits(&steps(&a, 1, &[]));
    steps(&b, 1, &["--no-cache"]);

    // Truncate every entry.
    for f in cache_files(&a) {
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
    }
    all_misses(&steps(&a, 1, &[]));
    steps(&b, 1, &["--no-cache"]);
    assert_eq!(branch(&a)["appended_meta"], branch(&b)["appended_meta"]);

    // Deleting the cache at any time is safe.
    std::fs::remove_dir_all(a.path().join("ntv-session.json.kvcache")).unwrap();
    all_misses(&steps(&a, 1, &[]));
    steps(&b, 1, &["--no-cache"]);
    assert_eq!(branch(&a)["appended_meta"], branch(&b)["appended_meta"]);

    // A rewind onto another branch uses the shared prefix and still agrees.
    for sb in [&a, &b] {
        sb.json(&["step", "--at", "2", "--token", "504", "--json"]);
    }
    steps(&a, 2, &[]);
    steps(&b, 2, &["--no-cache"]);
    let (sa, sb_) = (a.session_json(), b.session_json());
    assert_eq!(sa["branches"], sb_["branches"]);
}
