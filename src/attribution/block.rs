//! The autograd engine's transformer block, forward and backward written out over f32 rows.
//!
//! A block is a fixed composition (RMSNorm, Q/K/V projections with optional biases and
//! per-head RMSNorm, RoPE, causal grouped-query attention, output projection, RMSNorm, SwiGLU
//! MLP, two residual adds), so its vector-Jacobian product is written out by hand rather than
//! recorded as a graph of generic tensor ops. A block keeps what its backward pass needs and
//! nothing else: per position, Q and K as attention used them (after RoPE; before a per-head
//! norm where there is one, the norm and RoPE then being recomputed), V, the second residual,
//! the MLP's gate and up projections and the two norms' scales (about a fifth of what a recorded graph of the
//! same block held); the attention probabilities are recomputed, one head at a time, so the
//! memory kept grows linearly with the context. Every element-wise step runs fused, over all
//! cores.
//!
//! Layout: `b` sequences of `n` positions are `m = b·n` rows of a row-major matrix; a row of
//! Q is `n_head` heads of `head_dim` values (K and V: `n_head_kv` heads). The weights are
//! [`Weight`]s (the GGUF's matrices in place, expanded tile by tile as each product runs).

use std::borrow::Cow;

use rayon::prelude::*;
use wide::f32x8;

use crate::engine::QMatrix;
use crate::engine::linalg::{View, matmul};

/// Rows per parallel task of the element-wise steps (below this, splitting costs more than it
/// saves).
const ROWS_PER_TASK: usize = 8;

/// `len` zeros, written over all cores. The engine's buffers are megabytes (an
/// integrated-gradients batch of 625 rows: 1.4 MB per 576-wide activation, 3.8 MB per MLP
/// one) and the allocator hands back memory it has had before, which `vec![0.0; len]` clears
/// on the calling core alone while the others wait.
pub(super) fn zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    rayon::iter::repeat_n(0f32, len).collect_into_vec(&mut v);
    v
}

/// A copy of `x`, written over all cores (as [`zeros`]).
pub(super) fn copied(x: &[f32]) -> Vec<f32> {
    let mut v = Vec::with_capacity(x.len());
    x.par_iter().copied().collect_into_vec(&mut v);
    v
}

/// A constant weight matrix `W` (`rows × cols`) of a linear layer `y = x · Wᵀ`.
pub(super) trait Weight: Sync {
    fn rows(&self) -> usize;
    /// `y = x · Wᵀ` (`x`: m × cols, `y`: m × rows), or `y += x · Wᵀ` with `add`.
    fn matmul_t(&self, x: &[f32], y: &mut [f32], add: bool);
    /// `out = g · W` (`g`: m × rows, `out`: m × cols), or `out += g · W` with `add`.
    fn matmul(&self, g: &[f32], out: &mut [f32], add: bool);
}

