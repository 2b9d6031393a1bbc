//! The logit lens's engine half: the residual stream after every block, captured from
//! llama.cpp's graph (`l_out-<layer>`, one eval callback as in [`super::capture`]), and the
//! model's own final norm and output head read from the GGUF file, evaluated with ggml's CPU
//! kernels so that the last layer's lens is the model's own computation.
//!
//! - Layer 0 is the input embedding: the token's row of `token_embd.weight`, dequantised the
//!   way llama.cpp's `get_rows` does (scaled by √n_embd for the gemma family, as its graphs do).
//! - Layer `l + 1` is `l_out-l`. llama.cpp computes the last block only for the rows whose
//!   logits are asked for (`inp_out_ids`), so every lens position is also a logits row.
//! - The head is RMSNorm (the model's eps, recomputed on each layer's own residual) times
//!   `output_norm.weight`, then `output.weight` (or the tied `token_embd.weight`), then the final
//!   logit soft-capping where the architecture has it. The activations are quantised to the
//!   head's `vec_dot_type` and dotted with the quantised rows in place by ggml's own `vec_dot`,
//!   as llama.cpp's CPU matmul does: the vocabulary matrix is never dequantised.

use std::ffi::{CStr, c_void};
use std::ops::Range;
use std::path::Path;

use llama_cpp_sys_2 as sys;

use super::capture::raw_model_ptr;
use super::error::EngineError;
use super::gguf::{GgufMeta, Matrix, corrupt, dequantise_row, type_name};
use super::log;
use super::model::Model;

/// Name prefix of the block outputs in llama.cpp's graphs.
const L_OUT_PREFIX: &[u8] = b"l_out-";

/// Vocabulary rows per tile: a tile of a Q8_0 head of width 4096 is ~1 MiB, so it stays in
/// cache while every residual row of a chunk is dotted with it.
const VOCAB_TILE: usize = 256;

/// How an architecture's graph scales the input embedding and caps the logits.
#[derive(Debug, Clone, Copy)]
struct ArchHead {
    name: &'static str,
    /// The embedding is multiplied by √n_embd (gemma).
    sqrt_embd_scale: bool,
    /// Final logit soft-capping when the GGUF has no `final_logit_softcapping` key.
    default_softcap: Option<f32>,
    /// Whether the key is read at all.
    reads_softcap: bool,
}

/// Architectures whose embedding, final norm and head the lens knows: RMSNorm over
/// `output_norm.weight`, then `output.weight` or tied embeddings.
const ARCHITECTURES: &[ArchHead] = &[
    ArchHead::plain("llama"),
    ArchHead::plain("mistral3"),
    ArchHead::plain("qwen2"),
    ArchHead::plain("qwen3"),
    ArchHead::plain("qwen2moe"),
    ArchHead::plain("qwen3moe"),
    ArchHead {
        name: "gemma",
        sqrt_embd_scale: true,
        default_softcap: None,
        reads_softcap: false,
    },
    ArchHead {
        name: "gemma2",
        sqrt_embd_scale: true,
        default_softcap: Some(30.0),
        reads_softcap: true,
    },
    ArchHead {
        name: "gemma3",
        sqrt_embd_scale: true,
        default_softcap: None,
        reads_softcap: true,
    },
];

impl ArchHead {
    const fn plain(name: &'static str) -> Self {
        Self {
            name,
            sqrt_embd_scale: false,
            default_softcap: None,
            reads_softcap: false,
        }
    }
}

/// The architectures [`LensHead::open`] accepts.
pub fn lens_architectures() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|a| a.name).collect()
}

type VecDot =
    unsafe extern "C" fn(i32, *mut f32, usize, *const c_void, usize, *const c_void, usize, i32);
type FromFloat = unsafe extern "C" fn(*const f32, *mut c_void, i64);

/// The model's final norm and output head (and its input embedding), from the GGUF file.
pub struct LensHead {
    map: memmap2::Mmap,
    arch: String,
    n_embd: usize,
    eps: f32,
    norm: Vec<f32>,
    head: Matrix,
    embd: Matrix,
    embd_scale: Option<f32>,
    softcap: Option<f32>,
    vec_dot: VecDot,
    /// Quantiser of the activations into the head's `vec_dot_type` (None: f32 as is).
    quantise: Option<FromFloat>,
    /// Bytes of one quantised activation row.
    act_bytes: usize,
}

