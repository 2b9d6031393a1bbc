//! `ntv generate`: step until a stop condition, streaming records or coloured text.

use std::io::Write;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::input_err;
use crate::cli::{GenerateArgs, GlobalArgs, OutputFormat};
use crate::driver::Driver;
use crate::record::{GenerateSummary, StepRecord};
use crate::render::table;
use crate::settings;

use super::cases::{CaseInput, apply_line, read_batch, run_case, trace_case, trace_model};
use super::stepping::{branch_rng, completion_text, prepare};
use super::{genloop, write_json};
use crate::trace::{BuildInfo, Trace, TraceStep};

/// Default cap on new tokens.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// Finds stop sequences in text produced across token boundaries.
pub struct StopScanner {
    stops: Vec<String>,
    text: Vec<u8>,
}

impl StopScanner {
    /// A scanner over the text produced from now on.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: Vec::new(),
        }
    }

    /// Add a token's bytes; returns the stop sequence that the text now contains, if any. Only
    /// the tail that could hold a new match is searched.
    pub fn push(&mut self, piece: &[u8]) -> Option<&str> {
        let old = self.text.len();
        self.text.extend_from_slice(piece);
        for s in &self.stops {
            let from = old.saturating_sub(s.len().saturating_sub(1));
            if self.text[from..]
                .windows(s.len())
                .any(|w| w == s.as_bytes())
            {
                return Some(s);
            }
        }
        None
    }
}

