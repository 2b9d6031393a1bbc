//! `ntv diff`: two traces, or two models teacher-forced along the first model's tokens.

use crate::batch::Line;
use crate::cli::DiffArgs;
use crate::driver::{Choice, Driver};
use crate::engine::{ContextOptions, Decoder};
use crate::error::{Exit, Result, input_err};
use crate::sampling::{RngState, StreamRng};
use crate::settings::{self, ModelChoice};
use crate::trace::{DiffStep, diff_traces, summarize};
use crate::workbench::cases::{CaseInput, CaseLine, apply_line};
use crate::workbench::prompt_ids;
use crate::workbench::stepper::{self, Plan, StopRule};

use super::{Ctx, emit, load_model};

pub fn run(ctx: &Ctx<'_>, args: DiffArgs) -> Result<Exit> {
    let out = ctx.output(None);
    let summary = match (&args.model_a, &args.model_b, args.traces.as_slice()) {
        (None, None, [a, b]) => {
            let (ta, tb) = (crate::trace::read(a)?, crate::trace::read(b)?);
            diff_traces(&ta, &tb)?
        }
        (Some(a), Some(b), []) => models(&args, a, b)?,
        _ => {
            return Err(input_err(
                "ntv diff compares two traces or two models",
                "pass TRACE_A TRACE_B, or --model-a A.gguf --model-b B.gguf with -p PROMPT or --batch FILE",
            ));
        }
    };
    emit(&out, &summary)?;
    Ok(Exit::Success)
}

/// The cases of `--batch` (every line must be valid: a comparison over some cases only would
/// mislead) or of `-p`.
fn cases(args: &DiffArgs, base: &CaseInput) -> Result<Vec<CaseInput>> {
    match (&args.batch, settings::cli_prompt(&args.prompt, None)?) {
        (Some(path), _) => {
            let lines: Vec<Line<CaseLine>> =
                crate::batch::read(path, None, r#"{"prompt": "Hello"}"#)?;
            lines
                .into_iter()
                .map(|(n, line)| {
                    let line = line.map_err(|bad| {
                        input_err(
                            format!("{} line {n}: {}", path.display(), bad.message),
                            "each line is one JSON object with at least a \"prompt\"",
                        )
                    })?;
                    apply_line(base, line)
                        .map_err(|e| e.context(format!("{} line {n}", path.display())))
                })
                .collect()
        }
        (None, Some(p)) => {
            let mut c = base.clone();
            c.prompt.prompt = p;
            Ok(vec![c])
        }
        (None, None) => match settings::cli_messages(&args.prompt)? {
            Some(m) => {
                let mut c = base.clone();
                c.prompt.prompt = String::new();
                c.prompt.system = String::new();
                c.prompt.messages = Some(m);
                Ok(vec![c])
            }
            None => Err(input_err(
                "no cases to compare the models on",
                "pass -p PROMPT, --messages FILE.json or --batch FILE.jsonl",
            )),
        },
    }
}

fn models(
    args: &DiffArgs,
    a: &std::path::Path,
    b: &std::path::Path,
) -> Result<crate::trace::DiffSummary> {
    let model_a = load_model(&ModelChoice::from_arg(a, args.offline)?.path()?, None)?;
    let model_b = load_model(&ModelChoice::from_arg(b, args.offline)?.path()?, None)?;
    if model_a.n_vocab() != model_b.n_vocab() {
        return Err(input_err(
            format!(
                "the models have different vocabularies ({} and {} tokens)",
                model_a.n_vocab(),
                model_b.n_vocab()
            ),
            "ntv diff compares models that share a tokenizer (e.g. two quantisations)",
        ));
    }
    let (mut params, _) = settings::params(None, None, &args.sampling)?;
    params.greedy |= args.seed.greedy;
    let threads =
        settings::threads(args.threads)?.unwrap_or_else(|| ContextOptions::default().n_threads);
    let base = CaseInput {
        id: None,
        prompt: settings::PromptSpec {
            prompt: String::new(),
            system: args
                .prompt
                .system
                .clone()
                .unwrap_or_else(|| crate::chat::DEFAULT_SYSTEM.to_string()),
            messages: None,
            chat_template: settings::cli_chat_template(&args.prompt).unwrap_or(true),
            parse_special: settings::cli_parse_special(&args.prompt).unwrap_or(true),
        },
        params,
        constraint: None,
        seed: args.seed.seed.unwrap_or(0),
        threads,
        ctx_size: args.ctx_size,
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        top_k: 1,
    };
    let mut steps = Vec::new();
    for (ci, case) in cases(args, &base)?.iter().enumerate() {
        let (_, ids) = prompt_ids(&model_a, &case.prompt)?;
        let opts = case.context();
        let mut driver = Driver::new(&model_a, &opts, &ids)?;
        let mut dec_b = Decoder::new(&model_b, &opts)?;
        let mut rng = StreamRng::new(RngState {
            seed: case.seed,
            pos: 0,
        });
        let rule = StopRule {
            max_tokens: Some(case.max_tokens as usize),
            stops: Vec::new(),
        };
        let plan = Plan::Choose {
            choice: Choice::for_params(&case.params),
            n: None,
        };
        let mut step = 0;
        stepper::run(
            &mut driver,
            &case.params,
            1,
            &plan,
            &rule,
            &mut rng,
            &mut |driver, a| {
                // Model A's logits for this step are still the decoder's last ones (the token
                // just chosen is not decoded yet), so nothing is decoded twice.
                let n = driver.context().len() - 1;
                let before = driver.context()[..n].to_vec();
                let logits_a = driver.decoder().eval(&before)?.to_vec();
                let logits_b = dec_b.eval(&before)?;
                steps.push(DiffStep::from_logits(
                    ci,
                    step,
                    &logits_a,
                    logits_b,
                    a.meta.selected_id,
                ));
                step += 1;
                Ok(())
            },
        )?;
    }
    Ok(summarize(steps))
}
