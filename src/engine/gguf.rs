//! GGUF files read in place: the metadata through ggml's own `gguf` reader and the tensors
//! from a read-only memory map, dequantised row by row with ggml's CPU dequantisers (the same
//! values llama.cpp's kernels stand for). The lens reads its head this way, and the autograd
//! engine its weights ([`WeightFile`], [`QMatrix`]): a model's weights stay in their
//! quantised form and are expanded only where and when a computation needs them.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_void};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use llama_cpp_sys_2 as sys;
use rayon::prelude::*;

use super::error::EngineError;

/// A matrix of the GGUF, in place in the mapped file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Matrix {
    pub(super) ty: sys::ggml_type,
    pub(super) offset: usize,
    pub(super) rows: usize,
    pub(super) row_bytes: usize,
}

pub(super) type ToFloat = unsafe extern "C" fn(*const c_void, *mut f32, i64);

pub(super) fn corrupt(path: &Path, detail: impl Into<String>) -> EngineError {
    EngineError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// An open `gguf_context` (metadata only), freed on drop.
pub(super) struct GgufMeta {
    ctx: *mut sys::gguf_context,
    path: PathBuf,
}

impl Drop for GgufMeta {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from gguf_init_from_file (non-null) and is freed once, here.
        unsafe { sys::gguf_free(self.ctx) };
    }
}

impl GgufMeta {
    pub(super) fn open(path: &Path) -> Result<Self, EngineError> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| corrupt(path, "the path contains a NUL byte"))?;
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: a NUL-terminated path and plain parameters; with no_alloc and no ggml context
        // only the header is read. Null on failure.
        let ctx = unsafe { sys::gguf_init_from_file(c.as_ptr(), params) };
        if ctx.is_null() {
            return Err(corrupt(path, "gguf_init_from_file failed"));
        }
        Ok(Self {
            ctx,
            path: path.to_path_buf(),
        })
    }

    pub(super) fn key(&self, key: &str) -> Option<i64> {
        let c = CString::new(key).ok()?;
        // SAFETY: live context, NUL-terminated key; returns -1 when absent.
        let id = unsafe { sys::gguf_find_key(self.ctx, c.as_ptr()) };
        (id >= 0).then_some(id)
    }

    pub(super) fn string(&self, key: &str) -> Option<String> {
        let id = self.key(key)?;
        // SAFETY: `id` is a valid key index of this context.
        if unsafe { sys::gguf_get_kv_type(self.ctx, id) } != sys::GGUF_TYPE_STRING {
            return None;
        }
        // SAFETY: the key holds a string (checked above, a wrong-type getter aborts); the
        // pointer is owned by the context and copied at once.
        let p = unsafe { sys::gguf_get_val_str(self.ctx, id) };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// A number stored as f32, f64 or an integer.
    pub(super) fn number(&self, key: &str) -> Option<f64> {
        let id = self.key(key)?;
        // SAFETY (every getter below): `id` is a valid key index and each getter matches the
        // key's type, checked first (a wrong-type getter aborts inside ggml).
        unsafe {
            Some(match sys::gguf_get_kv_type(self.ctx, id) {
                sys::GGUF_TYPE_FLOAT32 => f64::from(sys::gguf_get_val_f32(self.ctx, id)),
                sys::GGUF_TYPE_FLOAT64 => sys::gguf_get_val_f64(self.ctx, id),
                sys::GGUF_TYPE_UINT32 => f64::from(sys::gguf_get_val_u32(self.ctx, id)),
                sys::GGUF_TYPE_INT32 => f64::from(sys::gguf_get_val_i32(self.ctx, id)),
                sys::GGUF_TYPE_UINT64 => sys::gguf_get_val_u64(self.ctx, id) as f64,
                _ => return None,
            })
        }
    }

    /// The extents of tensor `name` (`ne[0..4]`), if present.
    pub(super) fn dims(&self, name: &str) -> Option<[usize; 4]> {
        let c = CString::new(name).ok()?;
        // SAFETY: live context, NUL-terminated name; -1 when absent.
        let id = unsafe { sys::gguf_find_tensor(self.ctx, c.as_ptr()) };
        if id < 0 {
            return None;
        }
        // SAFETY: `id` is a valid tensor index; the extents are GGML_MAX_DIMS (4) values
        // owned by the context.
        let ne = unsafe { std::slice::from_raw_parts(sys::gguf_get_tensor_ne(self.ctx, id), 4) };
        Some([0, 1, 2, 3].map(|i| usize::try_from(ne[i]).unwrap_or(0)))
    }

    /// A 2-D (or 1-D) tensor's place: `ne[0]` must be `width`.
    pub(super) fn matrix(
        &self,
        name: &str,
        width: usize,
        file_len: usize,
    ) -> Result<Option<Matrix>, EngineError> {
        let c = CString::new(name).expect("tensor names have no NUL");
        // SAFETY: live context, NUL-terminated name; -1 when absent.
        let id = unsafe { sys::gguf_find_tensor(self.ctx, c.as_ptr()) };
        if id < 0 {
            return Ok(None);
        }
        // SAFETY: `id` is a valid tensor index; `gguf_get_tensor_ne` points at the tensor's
        // GGML_MAX_DIMS (4) extents, owned by the context.
        let (ty, offset, ne) = unsafe {
            let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(self.ctx, id), 4);
            (
                sys::gguf_get_tensor_type(self.ctx, id),
                sys::gguf_get_data_offset(self.ctx) + sys::gguf_get_tensor_offset(self.ctx, id),
                [ne[0], ne[1], ne[2], ne[3]],
            )
        };
        let bad = |what: &str| corrupt(&self.path, format!("tensor {name}: {what}"));
        if ne[0] != width as i64 || ne[2] != 1 || ne[3] != 1 || ne[1] < 1 {
            return Err(bad(&format!("shape {ne:?}, expected [{width}, rows]")));
        }
        // SAFETY: plain queries of ggml's type table.
        let (blck, row_bytes) = unsafe { (sys::ggml_blck_size(ty), sys::ggml_row_size(ty, ne[0])) };
        if blck <= 0 || ne[0] % blck != 0 || row_bytes == 0 {
            return Err(bad("rows are not whole blocks of its type"));
        }
        let rows = ne[1] as usize;
        if offset
            .checked_add(rows.saturating_mul(row_bytes))
            .is_none_or(|end| end > file_len)
        {
            return Err(bad("data past the end of the file"));
        }
        Ok(Some(Matrix {
            ty,
            offset,
            rows,
            row_bytes,
        }))
    }
}