impl Weight for QMatrix {
    fn rows(&self) -> usize {
        QMatrix::rows(self)
    }
    fn matmul_t(&self, x: &[f32], y: &mut [f32], add: bool) {
        self.product_t(x, y, add);
    }
    fn matmul(&self, g: &[f32], out: &mut [f32], add: bool) {
        self.product(g, out, add);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RopeStyle {
    /// llama.cpp NORMAL: adjacent pairs `(x[2i], x[2i+1])` (GGUF layout of llama-arch Q/K).
    Interleaved,
    /// llama.cpp NEOX: `x[i]` with `x[i + rope_dim/2]`.
    Neox,
}

/// The shape of a block.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub rope_style: RopeStyle,
}

impl Dims {
    fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// One block's weights.
pub(super) struct Layer<W> {
    pub attn_norm: Vec<f32>,
    pub wq: W,
    pub wk: W,
    pub wv: W,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm of Q and K (qwen3), `head_dim` weights each.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: W,
    pub ffn_norm: Vec<f32>,
    pub w_gate: W,
    pub w_up: W,
    pub w_down: W,
}

/// RoPE's cosines and sines for positions `0..n`: `n × rope_dim/2` each.
pub(super) struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// The tables for `n` positions of pairs rotating at `inv_freq` radians per position.
    pub fn new(inv_freq: &[f64], n: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in inv_freq {
                let theta = p as f64 * f;
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates the heads (`hd` values each) of every row of `x` (rows of `width`; row `i` is
    /// position `i % n`) in place; `inverse` rotates back (the backward pass: the rotation is
    /// orthogonal, so its vector-Jacobian product is the opposite rotation).
    fn apply(&self, dm: &Dims, x: &mut [f32], width: usize, n: usize, inverse: bool) {
        let (half, hd) = (self.half, dm.head_dim);
        let sign = if inverse { -1.0 } else { 1.0 };
        x.par_chunks_mut(width)
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(row, x)| {
                let pos = row % n;
                let cos = &self.cos[pos * half..(pos + 1) * half];
                let sin = &self.sin[pos * half..(pos + 1) * half];
                for head in x.chunks_exact_mut(hd) {
                    for (j, (&c, &s)) in cos.iter().zip(sin).enumerate() {
                        let s = sign * s;
                        let (i0, i1) = match dm.rope_style {
                            RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                            RopeStyle::Neox => (j, j + half),
                        };
                        let (a, b) = (head[i0], head[i1]);
                        head[i0] = a * c - b * s;
                        head[i1] = a * s + b * c;
                    }
                }
            });
    }
}

/// What a block's backward pass needs from its forward pass, for `m` rows.
pub(super) struct Acts {
    /// 1 / RMS of the block's input, per row.
    r1: Vec<f32>,
    /// Q and K (biases added) as attention used them, after RoPE, when they have no per-head
    /// norm; with one, before the norm (the norm's backward pass needs its input, and the
    /// backward pass recomputes the norm and RoPE). V.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// The residual stream after attention, and 1 / its RMS per row.
    x2: Vec<f32>,
    r2: Vec<f32>,
    /// The MLP's gate and up projections.
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Acts {
    /// Keeps the values of the first `keep` of the `total` sequences they hold (each of their
    /// buffers is sequence-major).
    pub fn truncate(&mut self, keep: usize, total: usize) {
        let Self {
            r1,
            q,
            k,
            v,
            x2,
            r2,
            gate,
            up,
        } = self;
        for b in [r1, q, k, v, x2, r2, gate, up] {
            b.truncate(b.len() / total * keep);
        }
    }

    /// Values kept per sequence of `n` positions (what [`forward`] returns besides its output).
    pub fn floats(dm: &Dims, ffn: usize, n: usize) -> usize {
        n * (2 + dm.q_width() + 2 * dm.kv_width() + dm.n_embd + 2 * ffn)
    }
}

/// `out = x̂ ⊙ w` with `x̂ = x / RMS(x)`, row by row (rows of `w.len()` values); `r` gets
/// 1 / RMS of each row. RMS(x) = √(mean(x²) + eps).
pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32, r: &mut [f32], out: &mut [f32]) {
    let len = w.len();
    out.par_chunks_mut(len)
        .zip(r.par_iter_mut())
        .zip(x.par_chunks(len))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((out, r), x)| {
            let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            *r = (1.0 / (ss / len as f64 + f64::from(eps)).sqrt()) as f32;
            for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
                *o = x * *r * w;
            }
        });
}

/// Adds to `gx` the gradient of [`rms_norm`]'s input for the gradient `g` of its output:
/// `r · (ĝ − x̂ · mean(ĝ ⊙ x̂))` with `ĝ = g ⊙ w`, `x̂ = x · r`.
pub(super) fn rms_norm_backward(x: &[f32], w: &[f32], r: &[f32], g: &[f32], gx: &mut [f32]) {
    let len = w.len();
    gx.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .zip(g.par_chunks(len))
        .zip(r.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((gx, x), g), &r)| {
            let dot: f64 = x
                .iter()
                .zip(g)
                .zip(w)
                .map(|((&x, &g), &w)| f64::from(g * w) * f64::from(x * r))
                .sum();
            let mean = (dot / len as f64) as f32;
            for (((gx, &x), &g), &w) in gx.iter_mut().zip(x).zip(g).zip(w) {
                *gx += r * (g * w - x * r * mean);
            }
        });
}

/// `x · Wᵀ (+ bias)` for `m` rows.
fn project<W: Weight>(w: &W, bias: Option<&[f32]>, x: &[f32], m: usize) -> Vec<f32> {
    let mut y = zeros(m * w.rows());
    w.matmul_t(x, &mut y, false);
    if let Some(b) = bias {
        y.par_chunks_mut(b.len())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(y, &b)| *y += b));
    }
    y
}

/// Q or K with a per-head RMSNorm (weights `w`) as attention uses it: normed, then turned by
/// RoPE. Returns it and the norm's 1 / RMS per head.
fn qk_normed(
    dm: &Dims,
    rope: &Rope,
    n: usize,
    pre: &[f32],
    width: usize,
    w: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut out = zeros(pre.len());
    let mut r = vec![0f32; pre.len() / dm.head_dim];
    rms_norm(pre, w, dm.eps, &mut r, &mut out);
    rope.apply(dm, &mut out, width, n, false);
    (out, r)
}

