//! Regression traces (issue 6): what a model did at every generation step, written to a file so
//! that a later run (`ntv check`) or another model (`ntv diff`) can be compared with it.
//!
//! This module is pure data and maths; it never calls llama.cpp. The commands run the model
//! (through [`crate::driver::Driver`]), turn each step's [`AppendedMeta`] into a [`TraceStep`]
//! with [`TraceStep::from_meta`], and hand the cases to [`check_case`] or [`diff_traces`].
//!
//! - [`Trace`] is the file (`"schema": "ntv.trace/1"`): the build that recorded it and one
//!   [`TraceCase`] per prompt, with every input needed to re-run the case and every step's
//!   selected token, top-k probabilities and entropies.
//! - [`read`] and [`write()`] load and save it (atomic write, precise errors naming the file).
//! - [`check_case`] compares a re-run with a recorded case ([`CheckReport`], `ntv.check/1`).
//! - [`kl_divergence`], [`kl_from_logits`], [`summarize`] and [`diff_traces`] compare two
//!   distributions, in the style of llama.cpp's perplexity KL-divergence mode
//!   ([`DiffSummary`], `ntv.diff/1`).

mod check;
mod diff;
mod error;
#[cfg(test)]
mod tests;

pub use check::{
    CHECK_SCHEMA, CaseCheck, CheckOptions, CheckReport, Divergence, DivergenceKind, check_case,
    check_trace,
};
pub use diff::{
    DIFF_SCHEMA, DiffStep, DiffSummary, KL_Q_FLOOR, diff_traces, kl_divergence, kl_from_logits,
    summarize,
};
pub use error::TraceError;

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constraint::ConstraintSpec;
use crate::record::{AppendedMeta, StopReason};
use crate::sampling::SamplingParams;
use crate::session::Fingerprint;

/// The `schema` of every trace file this ntv writes.
pub const TRACE_SCHEMA: &str = "ntv.trace/1";
/// The prefix shared by every version of the trace format.
const SCHEMA_PREFIX: &str = "ntv.trace/";
/// The newest trace format version this ntv reads.
pub const TRACE_VERSION: u32 = 1;

/// A trace file: the build that recorded it and one case per prompt.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct Trace {
    /// Always `"ntv.trace/1"` (see [`TRACE_SCHEMA`]).
    pub schema: String,
    /// The binary and machine that recorded the trace.
    pub build: BuildInfo,
    /// The recorded cases, in the order of the batch file (or one for a single prompt).
    pub cases: Vec<TraceCase>,
}

impl Trace {
    /// An empty trace recorded by `build`.
    pub fn new(build: BuildInfo) -> Self {
        Self {
            schema: TRACE_SCHEMA.to_string(),
            build,
            cases: Vec::new(),
        }
    }
}

/// What produced a trace: enough to tell whether a re-run is expected to be bit-identical
/// (same build and machine) or only within tolerance (see README, "Determinism").
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// ntv's version (`CARGO_PKG_VERSION`).
    pub ntv_version: String,
    /// The llama.cpp build linked in (see [`crate::engine::llama_cpp_version`]).
    pub llama_cpp: String,
    /// The device the model ran on, e.g. `"CPU"` or `"CUDA0"`.
    pub backend: String,
    /// `ARCH-OS` of the binary, e.g. `"x86_64-linux"`.
    pub target: String,
    /// SIMD features of the CPU that ran the trace, detected at run time (x86_64: `sse4.2`,
    /// `avx`, `avx2`, `fma`, `f16c`, `avx512*`, ...; aarch64: `neon`, `dotprod`, `i8mm`, ...).
    /// llama.cpp picks its kernels by these, so two machines that differ here may round
    /// differently.
    pub cpu_features: Vec<String>,
}

impl BuildInfo {
    /// The running binary and machine; `backend` is the device the model runs on (the
    /// `device` of [`crate::engine::ModelInfo`]).
    pub fn current(backend: impl Into<String>) -> Self {
        Self {
            ntv_version: env!("CARGO_PKG_VERSION").to_string(),
            llama_cpp: crate::engine::llama_cpp_version().to_string(),
            backend: backend.into(),
            target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            cpu_features: cpu_features(),
        }
    }

    /// The fields that differ from `other`, as `"field: self → other"` lines (empty when the
    /// builds are the same), for the "recorded on another build" note of `ntv check`.
    pub fn differences(&self, other: &BuildInfo) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, a: &str, b: &str| {
            if a != b {
                out.push(format!("{name}: {a} → {b}"));
            }
        };
        field("ntv_version", &self.ntv_version, &other.ntv_version);
        field("llama_cpp", &self.llama_cpp, &other.llama_cpp);
        field("backend", &self.backend, &other.backend);
        field("target", &self.target, &other.target);
        field(
            "cpu_features",
            &self.cpu_features.join(","),
            &other.cpu_features.join(","),
        );
        out
    }
}

