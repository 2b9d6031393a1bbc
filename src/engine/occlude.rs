//! Leave-one-out decoding for occlusion: log p(target) after the full context and after the
//! context with each token (or each span of `window` consecutive tokens) removed, reusing the
//! KV prefix before the removed span.
//!
//! The full context is decoded once into sequence 0. For the variant without the span `[a, b)`,
//! the cells of positions `[0, a)` are copied (metadata only: the cache is unified) from
//! sequence 0 into a scratch sequence and only `context[b..]` is decoded, at positions `a..`.
//! Many variants share one `llama_decode` (one scratch sequence each); removing the last span
//! needs no decode at all (its answer is the full decode's row before the span).
//!
//! Spans are `[0, w), [w, 2w), …` (the last one shorter when `w` does not divide `n`), as
//! Inseq's and Captum's sliding windows with the stride equal to the window: about
//! `n + n² / 2w` decoded tokens ([`spans_cost`]).

use std::num::NonZeroU32;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::error::EngineError;
use super::model::Model;
use super::{backend, log};

/// Scratch sequences (variants) per `llama_decode` (llama.cpp allows 256 sequences in all).
const MAX_SCRATCH: usize = 63;

/// Physical batch (ubatch) size. Kept at 32 so that every decode, the full context's and the
/// variants', runs the same CPU kernels: from 64 rows on, llama.cpp's CPU flash attention takes a
/// tiled path whose rounding differs, which moved log p by up to 0.2 between a context decoded
/// in one ubatch and the same context decoded in pieces. With 32, each variant's log p equals
/// a from-scratch decode of the shortened context (`Decoder` with `n_batch` 32; tested).
/// Flash attention stays at llama.cpp's default: with it disabled, variants decoded over a
/// copied prefix differed from from-scratch decodes by up to 0.5 in log p (not understood yet).
const UBATCH: u32 = 32;

/// The spans `[a, b)` of `window` consecutive tokens that tile a context of `n` tokens.
pub fn spans(n: usize, window: usize) -> Vec<std::ops::Range<usize>> {
    let w = window.max(1);
    (0..n).step_by(w).map(|a| a..(a + w).min(n)).collect()
}

/// Tokens [`Occluder::leave_spans_out`] decodes for a context of `n` tokens: the full context
/// once, then the suffix after each span but the last.
pub fn spans_cost(n: usize, window: usize) -> usize {
    let spans = spans(n, window);
    let suffixes: usize = spans.iter().map(|s| n - s.end).sum();
    if n == 0 { 0 } else { n + suffixes }
}

/// Result of [`Occluder::leave_one_out`] and [`Occluder::leave_spans_out`].
#[derive(Debug, Clone)]
pub struct LeaveOneOut {
    /// log p(target) after the full context, one per target asked for.
    pub full: Vec<f64>,
    /// The spans removed, in order (`j..j + 1` for leave-one-out).
    pub spans: Vec<std::ops::Range<usize>>,
    /// `without[s][t]`: log p(target t) after the context with span s removed.
    pub without: Vec<Vec<f64>>,
    /// Tokens decoded for this call (`n` for the full context plus the suffixes).
    pub decoded_tokens: usize,
    /// `llama_decode` calls for this call.
    pub decode_calls: usize,
}

/// A multi-sequence context for occlusion. Create once, call per target/context.
pub struct Occluder<'m> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_max: usize,
}

fn decode_error(e: impl std::fmt::Display) -> EngineError {
    let msg = log::take_errors().join("; ");
    EngineError::Decode(if msg.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {msg}")
    })
}

