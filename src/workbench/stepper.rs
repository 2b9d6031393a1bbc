//! The one step loop: `step`, `generate`, trace cases (`generate --record/--batch`, `check`)
//! and `diff` all append tokens through [`run`], so they share one stop rule.
//!
//! The rule, checked after every appended token in this order: the constraint is complete,
//! an end-of-generation token was chosen, a stop sequence appeared, the context is full, the
//! token budget is spent. A context that is already full before a step is a clean stop too
//! (no token is appended), never an error.

use std::time::Instant;

use crate::driver::{Choice, Driver};
use crate::error::Result;
use crate::record::{AppendedMeta, ForcedBy, StopReason};
use crate::sampling::{SamplingParams, StreamRng};

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

    /// A scanner that knows the text already produced (`before`), so a stop sequence that the
    /// next token completes is found even when it began earlier; one lying wholly inside
    /// `before` is not reported again.
    pub fn after(stops: &[String], before: &[u8]) -> Self {
        let mut s = Self::new(stops);
        let keep = s.stops.iter().map(String::len).max().unwrap_or(0);
        s.text
            .extend_from_slice(&before[before.len().saturating_sub(keep)..]);
        s
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

/// When to stop besides what the model and the constraint decide.
#[derive(Debug, Clone, Default)]
pub struct StopRule {
    /// Stop after this many new tokens (`StopReason::MaxTokens`).
    pub max_tokens: Option<usize>,
    /// Stop sequences, searched in the completion text across token boundaries.
    pub stops: Vec<String>,
}

/// What to append: a list of choices, taken in order until one stops the run.
#[derive(Debug, Clone)]
pub enum Plan {
    /// `n` tokens chosen by `choice` (greedy or sampled); `None`: until a stop.
    Choose { choice: Choice, n: Option<usize> },
    /// These tokens, forced, appended whole even past a stop condition (the ids of `--text`,
    /// or a completion a client hands over; `--token` is one id).
    Force(Vec<i32>, ForcedBy),
}

impl Plan {
    fn choice_at(&self, i: usize) -> Option<Choice> {
        match self {
            Plan::Choose { choice, n } => n.is_none_or(|n| i < n).then_some(*choice),
            Plan::Force(ids, by) => ids.get(i).map(|&id| Choice::Force(id, *by)),
        }
    }

    fn appends_whole(&self) -> bool {
        matches!(self, Plan::Force(..))
    }
}

/// One appended token, as the loop hands it to its caller.
pub struct Appended<'a> {
    pub meta: AppendedMeta,
    /// Set when the rule stops after this token.
    pub stop: Option<StopReason>,
    pub rng: &'a StreamRng,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Why it stopped; `None` when the plan ran out first (e.g. `step -n 3` took 3 tokens).
    pub stop_reason: Option<StopReason>,
    /// Which stop sequence fired.
    pub stop_sequence: Option<String>,
    /// New tokens appended.
    pub n_tokens: usize,
    /// Seconds of the loop (prefill excluded).
    pub seconds: f64,
}

impl Outcome {
    /// Tokens per second of the loop (0 when nothing was timed).
    pub fn tokens_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.n_tokens as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Append tokens to `driver` by `plan` until the plan ends or `rule` (and the model, the
/// constraint, the context size) stops it. The context is decoded before the clock starts;
/// `on_token` sees every appended token in order, with the driver (whose decoder still holds
/// the logits the token was chosen from).
#[allow(clippy::too_many_arguments)]
pub fn run<'m>(
    driver: &mut Driver<'m>,
    params: &SamplingParams,
    display_k: usize,
    plan: &Plan,
    rule: &StopRule,
    rng: &mut StreamRng,
    on_token: &mut dyn FnMut(&mut Driver<'m>, Appended<'_>) -> Result<()>,
) -> Result<Outcome> {
    let model = driver.model();
    let mut outcome = Outcome::default();
    // A context that does not fit at all (a prompt longer than the context) fails here, as
    // bad input; one that is exactly full stops cleanly below.
    let context = driver.context().to_vec();
    driver.decoder().eval(&context)?;
    // Each token is at least one byte, so the last `longest` tokens hold every byte a stop
    // sequence completed by the next token can start in.
    let longest = rule.stops.iter().map(String::len).max().unwrap_or(0);
    let completion = driver.completion();
    let tail: Vec<u8> = completion[completion.len().saturating_sub(longest)..]
        .iter()
        .flat_map(|&id| model.piece_bytes(id))
        .collect();
    let mut scanner = StopScanner::after(&rule.stops, &tail);
    let scanning = rule.stops.iter().any(|s| !s.is_empty());
    let t0 = Instant::now();
    let mut i = 0;
    while let Some(choice) = plan.choice_at(i) {
        i += 1;
        if driver.context().len() >= driver.n_ctx() {
            outcome.stop_reason = Some(StopReason::ContextFull);
            break;
        }
        let meta = driver.step(params, display_k, choice, rng)?;
        let id = meta.selected_id;
        outcome.n_tokens += 1;
        let stop = if driver.constraint_complete()? {
            Some(StopReason::ConstraintComplete)
        } else if model.is_eog(id) {
            Some(StopReason::Eog)
        } else if let Some(s) = scanning
            .then(|| scanner.push(&model.piece_bytes(id)))
            .flatten()
        {
            outcome.stop_sequence = Some(s.to_string());
            Some(StopReason::StopSequence)
        } else if driver.context().len() >= driver.n_ctx() {
            Some(StopReason::ContextFull)
        } else if rule.max_tokens.is_some_and(|n| outcome.n_tokens >= n) {
            Some(StopReason::MaxTokens)
        } else if crate::interrupt::requested() {
            Some(StopReason::Interrupted)
        } else {
            None
        };
        if stop.is_some() && outcome.stop_reason.is_none() {
            outcome.stop_reason = stop;
        }
        on_token(driver, Appended { meta, stop, rng })?;
        if stop.is_some() && (!plan.appends_whole() || stop == Some(StopReason::Interrupted)) {
            break;
        }
    }
    outcome.seconds = t0.elapsed().as_secs_f64();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn earlier_text_completes_a_stop_but_is_not_reported_alone() {
        let stops = ["\n\n".to_string()];
        let mut s = StopScanner::after(&stops, b"line one\n");
        assert_eq!(s.push(b"\n"), Some("\n\n"));
        let mut s = StopScanner::after(&stops, b"a\n\nb");
        assert_eq!(s.push(b"c"), None);
    }

    #[test]
    fn plans_list_their_choices() {
        let p = Plan::Choose {
            choice: Choice::Greedy,
            n: Some(2),
        };
        assert!(p.choice_at(1).is_some() && p.choice_at(2).is_none());
        let p = Plan::Choose {
            choice: Choice::Sample,
            n: None,
        };
        assert!(p.choice_at(10_000).is_some() && !p.appends_whole());
        let p = Plan::Force(vec![5, 6], ForcedBy::Text);
        assert!(matches!(
            p.choice_at(1),
            Some(Choice::Force(6, ForcedBy::Text))
        ));
        assert!(p.choice_at(2).is_none() && p.appends_whole());
        assert!(Plan::Force(vec![5, 6], ForcedBy::Token).appends_whole());
    }
}
