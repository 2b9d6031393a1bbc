//! Cases for traces and batches: one generation from a prompt with fixed inputs, run with the
//! model loaded once through the shared step loop, turned into a [`TraceCase`]
//! (`generate --record/--batch`, `check`).

use serde::Deserialize;

use crate::constraint::ConstraintSpec;
use crate::driver::Driver;
use crate::engine::{ContextOptions, Model};
use crate::error::Result;
use crate::record::StopReason;
use crate::sampling::{RngState, SamplingParams, StreamRng};
use crate::settings::PromptSpec;
use crate::trace::{TraceCase, TraceModel, TraceStep};

use super::stepper::{self, Plan, StopRule};
use super::{build_constraint, prompt_ids, text_of};

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
                messages: case.messages.clone(),
                chat_template: case.chat_template,
                parse_special: case.parse_special,
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

    /// The context options of the case.
    pub fn context(&self) -> ContextOptions {
        ContextOptions {
            n_ctx: self.ctx_size,
            n_threads: self.threads,
            ..ContextOptions::default()
        }
    }
}

/// The model part of a trace case (`label`: the hub reference the model was given by).
pub fn trace_model(model: &Model, label: Option<&str>) -> Result<TraceModel> {
    let i = model.info();
    Ok(TraceModel {
        path: i.path.display().to_string(),
        fingerprint: crate::session::fingerprint(&i.path)?,
        architecture: i.architecture.clone(),
        dtype: i.file_type.clone(),
        hub: super::hub_source(&i.path, label, None),
    })
}

/// Build a trace case from inputs and the steps a run produced.
pub fn trace_case(
    input: &CaseInput,
    model: TraceModel,
    prompt_text: String,
    prompt_ids: Vec<i32>,
    steps: Vec<TraceStep>,
    stop: StopReason,
) -> TraceCase {
    TraceCase {
        id: input.id.clone(),
        model,
        prompt: input.prompt.prompt.clone(),
        system: input.prompt.system.clone(),
        messages: input.prompt.messages.clone(),
        chat_template: input.prompt.chat_template,
        parse_special: input.prompt.parse_special,
        prompt_text: Some(prompt_text),
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
        stop_reason: stop,
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
pub fn run_case(model: &Model, input: &CaseInput) -> Result<CaseRun> {
    let (text, ids) = prompt_ids(model, &input.prompt)?;
    let mut driver = Driver::new(model, &input.context(), &ids)?;
    driver.set_constraint(build_constraint(model, input.constraint.as_ref())?)?;
    let mut rng = StreamRng::new(RngState {
        seed: input.seed,
        pos: 0,
    });
    let mut steps = Vec::new();
    let mut completion_ids = Vec::new();
    let rule = StopRule {
        max_tokens: Some(input.max_tokens as usize),
        stops: input.stop.clone(),
    };
    let outcome = stepper::run(
        &mut driver,
        &input.params,
        input.top_k,
        &Plan::Choose {
            choice: crate::driver::Choice::for_params(&input.params),
            n: None,
        },
        &rule,
        &mut rng,
        &mut |_, a| {
            completion_ids.push(a.meta.selected_id);
            steps.push(TraceStep::from_meta_top(&a.meta, input.top_k));
            Ok(())
        },
    )?;
    Ok(CaseRun {
        completion_text: text_of(model, &completion_ids),
        case: trace_case(
            input,
            trace_model(model, None)?,
            text,
            ids,
            steps,
            outcome.stop_reason.unwrap_or(StopReason::MaxTokens),
        ),
        completion_ids,
        tokens_per_second: outcome.tokens_per_second(),
    })
}

/// One line of a `generate --batch` / `diff --batch` file; missing fields take the
/// command-line values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseLine {
    pub id: Option<serde_json::Value>,
    #[serde(default)]
    pub prompt: String,
    pub system: Option<String>,
    /// A conversation instead of `prompt`/`system` (as `--messages`).
    pub messages: Option<Vec<crate::chat::ChatMessage>>,
    pub chat_template: Option<bool>,
    pub parse_special: Option<bool>,
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

impl crate::batch::Identified for CaseLine {
    fn id(&self) -> Option<&serde_json::Value> {
        self.id.as_ref()
    }
}

/// Apply a batch line over the command-line inputs (validated).
pub fn apply_line(base: &CaseInput, line: CaseLine) -> Result<CaseInput> {
    let mut c = base.clone();
    c.id = crate::batch::id_text(line.id.as_ref());
    match line.messages {
        Some(m) => {
            if !line.prompt.is_empty() || line.system.is_some() {
                return Err(crate::error::input_err(
                    "the line has both \"messages\" and \"prompt\"/\"system\"",
                    "give a line either a conversation (\"messages\") or a prompt",
                ));
            }
            if m.is_empty() {
                return Err(crate::error::input_err(
                    "the line's \"messages\" is empty",
                    "give at least one {\"role\", \"content\"} message",
                ));
            }
            c.prompt.prompt = String::new();
            c.prompt.system = String::new();
            c.prompt.messages = Some(m);
        }
        None => {
            c.prompt.prompt = line.prompt;
            c.prompt.messages = None;
            if let Some(s) = line.system {
                c.prompt.system = s;
            }
        }
    }
    if let Some(t) = line.chat_template {
        c.prompt.chat_template = t;
    }
    if let Some(t) = line.parse_special {
        c.prompt.parse_special = t;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> CaseInput {
        CaseInput {
            id: None,
            prompt: PromptSpec::text("", "sys"),
            params: SamplingParams::default(),
            constraint: None,
            seed: 1,
            threads: 1,
            ctx_size: 512,
            max_tokens: 8,
            stop: vec![],
            top_k: 5,
        }
    }

    #[test]
    fn a_line_overrides_only_what_it_names() {
        let line: CaseLine = serde_json::from_str(
            r#"{"id": 3, "prompt": "Hi", "seed": 9, "temperature": 0.5, "stop": ["."]}"#,
        )
        .unwrap();
        let c = apply_line(&base(), line).unwrap();
        assert_eq!(c.id.as_deref(), Some("3"));
        assert_eq!(
            (c.prompt.prompt.as_str(), c.prompt.system.as_str()),
            ("Hi", "sys")
        );
        assert_eq!((c.seed, c.max_tokens), (9, 8));
        assert_eq!(c.params.temperature, 0.5);
        assert_eq!(c.stop, vec![".".to_string()]);
    }

    #[test]
    fn a_bad_value_in_a_line_is_an_input_error() {
        let line: CaseLine = serde_json::from_str(r#"{"prompt": "Hi", "top_p": 2}"#).unwrap();
        assert!(apply_line(&base(), line).unwrap_err().is_input());
        assert!(serde_json::from_str::<CaseLine>(r#"{"prompt": "Hi", "bogus": 1}"#).is_err());
    }
}