/// The SIMD features of this CPU that matter to ggml's kernels, detected at run time.
fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut out: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) { out.push($f); })*
            };
        }
        detect!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => {
                $(if std::arch::is_aarch64_feature_detected!($f) { out.push($f); })*
            };
        }
        detect!("neon", "fp16", "dotprod", "i8mm", "sve", "sve2", "bf16");
    }
    out.into_iter().map(str::to_string).collect()
}

/// The model a case ran on.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct TraceModel {
    /// Path of the GGUF file as given when recording.
    pub path: String,
    /// Size and SHA-256 of the first and last MiB ([`crate::session::fingerprint`]).
    pub fingerprint: Fingerprint,
    /// `general.architecture`, e.g. `"llama"`.
    pub architecture: String,
    /// GGUF file type, e.g. `"Q4_1"`.
    pub dtype: String,
    /// Where the file came from on the Hugging Face hub (reference and commit), so that a
    /// check elsewhere can fetch the same file; absent for local files and older traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<crate::session::HubSource>,
}

/// One recorded generation: every input needed to run it again, and what each step produced.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct TraceCase {
    /// The batch line's `id`, echoed.
    #[serde(default)]
    pub id: Option<String>,
    /// The model.
    pub model: TraceModel,
    /// The user prompt.
    pub prompt: String,
    /// The system prompt (empty when none).
    pub system: String,
    /// The conversation (`messages` of the batch line or `--messages`), which replaces
    /// `prompt` and `system` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<crate::chat::ChatMessage>>,
    /// Whether the prompt was wrapped in the model's chat template.
    pub chat_template: bool,
    /// Raw prompts: special-token text parsed into special tokens. Absent in traces of
    /// earlier ntv versions, which tokenised it literally (false).
    #[serde(default)]
    pub parse_special: bool,
    /// The exact prompt text the model saw (template rendered); absent in older traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_text: Option<String>,
    /// The resolved sampling parameters.
    pub params: SamplingParams,
    /// The output constraint, if any.
    #[serde(default)]
    pub constraint: Option<ConstraintSpec>,
    /// The seed of the sampling stream (none for greedy runs).
    #[serde(default)]
    pub seed: Option<u64>,
    /// CPU threads llama.cpp used.
    pub threads: i32,
    /// Context length.
    pub ctx_size: u32,
    /// `-n/--max-tokens`.
    pub max_tokens: u32,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Vec<String>,
    /// How many candidates each step records (at most; see [`TraceStep::top`]).
    pub top_k: usize,
    /// The token ids the model saw before the first step (template applied).
    pub prompt_ids: Vec<i32>,
    /// One record per generated token.
    pub steps: Vec<TraceStep>,
    /// Why the generation stopped (as in `ntv generate`).
    pub stop_reason: StopReason,
}

/// One generation step, reduced to what a comparison needs.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct TraceStep {
    /// The appended token.
    pub selected_id: i32,
    /// p_base of the appended token (the raw model probability).
    pub selected_p_base: f64,
    /// p_final of the appended token.
    pub selected_p_final: f64,
    /// The recorded candidates, by `p_base` descending (ties by lower id). They are taken from
    /// the step's shown candidates, which ntv picks by `p_temp` (after penalties and
    /// temperature), so with penalties the set can differ slightly from the true top-k by
    /// `p_base`; see [`TraceStep::from_meta`].
    pub top: Vec<TraceCandidate>,
    /// Entropy of p_base in bits.
    pub entropy_base: f64,
    /// Entropy of p_final in bits.
    pub entropy_final: f64,
    /// The uniform draw of a sampled step (absent for greedy and forced steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw: Option<f64>,
}

/// A recorded candidate of a step.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq)]
pub struct TraceCandidate {
    /// Token id.
    pub id: i32,
    /// Raw model probability softmax(z).
    pub p_base: f64,
    /// Final probability (0 when cut or invalid).
    pub p_final: f64,
}

impl TraceStep {
    /// The step's record from a step's metadata, keeping every shown candidate.
    ///
    /// `meta.dist.tokens` holds the `display_k` most probable tokens by `p_temp`; the trace
    /// re-sorts exactly those by `p_base` (descending, ties by lower id). Without penalties
    /// (and with any temperature) the `p_temp` and `p_base` orders agree, so this is the true
    /// top-k by `p_base`; with penalties a token just outside the shown set can have a higher
    /// `p_base` than the last recorded one. Record with the same `display_k` as you check with.
    pub fn from_meta(meta: &AppendedMeta) -> Self {
        Self::from_meta_top(meta, usize::MAX)
    }