/// How the values of a tensor type become f32s. Q4_0 and Q4_1 have loops of ntv's own over
/// fixed-size blocks: ggml's reference dequantisers of those two types are scalar code (0.50–0.58
/// ns a value here, 0.34 ns for these loops; ggml's Q8_0 takes 0.07), and expanding weights was
/// a quarter of a saliency pass. Every other type goes through ggml's CPU dequantiser (the
/// values llama.cpp's kernels stand for); f32 is copied as it is.
#[derive(Clone, Copy)]
pub(super) enum Expand {
    F32,
    Q4_0,
    Q4_1,
    /// ggml's dequantiser, with the type's values and bytes per block.
    Ggml(ToFloat, usize, usize),
}

impl Expand {
    pub(super) fn of(ty: sys::ggml_type) -> Result<Self, String> {
        Ok(match ty {
            sys::GGML_TYPE_F32 => Self::F32,
            sys::GGML_TYPE_Q4_0 => Self::Q4_0,
            sys::GGML_TYPE_Q4_1 => Self::Q4_1,
            _ => Self::ggml(ty)?,
        })
    }

    /// ggml's CPU dequantiser of `ty`, whichever type it is.
    fn ggml(ty: sys::ggml_type) -> Result<Self, String> {
        // SAFETY: ggml's static type table; non-null for every valid type.
        let traits = unsafe { &*sys::ggml_get_type_traits(ty) };
        let f = traits
            .to_float
            .ok_or_else(|| format!("ggml cannot dequantise type {}", type_name(ty)))?;
        // SAFETY: plain queries of ggml's type table for a valid type.
        let (blck, bytes) = unsafe { (sys::ggml_blck_size(ty), sys::ggml_type_size(ty)) };
        Ok(Self::Ggml(f, blck.max(1) as usize, bytes))
    }