pub fn run(global: &GlobalArgs, args: GenerateArgs) -> anyhow::Result<()> {
    if args.batch.is_some() {
        return batch(global, args);
    }
    let out = settings::output(global, Some(OutputFormat::Jsonl));
    let mut prep = prepare(
        global,
        &args.prompt,
        &args.runtime,
        &args.sampling,
        &args.constraint,
        args.seed.greedy,
        args.reset,
    )?;
    let max_tokens = args
        .max_tokens
        .or(prep.sc.session.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(input_err("-n 0 generates nothing", "pass -n N with N >= 1"));
    }
    let stops = if args.stop.is_empty() {
        prep.sc.session.stop.clone()
    } else {
        args.stop.clone()
    };
    prep.sc.session.max_tokens = args.max_tokens.or(prep.sc.session.max_tokens);
    prep.sc.session.stop = stops.clone();

    let model = &prep.model;
    let cache = super::kv_cache(&prep.sc, &args.runtime);
    let fingerprint = prep
        .sc
        .session
        .model
        .as_ref()
        .map(super::cache_fingerprint)
        .unwrap_or_default();
    let mut driver = Driver::new(model, &prep.ctx_opts, &prep.prompt_ids)?;
    let branch = prep.sc.session.active_mut();
    let mut rng = branch_rng(branch, &args.seed);
    driver.set_completion(&branch.completion_ids)?;
    driver.set_constraint(prep.constraint.take())?;
    super::restore_prefix(cache.as_ref(), &mut driver, &fingerprint);
    let start = branch.completion_ids.len();
    let branch_name = branch.name.clone();

    let mut stdout = std::io::stdout().lock();
    let progress = (out.stderr_tty && !out.stdout_tty).then(|| {
        let pb = ProgressBar::new(u64::from(max_tokens));
        pb.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} tokens {per_sec} {wide_bar}")
                .expect("valid template"),
        );
        pb
    });
    if out.format == OutputFormat::Table {
        table::generate_header(&mut stdout, &out.palette)?;
    }
    let constraint = prep.sc.session.constraint.clone();
    if out.format == OutputFormat::Table
        && let Some(c) = &constraint
    {
        table::constraint_line(&mut stdout, c, &out.palette)?;
    }
    if args.record.is_some() && (start > 0 || rng.state().pos > 0) {
        return Err(input_err(
            "--record records a generation from the prompt, but this branch already has a completion",
            "pass --no-session, --reset, or switch to an empty branch (ntv branch new NAME --at 0)",
        ));
    }
    let record_top_k = prep.display_k;
    let mut trace_steps = Vec::new();
    let mut records = Vec::new();
    let outcome = genloop::run(
        &mut driver,
        &prep.params,
        prep.display_k,
        &mut rng,
        max_tokens,
        &stops,
        &mut |a| {
            if args.record.is_some() {
                trace_steps.push(TraceStep::from_meta_top(&a.meta, record_top_k));
            }
            let branch = prep.sc.session.active_mut();
            branch.completion_ids.push(a.meta.selected_id);
            branch.appended_meta.push(a.meta.clone());
            branch.rng_pos = a.rng.state().pos;
            let record = StepRecord {
                kind: "step".into(),
                branch: branch_name.clone(),
                index: branch.completion_ids.len() - 1,
                selected: a.meta.selected.clone(),
                appended_meta: a.meta,
                done: a.stop.is_some(),
                stop_reason: a.stop,
                constraint: constraint.clone(),
            };
            match out.format {
                OutputFormat::Jsonl => {
                    write_json(&mut stdout, &record, false)?;
                    stdout.flush()?;
                }
                OutputFormat::Table => {
                    table::generate_token(&mut stdout, &record, &out.palette)?;
                    stdout.flush()?;
                }
                OutputFormat::Json => {}
            }
            if let Some(pb) = &progress {
                pb.inc(1);
            }
            if out.format == OutputFormat::Json {
                records.push(record);
            }
            Ok(())
        },
    )?;
    let (stop_reason, stop_sequence, seconds) =
        (outcome.stop_reason, outcome.stop_sequence, outcome.seconds);

    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let branch = prep.sc.session.active_mut();
    branch.stop_reason = Some(stop_reason.as_str().to_string());
    super::save_prefix(cache.as_ref(), &mut driver, &fingerprint);
    drop(driver);
    if let Some(path) = &args.record {
        let input = CaseInput {
            id: None,
            prompt: prep.spec.clone(),
            params: prep.params.clone(),
            constraint: prep.sc.session.constraint.clone(),
            seed: prep.sc.session.active().seed.unwrap_or(0),
            threads: prep.ctx_opts.n_threads,
            ctx_size: prep.ctx_opts.n_ctx,
            max_tokens,
            stop: stops.clone(),
            top_k: record_top_k,
        };
        let mut trace = Trace::new(BuildInfo::current(&model.info().device));
        trace.cases.push(trace_case(
            &input,
            trace_model(model)?,
            prep.prompt_ids.clone(),
            std::mem::take(&mut trace_steps),
            stop_reason,
        ));
        crate::trace::write(path, &trace)?;
    }
    prep.sc.save()?;

    let branch = prep.sc.session.active();
    let new_ids = branch.completion_ids[start..].to_vec();
    let new_text = super::text_of(model, &new_ids);
    let n = new_ids.len();
    let summary = GenerateSummary {
        kind: "summary".into(),
        schema: "ntv.generate/1".into(),
        branch: branch.name.clone(),
        completion_ids: branch.completion_ids.clone(),
        completion_text: completion_text(Some(model), branch),
        new_completion_ids: new_ids,
        new_text,
        stop_reason,
        stop_sequence,
        n_tokens: n,
        tokens_per_second: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        seconds,
        seed: branch.seed,
        params: prep.params.clone(),
        constraint,
        steps: (out.format == OutputFormat::Json).then_some(records),
    };
    match out.format {
        OutputFormat::Jsonl => write_json(&mut stdout, &summary, false)?,
        OutputFormat::Json => write_json(&mut stdout, &summary, true)?,
        OutputFormat::Table => table::generate_summary(&mut stdout, &summary, &out.palette)?,
    }
    stdout.flush()?;
    Ok(())
}