/// Q or K as attention uses it, from its projection `pre`, and `pre` itself where the backward
/// pass needs it (with a per-head norm). Without a norm RoPE turns `pre` in place.
fn qk_attended(
    dm: &Dims,
    rope: &Rope,
    n: usize,
    mut pre: Vec<f32>,
    width: usize,
    norm: Option<&[f32]>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    match norm {
        None => {
            rope.apply(dm, &mut pre, width, n, false);
            (pre, None)
        }
        Some(w) => (qk_normed(dm, rope, n, &pre, width, w).0, Some(pre)),
    }
}

/// Q or K as attention used it, from what [`Acts`] kept of it: that itself without a per-head
/// norm, else recomputed (with the norm's 1 / RMS per head; empty without a norm).
fn qk_kept<'a>(
    dm: &Dims,
    rope: &Rope,
    n: usize,
    kept: &'a [f32],
    width: usize,
    norm: Option<&[f32]>,
) -> (Cow<'a, [f32]>, Vec<f32>) {
    match norm {
        None => (Cow::Borrowed(kept), Vec::new()),
        Some(w) => {
            let (out, r) = qk_normed(dm, rope, n, kept, width, w);
            (Cow::Owned(out), r)
        }
    }
}

/// The gradient of Q or K before [`qk_attended`] from the gradient `g` after it (`pre`: its
/// input, read only with a norm).
#[allow(clippy::too_many_arguments)]
fn qk_backward(
    dm: &Dims,
    rope: &Rope,
    n: usize,
    pre: &[f32],
    r: &[f32],
    width: usize,
    norm: Option<&[f32]>,
    mut g: Vec<f32>,
) -> Vec<f32> {
    rope.apply(dm, &mut g, width, n, true);
    match norm {
        Some(w) => {
            let mut gx = zeros(g.len());
            rms_norm_backward(pre, w, r, &g, &mut gx);
            gx
        }
        None => g,
    }
}

/// Row-major `[b·n, heads·hd]` (heads side by side) → head-major `[b, heads, n, hd]`, or back
/// (`to_rows`).
fn regroup(src: &[f32], n: usize, heads: usize, hd: usize, to_rows: bool) -> Vec<f32> {
    let mut dst = zeros(src.len());
    if to_rows {
        dst.par_chunks_mut(heads * hd)
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(row, d)| {
                let (s, t) = (row / n, row % n);
                for (h, d) in d.chunks_exact_mut(hd).enumerate() {
                    let at = ((s * heads + h) * n + t) * hd;
                    d.copy_from_slice(&src[at..at + hd]);
                }
            });
    } else {
        dst.par_chunks_mut(n * hd).enumerate().for_each(|(i, d)| {
            let (s, h) = (i / heads, i % heads);
            for (t, d) in d.chunks_exact_mut(hd).enumerate() {
                let at = (s * n + t) * heads * hd + h * hd;
                d.copy_from_slice(&src[at..at + hd]);
            }
        });
    }
    dst
}

/// One head's attention probabilities over `n` positions into `pb` (`n × n`, zero above the
/// diagonal): the causal softmax of `scale · q · kᵀ` (`q`, `k`: views of `n` rows).
fn probs(n: usize, hd: usize, q: View<'_>, k: View<'_>, scale: f32, pb: &mut [f32]) {
    matmul(n, n, hd, pb, n, false, q, k.t(), scale);
    for (row, pr) in pb.chunks_exact_mut(n).enumerate() {
        let (live, masked) = pr.split_at_mut(row + 1);
        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in live.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
    }
}

/// Views of query head `head` and its KV head in sequence `s` (`q`, `k`, `v` after RoPE).
fn head_views<'a>(
    dm: &Dims,
    n: usize,
    s: usize,
    head: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
) -> (View<'a>, View<'a>, View<'a>) {
    let (qw, kw, hd) = (dm.q_width(), dm.kv_width(), dm.head_dim);
    let kv = head / (dm.n_head / dm.n_head_kv);
    (
        View::rows(&q[s * n * qw + head * hd..], qw),
        View::rows(&k[s * n * kw + kv * hd..], kw),
        View::rows(&v[s * n * kw + kv * hd..], kw),
    )
}

fn score_scale(dm: &Dims) -> f32 {
    1.0 / (dm.head_dim as f32).sqrt()
}