    /// Values per block of the type, and bytes per block.
    pub(super) fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Ggml(_, blck, bytes) => (blck, bytes),
        }
    }

    /// The values of `src` (whole blocks of the type) into `out`.
    ///
    /// # Panics
    /// When `src` does not hold exactly `out.len()` values.
    pub(super) fn run(self, src: &[u8], out: &mut [f32]) {
        let (blck, bytes) = self.block();
        assert!(out.len().is_multiple_of(blck));
        assert_eq!(src.len(), out.len() / blck * bytes);
        match self {
            Self::F32 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            // Blocks of 32 values: f16 scale d (Q4_1: and f16 minimum m), then 16 bytes of
            // 4-bit quants, value j in the low nibble of byte j, value 16 + j in its high one;
            // the value is (q − 8)·d (Q4_0) or q·d + m (Q4_1).
            Self::Q4_0 => {
                for (b, o) in src.chunks_exact(bytes).zip(out.chunks_exact_mut(blck)) {
                    let d = f16_at(b, 0);
                    nibbles(&b[2..18], o, |q| (q - 8.0) * d);
                }
            }
            Self::Q4_1 => {
                for (b, o) in src.chunks_exact(bytes).zip(out.chunks_exact_mut(blck)) {
                    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                    nibbles(&b[4..20], o, |q| q * d + m);
                }
            }
            // SAFETY: `src` is exactly out.len() / blck whole blocks of the type (checked
            // above), i.e. out.len() values, which `out` has room for; ggml's row dequantisers
            // are pure functions of their input.
            Self::Ggml(f, ..) => unsafe {
                f(src.as_ptr().cast(), out.as_mut_ptr(), out.len() as i64)
            },
        }
    }
}

/// One block of 32 4-bit quants (`qs`: value j in the low nibble of byte j, value 16 + j in
/// its high one) into `out`, through `f`. Fixed sizes, so the compiler can unroll the loop and
/// drop the bounds checks.
#[inline(always)]
fn nibbles(qs: &[u8], out: &mut [f32], f: impl Fn(f32) -> f32) {
    let qs: &[u8; 16] = qs.try_into().expect("16 bytes of quants");
    let out: &mut [f32; 32] = out.try_into().expect("32 values");
    for j in 0..16 {
        out[j] = f(f32::from(qs[j] & 15));
        out[j + 16] = f(f32::from(qs[j] >> 4));
    }
}

/// The little-endian f16 at `at` of `b`, as f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Row `row` of `m` as f32s.
pub(super) fn dequantise_row(
    map: &[u8],
    m: Matrix,
    row: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let start = m.offset + row * m.row_bytes;
    Expand::of(m.ty)?.run(&map[start..start + m.row_bytes], out);
    Ok(())
}

pub(super) fn type_name(ty: sys::ggml_type) -> String {
    // SAFETY: ggml's static name table; a NUL-terminated string for a valid type.
    unsafe { CStr::from_ptr(sys::ggml_type_name(ty)) }
        .to_string_lossy()
        .into_owned()
}

/// A GGUF model file opened for reading its weights in place: its metadata and a read-only
/// memory map of the whole file.
pub struct WeightFile {
    meta: GgufMeta,
    map: Arc<memmap2::Mmap>,
}

/// One weight matrix of a [`WeightFile`] (`rows × cols`, row-major, each row whole blocks of
/// its ggml type), in place in the mapped file. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct QMatrix {
    map: Arc<memmap2::Mmap>,
    m: Matrix,
    cols: usize,
    /// Values per block of the type, and bytes per block.
    blck: usize,
    block_bytes: usize,
    expand: Expand,
    name: String,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QMatrix({} {}×{} {})",
            self.name,
            self.m.rows,
            self.cols,
            type_name(self.m.ty)
        )
    }
}

impl WeightFile {
    /// Open the GGUF file at `path`: the header is parsed, the tensor data only mapped.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        super::backend()?;
        // SAFETY: initialises ggml-cpu's conversion tables (idempotent, guarded inside ggml).
        unsafe { sys::ggml_cpu_init() };
        let meta = GgufMeta::open(path)?;
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
        Ok(Self {
            meta,
            map: Arc::new(map),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.meta.path
    }

    /// A string value of the metadata.
    pub fn string(&self, key: &str) -> Option<String> {
        self.meta.string(key)
    }

    /// A numeric value of the metadata (f32, f64 or an integer), as f64.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.meta.number(key)
    }

