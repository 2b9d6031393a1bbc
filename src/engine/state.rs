//! The KV state of seq 0 as plain bytes, for the cross-invocation prefix cache
//! (`crate::kvcache`).
//!
//! llama.cpp's sequence state holds the K/V cells only (positions and tensors), never logits:
//! after a restore the decoder knows the cached tokens but has no logits row, so the next
//! [`Decoder::eval`] decodes what follows them, or the last token again when nothing follows.
//! llama.cpp checks only the layout of a state (layer count, K/V types and row sizes, cell
//! count); the caller must make sure the bytes belong to this model and these context
//! parameters ([`Decoder::kv_params_key`] plus a model fingerprint).

use llama_cpp_2::LlamaStateSeqFlags;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::token::LlamaToken;

use super::decoder::Decoder;
use super::error::EngineError;
use super::log;

/// The sequence every `Decoder` decodes into.
const SEQ: i32 = 0;

fn state_error(what: &str) -> EngineError {
    let msg = log::take_errors().join("; ");
    EngineError::Decode(if msg.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {msg}")
    })
}

impl Decoder<'_> {
    /// The KV state of the cached tokens ([`Decoder::cached`]) as bytes, for
    /// [`Decoder::restore_prefix`] in another process.
    pub fn save_prefix(&self) -> Result<Vec<u8>, EngineError> {
        let mut bytes = vec![0u8; self.state_size()?];
        self.save_prefix_into(&mut bytes)?;
        Ok(bytes)
    }

    /// Bytes [`Decoder::save_prefix_into`] needs for the sequence's current state.
    pub fn state_size(&self) -> Result<usize, EngineError> {
        if self.cached.is_empty() {
            return Err(EngineError::EmptyContext);
        }
        log::take_errors();
        let size = self
            .ctx
            .state_seq_get_size_ext(SEQ, LlamaStateSeqFlags::empty());
        if size == 0 {
            return Err(state_error("could not measure the KV state"));
        }
        Ok(size)
    }

    /// Write the sequence's state into `buf`, which must be exactly
    /// [`Decoder::state_size`] bytes (e.g. a memory-mapped file).
    pub fn save_prefix_into(&self, buf: &mut [u8]) -> Result<(), EngineError> {
        let size = self.state_size()?;
        if buf.len() != size {
            return Err(state_error(&format!(
                "the KV state needs {size} bytes, the buffer has {}",
                buf.len()
            )));
        }
        // SAFETY: `buf` holds exactly `size` writable bytes, the size llama.cpp has just
        // reported for the same sequence and flags. Nothing can change the cache in between:
        // both calls happen under this one `&self` borrow, and every method that decodes or
        // edits the cache takes `&mut self`. The writer serialises the same cells it measured,
        // so it stays within the buffer (the wrapper passes `usize::MAX` as the bound, which is
        // why the length must be exact), and the length it returns is checked below.
        let written = unsafe {
            self.ctx
                .state_seq_get_data_ext(buf.as_mut_ptr(), SEQ, LlamaStateSeqFlags::empty())
        };
        if written != size {
            return Err(state_error(&format!(
                "the KV state took {written} bytes instead of the {size} announced"
            )));
        }
        Ok(())
    }

    /// Write the sequence's state to a new file at `path` in llama.cpp's sequence-state format
    /// (the cached token ids, then the state), streamed from the KV cache.
    pub fn save_prefix_file(&self, path: &std::path::Path) -> Result<(), EngineError> {
        if self.cached.is_empty() {
            return Err(EngineError::EmptyContext);
        }
        let tokens: Vec<LlamaToken> = self.cached.iter().map(|&t| LlamaToken(t)).collect();
        log::take_errors();
        self.ctx
            .state_seq_save_file(path, SEQ, &tokens)
            .map_err(|e| state_error(&format!("could not save the KV state: {e}")))?;
        Ok(())
    }

    /// Restore a file written by [`Decoder::save_prefix_file`] for tokens that start with
    /// `tokens`; the cache then holds `tokens` (positions past them are dropped). As with
    /// [`Decoder::restore_prefix`], no logits come back, and on failure the cache is empty.
    /// The file must have been checked first (llama.cpp trusts its contents).
    pub fn restore_prefix_file(
        &mut self,
        tokens: &[i32],
        path: &std::path::Path,
    ) -> Result<(), EngineError> {
        self.restore_with(tokens, |dec| {
            let n_ctx = dec.n_ctx();
            let (saved, _) = dec
                .ctx
                .state_seq_load_file(path, SEQ, n_ctx)
                .map_err(|e| state_error(&format!("could not load the KV state: {e}")))?;
            if saved.len() < tokens.len() || saved.iter().zip(tokens).any(|(s, &t)| s.0 != t) {
                return Err(EngineError::Decode(
                    "the KV state file holds other tokens than asked for".into(),
                ));
            }
            Ok(())
        })
    }

    /// Put a state saved by [`Decoder::save_prefix`] into the cache, which then holds `tokens`.
    /// The state may cover more positions than `tokens` (a longer saved context sharing this
    /// prefix): those are dropped. No logits come back: the next [`Decoder::eval`] decodes the
    /// rest of its context, or the last token again when the context is exactly `tokens`.
    ///
    /// The bytes must come from the same model and the same [`Decoder::kv_params_key`]; llama.cpp
    /// rejects a different layout, but not different numbers. On failure the cache is empty.
    pub fn restore_prefix(&mut self, tokens: &[i32], bytes: &[u8]) -> Result<(), EngineError> {
        self.restore_with(tokens, |dec| {
            // SAFETY: `bytes` is a live slice for the whole call and llama.cpp reads it through
            // a bounds-checked reader (running past its end throws, which the C API catches and
            // reports as 0). It checks the magic, stream count, cell count against this
            // context's size, layer count, K/V types and row sizes, and rejects a mismatch
            // without touching other sequences. `&mut self` means no decode runs meanwhile.
            let ok = unsafe {
                dec.ctx
                    .state_seq_set_data_ext(bytes, SEQ, LlamaStateSeqFlags::empty())
            };
            if ok {
                Ok(())
            } else {
                Err(state_error("llama.cpp rejected the cached KV state"))
            }
        })
    }

    /// Empty the cache, `load` a state into sequence 0, keep its first `tokens.len()`
    /// positions; on any failure the cache is left empty.
    fn restore_with(
        &mut self,
        tokens: &[i32],
        load: impl FnOnce(&mut Self) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        self.check_restorable(tokens)?;
        self.ctx.clear_kv_cache();
        self.cached.clear();
        self.last_row = None;
        log::take_errors();
        match load(self).and_then(|()| self.keep_restored(tokens.len())) {
            Ok(()) => {
                self.cached = tokens.to_vec();
                Ok(())
            }
            Err(e) => {
                self.ctx.clear_kv_cache();
                Err(e)
            }
        }
    }

    /// `tokens` can be the content of this context: not empty, within it, in the vocabulary.
    fn check_restorable(&self, tokens: &[i32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyContext);
        }
        if tokens.len() > self.n_ctx() {
            return Err(EngineError::ContextFull {
                needed: tokens.len(),
                n_ctx: self.n_ctx(),
                trained: self.model().info().n_ctx_train as usize,
            });
        }
        let model = self.model();
        if let Some(&bad) = tokens.iter().find(|&&t| !model.in_range(t)) {
            return Err(EngineError::TokenOutOfRange {
                id: bad.into(),
                n_vocab: model.n_vocab(),
            });
        }
        Ok(())
    }

    fn keep_restored(&mut self, n: usize) -> Result<(), EngineError> {
        let (lo, hi) = (
            self.ctx.kv_cache_seq_pos_min(SEQ),
            self.ctx.kv_cache_seq_pos_max(SEQ),
        );
        if lo != 0 || hi < 0 || (hi as usize) + 1 < n {
            return Err(EngineError::Decode(format!(
                "the cached KV state holds positions {lo}..={hi}, not the {n} tokens it was stored for"
            )));
        }
        if (hi as usize) + 1 > n {
            self.ctx
                .kv_cache_seq_rm(SEQ, Some(n as u32), None)
                .map_err(|e| {
                    EngineError::Decode(format!("could not trim the restored KV state: {e}"))
                })?;
        }
        Ok(())
    }

    /// What makes a saved KV state usable by this decoder, besides the model itself (the caller
    /// adds the model fingerprint): the llama.cpp build, the context length asked for and
    /// allocated, the K/V cache types, the flash-attention policy (it decides whether V is stored
    /// transposed), the sequence layout and the devices holding the cache. Batch sizes and
    /// thread counts are left out: they change neither the layout nor what a state means.
    pub fn kv_params_key(&self) -> String {
        // `Decoder::new` starts from llama.cpp's defaults and sets only n_ctx, the batch sizes
        // and the threads, so the defaults are what this context runs with.
        let p = LlamaContextParams::default();
        let fa = match p.flash_attention_policy() {
            -1 => "auto".to_string(),
            0 => "off".to_string(),
            1 => "on".to_string(),
            other => other.to_string(),
        };
        let info = self.model().info();
        format!(
            "ntv-kv/1;{};n_ctx={}/{};type_k={:?};type_v={:?};fa={fa};n_seq_max={};kv_unified={};swa_full={};offload_kqv={};gpu_layers={};devices={}",
            super::llama_cpp_version(),
            self.n_ctx(),
            self.ctx.n_ctx(),
            p.type_k(),
            p.type_v(),
            p.n_seq_max(),
            p.kv_unified(),
            p.swa_full(),
            p.offload_kqv(),
            info.gpu_layers_offloaded,
            super::devices().join(","),
        )
    }
}