/// Causal softmax attention of every sequence (`q.len() / (n · q width)` of them), `q`, `k`
/// after RoPE: the output head-major (`b × n_head × n × head_dim`). The probabilities are not
/// kept; the backward pass recomputes them, so a block keeps O(n) values per position.
fn attention(dm: &Dims, n: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let (h, hd) = (dm.n_head, dm.head_dim);
    let scale = score_scale(dm);
    let mut out = zeros(q.len());
    out.par_chunks_mut(n * hd).enumerate().for_each(|(i, ob)| {
        let (qh, kh, vh) = head_views(dm, n, i / h, i % h, q, k, v);
        PROBS.with(|buf| {
            let mut pb = buf.borrow_mut();
            pb.resize(n * n, 0.0);
            probs(n, hd, qh, kh, scale, &mut pb);
            matmul(n, hd, n, ob, hd, false, View::rows(&pb, n), vh, 1.0);
        });
    });
    out
}

thread_local! {
    /// A thread's attention-probability buffer (`n × n`), reused by every head it runs.
    static PROBS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The gradients of Q, K (after RoPE) and V, head-major, from the gradient `go` of the
/// attention output (head-major), recomputing each head's probabilities. Each task takes one
/// KV head of one sequence with the query heads that share it, so no two tasks write the same
/// gradient.
fn attention_backward(
    dm: &Dims,
    n: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    go: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (h, hkv, hd) = (dm.n_head, dm.n_head_kv, dm.head_dim);
    let rep = h / hkv;
    let scale = score_scale(dm);
    let mut gq = zeros(q.len());
    let mut gk = zeros(k.len());
    let mut gv = zeros(v.len());
    gq.par_chunks_mut(rep * n * hd)
        .zip(gk.par_chunks_mut(n * hd))
        .zip(gv.par_chunks_mut(n * hd))
        .enumerate()
        .for_each(|(i, ((gq, gk), gv))| {
            let s = i / hkv;
            let mut pb = vec![0f32; n * n];
            let mut gs = vec![0f32; n * n];
            for (r, gqh) in gq.chunks_exact_mut(n * hd).enumerate() {
                let head = (i % hkv) * rep + r;
                let (qh, kh, vh) = head_views(dm, n, s, head, q, k, v);
                probs(n, hd, qh, kh, scale, &mut pb);
                let gob = View::rows(&go[(s * h + head) * n * hd..][..n * hd], hd);
                // dP = dO · Vᵀ; dV += Pᵀ · dO.
                matmul(n, n, hd, &mut gs, n, false, gob, vh.t(), 1.0);
                matmul(n, hd, n, gv, hd, r > 0, View::rows(&pb, n).t(), gob, 1.0);
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), times the score scale.
                for (row, (g, pr)) in gs.chunks_exact_mut(n).zip(pb.chunks_exact(n)).enumerate() {
                    let dot: f32 = g[..=row].iter().zip(&pr[..=row]).map(|(g, p)| g * p).sum();
                    for (g, &p) in g[..=row].iter_mut().zip(&pr[..=row]) {
                        *g = p * (*g - dot) * scale;
                    }
                    g[row + 1..].fill(0.0);
                }
                // dQ = dS · K; dK += dSᵀ · Q.
                matmul(n, hd, n, gqh, hd, false, View::rows(&gs, n), kh, 1.0);
                matmul(n, hd, n, gk, hd, r > 0, View::rows(&gs, n).t(), qh, 1.0);
            }
        });
    (gq, gk, gv)
}

/// σ(x) for each value of `x` into `s` (same length), eight lanes at a time with `wide`'s
/// exponential (as the sampler's full-vocabulary passes): the SwiGLU steps evaluate one per
/// MLP value, a few hundred million per integrated-gradients request.
fn sigmoid(x: &[f32], s: &mut [f32]) {
    debug_assert_eq!(x.len(), s.len());
    let mut xs = x.chunks_exact(8);
    let mut ss = s.chunks_exact_mut(8);
    for (x, s) in (&mut xs).zip(&mut ss) {
        let v = f32x8::from(<[f32; 8]>::try_from(x).expect("8 lanes"));
        let e = f32x8::ONE / (f32x8::ONE + (-v).exp());
        s.copy_from_slice(e.as_array());
    }
    for (&x, s) in xs.remainder().iter().zip(ss.into_remainder()) {
        *s = 1.0 / (1.0 + (-x).exp());
    }
}

/// Values per parallel task of the element-wise steps over the MLP, and per stack buffer of
/// sigmoids within one.
const MLP_CHUNK: usize = 4096;
const SIGMOID_RUN: usize = 256;

