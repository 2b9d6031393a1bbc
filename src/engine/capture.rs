//! Attention capture: a llama.cpp context built through `llama_cpp_sys_2` (the safe API has no
//! eval callback) with flash attention disabled, so that every attention layer materialises its
//! softmax as `kq_soft_max-<layer>` (`ne = [n_kv, n_tokens, n_head, n_stream]`). The callback
//! copies only the rows of the query positions asked for (by default the last token, which
//! predicts the target), all heads, straight out of the backend buffer (CPU or GPU).
//!
//! Every decode starts from an empty cache holding one sequence, so KV cell `j` holds position
//! `j`; the cells past the context are masked and checked to be (numerically) zero.
//!
//! The logits (and so p(target)) come from an ordinary decoder the caller passes in (the
//! attributor's, which also chose the default target, so the context is usually in its KV
//! cache already): llama.cpp's default flash attention and f16 KV cache, as every decode runs. Without flash
//! attention the forward sums in another order, and through the quantised matmuls that moved
//! p(target) by up to 0.018 (public example: 0.119 vs the decode's 0.138). An f32 KV cache in
//! the capture context was measured not to close the gap (still up to 0.018 on the same
//! prompts, in either direction, and the example's attention Spearman fell to 0.997), so the
//! capture context keeps only the attention rows and every llama.cpp method reports the one
//! decode's probability.

use std::ffi::{CStr, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_sys_2 as sys;

use super::decoder::Decoder;
use super::error::EngineError;
use super::log;
use super::model::Model;

/// Name prefix of the attention-probability tensors in llama.cpp's graphs.
const SOFTMAX_PREFIX: &[u8] = b"kq_soft_max-";

/// The raw `llama_model` pointer of a safe `LlamaModel`.
///
/// # Safety
/// The pointer is only valid while `model` is alive; the caller must not use it after `model` is
/// dropped and must not free it.
pub(super) unsafe fn raw_model_ptr(model: &LlamaModel) -> *mut sys::llama_model {
    // The layout this relies on is checked at compile time: a `LlamaModel` is exactly one pointer.
    const _: () =
        assert!(std::mem::size_of::<LlamaModel>() == std::mem::size_of::<*mut sys::llama_model>());
    // SAFETY: llama-cpp-2 =0.1.160 (pinned in Cargo.toml) declares `LlamaModel` as
    // `#[repr(transparent)] struct { model: Ptr<llama_model> }` and `Ptr<T>` as
    // `#[repr(transparent)] struct(NonNull<T>)`, so a `&LlamaModel` points at one initialised,
    // non-null `*mut llama_model`, which is read here by value (no ownership taken).
    unsafe { *(std::ptr::from_ref(model).cast::<*mut sys::llama_model>()) }
}

/// Attention rows for one query position: `[layer][head][position]`, positions `0..n_pos`.
#[derive(Debug, Clone)]
pub struct AttentionRows {
    /// Layers of the model (layers without attention, if any, hold zeros and are not listed in
    /// `layers`).
    pub n_layer: usize,
    /// Query heads per layer.
    pub n_head: usize,
    /// Context positions covered (the query position + 1).
    pub n_pos: usize,
    /// The layers llama.cpp reported an attention softmax for, ascending.
    pub layers: Vec<usize>,
    /// `n_layer * n_head * n_pos` probabilities.
    pub data: Vec<f32>,
    /// Largest probability found on a KV cell past the context (masked: should be 0).
    pub masked_max: f32,
    /// The logits at the query position (the distribution of the next token), `n_vocab` long,
    /// from the ordinary decode path (flash attention, as the decoder), not the capture's own
    /// forward (see the module doc).
    pub logits: Vec<f32>,
}

impl AttentionRows {
    /// Attention of `head` in `layer` from the query position to every context position.
    pub fn row(&self, layer: usize, head: usize) -> &[f32] {
        let start = (layer * self.n_head + head) * self.n_pos;
        &self.data[start..start + self.n_pos]
    }
}

/// What the callback fills during one decode.
#[derive(Default)]
struct CaptureState {
    /// True only while our own `llama_decode` runs.
    armed: bool,
    /// Tokens in the ubatch being decoded.
    n_tokens: usize,
    /// Query rows (ubatch indices) to copy.
    rows: Vec<usize>,
    /// Per layer: `(n_kv, n_head, rows × heads × n_kv floats)`.
    layers: Vec<Option<(usize, usize, Vec<f32>)>>,
    /// First problem met inside the callback (reported after the decode).
    error: Option<String>,
}

impl TensorSink for CaptureState {
    unsafe fn on_tensor(&mut self, t: *mut sys::ggml_tensor, ask: bool) -> bool {
        // SAFETY: the trait's contract is the method's.
        unsafe { self.on_node(t, ask) }
    }
    fn error_slot(&mut self) -> &mut Option<String> {
        &mut self.error
    }
}

impl CaptureState {
    /// `ask`: do we want this tensor? Otherwise copy the rows out of it.
    ///
    /// # Safety
    /// `t` must be a valid tensor handed to the eval callback by ggml's scheduler; when `ask` is
    /// false its data must be computed and allocated (the scheduler guarantees both).
    unsafe fn on_node(&mut self, t: *mut sys::ggml_tensor, ask: bool) -> bool {
        if !self.armed {
            return !ask;
        }
        // SAFETY: `t` is valid for the callback (caller contract); `ggml_get_name` returns a
        // pointer to the tensor's NUL-terminated inline name, alive as long as the tensor.
        let name = unsafe { CStr::from_ptr(sys::ggml_get_name(t)) }.to_bytes();
        let Some(layer) = name
            .strip_prefix(SOFTMAX_PREFIX)
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| rest.parse::<usize>().ok())
        else {
            return !ask;
        };
        if ask {
            return true;
        }
        // SAFETY: valid tensor (caller contract); reading plain fields.
        let (ty, ne, nb) = unsafe { ((*t).type_, (*t).ne, (*t).nb) };
        if ty != sys::GGML_TYPE_F32 || nb[0] != 4 {
            self.error.get_or_insert_with(|| {
                format!("kq_soft_max-{layer} is not a contiguous f32 tensor")
            });
            return true;
        }
        let [n_kv, n_tok, n_head, n_stream] = ne.map(|x| usize::try_from(x).unwrap_or(0));
        if n_tok != self.n_tokens || n_stream != 1 || n_kv < self.n_tokens || n_head == 0 {
            self.error.get_or_insert_with(|| {
                format!(
                    "kq_soft_max-{layer} has shape {ne:?}, expected [>= {n}, {n}, heads, 1]",
                    n = self.n_tokens
                )
            });
            return true;
        }
        let mut out = vec![0f32; self.rows.len() * n_head * n_kv];
        for (k, &row) in self.rows.iter().enumerate() {
            let dst = &mut out[k * n_head * n_kv..(k + 1) * n_head * n_kv];
            // SAFETY: the tensor is computed and allocated (caller contract). The read covers,
            // for each head h < ne[2], bytes [row*nb[1] + h*nb[2], + n_kv*4) of stream 0, which
            // lie inside the tensor since row < ne[1], nb[0] = 4 and the rows are contiguous;
            // ggml asserts the same bound. `dst` holds exactly n_head rows of n_kv f32s, the
            // destination stride. ggml_backend_tensor_get_2d copies from host or device memory
            // and synchronously returns.
            unsafe {
                sys::ggml_backend_tensor_get_2d(
                    t,
                    dst.as_mut_ptr().cast::<c_void>(),
                    row * nb[1],
                    n_kv * 4,
                    n_head,
                    nb[2],
                    n_kv * 4,
                );
            }
        }
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        self.layers[layer] = Some((n_kv, n_head, out));
        true
    }
}