/// Residual rows quantised for the head, `rows × act_bytes`.
pub struct HeadInput {
    data: Vec<u8>,
    rows: usize,
}

impl HeadInput {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl LensHead {
    /// Read the final norm and head of the GGUF model at `path` (memory-mapped, nothing
    /// dequantised but the norm weight). An architecture outside [`lens_architectures`] gives
    /// [`EngineError::LensArchitecture`].
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        super::backend()?;
        // SAFETY: initialises ggml-cpu's conversion tables (idempotent, guarded inside ggml).
        unsafe { sys::ggml_cpu_init() };
        let meta = GgufMeta::open(path)?;
        let arch = meta
            .string("general.architecture")
            .ok_or_else(|| corrupt(path, "general.architecture is missing"))?;
        let Some(facts) = ARCHITECTURES.iter().find(|a| a.name == arch).copied() else {
            return Err(EngineError::LensArchitecture {
                arch,
                supported: lens_architectures().join(", "),
            });
        };
        let n_embd = meta
            .number(&format!("{arch}.embedding_length"))
            .ok_or_else(|| corrupt(path, format!("{arch}.embedding_length is missing")))?
            as usize;
        let eps = meta
            .number(&format!("{arch}.attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("{arch}.attention.layer_norm_rms_epsilon is missing"),
                )
            })? as f32;
        let softcap = if facts.reads_softcap {
            meta.number(&format!("{arch}.final_logit_softcapping"))
                .map(|x| x as f32)
                .or(facts.default_softcap)
        } else {
            facts.default_softcap
        }
        .filter(|&c| c > 0.0);

        let file = std::fs::File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: a read-only private map of a model file nobody is expected to change while
        // ntv runs (llama.cpp maps the same file the same way).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let len = map.len();
        let embd = meta
            .matrix("token_embd.weight", n_embd, len)?
            .ok_or_else(|| corrupt(path, "tensor token_embd.weight is missing"))?;
        let head = meta.matrix("output.weight", n_embd, len)?.unwrap_or(embd);
        let norm_m = meta
            .matrix("output_norm.weight", n_embd, len)?
            .filter(|m| m.rows == 1);
        let Some(norm_m) = norm_m else {
            return Err(corrupt(
                path,
                "tensor output_norm.weight is missing or not a vector",
            ));
        };
        let mut norm = vec![0f32; n_embd];
        dequantise_row(&map, norm_m, 0, &mut norm).map_err(|e| corrupt(path, e))?;

