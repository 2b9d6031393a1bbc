//! `ntv diff`: two traces, or two models teacher-forced along the first model's tokens.

use std::io::Write;

use crate::app::input_err;
use crate::cli::{DiffArgs, EngineArgs, GlobalArgs, OutputFormat};
use crate::driver::{Choice, Driver};
use crate::engine::{ContextOptions, Decoder};
use crate::render::table;
use crate::sampling::{RngState, StreamRng};
use crate::settings;
use crate::trace::{DiffStep, diff_traces, summarize};

use super::cases::{CaseInput, apply_line, read_batch};
use super::{PromptSpec, load_model, prompt_ids, write_json};

pub fn run(global: &GlobalArgs, args: DiffArgs) -> anyhow::Result<()> {
    let out = settings::output(global, None);
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
    let mut stdout = std::io::stdout().lock();
    match out.format {
        OutputFormat::Table => table::diff(&mut stdout, &summary, &out.palette)?,
        OutputFormat::Json => write_json(&mut stdout, &summary, true)?,
        OutputFormat::Jsonl => write_json(&mut stdout, &summary, false)?,
    }
    stdout.flush()?;
    Ok(())
}

fn models(
    args: &DiffArgs,
    a: &std::path::Path,
    b: &std::path::Path,
) -> anyhow::Result<crate::trace::DiffSummary> {
    let rt = EngineArgs::default();
    let model_a = load_model(a, &rt)?;
    let model_b = load_model(b, &rt)?;
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
    let (params, _) = settings::params(None, None, &args.sampling)?;
    let params = settings::with_greedy(params, args.seed.greedy);
    let threads = args
        .threads
        .unwrap_or_else(|| ContextOptions::default().n_threads);
    let base = CaseInput {
        id: None,
        prompt: PromptSpec {
            prompt: String::new(),
            system: args
                .prompt
                .system
                .clone()
                .unwrap_or_else(|| crate::chat::DEFAULT_SYSTEM.to_string()),
            chat_template: settings::cli_chat_template(&args.prompt).unwrap_or(true),
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
    let cases: Vec<CaseInput> = match (&args.batch, settings::cli_prompt(&args.prompt, None)?) {
        (Some(path), _) => read_batch(path)?
            .into_iter()
            .map(|(_, line)| apply_line(&base, line))
            .collect::<anyhow::Result<_>>()?,
        (None, Some(p)) => {
            let mut c = base.clone();
            c.prompt.prompt = p;
            vec![c]
        }
        (None, None) => {
            return Err(input_err(
                "no cases to compare the models on",
                "pass -p PROMPT or --batch FILE.jsonl",
            ));
        }
    };
    let mut steps = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        let (_, ids) = prompt_ids(&model_a, &case.prompt)?;
        let opts = ContextOptions {
            n_ctx: case.ctx_size,
            n_threads: case.threads,
            ..ContextOptions::default()
        };
        let mut driver = Driver::new(&model_a, &opts, &ids)?;
        let mut dec_b = Decoder::new(&model_b, &opts)?;
        let mut rng = StreamRng::new(RngState {
            seed: case.seed,
            pos: 0,
        });
        let choice = if case.params.greedy {
            Choice::Greedy
        } else {
            Choice::Sample
        };
        for step in 0..case.max_tokens as usize {
            if driver.context().len() >= driver.n_ctx() {
                break;
            }
            let context = driver.context().to_vec();
            let logits_a = driver.decoder().eval(&context)?.to_vec();
            let logits_b = dec_b.eval(&context)?;
            // The step reuses the logits just computed (nothing is decoded twice).
            let meta = driver.step(&case.params, 1, choice, &mut rng)?;
            steps.push(DiffStep::from_logits(
                ci,
                step,
                &logits_a,
                logits_b,
                meta.selected_id,
            ));
            if model_a.is_eog(meta.selected_id) {
                break;
            }
        }
    }
    Ok(summarize(steps))
}
