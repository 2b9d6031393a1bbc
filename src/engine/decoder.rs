//! A llama.cpp context over one sequence, with KV-cache reuse: asking for the logits after a
//! token list decodes only what is not already in the cache.

use std::num::NonZeroU32;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::error::EngineError;
use super::model::Model;
use super::{backend, log};

/// How to build a context.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Context length in tokens (clamped to the model's training context).
    pub n_ctx: u32,
    /// CPU threads for generation and prompt processing.
    pub n_threads: i32,
    /// Logical batch: the most tokens one `decode` call takes (and the most logit rows).
    pub n_batch: u32,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            n_ctx: 4096,
            n_threads: default_threads(),
            n_batch: 512,
        }
    }
}

/// One thread per available core (ggml's own pool; no OpenMP).
pub fn default_threads() -> i32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(4)
}

/// A decoding context for one sequence (seq 0) of a model.
pub struct Decoder<'m> {
    model: &'m Model,
    pub(super) ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    /// The tokens whose K/V are in the cache, in order.
    pub(super) cached: Vec<i32>,
    /// Batch row holding the logits after the last cached token, if the last decode produced it.
    pub(super) last_row: Option<i32>,
    /// Tokens decoded by this context so far (for benchmarks and tests of KV reuse).
    decoded_total: usize,
    /// The context length asked for (llama.cpp may round its allocation up).
    n_ctx: usize,
}

impl<'m> Decoder<'m> {
    /// Create a context for `model`.
    pub fn new(model: &'m Model, opts: &ContextOptions) -> Result<Self, EngineError> {
        let n_ctx = opts.n_ctx.min(model.info().n_ctx_train.max(1)).max(16);
        let n_batch = opts.n_batch.clamp(1, n_ctx);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(opts.n_threads)
            .with_n_threads_batch(opts.n_threads);
        log::take_errors();
        let ctx = model
            .raw()
            .new_context(backend()?, params)
            .map_err(|e| EngineError::Context(format!("{e}; {}", log::take_errors().join("; "))))?;
        Ok(Self {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            cached: Vec::new(),
            last_row: None,
            decoded_total: 0,
            n_ctx: n_ctx as usize,
        })
    }

    /// The model this context runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Context length in tokens.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx.min(self.ctx.n_ctx() as usize)
    }

    /// Tokens decoded by this context so far.
    pub fn decoded_total(&self) -> usize {
        self.decoded_total
    }

    /// The tokens currently in the KV cache.
    pub fn cached(&self) -> &[i32] {
        &self.cached
    }

    fn check(&self, tokens: &[i32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyContext);
        }
        if tokens.len() > self.n_ctx() {
            return Err(EngineError::ContextFull {
                needed: tokens.len(),
                n_ctx: self.n_ctx(),
                trained: self.model.info().n_ctx_train as usize,
            });
        }
        let n_vocab = self.model.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| !self.model.in_range(t)) {
            return Err(EngineError::TokenOutOfRange {
                id: bad.into(),
                n_vocab,
            });
        }
        Ok(())
    }

    /// How many leading tokens of `tokens` the cache holds.
    fn common_prefix(&self, tokens: &[i32]) -> usize {
        self.cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Drop everything from position `keep` on from the cache.
    fn truncate_cache(&mut self, keep: usize) -> Result<(), EngineError> {
        if keep < self.cached.len() {
            self.ctx
                .kv_cache_seq_rm(0, Some(keep as u32), None)
                .map_err(|e| EngineError::Decode(format!("could not trim the KV cache: {e}")))?;
            self.cached.truncate(keep);
            self.last_row = None;
        }
        Ok(())
    }

    /// Decode `new` after what is cached; logits for rows where `want(pos)` is true (always for
    /// the final token); `each(pos, logits)` sees every requested row after its chunk.
    fn decode_more(
        &mut self,
        new: &[i32],
        want: &dyn Fn(usize) -> bool,
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        let base = self.cached.len();
        let last = base + new.len() - 1;
        for chunk in new.chunks(self.n_batch) {
            let start = self.cached.len();
            self.batch.clear();
            for (i, &tok) in chunk.iter().enumerate() {
                let pos = start + i;
                self.batch
                    .add(LlamaToken(tok), pos as i32, &[0], pos == last || want(pos))
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
            self.last_row = None;
            self.ctx.decode(&mut self.batch).map_err(|e| {
                let msg = log::take_errors().join("; ");
                EngineError::Decode(if msg.is_empty() {
                    e.to_string()
                } else {
                    format!("{e}: {msg}")
                })
            })?;
            self.decoded_total += chunk.len();
            self.cached.extend_from_slice(chunk);
            for i in 0..chunk.len() {
                let pos = start + i;
                if pos == last || want(pos) {
                    each(pos, self.ctx.get_logits_ith(i as i32));
                }
            }
            if start + chunk.len() - 1 == last {
                self.last_row = Some((chunk.len() - 1) as i32);
            }
        }
        Ok(())
    }

    /// Make the cache hold exactly `tokens` and return the logits for the position after the
    /// last one. Only the part after the longest common prefix with the cache is decoded; when
    /// everything is cached, the last token is decoded again to get its logits back.
    pub fn eval(&mut self, tokens: &[i32]) -> Result<&[f32], EngineError> {
        self.check(tokens)?;
        let lcp = self.common_prefix(tokens);
        if lcp == tokens.len() && lcp == self.cached.len() && self.last_row.is_some() {
            return Ok(self.last_logits());
        }
        let keep = lcp.min(tokens.len() - 1);
        self.truncate_cache(keep)?;
        self.decode_more(&tokens[keep..], &|_| false, &mut |_, _| {})?;
        Ok(self.last_logits())
    }

    /// Append one token to what is cached and return the logits after it.
    pub fn push(&mut self, token: i32) -> Result<&[f32], EngineError> {
        if !self.model.in_range(token) {
            return Err(EngineError::TokenOutOfRange {
                id: token.into(),
                n_vocab: self.model.n_vocab(),
            });
        }
        if self.cached.len() + 1 > self.n_ctx() {
            return Err(EngineError::ContextFull {
                needed: self.cached.len() + 1,
                n_ctx: self.n_ctx(),
                trained: self.model.info().n_ctx_train as usize,
            });
        }
        self.decode_more(&[token], &|_| false, &mut |_, _| {})?;
        Ok(self.last_logits())
    }

    /// Teacher forcing: decode `tokens` with logits at every position and hand each row to
    /// `each(pos, logits)` (row `pos` predicts token `pos + 1`). Leaves the cache holding
    /// `tokens` with the final logits available.
    pub fn eval_all(
        &mut self,
        tokens: &[i32],
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        self.eval_rows(tokens, &|_| true, each)
    }

    /// Decode `tokens` with logits at the positions `want` selects (and the last), handing
    /// each row to `each(pos, logits)`. What the cache holds of `tokens` before the first
    /// selected position is kept, not decoded again. Leaves the cache holding `tokens`.
    pub fn eval_rows(
        &mut self,
        tokens: &[i32],
        want: &dyn Fn(usize) -> bool,
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        self.check(tokens)?;
        let lcp = self.common_prefix(tokens);
        let first = (0..tokens.len())
            .find(|&p| want(p))
            .unwrap_or(tokens.len() - 1);
        let keep = lcp.min(first);
        // Whatever is cached past `keep` is decoded again (its logits are gone).
        self.truncate_cache(keep)?;
        self.decode_more(&tokens[keep..], want, each)
    }

    fn last_logits(&self) -> &[f32] {
        let row = self.last_row.unwrap_or(-1);
        self.ctx.get_logits_ith(row)
    }
}