    /// Like [`TraceStep::from_meta`], keeping at most `k` candidates (the first `k` by p_base).
    pub fn from_meta_top(meta: &AppendedMeta, k: usize) -> Self {
        let mut top: Vec<TraceCandidate> = meta
            .dist
            .tokens
            .iter()
            .map(|c| TraceCandidate {
                id: c.id,
                p_base: c.p_base,
                p_final: c.p_final,
            })
            .collect();
        sort_by_p_base(&mut top);
        top.truncate(k);
        Self {
            selected_id: meta.selected_id,
            selected_p_base: meta.selected.p_base,
            selected_p_final: meta.selected.p_final,
            top,
            entropy_base: meta.dist.entropy_base,
            entropy_final: meta.dist.entropy_final,
            draw: meta.draw,
        }
    }

    /// The recorded candidate with this id.
    pub fn candidate(&self, id: i32) -> Option<&TraceCandidate> {
        self.top.iter().find(|c| c.id == id)
    }

    /// The most probable recorded token by p_base (ties: lower id); the selected token when
    /// nothing was recorded.
    pub fn top1(&self) -> i32 {
        self.top
            .iter()
            .reduce(|best, c| {
                if c.p_base > best.p_base || (c.p_base == best.p_base && c.id < best.id) {
                    c
                } else {
                    best
                }
            })
            .map_or(self.selected_id, |c| c.id)
    }
}

/// Sorts candidates by p_base descending, ties by lower id.
pub(crate) fn sort_by_p_base(top: &mut [TraceCandidate]) {
    top.sort_by(|a, b| b.p_base.total_cmp(&a.p_base).then(a.id.cmp(&b.id)));
}

/// Reads and validates the trace at `path`.
pub fn read(path: &Path) -> Result<Trace, TraceError> {
    let bytes = std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => TraceError::NotFound {
            path: path.to_path_buf(),
        },
        _ => TraceError::Io {
            op: "read",
            path: path.to_path_buf(),
            error,
        },
    })?;
    parse(path, &bytes)
}

