//! The generation loop shared by `generate` (one session branch, streamed) and the trace
//! commands (`generate --record/--batch`, `check`): step until a stop condition.

use std::time::Instant;

use crate::driver::{Choice, Driver};
use crate::record::{AppendedMeta, StopReason};
use crate::sampling::{SamplingParams, StreamRng};

use super::generate::StopScanner;

/// How a generation ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stop_reason: StopReason,
    /// Which stop sequence fired.
    pub stop_sequence: Option<String>,
    /// New tokens appended.
    pub n_tokens: usize,
    /// Seconds of the loop (prefill excluded).
    pub seconds: f64,
}

/// One appended token, as the loop hands it to its caller.
pub struct Appended<'a> {
    pub meta: AppendedMeta,
    /// Set on the last token: why the generation stops after it.
    pub stop: Option<StopReason>,
    pub rng: &'a StreamRng,
}

/// Step `driver` until end of generation, a stop sequence, a complete constraint,
/// `max_tokens` new tokens or a full context. The context is prefilled before the clock
/// starts. `on_token` sees every appended token in order.
#[allow(clippy::too_many_arguments)]
pub fn run(
    driver: &mut Driver<'_>,
    params: &SamplingParams,
    display_k: usize,
    rng: &mut StreamRng,
    max_tokens: u32,
    stops: &[String],
    on_token: &mut dyn FnMut(Appended<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let model = driver.model();
    let choice = if params.greedy {
        Choice::Greedy
    } else {
        Choice::Sample
    };
    let start = driver.completion().len();
    let context = driver.context().to_vec();
    driver.decoder().eval(&context)?;
    let mut scanner = StopScanner::new(stops);
    let mut outcome = Outcome {
        stop_reason: StopReason::MaxTokens,
        stop_sequence: None,
        n_tokens: 0,
        seconds: 0.0,
    };
    let t0 = Instant::now();
    for _ in 0..max_tokens {
        if driver.context().len() >= driver.n_ctx() {
            outcome.stop_reason = StopReason::ContextFull;
            break;
        }
        let meta = driver.step(params, display_k, choice, rng)?;
        let id = meta.selected_id;
        let mut stop = None;
        if driver.constraint_complete()? {
            stop = Some(StopReason::ConstraintComplete);
        } else if model.is_eog(id) {
            stop = Some(StopReason::Eog);
        } else if let Some(s) = scanner.push(&model.piece_bytes(id)) {
            outcome.stop_sequence = Some(s.to_string());
            stop = Some(StopReason::StopSequence);
        } else if driver.context().len() >= driver.n_ctx() {
            stop = Some(StopReason::ContextFull);
        } else if driver.completion().len() - start >= max_tokens as usize {
            stop = Some(StopReason::MaxTokens);
        }
        outcome.n_tokens += 1;
        on_token(Appended { meta, stop, rng })?;
        if let Some(s) = stop {
            outcome.stop_reason = s;
            break;
        }
    }
    outcome.seconds = t0.elapsed().as_secs_f64();
    Ok(outcome)
}
