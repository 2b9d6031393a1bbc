//! Cases for traces and batches: one generation from a prompt with fixed inputs, run with the
//! model loaded once, turned into a [`TraceCase`] (`generate --record/--batch`, `check`).

use std::path::Path;

use serde::Deserialize;

use crate::app::input_err;
use crate::driver::Driver;
use crate::engine::{ContextOptions, Model};
use crate::record::StopReason;
use crate::sampling::{RngState, SamplingParams, StreamRng};
use crate::session::ConstraintSpec;
use crate::trace::{TraceCase, TraceModel, TraceStep};

use super::stepping::build_constraint;
use super::{PromptSpec, genloop, prompt_ids};

/// Everything that decides a generation.
#[derive(Debug, Clone)]
pub struct CaseInput {
    pub id: Option<String>,
    pub prompt: PromptSpec,
    pub params: SamplingParams,
    pub constraint: Option<ConstraintSpec>,
    pub seed: u64,
    pub threads: i32,
    pub ctx_size: u32,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    /// Candidates recorded per step.
    pub top_k: usize,
}

impl CaseInput {
    /// The inputs a recorded case ran with.
    pub fn from_trace(case: &TraceCase) -> Self {
        Self {
            id: case.id.clone(),
            prompt: PromptSpec {
                prompt: case.prompt.clone(),
                system: case.system.clone(),
                chat_template: case.chat_template,
            },
            params: case.params.clone(),
            constraint: case.constraint.clone(),
            seed: case.seed.unwrap_or(0),
            threads: case.threads,
            ctx_size: case.ctx_size,
            max_tokens: case.max_tokens,
            stop: case.stop.clone(),
            top_k: case.top_k,
        }
    }
}

/// The model part of a trace case.
pub fn trace_model(model: &Model) -> anyhow::Result<TraceModel> {
    let i = model.info();
    Ok(TraceModel {
        path: i.path.display().to_string(),
        fingerprint: crate::session::fingerprint(&i.path)?,
        architecture: i.architecture.clone(),
        dtype: i.file_type.clone(),
    })
}

/// Build a trace case from inputs and the steps a run produced.
pub fn trace_case(
    input: &CaseInput,
    model: TraceModel,
    prompt_ids: Vec<i32>,
    steps: Vec<TraceStep>,
    stop: StopReason,
) -> TraceCase {
    TraceCase {
        id: input.id.clone(),
        model,
        prompt: input.prompt.prompt.clone(),
        system: input.prompt.system.clone(),
        chat_template: input.prompt.chat_template,
        params: input.params.clone(),
        constraint: input.constraint.clone(),
        seed: Some(input.seed),
        threads: input.threads,
        ctx_size: input.ctx_size,
        max_tokens: input.max_tokens,
        stop: input.stop.clone(),
        top_k: input.top_k,
        prompt_ids,
        steps,
        stop_reason: stop.as_str().to_string(),
    }
}

/// What a case run returns besides its trace.
pub struct CaseRun {
    pub case: TraceCase,
    pub completion_ids: Vec<i32>,
    pub completion_text: String,
    pub tokens_per_second: f64,
}

/// Run one case from its prompt (fresh context, RNG stream at position 0).
pub fn run_case(model: &Model, input: &CaseInput) -> anyhow::Result<CaseRun> {
    let (_, ids) = prompt_ids(model, &input.prompt)?;
    let opts = ContextOptions {
        n_ctx: input.ctx_size,
        n_threads: input.threads,
        ..ContextOptions::default()
    };
    let mut driver = Driver::new(model, &opts, &ids)?;
    driver.set_constraint(build_constraint(model, input.constraint.as_ref())?)?;
    let mut rng = StreamRng::new(RngState {
        seed: input.seed,
        pos: 0,
    });
    let mut steps = Vec::new();
    let mut completion_ids = Vec::new();
    let outcome = genloop::run(
        &mut driver,
        &input.params,
        input.top_k,
        &mut rng,
        input.max_tokens,
        &input.stop,
        &mut |a| {
            completion_ids.push(a.meta.selected_id);
            steps.push(TraceStep::from_meta_top(&a.meta, input.top_k));
            Ok(())
        },
    )?;
    Ok(CaseRun {
        completion_text: super::text_of(model, &completion_ids),
        case: trace_case(input, trace_model(model)?, ids, steps, outcome.stop_reason),
        completion_ids,
        tokens_per_second: if outcome.seconds > 0.0 {
            outcome.n_tokens as f64 / outcome.seconds
        } else {
            0.0
        },
    })
}

/// One line of a batch file; missing fields take the command-line values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLine {
    pub id: Option<serde_json::Value>,
    pub prompt: String,
    pub system: Option<String>,
    pub chat_template: Option<bool>,
    pub seed: Option<u64>,
    pub max_tokens: Option<u32>,
    pub stop: Option<Vec<String>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub greedy: Option<bool>,
}

/// Read a batch file; a bad line is an input error naming its line number.
pub fn read_batch(path: &Path) -> anyhow::Result<Vec<(usize, BatchLine)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        input_err(
            format!("cannot read batch file {}: {e}", path.display()),
            "pass a JSONL file with one {\"prompt\": ...} object per line",
        )
    })?;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: BatchLine = serde_json::from_str(line).map_err(|e| {
            input_err(
                format!("{} line {}: {e}", path.display(), i + 1),
                "each line is one JSON object with at least a \"prompt\"",
            )
        })?;
        lines.push((i + 1, parsed));
    }
    if lines.is_empty() {
        return Err(input_err(
            format!("batch file {} has no cases", path.display()),
            "add one JSON object per line",
        ));
    }
    Ok(lines)
}

/// Apply a batch line over the command-line inputs.
pub fn apply_line(base: &CaseInput, line: BatchLine) -> anyhow::Result<CaseInput> {
    let mut c = base.clone();
    c.id = line.id.map(|v| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    });
    c.prompt.prompt = line.prompt;
    if let Some(s) = line.system {
        c.prompt.system = s;
    }
    if let Some(t) = line.chat_template {
        c.prompt.chat_template = t;
    }
    if let Some(s) = line.seed {
        c.seed = s;
    }
    if let Some(n) = line.max_tokens {
        c.max_tokens = n;
    }
    if let Some(s) = line.stop {
        c.stop = s;
    }
    let p = &mut c.params;
    if let Some(v) = line.temperature {
        p.temperature = v;
    }
    if let Some(v) = line.top_p {
        p.top_p = v;
    }
    if let Some(v) = line.top_k {
        p.top_k = v;
    }
    if let Some(v) = line.min_p {
        p.min_p = v;
    }
    if let Some(v) = line.repetition_penalty {
        p.repetition_penalty = v;
    }
    if let Some(v) = line.greedy {
        p.greedy = v;
    }
    p.validate()?;
    Ok(c)
}