        // SAFETY: ggml-cpu's static type table; non-null for every valid type.
        let cpu = unsafe { &*sys::ggml_get_type_traits_cpu(head.ty) };
        let vec_dot = cpu.vec_dot.ok_or_else(|| {
            corrupt(
                path,
                format!("ggml has no CPU dot product for {}", type_name(head.ty)),
            )
        })?;
        let vdt = cpu.vec_dot_type;
        let quantise = if vdt == sys::GGML_TYPE_F32 {
            None
        } else {
            // SAFETY: as above.
            let q = unsafe { &*sys::ggml_get_type_traits_cpu(vdt) };
            Some(q.from_float.ok_or_else(|| {
                corrupt(
                    path,
                    format!("ggml cannot quantise activations to {}", type_name(vdt)),
                )
            })?)
        };
        // SAFETY: plain query of ggml's type table (n_embd is whole blocks: checked above for
        // the head, whose vec_dot_type has the same block length or 1).
        let act_bytes = unsafe { sys::ggml_row_size(vdt, n_embd as i64) };
        Ok(Self {
            map,
            embd_scale: facts.sqrt_embd_scale.then(|| (n_embd as f32).sqrt()),
            arch,
            n_embd,
            eps,
            norm,
            head,
            embd,
            softcap,
            vec_dot,
            quantise,
            act_bytes,
        })
    }

    /// The GGUF architecture.
    pub fn architecture(&self) -> &str {
        &self.arch
    }

    /// Hidden size.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// Rows of the output head (logits per position).
    pub fn n_vocab(&self) -> usize {
        self.head.rows
    }

    /// RMSNorm eps from the GGUF.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Final logit soft-capping, if the architecture has it.
    pub fn softcap(&self) -> Option<f32> {
        self.softcap
    }

    /// The input embedding of token `id` (layer 0 of the lens) into `out` (`n_embd` long).
    pub fn embedding(&self, id: i32, out: &mut [f32]) -> Result<(), EngineError> {
        let row = usize::try_from(id)
            .ok()
            .filter(|&r| r < self.embd.rows)
            .ok_or(EngineError::TokenOutOfRange {
                id: id.into(),
                n_vocab: self.embd.rows,
            })?;
        dequantise_row(&self.map, self.embd, row, out).map_err(EngineError::Decode)?;
        if let Some(s) = self.embd_scale {
            out.iter_mut().for_each(|x| *x *= s);
        }
        Ok(())
    }

    /// The final norm of each residual row (`rows × n_embd`, its own RMS each), quantised for
    /// the head.
    pub fn prepare(&self, residuals: &[f32]) -> HeadInput {
        let n = self.n_embd;
        let rows = residuals.len() / n;
        let mut data = vec![0u8; rows * self.act_bytes];
        let mut normed = vec![0f32; n];
        for (r, x) in residuals.chunks_exact(n).enumerate() {
            rms_norm(x, &self.norm, self.eps, &mut normed);
            let dst = &mut data[r * self.act_bytes..(r + 1) * self.act_bytes];
            match self.quantise {
                // SAFETY: `normed` holds n_embd f32s and `dst` exactly one row of the
                // vec_dot_type (act_bytes = ggml_row_size(vec_dot_type, n_embd)).
                Some(q) => unsafe { q(normed.as_ptr(), dst.as_mut_ptr().cast(), n as i64) },
                None => {
                    for (d, v) in dst.chunks_exact_mut(4).zip(&normed) {
                        d.copy_from_slice(&v.to_ne_bytes());
                    }
                }
            }
        }
        HeadInput { data, rows }
    }

    /// The logits of input rows `rows` into `out` (`rows.len() × n_vocab`, row-major), tiled
    /// over the vocabulary so each tile of the head is read once per call.
    pub fn logits(&self, input: &HeadInput, rows: Range<usize>, out: &mut [f32]) {
        let nv = self.head.rows;
        assert!(rows.end <= input.rows && out.len() == rows.len() * nv);
        let base = &self.map[self.head.offset..self.head.offset + nv * self.head.row_bytes];
        for tile in (0..nv).step_by(VOCAB_TILE) {
            let end = (tile + VOCAB_TILE).min(nv);
            for (k, r) in rows.clone().enumerate() {
                let x = &input.data[r * self.act_bytes..(r + 1) * self.act_bytes];
                let dst = &mut out[k * nv..(k + 1) * nv];
                for v in tile..end {
                    let w = &base[v * self.head.row_bytes..(v + 1) * self.head.row_bytes];
                    let mut s = 0f32;
                    // SAFETY: `w` is one row of the head's type and `x` one row of its
                    // vec_dot_type, both n_embd values long (checked at open); one result
                    // (nrc = 1) is written to `s`. The strides are unused for nrc = 1.
                    unsafe {
                        (self.vec_dot)(
                            self.n_embd as i32,
                            &mut s,
                            0,
                            w.as_ptr().cast(),
                            0,
                            x.as_ptr().cast(),
                            0,
                            1,
                        );
                    }
                    dst[v] = s;
                }
            }
        }
        if let Some(c) = self.softcap {
            out.iter_mut().for_each(|z| *z = (*z / c).tanh() * c);
        }
    }
}

/// ggml's RMSNorm (mean of squares in f64, as ggml sums) times the weight.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// The residual stream at some positions: `[layer][row][n_embd]`, layer 0 the embedding,
/// layer `l + 1` the output of block `l`.
#[derive(Debug, Clone)]
pub struct Residuals {
    /// Blocks of the model (layers are `0..=n_block`).
    pub n_block: usize,
    pub n_embd: usize,
    /// The context positions of the rows, ascending.
    pub positions: Vec<usize>,
    /// `(n_block + 1) × positions.len() × n_embd` values.
    pub data: Vec<f32>,
}

impl Residuals {
    /// The residual of `layer` at row `row` (an index into `positions`).
    pub fn row(&self, layer: usize, row: usize) -> &[f32] {
        let start = (layer * self.positions.len() + row) * self.n_embd;
        &self.data[start..start + self.n_embd]
    }
}

/// What the callback fills during one decode.
#[derive(Default)]
struct ResidualState {
    armed: bool,
    n_tokens: usize,
    /// Wanted positions, ascending (also the logits rows of the decode).
    rows: Vec<usize>,
    /// Per block: `rows × n_embd` values.
    blocks: Vec<Option<Vec<f32>>>,
    error: Option<String>,
}