/// Parses the bytes of a trace file; `path` is only used in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Trace, TraceError> {
    let path_buf = || path.to_path_buf();
    let value: Value = serde_json::from_slice(bytes).map_err(|e| TraceError::Corrupt {
        path: path_buf(),
        message: e.to_string(),
        truncated: e.is_eof(),
    })?;
    let Some(object) = value.as_object() else {
        return Err(TraceError::Foreign {
            path: path_buf(),
            found: "it holds a JSON value that is not an object".to_string(),
        });
    };
    match object.get("schema") {
        Some(Value::String(s)) if s == TRACE_SCHEMA => {}
        Some(Value::String(s)) => {
            let newer = s
                .strip_prefix(SCHEMA_PREFIX)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&v| v > u64::from(TRACE_VERSION));
            return Err(match newer {
                Some(_) => TraceError::NewerVersion {
                    path: path_buf(),
                    found: s.clone(),
                    supported: TRACE_SCHEMA.to_string(),
                },
                None => TraceError::Foreign {
                    path: path_buf(),
                    found: format!("its \"schema\" is {s:?}, not \"{TRACE_SCHEMA}\""),
                },
            });
        }
        Some(other) => {
            return Err(TraceError::Foreign {
                path: path_buf(),
                found: format!("its \"schema\" is {other}, not \"{TRACE_SCHEMA}\""),
            });
        }
        None => {
            return Err(TraceError::Foreign {
                path: path_buf(),
                found: "it has no \"schema\" field".to_string(),
            });
        }
    }
    let trace: Trace =
        serde_path_to_error::deserialize(value).map_err(|e| TraceError::Invalid {
            path: path_buf(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    validate(&trace).map_err(|(field, message)| TraceError::Invalid {
        path: path_buf(),
        field,
        message,
    })?;
    Ok(trace)
}

/// Checks what serde cannot: probabilities in [0, 1], finite entropies, draws in [0, 1).
/// Returns the offending field's path and the problem.
fn validate(trace: &Trace) -> Result<(), (String, String)> {
    // Rounding can push a sum of probabilities a hair above 1.
    const SLACK: f64 = 1e-9;
    let prob = |field: String, p: f64| {
        if p.is_finite() && (0.0..=1.0 + SLACK).contains(&p) {
            Ok(())
        } else {
            Err((field, format!("{p} is not a probability in [0, 1]")))
        }
    };
    if trace.cases.is_empty() {
        return Err((
            "cases".into(),
            "the trace has no cases: there is nothing to check".into(),
        ));
    }
    for (i, case) in trace.cases.iter().enumerate() {
        let at = format!("cases[{i}]");
        // The run settings hold the rules the command line holds.
        case.params
            .validate()
            .map_err(|e| (format!("{at}.params"), e.to_string()))?;
        if case.threads < 1 {
            return Err((
                format!("{at}.threads"),
                format!("{} is not a thread count (>= 1)", case.threads),
            ));
        }
        if case.ctx_size < 16 {
            return Err((
                format!("{at}.ctx_size"),
                format!("{} is smaller than the least context (16)", case.ctx_size),
            ));
        }
        if case.max_tokens > case.ctx_size {
            return Err((
                format!("{at}.max_tokens"),
                format!(
                    "{} is more than the context ({}) can hold",
                    case.max_tokens, case.ctx_size
                ),
            ));
        }
        if case.steps.len() > case.max_tokens as usize {
            return Err((
                format!("{at}.steps"),
                format!(
                    "{} steps recorded, but max_tokens is {}",
                    case.steps.len(),
                    case.max_tokens
                ),
            ));
        }
        if case.top_k == 0 || case.top_k > MAX_TOP_K {
            return Err((
                format!("{at}.top_k"),
                format!("{} is not in 1..={MAX_TOP_K}", case.top_k),
            ));
        }
        if case.prompt_ids.is_empty() {
            return Err((format!("{at}.prompt_ids"), "it is empty".into()));
        }
        if let Some(k) = case.prompt_ids.iter().position(|&id| id < 0) {
            return Err((
                format!("{at}.prompt_ids[{k}]"),
                format!("{} is not a token id", case.prompt_ids[k]),
            ));
        }
        for (j, step) in case.steps.iter().enumerate() {
            let at = format!("cases[{i}].steps[{j}]");
            prob(format!("{at}.selected_p_base"), step.selected_p_base)?;
            prob(format!("{at}.selected_p_final"), step.selected_p_final)?;
            for (k, c) in step.top.iter().enumerate() {
                prob(format!("{at}.top[{k}].p_base"), c.p_base)?;
                prob(format!("{at}.top[{k}].p_final"), c.p_final)?;
            }
            for (name, h) in [
                ("entropy_base", step.entropy_base),
                ("entropy_final", step.entropy_final),
            ] {
                if !(h.is_finite() && h >= 0.0) {
                    return Err((
                        format!("{at}.{name}"),
                        format!("{h} is not an entropy (finite, >= 0)"),
                    ));
                }
            }
            if let Some(u) = step.draw
                && !(0.0..1.0).contains(&u)
            {
                return Err((format!("{at}.draw"), format!("{u} is not in [0, 1)")));
            }
        }
    }
    Ok(())
}

/// The most candidates a step may record (the CLI's `--display-k` never asks for more).
pub const MAX_TOP_K: usize = 1 << 20;

/// Every token id of `case` lies in a vocabulary of `n_vocab` (checked once the model is
/// known); the offending field's path (under the case) and the problem otherwise.
pub fn ids_in_vocab(case: &TraceCase, n_vocab: usize) -> Result<(), (String, String)> {
    let bad = |id: i32| id < 0 || id as usize >= n_vocab;
    let msg = |id: i32| format!("token id {id} is outside the model's vocabulary (0..{n_vocab})");
    if let Some(k) = case.prompt_ids.iter().position(|&id| bad(id)) {
        return Err((format!("prompt_ids[{k}]"), msg(case.prompt_ids[k])));
    }
    for (j, step) in case.steps.iter().enumerate() {
        if bad(step.selected_id) {
            return Err((format!("steps[{j}].selected_id"), msg(step.selected_id)));
        }
        if let Some(k) = step.top.iter().position(|c| bad(c.id)) {
            return Err((format!("steps[{j}].top[{k}].id"), msg(step.top[k].id)));
        }
    }
    Ok(())
}

/// Writes `trace` to `path` atomically (temporary file in the same folder, fsync, rename) as
/// pretty JSON with a trailing newline. The text is parsed back first, so ntv never writes a
/// trace it could not read (a NaN probability, for one, is refused).
pub fn write(path: &Path, trace: &Trace) -> Result<(), TraceError> {
    let mut text = serde_json::to_string_pretty(trace).map_err(|e| TraceError::Unwritable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    parse(path, text.as_bytes()).map_err(|e| TraceError::Unwritable {
        path: path.to_path_buf(),
        message: format!("it would not read back: {e}"),
    })?;

    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| TraceError::Io {
        op: e.op,
        path: e.path,
        error: e.error,
    })
}