/// What an eval callback feeds: the state of one capture context (attention rows, the lens's
/// residual stream).
pub(super) trait TensorSink {
    /// Sees one graph node: with `ask`, whether to be called again once it is computed;
    /// without, the computed node (`false` would abort the decode).
    ///
    /// # Safety
    /// `t` is a node of the graph being computed, valid for the call.
    unsafe fn on_tensor(&mut self, t: *mut sys::ggml_tensor, ask: bool) -> bool;
    /// Where a failure inside the callback is recorded.
    fn error_slot(&mut self) -> &mut Option<String>;
}

/// The eval callback for a [`TensorSink`] of type `S`. Never unwinds: a panic is caught and
/// recorded, and the decode goes on.
pub(super) unsafe extern "C" fn eval_callback<S: TensorSink>(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user: *mut c_void,
) -> bool {
    let state = user.cast::<S>();
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `user` is the `S` its context was created with, freed only after
        // `llama_free`; the callback runs on the thread inside `llama_decode`, called under
        // the context's `&mut self`, so nothing else touches the state meanwhile. `t` comes
        // from ggml's scheduler, which computes the node before the `ask = false` call.
        unsafe { (*state).on_tensor(t, ask) }
    }));
    match result {
        Ok(v) => v,
        Err(_) => {
            // SAFETY: as above; the panicking borrow has ended with the unwind.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
                (*state)
                    .error_slot()
                    .get_or_insert_with(|| "panic inside the eval callback".into());
            }));
            // Keep computing: `false` on `ask = false` would abort the decode mid-graph.
            !ask
        }
    }
}