impl super::capture::TensorSink for ResidualState {
    unsafe fn on_tensor(&mut self, t: *mut sys::ggml_tensor, ask: bool) -> bool {
        // SAFETY: the trait's contract is the method's.
        unsafe { self.on_node(t, ask) }
    }
    fn error_slot(&mut self) -> &mut Option<String> {
        &mut self.error
    }
}

impl ResidualState {
    /// # Safety
    /// `t` must be a valid tensor handed to the eval callback by ggml's scheduler; when `ask` is
    /// false its data must be computed and allocated.
    unsafe fn on_node(&mut self, t: *mut sys::ggml_tensor, ask: bool) -> bool {
        if !self.armed {
            return !ask;
        }
        // SAFETY: as in capture.rs: a valid tensor's inline, NUL-terminated name.
        let name = unsafe { CStr::from_ptr(sys::ggml_get_name(t)) }.to_bytes();
        let Some(block) = name
            .strip_prefix(L_OUT_PREFIX)
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| rest.parse::<usize>().ok())
        else {
            return !ask;
        };
        if ask {
            return true;
        }
        // SAFETY: valid tensor (caller contract); plain fields.
        let (ty, ne, nb) = unsafe { ((*t).type_, (*t).ne, (*t).nb) };
        let [n_embd, n_rows, d2, d3] = ne.map(|x| usize::try_from(x).unwrap_or(0));
        if ty != sys::GGML_TYPE_F32 || nb[0] != 4 || d2 != 1 || d3 != 1 {
            self.error.get_or_insert_with(|| {
                format!("l_out-{block} is not an f32 matrix (type {ty}, shape {ne:?})")
            });
            return true;
        }
        // Every position in the middle blocks; only the logits rows after the last block.
        let pick: Vec<usize> = if n_rows == self.n_tokens {
            self.rows.clone()
        } else if n_rows == self.rows.len() {
            (0..n_rows).collect()
        } else {
            self.error.get_or_insert_with(|| {
                format!(
                    "l_out-{block} has {n_rows} rows; expected {} or {}",
                    self.n_tokens,
                    self.rows.len()
                )
            });
            return true;
        };
        let mut out = vec![0f32; pick.len() * n_embd];
        for (k, &r) in pick.iter().enumerate() {
            // SAFETY: the tensor is computed and allocated (caller contract); row r < ne[1]
            // starts at r*nb[1] and holds n_embd contiguous f32s (nb[0] = 4), inside the
            // tensor; the destination slice is exactly n_embd f32s. The copy is synchronous.
            unsafe {
                sys::ggml_backend_tensor_get(
                    t,
                    out[k * n_embd..(k + 1) * n_embd]
                        .as_mut_ptr()
                        .cast::<c_void>(),
                    r * nb[1],
                    n_embd * 4,
                );
            }
        }
        if self.blocks.len() <= block {
            self.blocks.resize_with(block + 1, || None);
        }
        self.blocks[block] = Some(out);
        true
    }
}

/// A context that records the residual stream. Create once, then
/// [`ResidualCapture::capture`] (the cache is cleared each time).
pub struct ResidualCapture<'m> {
    model: &'m Model,
    head: &'m LensHead,
    ctx: *mut sys::llama_context,
    state: *mut ResidualState,
    batch: sys::llama_batch,
    n_max: usize,
}

impl<'m> ResidualCapture<'m> {
    /// A capture context for contexts of up to `max_tokens` tokens (one ubatch), with `head`
    /// giving layer 0 (the embeddings).
    pub fn new(
        model: &'m Model,
        head: &'m LensHead,
        max_tokens: usize,
        threads: i32,
    ) -> Result<Self, EngineError> {
        let trained = model.info().n_ctx_train as usize;
        let n_max = max_tokens.max(16);
        if n_max > trained.max(16) {
            return Err(EngineError::ContextFull {
                needed: n_max,
                n_ctx: trained,
                trained,
            });
        }
        if head.n_embd() != model.info().n_embd as usize {
            return Err(EngineError::Context(format!(
                "the GGUF head is {} wide but the model's hidden size is {}",
                head.n_embd(),
                model.info().n_embd
            )));
        }
        let n = n_max as u32;
        let state = Box::into_raw(Box::<ResidualState>::default());
        // SAFETY: plain constructor returning a struct by value.
        let mut params = unsafe { sys::llama_context_default_params() };
        params.n_ctx = n;
        params.n_batch = n;
        params.n_ubatch = n;
        params.n_seq_max = 1;
        params.n_threads = threads.max(1);
        params.n_threads_batch = threads.max(1);
        params.cb_eval = Some(super::capture::eval_callback::<ResidualState>);
        params.cb_eval_user_data = state.cast::<c_void>();
        log::take_errors();
        // SAFETY: the model pointer is alive for 'm, which outlives this struct; `params` is
        // initialised from llama.cpp's defaults; the user data lives until after `llama_free`
        // (Drop). Null on failure.
        let ctx = unsafe { sys::llama_init_from_model(raw_model_ptr(model.raw()), params) };
        if ctx.is_null() {
            // SAFETY: `state` came from Box::into_raw and was never handed to a live context.
            drop(unsafe { Box::from_raw(state) });
            return Err(EngineError::Context(format!(
                "residual context: {}",
                log::take_errors().join("; ")
            )));
        }
        // SAFETY: a token batch of n_max tokens, one sequence id each; freed in Drop.
        let batch = unsafe { sys::llama_batch_init(n as i32, 0, 1) };
        Ok(Self {
            model,
            head,
            ctx,
            state,
            batch,
            n_max,
        })
    }