    /// Whether the metadata has `key` (of any type).
    pub fn has_key(&self, key: &str) -> bool {
        self.meta.key(key).is_some()
    }

    /// The tensor `name` as a matrix of `cols` columns (`ne[0]`; a vector is one row), or
    /// `None` when the file has no such tensor. A tensor of another width, rows that are not
    /// whole blocks, data past the end of the file, or a type ggml cannot dequantise are
    /// [`EngineError::Corrupt`].
    pub fn matrix(&self, name: &str, cols: usize) -> Result<Option<QMatrix>, EngineError> {
        let Some(m) = self.meta.matrix(name, cols, self.map.len())? else {
            return Ok(None);
        };
        let expand = Expand::of(m.ty).map_err(|e| corrupt(&self.meta.path, e))?;
        let (blck, block_bytes) = expand.block();
        Ok(Some(QMatrix {
            map: Arc::clone(&self.map),
            m,
            cols,
            blck,
            block_bytes,
            expand,
            name: name.to_string(),
        }))
    }

    /// The extents `ne[0..4]` of tensor `name`, if the file has it.
    pub fn dims(&self, name: &str) -> Option<[usize; 4]> {
        self.meta.dims(name)
    }
}

impl QMatrix {
    /// Number of rows (`ne[1]`).
    pub fn rows(&self) -> usize {
        self.m.rows
    }

    /// Number of columns (`ne[0]`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The tensor's name in the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// ggml's name of the storage type (`q4_1`, `f16`, …).
    pub fn type_name(&self) -> String {
        type_name(self.m.ty)
    }

    /// Rows `rows` dequantised to f32 into `out` (`rows.len() × cols`, row-major).
    ///
    /// # Panics
    /// When `rows` is past the matrix or `out` has another length.
    pub fn dequantise(&self, rows: Range<usize>, out: &mut [f32]) {
        assert!(rows.start <= rows.end && rows.end <= self.m.rows);
        assert_eq!(out.len(), rows.len() * self.cols);
        let start = self.m.offset + rows.start * self.m.row_bytes;
        self.expand
            .run(&self.map[start..start + rows.len() * self.m.row_bytes], out);
    }

    /// Columns `cols` of row `row` dequantised into `out` (`cols.len()` values; both ends
    /// whole blocks of the type).
    fn dequantise_part(&self, row: usize, cols: Range<usize>, out: &mut [f32]) {
        assert!(row < self.m.rows && cols.end <= self.cols);
        assert!(cols.start.is_multiple_of(self.blck) && cols.len().is_multiple_of(self.blck));
        assert_eq!(out.len(), cols.len());
        let start =
            self.m.offset + row * self.m.row_bytes + cols.start / self.blck * self.block_bytes;
        self.expand.run(
            &self.map[start..start + cols.len() / self.blck * self.block_bytes],
            out,
        );
    }

    /// Rows per tile of the products for `width` columns: about [`TILE_BYTES`] of f32, so a
    /// tile stays in the core's L2 cache while gemm packs it.
    fn tile_rows(width: usize) -> usize {
        (TILE_BYTES / 4 / width.max(1)).max(1)
    }

    /// `y = x · Wᵀ`: `x` is `m × cols`, `y` is `m × rows` (row-major). The weight is expanded
    /// tile by tile (a few rows at a time, into a buffer of the thread's own) and never whole;
    /// the tiles are shared out over the current rayon pool.
    ///
    /// # Panics
    /// When `x` is not whole rows of `cols` values or `y` has not `m × rows` values.
    pub fn matmul_t(&self, x: &[f32], y: &mut [f32]) {
        self.product_t(x, y, false);
    }

    /// `y += x · Wᵀ`, as [`QMatrix::matmul_t`] but added to what `y` holds (a residual
    /// connection or a sum of products without a pass of its own).
    ///
    /// # Panics
    /// As [`QMatrix::matmul_t`].
    pub fn matmul_t_add(&self, x: &[f32], y: &mut [f32]) {
        self.product_t(x, y, true);
    }

