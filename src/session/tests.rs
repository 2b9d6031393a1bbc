use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::file::parse;
use super::*;
use crate::record::{Candidate, Dist, SelectedBy};

fn candidate(id: i32) -> Candidate {
    Candidate {
        id,
        text: format!("t{id}"),
        bytes: format!("t{id}").into_bytes(),
        display: format!("t{id}"),
        special: false,
        p_base: 0.1,
        p_temp: 0.2,
        p_final: 0.3,
        logprob_base: 0.1f64.ln(),
        kept: true,
        valid: true,
        cut_by: None,
        rank: 1,
        logit_adjust: Vec::new(),
    }
}

pub(crate) fn meta(id: i32, rng_after: Option<RngState>) -> AppendedMeta {
    AppendedMeta {
        dist: Dist {
            top_k: 1,
            tokens: vec![candidate(id)],
            other_p_base: 0.9,
            other_p_final: 0.7,
            kept_token_count: 3,
            valid_token_count: None,
            constraint_active: false,
            constraint_type: None,
            entropy_base: 1.5,
            entropy_final: 0.75,
            params: SamplingParams::default(),
            chain: None,
        },
        selected_id: id,
        selected: candidate(id),
        selected_by: SelectedBy::Sampled,
        forced: false,
        forced_by: None,
        draw: Some(0.123_456_789_012_345_6),
        rng_after,
        mirostat_mu_after: None,
    }
}

fn rng(seed: u64, pos: u64) -> Option<RngState> {
    Some(RngState { seed, pos })
}

/// A session whose `main` has 4 tokens (seed 7; steps 0, 1 and 3 recorded rng_after) and a
/// second branch `alt`.
fn sample() -> Session {
    let mut s = Session::new();
    s.prompt = Some("Hello".into());
    s.model = Some(ModelRef {
        path: "/models/m.gguf".into(),
        fingerprint: Fingerprint {
            size: 42,
            sha256_head_tail: "ab".repeat(32),
        },
        facts: None,
        hub: None,
    });
    s.stop = vec!["\n\n".into()];
    s.constraint = Some(ConstraintSpec {
        kind: crate::constraint::ConstraintKind::Regex,
        source: "[a-z]+".into(),
    });
    let main = s.active_mut();
    main.seed = Some(7);
    main.rng_pos = 3;
    main.stop_reason = Some(crate::record::StopReason::MaxTokens);
    for (id, after) in [
        (10, rng(7, 1)),
        (11, rng(7, 2)),
        (12, None),
        (13, rng(7, 3)),
    ] {
        main.completion_ids.push(id);
        main.appended_meta.push(meta(id, after));
    }
    s.new_branch("alt", None, Some(1)).unwrap();
    s
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn session_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("ntv-session.json")
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

// ---------------------------------------------------------------- file I/O

#[test]
fn round_trip_save_load() {
    let dir = tmp();
    let path = session_path(&dir);
    let s = sample();
    save(&path, &s).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n  \"format\": \"ntv-session\",\n  \"version\": 2,\n"));
    assert!(text.ends_with("}\n"));
    let loaded = load(&path).unwrap().unwrap();
    assert_eq!(loaded, s);
    // Saving what was loaded reproduces the file byte for byte.
    save(&path, &loaded).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn the_hub_source_of_a_model_round_trips_and_older_files_have_none() {
    let dir = tmp();
    let path = session_path(&dir);
    let mut s = sample();
    // A file of an earlier ntv: no `hub` field in the model.
    save(&path, &s).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"hub\""));
    assert_eq!(load(&path).unwrap().unwrap().model.unwrap().hub, None);
    let source = crate::session::HubSource {
        reference: "hf:o/r:Q4_1".into(),
        repo: "o/r".into(),
        file: "m-Q4_1.gguf".into(),
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
    };
    s.model.as_mut().unwrap().hub = Some(source.clone());
    save(&path, &s).unwrap();
    assert_eq!(
        load(&path).unwrap().unwrap().model.unwrap().hub,
        Some(source)
    );
}