/// A context that records attention rows. Create once, then [`AttentionCapture::capture`] per
/// target (the cache is cleared each time).
pub struct AttentionCapture<'m> {
    model: &'m Model,
    ctx: *mut sys::llama_context,
    state: *mut CaptureState,
    batch: sys::llama_batch,
    n_max: usize,
    n_vocab: usize,
}

impl<'m> AttentionCapture<'m> {
    /// A capture context for contexts of up to `max_tokens` tokens, decoded in one ubatch.
    pub fn new(model: &'m Model, max_tokens: usize, threads: i32) -> Result<Self, EngineError> {
        let n_max = max_tokens.max(16);
        if n_max > model.info().n_ctx_train.max(16) as usize {
            return Err(EngineError::ContextFull {
                needed: n_max,
                n_ctx: model.info().n_ctx_train as usize,
                trained: model.info().n_ctx_train as usize,
            });
        }
        let n = u32::try_from(n_max).map_err(|_| EngineError::ContextFull {
            needed: n_max,
            n_ctx: u32::MAX as usize,
            trained: model.info().n_ctx_train as usize,
        })?;
        let state = Box::into_raw(Box::<CaptureState>::default());
        // SAFETY: plain constructor returning a struct by value.
        let mut params = unsafe { sys::llama_context_default_params() };
        params.n_ctx = n;
        params.n_batch = n;
        params.n_ubatch = n;
        params.n_seq_max = 1;
        params.n_threads = threads.max(1);
        params.n_threads_batch = threads.max(1);
        params.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
        params.cb_eval = Some(eval_callback::<CaptureState>);
        params.cb_eval_user_data = state.cast::<c_void>();
        log::take_errors();
        // SAFETY: the model pointer is alive for 'm, which outlives this struct (it borrows the
        // model); `params` is fully initialised from llama.cpp's defaults; the user data lives
        // until after `llama_free` (Drop). llama.cpp returns null on failure.
        let ctx = unsafe { sys::llama_init_from_model(raw_model_ptr(model.raw()), params) };
        if ctx.is_null() {
            // SAFETY: `state` came from Box::into_raw above and was never handed to a live
            // context.
            drop(unsafe { Box::from_raw(state) });
            return Err(EngineError::Context(format!(
                "attention context: {}",
                log::take_errors().join("; ")
            )));
        }
        // SAFETY: allocates a token batch (embd = 0) of n_max tokens, one sequence id each;
        // freed in Drop.
        let batch = unsafe { sys::llama_batch_init(n as i32, 0, 1) };
        Ok(Self {
            model,
            ctx,
            state,
            batch,
            n_max,
            n_vocab: model.n_vocab(),
        })
    }

    /// Attention from the last token of `tokens` (the position predicting the next token) to
    /// every position of `tokens`; the logits come from `logits` (see
    /// [`AttentionCapture::capture`]).
    pub fn capture_last(
        &mut self,
        tokens: &[i32],
        logits: &mut Decoder<'_>,
    ) -> Result<AttentionRows, EngineError> {
        let last = tokens.len().saturating_sub(1);
        Ok(self.capture(tokens, &[last], logits)?.remove(0))
    }