    /// The residual stream of `tokens` at `positions` (each `< tokens.len()`; sorted and
    /// deduplicated here), from one decode in one ubatch.
    pub fn capture(
        &mut self,
        tokens: &[i32],
        positions: &[usize],
    ) -> Result<Residuals, EngineError> {
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
                n_vocab: self.model.n_vocab(),
            });
        }
        let mut rows = positions.to_vec();
        rows.sort_unstable();
        rows.dedup();
        if rows.is_empty() || rows.last().is_some_and(|&r| r >= n) {
            return Err(EngineError::Decode(format!(
                "lens positions {rows:?} are not inside the {n}-token context"
            )));
        }
        // SAFETY: live context (freed only in Drop); clearing memory between decodes is allowed.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx), true) };
        // SAFETY: the batch was allocated (llama_batch_init) with room for n_max >= n tokens
        // and one seq id per token.
        unsafe {
            super::capture::fill_batch(&mut self.batch, tokens, |i| rows.binary_search(&i).is_ok())
        };
        {
            // SAFETY: no decode is running (we hold &mut self).
            let st = unsafe { &mut *self.state };
            st.armed = true;
            st.n_tokens = n;
            st.rows = rows.clone();
            st.blocks.clear();
            st.error = None;
        }
        log::take_errors();
        // SAFETY: live context, a batch filled above, the callback state alive.
        let rc = unsafe { sys::llama_decode(self.ctx, self.batch) };
        // SAFETY: the decode has returned; the callback no longer runs.
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
        let n_block = self.model.info().n_layer as usize;
        let d = self.head.n_embd();
        if let Some(missing) = (0..n_block).find(|&b| st.blocks.get(b).is_none_or(Option::is_none))
        {
            return Err(EngineError::Decode(format!(
                "llama.cpp's graph has no l_out-{missing}: this architecture does not name its \
                 block outputs as the lens expects"
            )));
        }
        let mut data = Vec::with_capacity((n_block + 1) * rows.len() * d);
        let mut e = vec![0f32; d];
        for &p in &rows {
            self.head.embedding(tokens[p], &mut e)?;
            data.extend_from_slice(&e);
        }
        for b in st.blocks.drain(..n_block) {
            data.extend(b.expect("checked above"));
        }
        Ok(Residuals {
            n_block,
            n_embd: d,
            positions: rows,
            data,
        })
    }
}

impl Drop for ResidualCapture<'_> {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once here; the context goes first so the callback
        // cannot run when its state is freed; `state` came from Box::into_raw.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ctx);
            drop(Box::from_raw(self.state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_uses_the_rows_own_scale() {
        let w = [1.0, 2.0];
        let mut out = [0f32; 2];
        rms_norm(&[3.0, 4.0], &w, 0.0, &mut out);
        // RMS of (3, 4) is √12.5.
        let r = 12.5f32.sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
        rms_norm(&[30.0, 40.0], &w, 0.0, &mut out);
        assert!((out[0] - 3.0 / r).abs() < 1e-6, "scale-free: {out:?}");
    }

    #[test]
    fn the_known_architectures_include_the_tested_ones() {
        for a in ["llama", "qwen2", "qwen3"] {
            assert!(lens_architectures().contains(&a));
        }
        assert!(!lens_architectures().contains(&"mamba"));
    }
}