#[test]
fn load_missing_is_none() {
    let dir = tmp();
    assert!(load(&session_path(&dir)).unwrap().is_none());
}

#[test]
fn corrupt_file_names_file_line_and_column() {
    let dir = tmp();
    let path = session_path(&dir);
    write(&path, "{\n  \"format\": \"ntv-session\",\n  oops\n}\n");
    let err = load(&path).unwrap_err();
    match &err {
        SessionError::Corrupt {
            line,
            column,
            truncated,
            ..
        } => {
            assert_eq!(*line, 3);
            assert!(*column > 0);
            assert!(!truncated);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("ntv-session.json"), "{msg}");
    assert!(msg.contains("corrupt") && msg.contains("line 3"), "{msg}");
    assert!(err.is_input());
    assert!(err.hint().unwrap().contains("never overwrites"));
}

#[test]
fn truncated_and_empty_files() {
    let dir = tmp();
    let path = session_path(&dir);
    save(&path, &sample()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    write(&path, &text[..text.len() / 2]);
    let err = load(&path).unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Corrupt {
                truncated: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    write(&path, "");
    let err = load(&path).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Corrupt {
            truncated: true,
            ..
        }
    ));
}

#[test]
fn foreign_files() {
    let dir = tmp();
    let path = session_path(&dir);
    for (text, needle) in [
        ("{\"hello\": 1}", "no \"format\""),
        ("[1, 2]", "array"),
        ("{\"format\": \"other\", \"version\": 1}", "\"other\""),
        ("{\"format\": 3}", "3"),
    ] {
        write(&path, text);
        let err = load(&path).unwrap_err();
        assert!(matches!(err, SessionError::Foreign { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("not an ntv session file"), "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(msg.contains("ntv-session.json"), "{msg}");
        assert!(err.is_input());
    }
}

fn with_field(s: &Session, field: &str, value: serde_json::Value) -> String {
    let mut v = serde_json::to_value(s).unwrap();
    v[field] = value;
    serde_json::to_string_pretty(&v).unwrap()
}

#[test]
fn newer_version_is_refused_with_versions_named() {
    let dir = tmp();
    let path = session_path(&dir);
    write(&path, &with_field(&sample(), "version", 3.into()));
    let err = load(&path).unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::NewerVersion {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("version 3") && msg.contains("up to 2"),
        "{msg}"
    );
    assert!(err.hint().unwrap().contains("upgrade ntv"));
    assert!(err.is_input());
}

#[test]
fn version_zero_is_unsupported_old() {
    let dir = tmp();
    let path = session_path(&dir);
    write(&path, &with_field(&sample(), "version", 0.into()));
    let err = load(&path).unwrap_err();
    assert!(
        matches!(err, SessionError::OlderVersion { found: 0, .. }),
        "{err:?}"
    );
    assert!(err.is_input());
}

#[test]
fn bad_version_field() {
    let dir = tmp();
    let path = session_path(&dir);
    write(&path, &with_field(&sample(), "version", "one".into()));
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, SessionError::Invalid { field, .. } if field == "version"),
        "{err:?}"
    );
}

#[test]
fn typed_errors_name_the_field_path() {
    let dir = tmp();
    let path = session_path(&dir);
    let mut v = serde_json::to_value(sample()).unwrap();
    v["branches"][1]["rng_pos"] = "x".into();
    write(&path, &v.to_string());
    let err = load(&path).unwrap_err();
    match &err {
        SessionError::Invalid { field, .. } => assert_eq!(field, "branches[1].rng_pos"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("branches[1].rng_pos"));
    assert!(err.is_input());
}

#[test]
fn inconsistent_files() {
    let dir = tmp();
    let path = session_path(&dir);
    write(
        &path,
        &with_field(&sample(), "active_branch", "nope".into()),
    );
    let err = load(&path).unwrap_err();
    assert!(matches!(err, SessionError::Inconsistent { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"));

    let mut s = sample();
    s.branches[0].appended_meta.pop();
    write(&path, &serde_json::to_string(&s).unwrap());
    let err = load(&path).unwrap_err();
    assert!(err.to_string().contains("appended_meta"), "{err}");

    let mut s = sample();
    s.branches[1].name = "main".into();
    write(&path, &serde_json::to_string(&s).unwrap());
    let err = load(&path).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn hostile_sessions_are_refused_by_the_same_rules_as_the_command_line() {
    let dir = tmp();
    let path = session_path(&dir);
    let refused = |edit: &dyn Fn(&mut Session), needle: &str| {
        let mut s = sample();
        edit(&mut s);
        write(&path, &serde_json::to_string(&s).unwrap());
        let err = load(&path).unwrap_err();
        assert!(err.is_input(), "{err}");
        assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
    };
    // A branch name that would reach the terminal raw.
    refused(
        &|s| s.branches[1].name = "alt\u{1b}[2J".into(),
        "names are at most",
    );
    refused(
        &|s| s.branches[1].name = "x".repeat(500),
        "names are at most",
    );
    refused(
        &|s| s.branches[1].parent = Some("gone".into()),
        "not among its branches",
    );
    refused(
        &|s| {
            s.branches[0].parent = Some("alt".into());
            s.branches[1].parent = Some("main".into());
        },
        "cycle",
    );
    refused(&|s| s.branches[0].parent = Some("main".into()), "cycle");
    refused(
        &|s| s.branches[1].fork_position = Some(1 << 62),
        "beyond any context",
    );
    refused(&|s| s.params.temperature = -1.0, "temperature");
    refused(&|s| s.display_k = 0, "display_k");
    // Automatic fork names (`main~1`) are fine.
    let mut s = sample();
    s.branches[1].name = "main~1".into();
    write(&path, &serde_json::to_string(&s).unwrap());
    load(&path).unwrap();
}

#[test]
fn deleting_a_parent_reparents_its_children() {
    let mut s = sample(); // main (4 tokens), alt forked from main at 1
    s.switch("alt").unwrap();
    s.fork_at(1).unwrap(); // alt~1, parent alt, fork 1
    s.switch("main").unwrap();
    s.delete("alt", false).unwrap();
    let child = s.branches.iter().find(|b| b.name == "alt~1").unwrap();
    assert_eq!(child.parent.as_deref(), Some("main"));
    assert_eq!(child.fork_position, Some(1));
    s.check().unwrap();
}

#[test]
fn failed_load_leaves_file_byte_for_byte() {
    let dir = tmp();
    let path = session_path(&dir);
    let bytes = b"{\"format\": \"ntv-session\", \"version\": 1, \"branches\": [".to_vec();
    std::fs::write(&path, &bytes).unwrap();
    assert!(load(&path).is_err());
    assert!(load(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(dir_entries(dir.path()), ["ntv-session.json"]);
}

#[test]
fn save_refuses_a_session_that_would_not_read_back() {
    let dir = tmp();
    let path = session_path(&dir);
    let good = sample();
    save(&path, &good).unwrap();
    let before = std::fs::read(&path).unwrap();
    // serde_json writes non-finite floats as null, which does not read back as f64.
    let mut bad = good.clone();
    bad.active_mut().appended_meta[0].dist.tokens[0].logprob_base = f64::NEG_INFINITY;
    let err = save(&path, &bad).unwrap_err();
    assert!(matches!(err, SessionError::Unwritable { .. }), "{err:?}");
    assert!(!err.is_input());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), ["ntv-session.json"]);
}

#[test]
fn atomic_save_leaves_no_temp_files() {
    let dir = tmp();
    let path = session_path(&dir);
    let mut s = sample();
    for i in 0..5 {
        s.display_k = i + 1;
        save(&path, &s).unwrap();
    }
    assert_eq!(dir_entries(dir.path()), ["ntv-session.json"]);
    assert_eq!(load(&path).unwrap().unwrap().display_k, 5);
}

#[test]
fn save_into_missing_folder_is_a_runtime_error() {
    let dir = tmp();
    let path = dir.path().join("missing").join("s.json");
    let err = save(&path, &sample()).unwrap_err();
    assert!(matches!(err, SessionError::Io { .. }), "{err:?}");
    assert!(!err.is_input());
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn lock_path_appends_suffix() {
    assert_eq!(lock_path(Path::new("s.json")), Path::new("s.json.lock"));
}

#[test]
fn lock_excludes_a_second_holder_until_dropped() {
    let dir = tmp();
    let path = session_path(&dir);
    let first = SessionLock::acquire(&path).unwrap();
    assert_eq!(first.lock_path(), lock_path(&path));
    let err = SessionLock::acquire_within(&path, Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, SessionError::Locked { .. }), "{err:?}");
    assert!(!err.is_input());
    let msg = err.to_string();
    assert!(
        msg.contains("another ntv process is using session"),
        "{msg}"
    );
    assert!(msg.contains("ntv-session.json"), "{msg}");
    drop(first);
    let second = SessionLock::acquire_within(&path, Duration::from_millis(200)).unwrap();
    drop(second);
    // The lock file stays; the session file is never created by locking.
    assert_eq!(dir_entries(dir.path()), ["ntv-session.json.lock"]);
}

#[test]
fn lock_waits_for_a_release() {
    let dir = tmp();
    let path = session_path(&dir);
    let first = SessionLock::acquire(&path).unwrap();
    // The holder sets `released` while it still holds the lock, then lets go. A waiter that
    // gets the lock must see the flag: it can only have the lock after the release. (The
    // sleep gives the waiter time to start waiting; no result depends on how long it is.)
    let released = Arc::new(AtomicBool::new(false));
    let holder = {
        let released = Arc::clone(&released);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            released.store(true, Ordering::SeqCst);
            drop(first);
        })
    };
    let second = SessionLock::acquire_within(&path, Duration::from_secs(60)).unwrap();
    assert!(
        released.load(Ordering::SeqCst),
        "acquire_within returned the lock while another holder still had it"
    );
    drop(second);
    holder.join().unwrap();
}

// ---------------------------------------------------------------- fingerprint

#[test]
fn fingerprint_small_file_hashes_everything() {
    let dir = tmp();
    let path = dir.path().join("m.gguf");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let fp = fingerprint(&path).unwrap();
    assert_eq!(fp.size, bytes.len() as u64);
    assert_eq!(fp.sha256_head_tail, format!("{:x}", Sha256::digest(&bytes)));
}

#[test]
fn fingerprint_large_file_hashes_head_and_tail() {
    let dir = tmp();
    let path = dir.path().join("m.gguf");
    let mib = 1 << 20;
    let bytes: Vec<u8> = (0..(5 * mib / 2) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let fp = fingerprint(&path).unwrap();
    let mut h = Sha256::new();
    h.update(&bytes[..mib]);
    h.update(&bytes[bytes.len() - mib..]);
    assert_eq!(fp.size, bytes.len() as u64);
    assert_eq!(fp.sha256_head_tail, format!("{:x}", h.finalize()));
    assert_eq!(fp.sha256_head_tail.len(), 64);
}

// ---------------------------------------------------------------- branch operations

#[test]
fn new_session_defaults() {
    let s = Session::new();
    assert_eq!(s.format, FORMAT);
    assert_eq!(s.version, VERSION);
    assert!(s.chat_template);
    assert_eq!(s.display_k, 10);
    assert_eq!(s.active_branch, "main");
    assert_eq!(s.branch_names(), ["main"]);
    assert!(s.active().is_empty());
    assert!(chrono::DateTime::parse_from_rfc3339(&s.created).is_ok());
    assert!(s.created.ends_with('Z'));
    assert!(s.check().is_ok());
}

#[test]
fn rng_state_at_cases() {
    let s = sample();
    let at = |i| s.rng_state_at("main", i);
    assert_eq!(at(0), rng(7, 0)); // no snapshot before: (seed, 0)
    assert_eq!(at(1), rng(7, 1));
    assert_eq!(at(2), rng(7, 2));
    assert_eq!(at(3), rng(7, 2)); // step 2 has no rng_after: the one before
    assert_eq!(at(4), rng(7, 3)); // end: the branch's current state
    assert_eq!(at(99), rng(7, 3));
    assert_eq!(s.rng_state_at("nope", 0), None);

    let mut s2 = Session::new();
    s2.active_mut().completion_ids.push(1);
    s2.active_mut().appended_meta.push(meta(1, None));
    assert_eq!(s2.rng_state_at("main", 0), None);
    assert_eq!(s2.rng_state_at("main", 1), None);

    // After a reseed at the end, the end state is the branch's, not the last snapshot's.
    let mut s3 = sample();
    s3.active_mut().set_rng_state(rng(9, 0));
    assert_eq!(s3.rng_state_at("main", 4), rng(9, 0));
    assert_eq!(s3.rng_state_at("main", 2), rng(7, 2));
    assert_eq!(s3.rng_state_at("main", 0), rng(9, 0));
}

#[test]
fn new_branch_copies_prefix_and_rng_state() {
    let mut s = sample();
    let alt = s.branch("alt").unwrap();
    assert_eq!(alt.parent.as_deref(), Some("main"));
    assert_eq!(alt.fork_position, Some(1));
    assert_eq!(alt.completion_ids, [10]);
    assert_eq!(alt.appended_meta.len(), 1);
    assert_eq!(alt.rng_state(), rng(7, 1));
    assert_eq!(alt.stop_reason, None);

    let b = s.new_branch("b.2_x-y", Some("main"), None).unwrap().clone();
    assert_eq!(b.completion_ids, [10, 11, 12, 13]);
    assert_eq!(b.fork_position, Some(4));
    assert_eq!(b.rng_state(), rng(7, 3));
    assert_eq!(s.active_branch, "main", "new_branch does not switch");

    let c = s.new_branch("c", Some("alt"), Some(0)).unwrap();
    assert!(c.is_empty());
    assert_eq!(c.parent.as_deref(), Some("alt"));
    assert_eq!(c.rng_state(), rng(7, 0));
    assert!(s.check().is_ok());
}

/// Runs `op` on a copy of `s`, expects an error and that the copy is unchanged.
fn fails_unchanged<T: std::fmt::Debug>(
    s: &Session,
    op: impl FnOnce(&mut Session) -> Result<T, SessionError>,
) -> SessionError {
    let mut copy = s.clone();
    let err = op(&mut copy).unwrap_err();
    assert_eq!(&copy, s, "session changed by a failed operation: {err}");
    assert!(err.is_input(), "{err:?}");
    assert!(err.hint().is_some());
    err
}

#[test]
fn failing_operations_leave_the_session_unchanged() {
    let s = sample();
    let e = fails_unchanged(&s, |s| s.new_branch("", None, None).map(|_| ()));
    assert!(matches!(e, SessionError::BadBranchName { .. }));
    let e = fails_unchanged(&s, |s| s.new_branch("a b", None, None).map(|_| ()));
    assert!(e.to_string().contains("' '"), "{e}");
    fails_unchanged(&s, |s| s.new_branch("x~1", None, None).map(|_| ()));
    fails_unchanged(&s, |s| s.new_branch("x/y", None, None).map(|_| ()));
    let e = fails_unchanged(&s, |s| s.new_branch("alt", None, None).map(|_| ()));
    assert!(matches!(e, SessionError::BranchExists { .. }));
    let e = fails_unchanged(&s, |s| s.new_branch("x", Some("nope"), None).map(|_| ()));
    assert_eq!(e.to_string(), "unknown branch 'nope' (branches: main, alt)");
    let e = fails_unchanged(&s, |s| s.new_branch("x", None, Some(5)).map(|_| ()));
    assert_eq!(
        e.to_string(),
        "position 5 is out of range for branch 'main' (valid: 0 to 4)"
    );
    fails_unchanged(&s, |s| s.new_branch("x", Some("alt"), Some(2)).map(|_| ()));
    fails_unchanged(&s, |s| s.branch("nope").map(|_| ()));
    fails_unchanged(&s, |s| s.branch_mut("nope").map(|_| ()));
    fails_unchanged(&s, |s| s.switch("nope"));
    fails_unchanged(&s, |s| s.delete("nope", true));
    let e = fails_unchanged(&s, |s| s.delete("main", false));
    assert!(matches!(e, SessionError::DeleteActive { .. }));
    assert!(e.hint().unwrap().contains("--force"));
    let e = fails_unchanged(&s, |s| s.undo(5));
    assert_eq!(
        e.to_string(),
        "cannot undo 5 tokens: branch 'main' has 4 completion tokens"
    );
    fails_unchanged(&s, |s| s.truncate_active(5));
    fails_unchanged(&s, |s| s.fork_at(5));

    let single = Session::new();
    let e = fails_unchanged(&single, |s| s.delete("main", true));
    assert!(matches!(e, SessionError::LastBranch { .. }));
}

#[test]
fn switch_and_delete() {
    let mut s = sample();
    s.switch("alt").unwrap();
    assert_eq!(s.active().name, "alt");
    s.delete("main", false).unwrap();
    assert_eq!(s.branch_names(), ["alt"]);
    assert_eq!(s.active_branch, "alt");

    // Forced delete of the active branch falls back to main ...
    let mut s = sample();
    s.new_branch("b", None, None).unwrap();
    s.switch("b").unwrap();
    s.delete("b", true).unwrap();
    assert_eq!(s.active_branch, "main");
    // ... or to the first remaining branch.
    s.new_branch("c", None, None).unwrap();
    s.delete("main", true).unwrap();
    assert_eq!(s.active_branch, "alt");
    assert_eq!(s.branch_names(), ["alt", "c"]);
    assert!(s.check().is_ok());
}

#[test]
fn undo_rewinds_tokens_and_rng() {
    let mut s = sample();
    s.undo(0).unwrap();
    assert_eq!(s.active().len(), 4);
    assert_eq!(s.active().rng_state(), rng(7, 3));
    assert_eq!(s.active().stop_reason, None, "any edit clears stop_reason");

    s.undo(1).unwrap();
    assert_eq!(s.active().completion_ids, [10, 11, 12]);
    assert_eq!(s.active().appended_meta.len(), 3);
    assert_eq!(s.active().rng_state(), rng(7, 2));
    s.undo(3).unwrap();
    assert!(s.active().is_empty());
    assert_eq!(s.active().rng_state(), rng(7, 0));

    // Without a seed there is nothing to rewind.
    let mut s = Session::new();
    s.active_mut().completion_ids.push(1);
    s.active_mut().appended_meta.push(meta(1, None));
    s.undo(1).unwrap();
    assert_eq!(s.active().rng_state(), None);

    let mut s = sample();
    s.truncate_active(2).unwrap();
    assert_eq!(s.active().completion_ids, [10, 11]);
    assert_eq!(s.active().rng_state(), rng(7, 2));
}

#[test]
fn fork_at_names_and_switches() {
    let mut s = sample();
    assert_eq!(s.fork_at(2).unwrap(), "main~1");
    assert_eq!(s.active_branch, "main~1");
    let f = s.active();
    assert_eq!(f.completion_ids, [10, 11]);
    assert_eq!(f.parent.as_deref(), Some("main"));
    assert_eq!(f.fork_position, Some(2));
    assert_eq!(f.rng_state(), rng(7, 2));
    // Forking a fork continues the numbering of its stem.
    assert_eq!(s.fork_at(1).unwrap(), "main~2");
    assert_eq!(
        s.branch("main~2").unwrap().parent.as_deref(),
        Some("main~1")
    );
    s.switch("main").unwrap();
    assert_eq!(s.fork_at(4).unwrap(), "main~3");
    // Gaps are reused.
    s.delete("main~1", false).unwrap();
    s.switch("alt").unwrap();
    assert_eq!(s.fork_at(0).unwrap(), "alt~1");
    s.switch("main").unwrap();
    assert_eq!(s.fork_at(0).unwrap(), "main~1");
    assert_eq!(s.fork_name("x~y"), "x~y~1");
    assert_eq!(s.fork_name("~3"), "~3~1");
    // Switching to and branching from automatic names works.
    s.new_branch("named", Some("main~2"), None).unwrap();
    assert!(s.check().is_ok());
}

#[test]
fn touch_updates_timestamp() {
    let mut s = Session::new();
    s.updated = "2000-01-01T00:00:00Z".into();
    s.touch();
    assert_ne!(s.updated, "2000-01-01T00:00:00Z");
    assert!(chrono::DateTime::parse_from_rfc3339(&s.updated).is_ok());
}

#[test]
fn schema_is_generated() {
    let schema = schemars::schema_for!(Session);
    let text = serde_json::to_string(&schema).unwrap();
    assert!(text.contains("active_branch") && text.contains("sha256_head_tail"));
}

#[test]
fn parse_accepts_what_save_writes() {
    // A new session and a full one (branches, constraint, draws), each through `save`: the
    // bytes on disk parse back to the very session that was saved.
    let dir = tmp();
    let path = session_path(&dir);
    for s in [Session::new(), sample()] {
        save(&path, &s).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let parsed = parse(&path, &bytes).unwrap();
        assert_eq!(parsed, s);
    }
}

proptest::proptest! {
    /// Mutated session files load or are refused with a typed error; one that loads holds the
    /// session invariants and survives a save and a load.
    #[test]
    fn fuzz_any_mutated_session_loads_consistently_or_is_refused(
        bytes in crate::fuzz::mutated(serde_json::to_value(sample()).unwrap())
    ) {
        let p = Path::new("fuzz.json");
        if let Ok(s) = super::file::parse(p, &bytes) {
            proptest::prop_assert!(s.check().is_ok());
            let again = serde_json::to_vec(&s).unwrap();
            proptest::prop_assert!(super::file::parse(p, &again).is_ok());
        }
    }
}

#[test]
fn a_version_1_file_migrates_to_version_2() {
    // A v1 file as ntv wrote it: no parse_special, no bytes on recorded tokens.
    let mut v1 = serde_json::to_value(sample()).unwrap();
    let o = v1.as_object_mut().unwrap();
    o.insert("version".into(), 1.into());
    o.insert("chat_template".into(), false.into());
    o.remove("parse_special");
    o.remove("prompt_text");
    o.remove("messages");
    for b in o["branches"].as_array_mut().unwrap() {
        for m in b["appended_meta"].as_array_mut().unwrap() {
            m["selected"].as_object_mut().unwrap().remove("bytes");
            for t in m["dist"]["tokens"].as_array_mut().unwrap() {
                t.as_object_mut().unwrap().remove("bytes");
            }
        }
    }
    let dir = tmp();
    let path = session_path(&dir);
    write(&path, &serde_json::to_string(&v1).unwrap());
    let s = load(&path).unwrap().unwrap();
    assert_eq!(s.version, 2);
    // Raw prompts of v1 were tokenised with special-token text literal: kept so.
    assert!(!s.chat_template && !s.parse_special);
    let meta = &s.branches[0].appended_meta[0];
    assert_eq!(meta.selected.bytes, meta.selected.text.as_bytes());
    assert_eq!(
        meta.dist.tokens[0].bytes,
        meta.dist.tokens[0].text.as_bytes()
    );
    // A v1 file with a chat template parses special text in raw mode from now on.
    let o = v1.as_object_mut().unwrap();
    o.insert("chat_template".into(), true.into());
    write(&path, &serde_json::to_string(&v1).unwrap());
    assert!(load(&path).unwrap().unwrap().parse_special);
}