    /// `y = x · Wᵀ`, or `y += x · Wᵀ` with `add` (the body of both).
    pub(crate) fn product_t(&self, x: &[f32], y: &mut [f32], add: bool) {
        let (k, n) = (self.cols, self.m.rows);
        assert!(k > 0 && x.len().is_multiple_of(k));
        let m = x.len() / k;
        assert_eq!(y.len(), m * n);
        if m == 0 {
            return;
        }
        // At least two tiles per thread, so that small matrices (a K/V projection of a few
        // hundred rows) are shared out evenly too.
        let threads = rayon::current_num_threads();
        let mut tr = Self::tile_rows(k);
        if threads > 1 {
            tr = tr.min(n.div_ceil(2 * threads)).max(8);
        }
        let dst = Shared(y.as_mut_ptr());
        let stride = padded_stride(k);
        (0..n.div_ceil(tr)).into_par_iter().for_each(|t| {
            let rows = t * tr..((t + 1) * tr).min(n);
            with_tile(rows.len() * stride, |buf| {
                for (r, out) in rows.clone().zip(buf.chunks_exact_mut(stride)) {
                    self.dequantise_part(r, 0..k, &mut out[..k]);
                }
                // The product is computed transposed, yᵀ = tile · xᵀ, so that gemm's long
                // dimension is the weight's rows (its kernels are vectorised along it; a
                // saliency pass has only a few dozen tokens) and xᵀ needs no packing.
                // SAFETY: gemm reads the tile (rows.len() × k, row stride `stride` ≥ k, within
                // the buffer of rows.len() × stride values) and xᵀ (k × m:
                // element (kk, i) at i·k + kk of `x`), both alive and of those sizes, and writes
                // the rows.len() × m block yᵀ, i.e. `y`'s columns `rows` (element (j, i) at
                // i·n + rows.start + j): inside `y` (checked above), and no other task writes
                // those columns. `y` outlives the parallel loop.
                unsafe {
                    gemm::gemm(
                        rows.len(),
                        m,
                        k,
                        dst.get().add(rows.start),
                        n as isize,
                        1,
                        add,
                        buf.as_ptr(),
                        1,
                        stride as isize,
                        x.as_ptr(),
                        k as isize,
                        1,
                        if add { 1.0 } else { 0.0 },
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
    }

    /// `out = g · W`: `g` is `m × rows`, `out` is `m × cols` (row-major). The columns are
    /// shared out over the current rayon pool (in whole blocks of the type), each task
    /// expanding its columns of the weight tile by tile.
    ///
    /// # Panics
    /// When `g` is not whole rows of `rows` values or `out` has not `m × cols` values.
    pub fn matmul(&self, g: &[f32], out: &mut [f32]) {
        self.product(g, out, false);
    }

    /// `out += g · W`, as [`QMatrix::matmul`] but added to what `out` holds.
    ///
    /// # Panics
    /// As [`QMatrix::matmul`].
    pub fn matmul_add(&self, g: &[f32], out: &mut [f32]) {
        self.product(g, out, true);
    }

    /// `out = g · W`, or `out += g · W` with `add` (the body of both).
    pub(crate) fn product(&self, g: &[f32], out: &mut [f32], add: bool) {
        let (n, k) = (self.cols, self.m.rows);
        assert!(k > 0 && g.len().is_multiple_of(k));
        let m = g.len() / k;
        assert_eq!(out.len(), m * n);
        if m == 0 {
            return;
        }
        let blocks = n / self.blck;
        let parts = rayon::current_num_threads().clamp(1, blocks.max(1));
        let per = blocks.div_ceil(parts) * self.blck;
        let dst = Shared(out.as_mut_ptr());
        (0..n.div_ceil(per)).into_par_iter().for_each(|p| {
            let cols = p * per..((p + 1) * per).min(n);
            let w = cols.len();
            let tr = Self::tile_rows(w);
            with_tile(tr.min(k) * w, |buf| {
                for r0 in (0..k).step_by(tr) {
                    let r1 = (r0 + tr).min(k);
                    for (r, row) in (r0..r1).zip(buf.chunks_exact_mut(w)) {
                        self.dequantise_part(r, cols.clone(), row);
                    }
                    // Transposed, outᵀ += tileᵀ · gᵀ: both operands are then read along
                    // gemm's vectorised dimension and neither is packed.
                    // SAFETY: gemm reads tileᵀ (w × (r1 − r0): element (c, r) at r·w + c of
                    // the tile) and gᵀ ((r1 − r0) × m: element (r, i) at i·k + r0 + r of `g`),
                    // both alive and of those sizes, and accumulates into outᵀ's w × m block
                    // (element (c, i) at i·n + cols.start + c): inside `out` (checked above)
                    // and written by this task only. `out` outlives the parallel loop.
                    unsafe {
                        gemm::gemm(
                            w,
                            m,
                            r1 - r0,
                            dst.get().add(cols.start),
                            n as isize,
                            1,
                            add || r0 > 0,
                            buf.as_ptr(),
                            w as isize,
                            1,
                            g.as_ptr().add(r0),
                            k as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            });
        });
    }
}

/// Bytes of f32 in one tile of a product's weight (see [`QMatrix::tile_rows`]).
const TILE_BYTES: usize = 1 << 20;

/// f32s per 64-byte cache line.
const LINE: usize = 16;

/// The row stride of a forward tile of `k` columns: `k` rounded up to whole cache lines, and
/// an odd number of them. gemm packs a row-major tile by reading down its columns, one value
/// from each row in turn; rows a multiple of 1 KiB apart (1536 or 2048 columns, as in most
/// models' MLP and attention weights) map into the same few sets of the L1 cache, which then
/// thrashes: the forward products ran at half speed on a 2048-wide model and the MLP's down
/// projection (1536 wide) at 0.45× on the test model. An odd number of lines spreads the rows
/// over every set.
fn padded_stride(k: usize) -> usize {
    let lines = k.div_ceil(LINE);
    (lines | 1) * LINE
}

/// A pointer to an output that parallel tasks write in disjoint parts.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

impl Shared {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: every task writes only its own disjoint part of the output (see the products), and
// the output outlives the tasks.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

thread_local! {
    /// The thread's tile buffer, reused by every product it runs.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `f` on the thread's tile buffer, at least `len` values long.
fn with_tile(len: usize, f: impl FnOnce(&mut [f32])) {
    TILE.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() < len {
            t.resize(len, 0.0);
        }
        f(&mut t[..len]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_own_dequantisers_give_ggmls_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (ty, bytes) in [(sys::GGML_TYPE_Q4_0, 18), (sys::GGML_TYPE_Q4_1, 20)] {
            let own = Expand::of(ty).expect("a known type");
            assert!(
                !matches!(own, Expand::Ggml(..)),
                "{} has its own loop",
                type_name(ty)
            );
            let theirs = Expand::ggml(ty).expect("ggml dequantises the type");
            assert_eq!(
                own.block(),
                theirs.block(),
                "{}'s block layout",
                type_name(ty)
            );
            let blocks = 64;
            let mut src = vec![0u8; blocks * bytes];
            rng.fill(&mut src[..]);
            // Ordinary scales (and minima) in most blocks; the random bytes give the rest
            // every f16 there is, subnormal and huge ones included.
            for b in src.chunks_exact_mut(bytes).take(48) {
                for at in [0, 2] {
                    let v = half::f16::from_f32(rng.random_range(-0.05..0.05));
                    b[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            // No NaN or infinite scale: ggml's and these loops need not agree on NaN bits.
            for b in src.chunks_exact_mut(bytes) {
                for at in [0, 2] {
                    let v = half::f16::from_le_bytes([b[at], b[at + 1]]);
                    if !v.is_finite() {
                        b[at + 1] &= 0x3b;
                    }
                }
            }
            let (mut got, mut want) = (vec![0f32; blocks * 32], vec![0f32; blocks * 32]);
            own.run(&src, &mut got);
            theirs.run(&src, &mut want);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // ggml's C may fuse q·d + m into one rounding: one ulp apart at most.
                assert!(
                    (g - w).abs() <= w.abs() * f32::EPSILON + f32::MIN_POSITIVE,
                    "{} value {i}: {g} vs ggml's {w}",
                    type_name(ty)
                );
            }
        }
    }

    #[test]
    fn forward_tiles_have_an_odd_number_of_whole_lines_per_row() {
        for k in [1, 15, 16, 17, 32, 576, 1536, 2048, 8192] {
            let s = padded_stride(k);
            assert!(s >= k && s < k + 2 * LINE, "{k} → {s}");
            assert_eq!(s % LINE, 0);
            assert_eq!((s / LINE) % 2, 1, "{k} → {s}");
        }
    }
}