    /// Attention rows for the query positions `rows` (each `< tokens.len()`), one decode of
    /// `tokens` in one ubatch. Row `p` is what a context of `tokens[..=p]` gives (causal mask),
    /// so one call serves every completion token of a sequence.
    ///
    /// The rows' logits come from `logits`, an ordinary decoder (flash attention, as every
    /// decode runs), not from this context: they are the decode's own. A decoder that holds
    /// `tokens` already (e.g. the one that chose the target) gives the last position's logits
    /// without decoding again.
    pub fn capture(
        &mut self,
        tokens: &[i32],
        rows: &[usize],
        logits: &mut Decoder<'_>,
    ) -> Result<Vec<AttentionRows>, EngineError> {
        let n = tokens.len();
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
        if let Some(&bad) = tokens.iter().find(|&&t| !self.model.in_range(t)) {
            return Err(EngineError::TokenOutOfRange {
                id: bad.into(),
                n_vocab: self.n_vocab,
            });
        }
        if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
            return Err(EngineError::Decode(format!(
                "query position {bad} is outside the {n}-token context"
            )));
        }
        // SAFETY: `self.ctx` is a live context (freed only in Drop); clearing its memory is
        // always allowed between decodes. A fresh cache puts position j in cell j.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx), true) };
        // SAFETY: the batch was allocated (llama_batch_init) with room for n_max >= n tokens
        // and one seq id per token.
        unsafe { fill_batch(&mut self.batch, tokens, |i| rows.contains(&i)) };
        {
            // SAFETY: no decode is running (we hold &mut self), so the callback does not
            // touch the state now.
            let st = unsafe { &mut *self.state };
            st.armed = true;
            st.n_tokens = n;
            st.rows = rows.to_vec();
            st.layers.clear();
            st.error = None;
        }
        log::take_errors();
        // SAFETY: live context and a batch filled above for n tokens; the callback state is
        // alive. llama_decode returns a status code.
        let rc = unsafe { sys::llama_decode(self.ctx, self.batch) };
        // SAFETY: the decode has returned; the callback is no longer running.
        let st = unsafe { &mut *self.state };
        st.armed = false;
        if rc != 0 {
            return Err(EngineError::Decode(format!(
                "llama_decode returned {rc}: {}",
                log::take_errors().join("; ")
            )));
        }
        if let Some(e) = st.error.take() {
            return Err(EngineError::Decode(e));
        }
        let layers: Vec<usize> = (0..st.layers.len())
            .filter(|&l| st.layers[l].is_some())
            .collect();
        if layers.is_empty() {
            return Err(EngineError::Decode(
                "no attention softmax (kq_soft_max-*) was computed: this architecture has no \
                 softmax attention llama.cpp exposes"
                    .into(),
            ));
        }
        let logits = self.decode_logits(logits, tokens, rows)?;
        // SAFETY: as above; the decode of the logits context does not run the callback.
        let st = unsafe { &mut *self.state };
        let n_layer = (self.model.info().n_layer as usize).max(st.layers.len());
        let n_head = st.layers.iter().flatten().map(|l| l.1).max().unwrap_or(0);
        let mut out = Vec::with_capacity(rows.len());
        for (k, &row) in rows.iter().enumerate() {
            let n_pos = row + 1;
            let mut data = vec![0f32; n_layer * n_head * n_pos];
            let mut masked_max = 0f32;
            for &l in &layers {
                let (n_kv, nh, buf) = st.layers[l].as_ref().expect("listed layer");
                for h in 0..*nh {
                    let src = &buf[(k * nh + h) * n_kv..(k * nh + h + 1) * n_kv];
                    // Cell j = position j (fresh cache, one sequence).
                    let dst = (l * n_head + h) * n_pos;
                    data[dst..dst + n_pos].copy_from_slice(&src[..n_pos]);
                    masked_max = src[n_pos..].iter().fold(masked_max, |m, &x| m.max(x.abs()));
                }
            }
            out.push(AttentionRows {
                n_layer,
                n_head,
                n_pos,
                layers: layers.clone(),
                data,
                masked_max,
                logits: logits[k].clone(),
            });
        }
        if let Some(r) = out.iter().find(|r| r.masked_max > 1e-6) {
            return Err(EngineError::Decode(format!(
                "attention on KV cells past the context ({}) : the cells do not map to positions",
                r.masked_max
            )));
        }
        Ok(out)
    }
}

impl AttentionCapture<'_> {
    /// The logits at each of `rows` after `tokens`, from the ordinary decoder `dec`.
    fn decode_logits(
        &self,
        dec: &mut Decoder<'_>,
        tokens: &[i32],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let n_vocab = self.n_vocab;
        if let [row] = rows
            && row + 1 == tokens.len()
        {
            return Ok(vec![dec.eval(tokens)?[..n_vocab].to_vec()]);
        }
        let mut out = vec![Vec::new(); rows.len()];
        dec.eval_rows(tokens, &|i| rows.contains(&i), &mut |pos, logits| {
            for (k, _) in rows.iter().enumerate().filter(|(_, r)| **r == pos) {
                out[k] = logits[..n_vocab].to_vec();
            }
        })?;
        Ok(out)
    }
}

impl Drop for AttentionCapture<'_> {
    fn drop(&mut self) {
        // SAFETY: `ctx` and `batch` were created in `new` and are freed exactly once here; the
        // context goes first, so the callback can no longer run when its state is freed, and
        // `state` came from Box::into_raw.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ctx);
            drop(Box::from_raw(self.state));
        }
    }
}

/// Fills `b` with `tokens` as one sequence from position 0, asking for the outputs of the
/// positions `output` selects.
///
/// # Safety
/// `b` must come from `llama_batch_init(n_max, 0, 1)` with `n_max >= tokens.len()`: every
/// index written is below `tokens.len()`.
pub(super) unsafe fn fill_batch(
    b: &mut sys::llama_batch,
    tokens: &[i32],
    output: impl Fn(usize) -> bool,
) {
    b.n_tokens = tokens.len() as i32;
    for (i, &tok) in tokens.iter().enumerate() {
        // SAFETY: i < tokens.len() <= n_max, the arrays' length (the caller's contract), and
        // each token has room for one seq id.
        unsafe {
            *b.token.add(i) = tok;
            *b.pos.add(i) = i as i32;
            *b.n_seq_id.add(i) = 1;
            *(*b.seq_id.add(i)).add(0) = 0;
            *b.logits.add(i) = i8::from(output(i));
        }
    }
}