/// SiLU(gate) ⊙ up.
fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = zeros(gate.len());
    out.par_chunks_mut(MLP_CHUNK)
        .zip(gate.par_chunks(MLP_CHUNK))
        .zip(up.par_chunks(MLP_CHUNK))
        .for_each(|((o, g), u)| {
            let mut s = [0f32; SIGMOID_RUN];
            for ((o, g), u) in o
                .chunks_mut(SIGMOID_RUN)
                .zip(g.chunks(SIGMOID_RUN))
                .zip(u.chunks(SIGMOID_RUN))
            {
                let s = &mut s[..g.len()];
                sigmoid(g, s);
                for (((o, &g), &u), &s) in o.iter_mut().zip(g).zip(u).zip(&*s) {
                    *o = g * s * u;
                }
            }
        });
    out
}

/// The gradients of [`swiglu`]'s gate and up from its output's gradient `ga` (turned into the
/// gate's in place; the up's is returned).
fn swiglu_backward(gate: &[f32], up: &[f32], ga: &mut [f32]) -> Vec<f32> {
    let mut gu = zeros(ga.len());
    ga.par_chunks_mut(MLP_CHUNK)
        .zip(gu.par_chunks_mut(MLP_CHUNK))
        .zip(gate.par_chunks(MLP_CHUNK))
        .zip(up.par_chunks(MLP_CHUNK))
        .for_each(|(((ga, gu), g), u)| {
            let mut s = [0f32; SIGMOID_RUN];
            for (((ga, gu), g), u) in ga
                .chunks_mut(SIGMOID_RUN)
                .zip(gu.chunks_mut(SIGMOID_RUN))
                .zip(g.chunks(SIGMOID_RUN))
                .zip(u.chunks(SIGMOID_RUN))
            {
                let s = &mut s[..g.len()];
                sigmoid(g, s);
                for ((((ga, gu), &g), &u), &s) in ga.iter_mut().zip(gu).zip(g).zip(u).zip(&*s) {
                    *gu = *ga * g * s;
                    *ga *= u * s * (1.0 + g * (1.0 - s));
                }
            }
        });
    gu
}

/// Row `row` of each sequence of `n` rows of `width` values.
pub(super) fn pick_rows(x: &[f32], n: usize, row: usize, width: usize) -> Vec<f32> {
    x.chunks_exact(n * width)
        .flat_map(|s| &s[row * width..(row + 1) * width])
        .copied()
        .collect()
}

/// The inverse of [`pick_rows`]: `rows` (one of `width` values per sequence) placed at row
/// `row` of sequences of `n` rows, zeros elsewhere.
pub(super) fn place_rows(rows: &[f32], n: usize, row: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.len() * n];
    for (s, r) in out
        .chunks_exact_mut(n * width)
        .zip(rows.chunks_exact(width))
    {
        s[row * width..(row + 1) * width].copy_from_slice(r);
    }
    out
}

/// The block on `x` (`b·n` rows of `n_embd`; `b` sequences of `n` positions, RoPE tables for
/// at least `n`): its output and what its backward pass needs. With `only = Some(row)` the
/// output is position `row` of each sequence alone (`b` rows): attention still reads every
/// position's K and V, but the output projection and the MLP, most of a block's products, run
/// on those rows only. That is all the last block has to compute for one target.
pub(super) fn forward<W: Weight>(
    dm: &Dims,
    l: &Layer<W>,
    rope: &Rope,
    n: usize,
    x: &[f32],
    only: Option<usize>,
) -> (Vec<f32>, Acts) {
    let d = dm.n_embd;
    let m = x.len() / d;
    let (qw, kw) = (dm.q_width(), dm.kv_width());
    let mut r1 = vec![0f32; m];
    let mut hn = zeros(m * d);
    rms_norm(x, &l.attn_norm, dm.eps, &mut r1, &mut hn);
    let q = project(&l.wq, l.bq.as_deref(), &hn, m);
    let k = project(&l.wk, l.bk.as_deref(), &hn, m);
    let v = project(&l.wv, l.bv.as_deref(), &hn, m);
    drop(hn);
    let (qr, q) = qk_attended(dm, rope, n, q, qw, l.q_norm.as_deref());
    let (kr, k) = qk_attended(dm, rope, n, k, kw, l.k_norm.as_deref());
    let oh = attention(dm, n, &qr, &kr, &v);
    // What the backward pass keeps of Q and K (see [`Acts`]).
    let q = q.unwrap_or(qr);
    let k = k.unwrap_or(kr);
    let o = regroup(&oh, n, dm.n_head, dm.head_dim, true);
    drop(oh);
    // The residual stream after attention: x2 = x + wo(o), on the rows asked for.
    let (mut x2, o) = match only {
        Some(row) => (pick_rows(x, n, row, d), pick_rows(&o, n, row, qw)),
        None => (copied(x), o),
    };
    let mr = x2.len() / d;
    l.wo.matmul_t(&o, &mut x2, true);
    drop(o);
    let mut r2 = vec![0f32; mr];
    let mut hn = zeros(mr * d);
    rms_norm(&x2, &l.ffn_norm, dm.eps, &mut r2, &mut hn);
    let gate = project(&l.w_gate, None, &hn, mr);
    let up = project(&l.w_up, None, &hn, mr);
    let act = swiglu(&gate, &up);
    // y = x2 + down(act).
    hn.copy_from_slice(&x2);
    let mut y = hn;
    l.w_down.matmul_t(&act, &mut y, true);
    let acts = Acts {
        r1,
        q,
        k,
        v,
        x2,
        r2,
        gate,
        up,
    };
    (y, acts)
}