/// `generate --batch FILE`: every case from its prompt, model loaded once, session untouched.
fn batch(global: &GlobalArgs, args: GenerateArgs) -> anyhow::Result<()> {
    let out = settings::output(global, Some(OutputFormat::Jsonl));
    let path = args.batch.as_deref().expect("batch mode");
    let lines = read_batch(path)?;
    let existing = super::SessionCtx::open(global, false)?.existing().cloned();
    let (params, _) = settings::params(
        existing.as_ref().map(|s| &s.params),
        existing.as_ref().and_then(|s| s.preset),
        &args.sampling,
    )?;
    let params = settings::with_greedy(params, args.seed.greedy);
    let display_k = settings::display_k(&args.sampling, existing.as_ref().map(|s| s.display_k))?;
    let ctx_opts = settings::context_options(&args.runtime.engine)?;
    let constraint = settings::constraint(
        &args.constraint,
        existing.as_ref().and_then(|s| s.constraint.as_ref()),
    )?;
    let model_path = settings::model_path(
        args.runtime.engine.model.as_deref(),
        existing
            .as_ref()
            .and_then(|s| s.model.as_ref())
            .map(|m| m.path.as_str()),
    )?;
    let model = super::load_model(&model_path, &args.runtime.engine)?;
    settings::check_display_k(display_k, model.n_vocab())?;
    let base = CaseInput {
        id: None,
        prompt: super::PromptSpec {
            prompt: String::new(),
            system: args
                .prompt
                .system
                .clone()
                .unwrap_or_else(|| crate::chat::DEFAULT_SYSTEM.to_string()),
            chat_template: settings::cli_chat_template(&args.prompt).unwrap_or(true),
        },
        params,
        constraint,
        seed: 0,
        threads: ctx_opts.n_threads,
        ctx_size: ctx_opts.n_ctx,
        max_tokens: args.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        stop: args.stop.clone(),
        top_k: display_k,
    };
    let progress =
        (out.stderr_tty && !out.stdout_tty).then(|| ProgressBar::new(lines.len() as u64));
    let mut trace = Trace::new(BuildInfo::current(&model.info().device));
    let mut stdout = std::io::stdout().lock();
    let n = lines.len();
    for (lineno, line) in lines {
        let explicit_seed = line.seed.or(args.seed.seed);
        let mut input = apply_line(&base, line).map_err(|e| {
            input_err(
                format!("{} line {lineno}: {e}", path.display()),
                "fix the line's fields",
            )
        })?;
        input.seed = explicit_seed.unwrap_or_else(crate::sampling::StreamRng::os_seed);
        let run = run_case(&model, &input)?;
        let rec = serde_json::json!({
            "type": "case",
            "id": input.id,
            "line": lineno,
            "completion_text": run.completion_text,
            "completion_ids": run.completion_ids,
            "stop_reason": run.case.stop_reason,
            "n_tokens": run.completion_ids.len(),
            "tokens_per_second": run.tokens_per_second,
            "seed": input.seed,
        });
        match out.format {
            OutputFormat::Table => writeln!(
                stdout,
                "{} {}",
                out.palette.heading(&format!(
                    "[{}]",
                    input.id.clone().unwrap_or_else(|| format!("line {lineno}"))
                )),
                run.completion_text
            )?,
            _ => write_json(&mut stdout, &rec, false)?,
        }
        stdout.flush()?;
        if let Some(pb) = &progress {
            pb.inc(1);
        }
        trace.cases.push(run.case);
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    if let Some(p) = &args.record {
        crate::trace::write(p, &trace)?;
    }
    if out.format != OutputFormat::Table {
        write_json(
            &mut stdout,
            &serde_json::json!({
                "type": "summary",
                "schema": "ntv.generate.batch/1",
                "cases": n,
                "trace": args.record.as_ref().map(|p| p.display().to_string()),
            }),
            false,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StopScanner;

    #[test]
    fn stop_sequence_across_token_boundaries() {
        let mut s = StopScanner::new(&["\n\n".to_string(), "END".to_string()]);
        assert_eq!(s.push(b"Hello"), None);
        assert_eq!(s.push(b" E"), None);
        assert_eq!(s.push(b"N"), None);
        assert_eq!(s.push(b"D!"), Some("END"));
        let mut s = StopScanner::new(&["\n\n".to_string()]);
        assert_eq!(s.push(b"a\n"), None);
        assert_eq!(s.push(b"\nb"), Some("\n\n"));
    }

    #[test]
    fn empty_stop_is_ignored() {
        let mut s = StopScanner::new(&[String::new()]);
        assert_eq!(s.push(b"anything"), None);
    }
}