/// log softmax(logits)[t] for each target, in f64.
fn log_probs(logits: &[f32], targets: &[i32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    targets
        .iter()
        .map(|&t| logits[t as usize] as f64 - lse)
        .collect()
}

impl<'m> Occluder<'m> {
    /// A context for contexts of up to `max_tokens` tokens.
    pub fn new(model: &'m Model, max_tokens: usize, threads: i32) -> Result<Self, EngineError> {
        let n_max = max_tokens.max(2);
        // One decode holds the full context, or a group of suffixes (each shorter than it).
        let n_batch = n_max.max(512);
        // Cells: the full context plus one group of suffixes.
        let n_ctx = n_max + n_batch;
        let train = model.info().n_ctx_train.max(16) as usize;
        if n_max > train {
            return Err(EngineError::ContextFull {
                needed: n_max,
                n_ctx: train,
                trained: model.info().n_ctx_train as usize,
            });
        }
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx as u32))
            .with_n_batch(n_batch as u32)
            .with_n_ubatch(UBATCH)
            .with_n_seq_max(MAX_SCRATCH as u32 + 1)
            .with_kv_unified(true)
            .with_n_threads(threads.max(1))
            .with_n_threads_batch(threads.max(1));
        log::take_errors();
        let ctx = model
            .raw()
            .new_context(backend()?, params)
            .map_err(|e| EngineError::Context(format!("{e}; {}", log::take_errors().join("; "))))?;
        Ok(Self {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            n_batch,
            n_max,
        })
    }

    fn decode(&mut self) -> Result<(), EngineError> {
        log::take_errors();
        self.ctx.decode(&mut self.batch).map_err(decode_error)
    }

    /// log p(each target) after `context` and after `context` without each token.
    pub fn leave_one_out(
        &mut self,
        context: &[i32],
        targets: &[i32],
    ) -> Result<LeaveOneOut, EngineError> {
        let out = self.leave_spans_out(context, targets, 1, &mut |_| true)?;
        Ok(out.expect("never stopped"))
    }

    /// log p(each target) after `context` and after `context` without each span of `window`
    /// tokens ([`spans`]). `progress` hears the tokens decoded after each `llama_decode`
    /// (they add up to [`spans_cost`]); when it returns false the work stops there and the
    /// result is `None`.
    pub fn leave_spans_out(
        &mut self,
        context: &[i32],
        targets: &[i32],
        window: usize,
        progress: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Option<LeaveOneOut>, EngineError> {
        let n = context.len();
        if n == 0 {
            return Err(EngineError::EmptyContext);
        }
        if n > self.n_max {
            return Err(EngineError::ContextFull {
                needed: n,
                n_ctx: self.n_max,
                trained: self.model.info().n_ctx_train as usize,
            });
        }
        let n_vocab = self.model.n_vocab();
        if let Some(&bad) = context
            .iter()
            .chain(targets)
            .find(|&&t| !self.model.in_range(t))
        {
            return Err(EngineError::TokenOutOfRange {
                id: bad.into(),
                n_vocab,
            });
        }
        let spans = spans(n, window);
        let last = spans.last().expect("n > 0").clone();
        self.ctx.clear_kv_cache();
        let mut decoded = 0;
        let mut calls = 0;

        // The full context, logits at the last position and before the last span.
        self.batch.clear();
        for (i, &tok) in context.iter().enumerate() {
            let output = i + 1 == n || i + 1 == last.start;
            self.batch
                .add(LlamaToken(tok), i as i32, &[0], output)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        self.decode()?;
        decoded += n;
        calls += 1;
        if !progress(n) {
            return Ok(None);
        }
        let full = log_probs(self.ctx.get_logits_ith(n as i32 - 1), targets);
        let mut without = vec![Vec::new(); spans.len()];
        // Without the last span: the distribution after the tokens before it. Without the
        // whole context there is nothing left to condition on: the score is 0 by convention.
        without[spans.len() - 1] = if last.start > 0 {
            log_probs(self.ctx.get_logits_ith(last.start as i32 - 1), targets)
        } else {
            full.clone()
        };

        // The other spans, grouped into decodes of at most n_batch tokens. Span [a, b) keeps
        // the prefix [0, a) and decodes context[b..] at positions a.. (its last token's row
        // predicts the target).
        let mut s = 0;
        while s + 1 < spans.len() {
            let mut group = Vec::new(); // (span index, seq, batch row of its last token)
            let mut used = 0;
            while s + 1 < spans.len()
                && group.len() < MAX_SCRATCH
                && used + (n - spans[s].end) <= self.n_batch
            {
                used += n - spans[s].end;
                group.push((s, group.len() as i32 + 1, used - 1));
                s += 1;
            }
            self.batch.clear();
            for &(ss, seq, _) in &group {
                let span = &spans[ss];
                if span.start > 0 {
                    self.ctx
                        .kv_cache_seq_cp(0, seq, Some(0), Some(span.start as u32))
                        .map_err(decode_error)?;
                }
                let suffix = &context[span.end..];
                for (k, &tok) in suffix.iter().enumerate() {
                    let pos = span.start + k;
                    self.batch
                        .add(LlamaToken(tok), pos as i32, &[seq], k + 1 == suffix.len())
                        .map_err(|e| EngineError::Decode(e.to_string()))?;
                }
            }
            self.decode()?;
            decoded += used;
            calls += 1;
            for &(ss, seq, row) in &group {
                without[ss] = log_probs(self.ctx.get_logits_ith(row as i32), targets);
                self.ctx
                    .kv_cache_seq_rm(seq, None, None)
                    .map_err(decode_error)?;
            }
            if !progress(used) {
                return Ok(None);
            }
        }
        Ok(Some(LeaveOneOut {
            full,
            spans,
            without,
            decoded_tokens: decoded,
            decode_calls: calls,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_tile_the_context() {
        assert_eq!(spans(5, 1), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        assert_eq!(spans(5, 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(spans(4, 4), vec![0..4]);
        assert!(spans(0, 3).is_empty());
        // Leave-one-out: n + (n-1) + ... + 1 + 0.
        assert_eq!(spans_cost(25, 1), 25 + 24 * 25 / 2);
        // Window 2 over 5 tokens: the full 5, then suffixes 3 and 1 (the last span none).
        assert_eq!(spans_cost(5, 2), 5 + 3 + 1);
        assert_eq!(spans_cost(4, 4), 4);
        assert_eq!(spans_cost(0, 1), 0);
        // About n + n²/2w.
        let (n, w) = (1000, 10);
        let c = spans_cost(n, w) as f64;
        let approx = (n + n * n / (2 * w)) as f64;
        assert!((c / approx - 1.0).abs() < 0.02, "{c} vs {approx}");
    }
}
