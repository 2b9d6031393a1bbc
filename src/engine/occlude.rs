//! Leave-one-out decoding for occlusion: log p(target) after the full context and after the
//! context with each token removed, reusing the KV prefix before the removed token.
//!
//! The full context is decoded once into sequence 0. For the variant without token `j`, the
//! cells of positions `[0, j)` are copied (metadata only: the cache is unified) from sequence 0
//! into a scratch sequence and only `context[j+1..]` is decoded, at positions `j..`. Many variants
//! share one `llama_decode` (one scratch sequence each); removing the last token needs no decode
//! at all (its answer is the full decode's row before last).

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

/// Result of [`Occluder::leave_one_out`].
#[derive(Debug, Clone)]
pub struct LeaveOneOut {
    /// log p(target) after the full context, one per target asked for.
    pub full: Vec<f64>,
    /// `without[j][t]`: log p(target t) after the context with token j removed.
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
        self.ctx.clear_kv_cache();
        let mut decoded = 0;
        let mut calls = 0;

        // The full context, logits at the last two positions.
        self.batch.clear();
        for (i, &tok) in context.iter().enumerate() {
            self.batch
                .add(LlamaToken(tok), i as i32, &[0], i + 2 >= n)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        self.decode()?;
        decoded += n;
        calls += 1;
        let full = log_probs(self.ctx.get_logits_ith(n as i32 - 1), targets);
        let mut without = vec![Vec::new(); n];
        // Without the last token: the distribution after the first n - 1 tokens. With a
        // one-token context there is nothing left to condition on: the score is 0 by convention.
        without[n - 1] = if n >= 2 {
            log_probs(self.ctx.get_logits_ith(n as i32 - 2), targets)
        } else {
            full.clone()
        };

        // Variants j < n - 1, grouped into decodes of at most n_batch tokens.
        let mut j = 0;
        while j + 1 < n {
            let mut group = Vec::new(); // (j, seq, batch row of its last token)
            let mut used = 0;
            while j + 1 < n && group.len() < MAX_SCRATCH && used + (n - 1 - j) <= self.n_batch {
                used += n - 1 - j;
                group.push((j, group.len() as i32 + 1, used - 1));
                j += 1;
            }
            self.batch.clear();
            for &(jj, seq, _) in &group {
                if jj > 0 {
                    self.ctx
                        .kv_cache_seq_cp(0, seq, Some(0), Some(jj as u32))
                        .map_err(decode_error)?;
                }
                for (k, &tok) in context[jj + 1..].iter().enumerate() {
                    let pos = jj + k;
                    self.batch
                        .add(LlamaToken(tok), pos as i32, &[seq], pos + 2 == n)
                        .map_err(|e| EngineError::Decode(e.to_string()))?;
                }
            }
            self.decode()?;
            decoded += used;
            calls += 1;
            for &(jj, seq, row) in &group {
                without[jj] = log_probs(self.ctx.get_logits_ith(row as i32), targets);
                self.ctx
                    .kv_cache_seq_rm(seq, None, None)
                    .map_err(decode_error)?;
            }
        }
        Ok(LeaveOneOut {
            full,
            without,
            decoded_tokens: decoded,
            decode_calls: calls,
        })
    }
}
