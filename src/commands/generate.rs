//! `ntv generate`: step until a stop condition, streaming records or coloured text.

use std::io::Write;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::input_err;
use crate::cli::{GenerateArgs, GlobalArgs, OutputFormat};
use crate::driver::{Choice, Driver};
use crate::record::{GenerateSummary, StepRecord, StopReason};
use crate::render::table;
use crate::settings;

use super::stepping::{branch_rng, completion_text, prepare};
use super::write_json;

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
    let mut driver = Driver::new(model, &prep.ctx_opts, &prep.prompt_ids)?;
    let branch = prep.sc.session.active_mut();
    let mut rng = branch_rng(branch, &args.seed);
    driver.set_completion(&branch.completion_ids)?;
    driver.set_constraint(prep.constraint.take())?;
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
    let choice = if prep.params.greedy {
        Choice::Greedy
    } else {
        Choice::Sample
    };
    let constraint = prep.sc.session.constraint.clone();
    if out.format == OutputFormat::Table
        && let Some(c) = &constraint
    {
        table::constraint_line(&mut stdout, c, &out.palette)?;
    }
    let mut scanner = StopScanner::new(&stops);
    let mut records = Vec::new();
    let mut stop_reason = StopReason::MaxTokens;
    let mut stop_sequence = None;
    // Prefill first, so tokens/s measures generation alone.
    let context = driver.context().to_vec();
    driver.decoder().eval(&context)?;
    let t0 = Instant::now();
    for _ in 0..max_tokens {
        if driver.context().len() >= driver.n_ctx() {
            stop_reason = StopReason::ContextFull;
            break;
        }
        let meta = driver.step(&prep.params, prep.display_k, choice, &mut rng)?;
        let id = meta.selected_id;
        let mut stop = None;
        if driver.constraint_complete()? {
            stop = Some(StopReason::ConstraintComplete);
        } else if model.is_eog(id) {
            stop = Some(StopReason::Eog);
        } else if let Some(s) = scanner.push(&model.piece_bytes(id)) {
            stop_sequence = Some(s.to_string());
            stop = Some(StopReason::StopSequence);
        } else if driver.context().len() >= driver.n_ctx() {
            stop = Some(StopReason::ContextFull);
        } else if driver.completion().len() - start >= max_tokens as usize {
            stop = Some(StopReason::MaxTokens);
        }
        let branch = prep.sc.session.active_mut();
        branch.completion_ids.push(id);
        branch.appended_meta.push(meta.clone());
        branch.rng_pos = rng.state().pos;
        let record = StepRecord {
            kind: "step".into(),
            branch: branch_name.clone(),
            index: branch.completion_ids.len() - 1,
            selected: meta.selected.clone(),
            appended_meta: meta,
            done: stop.is_some(),
            stop_reason: stop,
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
        records.push(record);
        if let Some(s) = stop {
            stop_reason = s;
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let branch = prep.sc.session.active_mut();
    branch.stop_reason = Some(stop_reason.as_str().to_string());
    drop(driver);
    prep.sc.save()?;

    let branch = prep.sc.session.active();
    let new_ids = branch.completion_ids[start..].to_vec();
    let new_text = {
        let mut b = Vec::new();
        for &id in &new_ids {
            if !model.is_eog(id) {
                b.extend_from_slice(&model.piece_bytes(id));
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    };
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