/// The gradient of the block's input `x` from the gradient `gy` of its output, with the
/// activations [`forward`] returned for `x` and the same `only` (then `gy` has `b` rows).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<W: Weight>(
    dm: &Dims,
    l: &Layer<W>,
    rope: &Rope,
    n: usize,
    x: &[f32],
    a: &Acts,
    gy: &[f32],
    only: Option<usize>,
) -> Vec<f32> {
    let d = dm.n_embd;
    let m = x.len() / d;
    let mr = gy.len() / d;
    let (h, hkv, hd) = (dm.n_head, dm.n_head_kv, dm.head_dim);
    let (qw, kw) = (dm.q_width(), dm.kv_width());
    // MLP: y = x2 + down(silu(gate) ⊙ up).
    let mut gg = zeros(a.gate.len());
    l.w_down.matmul(gy, &mut gg, false);
    let gu = swiglu_backward(&a.gate, &a.up, &mut gg);
    let mut gh = zeros(mr * d);
    l.w_gate.matmul(&gg, &mut gh, false);
    l.w_up.matmul(&gu, &mut gh, true);
    drop((gg, gu));
    let mut gx = copied(gy);
    rms_norm_backward(&a.x2, &l.ffn_norm, &a.r2, &gh, &mut gx);
    // Attention: x2 = x + wo(attention(q, k, v)).
    let mut go = zeros(mr * qw);
    l.wo.matmul(&gx, &mut go, false);
    let (go, mut gx) = match only {
        Some(row) => (place_rows(&go, n, row, qw), place_rows(&gx, n, row, d)),
        None => (go, gx),
    };
    let goh = regroup(&go, n, h, hd, false);
    drop(go);
    let (qr, rq) = qk_kept(dm, rope, n, &a.q, qw, l.q_norm.as_deref());
    let (kr, rk) = qk_kept(dm, rope, n, &a.k, kw, l.k_norm.as_deref());
    let (gq, gk, gv) = attention_backward(dm, n, &qr, &kr, &a.v, &goh);
    drop((qr, kr, goh));
    let gq = regroup(&gq, n, h, hd, true);
    let gk = regroup(&gk, n, hkv, hd, true);
    let gv = regroup(&gv, n, hkv, hd, true);
    let gq = qk_backward(dm, rope, n, &a.q, &rq, qw, l.q_norm.as_deref(), gq);
    let gk = qk_backward(dm, rope, n, &a.k, &rk, kw, l.k_norm.as_deref(), gk);
    // The attention output's projection, then Q, K and V's (biases have no input gradient),
    // summed by the products themselves.
    let mut gh = if mr == m { gh } else { zeros(m * d) };
    l.wq.matmul(&gq, &mut gh, false);
    l.wk.matmul(&gk, &mut gh, true);
    l.wv.matmul(&gv, &mut gh, true);
    rms_norm_backward(x, &l.attn_norm, &a.r1, &gh, &mut gx);
    gx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dense row-major weight.
    struct Dense {
        rows: usize,
        cols: usize,
        w: Vec<f32>,
    }

    impl Weight for Dense {
        fn rows(&self) -> usize {
            self.rows
        }
        fn matmul_t(&self, x: &[f32], y: &mut [f32], add: bool) {
            for (x, y) in x.chunks_exact(self.cols).zip(y.chunks_exact_mut(self.rows)) {
                for (y, w) in y.iter_mut().zip(self.w.chunks_exact(self.cols)) {
                    let dot: f32 = x.iter().zip(w).map(|(x, w)| x * w).sum();
                    *y = if add { *y + dot } else { dot };
                }
            }
        }
        fn matmul(&self, g: &[f32], out: &mut [f32], add: bool) {
            for (g, o) in g
                .chunks_exact(self.rows)
                .zip(out.chunks_exact_mut(self.cols))
            {
                if !add {
                    o.fill(0.0);
                }
                for (&g, w) in g.iter().zip(self.w.chunks_exact(self.cols)) {
                    o.iter_mut().zip(w).for_each(|(o, w)| *o += g * w);
                }
            }
        }
    }

    /// Deterministic values in about [-scale, scale].
    fn values(len: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + 1.0) * (seed as f32 * 0.618 + 0.37)).sin() * scale)
            .collect()
    }

    fn dense(rows: usize, cols: usize, seed: u32) -> Dense {
        Dense {
            rows,
            cols,
            w: values(rows * cols, seed, 0.6 / (cols as f32).sqrt() * 1.7),
        }
    }

    struct Case {
        dims: Dims,
        ffn: usize,
        biases: bool,
        qk_norm: bool,
        rope_dim: usize,
    }

    fn layer(c: &Case) -> Layer<Dense> {
        let d = c.dims.n_embd;
        let (qw, kw) = (c.dims.q_width(), c.dims.kv_width());
        let bias = |len, seed| c.biases.then(|| values(len, seed, 0.3));
        let norm = |seed| {
            c.qk_norm.then(|| {
                values(c.dims.head_dim, seed, 0.4)
                    .iter()
                    .map(|v| 1.0 + v)
                    .collect()
            })
        };
        Layer {
            attn_norm: values(d, 1, 0.3).iter().map(|v| 1.0 + v).collect(),
            wq: dense(qw, d, 2),
            wk: dense(kw, d, 3),
            wv: dense(kw, d, 4),
            bq: bias(qw, 5),
            bk: bias(kw, 6),
            bv: bias(kw, 7),
            q_norm: norm(8),
            k_norm: norm(9),
            wo: dense(d, qw, 10),
            ffn_norm: values(d, 11, 0.3).iter().map(|v| 1.0 + v).collect(),
            w_gate: dense(c.ffn, d, 12),
            w_up: dense(c.ffn, d, 13),
            w_down: dense(d, c.ffn, 14),
        }
    }

    fn rope_of(c: &Case, n: usize) -> Rope {
        let inv: Vec<f64> = (0..c.rope_dim / 2)
            .map(|i| 10000f64.powf(-2.0 * i as f64 / c.rope_dim as f64))
            .collect();
        Rope::new(&inv, n)
    }

    fn cases() -> Vec<Case> {
        vec![
            // llama: interleaved RoPE over the whole head, grouped-query attention.
            Case {
                dims: Dims {
                    n_embd: 16,
                    n_head: 4,
                    n_head_kv: 2,
                    head_dim: 8,
                    eps: 1e-5,
                    rope_style: RopeStyle::Interleaved,
                },
                ffn: 24,
                biases: false,
                qk_norm: false,
                rope_dim: 8,
            },
            // qwen2/qwen3: NEOX RoPE over part of the head, biases, per-head norms, one KV head.
            Case {
                dims: Dims {
                    n_embd: 16,
                    n_head: 2,
                    n_head_kv: 1,
                    head_dim: 8,
                    eps: 1e-6,
                    rope_style: RopeStyle::Neox,
                },
                ffn: 20,
                biases: true,
                qk_norm: true,
                rope_dim: 4,
            },
        ]
    }

    /// Σ y ⊙ c for the block's output y at input x.
    fn loss(c: &Case, l: &Layer<Dense>, rope: &Rope, n: usize, x: &[f32], w: &[f32]) -> f64 {
        let (y, _) = forward(&c.dims, l, rope, n, x, None);
        y.iter()
            .zip(w)
            .map(|(y, w)| f64::from(*y) * f64::from(*w))
            .sum()
    }

    #[test]
    fn the_sigmoid_is_one_over_one_plus_exp_minus_x() {
        // 8-lane chunks and a scalar remainder; saturation at both ends.
        let x: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.9).collect();
        let mut s = vec![0f32; x.len()];
        sigmoid(&x, &mut s);
        for (&x, &s) in x.iter().zip(&s) {
            let want = 1.0 / (1.0 + (-f64::from(x)).exp());
            // Relative, but f32 has nothing below ~1e-38 (exp(-x) overflows there).
            assert!(
                (f64::from(s) - want).abs() <= 2e-7 * want + 1e-37,
                "σ({x}) = {s}, not {want}"
            );
        }
        assert_eq!(s[0], 0.0);
        assert_eq!(s[202], 1.0);
    }

    #[test]
    fn the_backward_pass_is_the_forward_pass_derivative() {
        let (b, n) = (2, 5);
        for (ci, c) in cases().iter().enumerate() {
            let l = layer(c);
            let rope = rope_of(c, n);
            let d = c.dims.n_embd;
            let x = values(b * n * d, 20 + ci as u32, 1.5);
            let w = values(b * n * d, 30 + ci as u32, 1.0);
            let (_, acts) = forward(&c.dims, &l, &rope, n, &x, None);
            let g = backward(&c.dims, &l, &rope, n, &x, &acts, &w, None);
            let mut worst = 0f64;
            for i in 0..x.len() {
                let h = 1e-2f32;
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                let fd = (loss(c, &l, &rope, n, &xp, &w) - loss(c, &l, &rope, n, &xm, &w))
                    / (2.0 * f64::from(h));
                let err = (fd - f64::from(g[i])).abs() / fd.abs().max(1.0);
                worst = worst.max(err);
                assert!(
                    err < 2e-3,
                    "case {ci}, input {i}: backward {} vs finite difference {fd}",
                    g[i]
                );
            }
            assert!(worst > 0.0);
        }
    }

    #[test]
    fn one_row_of_the_block_is_that_row_of_the_whole_block() {
        let (b, n) = (3, 6);
        for (ci, c) in cases().iter().enumerate() {
            let l = layer(c);
            let rope = rope_of(c, n);
            let d = c.dims.n_embd;
            let x = values(b * n * d, 50 + ci as u32, 1.5);
            let (y, acts) = forward(&c.dims, &l, &rope, n, &x, None);
            for row in [0, 2, n - 1] {
                let (yr, ar) = forward(&c.dims, &l, &rope, n, &x, Some(row));
                assert_eq!(yr.len(), b * d);
                for (a, w) in yr.iter().zip(&pick_rows(&y, n, row, d)) {
                    assert!((a - w).abs() < 1e-5, "case {ci}, row {row}: {a} vs {w}");
                }
                // The gradient from that row alone, against the whole block's with a seed
                // that is zero on every other row.
                let gr = values(b * d, 60 + row as u32, 1.0);
                let got = backward(&c.dims, &l, &rope, n, &x, &ar, &gr, Some(row));
                let seed = place_rows(&gr, n, row, d);
                let want = backward(&c.dims, &l, &rope, n, &x, &acts, &seed, None);
                assert!(want.iter().any(|&g| g != 0.0));
                for (i, (a, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - w).abs() < 1e-5 * (1.0 + w.abs()),
                        "case {ci}, row {row}, input {i}: {a} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_model_is_causal_and_sequences_are_independent() {
        let (b, n) = (2, 5);
        for c in cases() {
            let l = layer(&c);
            let rope = rope_of(&c, n);
            let d = c.dims.n_embd;
            let x = values(b * n * d, 40, 1.5);
            let (y, _) = forward(&c.dims, &l, &rope, n, &x, None);
            // Change position 2 of sequence 0: rows 0–1 and all of sequence 1 stay as they were.
            let mut x2 = x.clone();
            x2[2 * d..3 * d].iter_mut().for_each(|v| *v += 0.5);
            let (y2, _) = forward(&c.dims, &l, &rope, n, &x2, None);
            assert_eq!(y[..2 * d], y2[..2 * d]);
            assert_eq!(y[n * d..], y2[n * d..]);
            assert!(y[2 * d..3 * d] != y2[2 * d..3 * d]);
            // A sequence alone gives what it gives in the batch (to rounding).
            let (alone, _) = forward(&c.dims, &l, &rope, n, &x[n * d..], None);
            for (a, b) in alone.iter().zip(&y[n * d..]) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rope_rotates_pairs_and_back() {
        for (style, pair) in [(RopeStyle::Interleaved, (2, 3)), (RopeStyle::Neox, (1, 3))] {
            let dims = Dims {
                n_embd: 4,
                n_head: 1,
                n_head_kv: 1,
                head_dim: 4,
                eps: 1e-5,
                rope_style: style,
            };
            // Rotary dimension 4 (two pairs), 1 rad per position on the second pair.
            let rope = Rope::new(&[0.0, 1.0], 2);
            let x: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
            let mut y = x.clone();
            rope.apply(&dims, &mut y, 4, 2, false);
            assert_eq!(y[..4], x[..4], "position 0 does not turn");
            let (i0, i1) = pair;
            let (c, s) = (1f32.cos(), 1f32.sin());
            let (a, b) = (x[4 + i0], x[4 + i1]);
            assert!((y[4 + i0] - (a * c - b * s)).abs() < 1e-6);
            assert!((y[4 + i1] - (a * s + b * c)).abs() < 1e-6);
            rope.apply(&dims, &mut y, 4, 2, true);
            for (y, x) in y.iter().zip(&x) {
                assert!((y - x).abs() < 1e-6);
            }
        }
    }
}
