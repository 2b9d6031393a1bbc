//! Gradient attribution (saliency, input×gradient, integrated gradients) through a
//! differentiable forward pass of the llama family (llama, mistral, smollm) and qwen2/qwen3,
//! written in candle on the CPU over the GGUF's own weights.
//!
//! Memory: the weights stay in the file's (quantised or 16-bit) form, memory-mapped; every
//! matmul expands its weight a cache-sized tile at a time into a buffer each thread reuses,
//! forward and backward alike, so no weight matrix is ever expanded whole (the embedding reads only the context's rows). Activations live
//! within a budget ([`AutogradModel::set_activation_budget`], `--max-memory`): the backward
//! pass runs block by block, keeping each block's graph when the budget allows and otherwise
//! recomputing one block at a time from its saved input (gradient checkpointing), and
//! integrated gradients' interpolated inputs are batched to fit it.
//!
//! The forward follows llama.cpp on the GGUF layout, not Hugging Face's:
//! - llama-arch GGUFs have their Q/K weights permuted by `convert_hf_to_gguf` for llama.cpp's
//!   NORMAL RoPE, which rotates adjacent pairs `(x[2i], x[2i+1])`; qwen2/qwen3 are converted
//!   unpermuted and use NEOX RoPE (`x[i]` with `x[i + d/2]`), as llama.cpp does;
//! - RMSNorm eps from `<arch>.attention.layer_norm_rms_epsilon`, RoPE base from
//!   `<arch>.rope.freq_base` (linear scaling and `rope_freqs.weight` factors honoured), grouped
//!   query attention from `<arch>.attention.head_count_kv`;
//! - output projection `output.weight`, or the tied `token_embd.weight` when absent.
//!
//! Only input gradients are computed: weights are plain (untracked) tensors, and every matmul
//! with a weight goes through `FrozenLinear`, whose backward returns the input's gradient
//! only, so no weight gradient is ever formed. Logits are computed at the last position only.
//!
//! Semantics (attribution.md, "What the numbers mean"): the target function is p(target) by
//! default, gradients are taken with respect to the input embeddings; the Inseq aggregation is
//! the L2 norm over the hidden dimension, L1-normalised over the context.
//!
//! Tested on the llama-arch test model (SmolLM2; Mistral and SmolLM GGUFs are converted as
//! `llama` too) and on qwen2 and qwen3 copies of it made by the tests (NEOX RoPE, Q/K/V biases,
//! per-head Q/K RMSNorm): parity with llama.cpp's qwen2 and qwen3 graphs, mean KL 0.004 nats.
//!
//! Threads: `main` sets `CANDLE_NUM_THREADS=1` on ≤ 2 cores and `RAYON_NUM_THREADS` (see there).

use std::ops::Range;
use std::path::Path;

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Tensor, Var};

use crate::engine::{QMatrix, WeightFile};

use super::error::AttributionError;
use super::legendre::gauss_legendre_unit;
use super::watch::Watch;

/// GGUF architectures the autograd forward supports.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// The activation budget when none is set (`--max-memory`): activations kept for the backward
/// pass, over every block, of one batch of inputs.
pub const DEFAULT_ACTIVATION_BUDGET: usize = 512 << 20;
/// Most interpolated inputs in one batch (beyond this, batching gains nothing on a CPU).
const IG_MAX_BATCH: usize = 25;
/// Interpolated inputs batched together before blocks are recomputed rather than kept: the
/// matmuls of smaller batches run well below the CPU's speed.
const MIN_BATCH: usize = 4;

type CResult<T> = candle_core::Result<T>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RopeStyle {
    /// llama.cpp NORMAL: adjacent pairs (GGUF layout of llama-arch Q/K weights).
    Interleaved,
    /// llama.cpp NEOX: halves.
    Neox,
}

/// RoPE tables and causal mask of one sequence length.
struct Tables {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

struct Layer {
    attn_norm: Tensor,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wo: QMatrix,
    ffn_norm: Tensor,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
}

/// A model's weights in place in its GGUF file (memory-mapped, expanded per matmul), with a
/// differentiable forward pass.
pub struct AutogradModel {
    arch: String,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_vocab: usize,
    eps: f64,
    rope_style: RopeStyle,
    rope_dim: usize,
    /// Angular frequency of each rotated pair (len `rope_dim / 2`).
    inv_freq: Vec<f64>,
    tok_embd: QMatrix,
    output: QMatrix,
    output_norm: Tensor,
    layers: Vec<Layer>,
    unk_id: u32,
    eos_id: Option<u32>,
    device: Device,
    /// Bytes of activations one batch may keep (see [`AutogradModel::set_activation_budget`]).
    budget: usize,
}

/// What is differentiated.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum TargetFn {
    /// p(target) (Inseq's default).
    #[default]
    Prob,
    /// log p(target).
    Logprob,
    /// The target's raw logit.
    Logit,
}

/// How the per-dimension attribution of a token becomes one score.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    /// Inseq-compatible: non-negative, sums to 1 (gradients: L2 norm over the hidden
    /// dimension; attention: mean over heads, then layers, renormalised; occlusion: drops
    /// clamped at 0).
    #[default]
    Inseq,
    /// Raw signed scores (gradients: sum over the hidden dimension, what IG's completeness
    /// checks; occlusion: the signed drop; attention: plain mean over heads and layers).
    Sum,
    /// Unnormalised magnitudes (gradients: L2 norm over the hidden dimension; occlusion: |drop|;
    /// attention: as sum).
    L2,
}

/// Integrated gradients' starting point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// The embedding of token `id` at every position, except positions whose token is in
    /// `keep`, which keep their own embedding (Inseq's default: unk/pad id, end-of-turn kept).
    Token { id: u32, keep: Vec<u32> },
    /// All-zero embeddings (badly conditioned for RMSNorm models).
    Zero,
}

/// A gradient method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GradMethod {
    Saliency,
    InputXGradient,
    /// Gauss–Legendre path integral with `steps` nodes on [0, 1].
    IntegratedGradients {
        steps: usize,
        baseline: Baseline,
    },
}

/// The result of one gradient attribution.
#[derive(Debug, Clone)]
pub struct GradAttribution {
    /// One score per context token, per the aggregation asked for.
    pub scores: Vec<f64>,
    /// Signed sum over the hidden dimension, one per context token.
    pub raw: Vec<f64>,
    /// p(target) at the input under this engine.
    pub target_prob: f64,
    /// Integrated gradients only: |Σ raw − (f(input) − f(baseline))|.
    pub completeness_error: Option<f64>,
}

/// Rows `rows` of `w` expanded to f32.
fn expand(w: &QMatrix, rows: Range<usize>) -> Vec<f32> {
    let mut out = vec![0f32; rows.len() * w.cols()];
    w.dequantise(rows, &mut out);
    out
}

/// `x @ wᵀ` for a constant weight `w` ([out, in], in the file's form); the backward pass
/// returns only the input's gradient (`grad @ w`), so no weight gradient is computed, and the
/// graph keeps no expanded weight: each product expands it again, a cache-sized tile at a
/// time ([`QMatrix::matmul_t`], [`QMatrix::matmul`]).
struct FrozenLinear {
    w: QMatrix,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen-linear: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-linear: contiguous input expected");
        };
        let x = &data[start..end];
        let m = layout.shape().dims().first().copied().unwrap_or(0);
        let mut y = vec![0f32; m * self.w.rows()];
        self.w.matmul_t(x, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((m, self.w.rows()))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        let g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let m = g.len() / self.w.rows().max(1);
        let mut out = vec![0f32; m * self.w.cols()];
        self.w.matmul(&g, &mut out);
        Ok(Some(Tensor::from_vec(
            out,
            (m, self.w.cols()),
            &Device::Cpu,
        )?))
    }
}

/// `x [.., in] @ wᵀ (+ b)` → `[.., out]`.
fn linear(x: &Tensor, w: &QMatrix, b: Option<&Tensor>) -> CResult<Tensor> {
    let dims = x.dims().to_vec();
    let (lead, inner) = dims.split_at(dims.len() - 1);
    let m: usize = lead.iter().product();
    let x2 = x.contiguous()?.reshape((m, inner[0]))?;
    let y = x2.apply_op1(FrozenLinear { w: w.clone() })?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = lead.to_vec();
    out.push(w.rows());
    y.reshape(out)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

fn softmax_last(x: &Tensor) -> CResult<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

fn log_softmax_last(x: &Tensor) -> CResult<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

fn meta_err(path: &Path, message: impl Into<String>) -> AttributionError {
    AttributionError::BadModel {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The GGUF file with the architecture's key prefix.
struct Gguf {
    file: WeightFile,
    arch: String,
}

impl Gguf {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn uint(&self, key: &str) -> Result<Option<usize>, AttributionError> {
        let full = format!("{}.{key}", self.arch);
        match self.file.number(&full) {
            None if self.file.has_key(&full) => Err(meta_err(
                self.path(),
                format!("{full} is not an unsigned integer"),
            )),
            None => Ok(None),
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
            Some(_) => Err(meta_err(
                self.path(),
                format!("{full} is not an unsigned integer"),
            )),
        }
    }

    fn req_uint(&self, key: &str) -> Result<usize, AttributionError> {
        self.uint(key)?.ok_or_else(|| {
            meta_err(
                self.path(),
                format!("metadata {}.{key} is missing", self.arch),
            )
        })
    }

    fn float(&self, key: &str) -> Result<Option<f64>, AttributionError> {
        let full = format!("{}.{key}", self.arch);
        match self.file.number(&full) {
            None if self.file.has_key(&full) => {
                Err(meta_err(self.path(), format!("{full} is not a number")))
            }
            other => Ok(other),
        }
    }

    fn global_uint(&self, key: &str) -> Option<u64> {
        self.file
            .number(key)
            .filter(|x| *x >= 0.0 && x.fract() == 0.0)
            .map(|x| x as u64)
    }

    /// A weight matrix of `cols` columns, in place.
    fn matrix(&self, name: &str, cols: usize) -> Result<QMatrix, AttributionError> {
        self.opt_matrix(name, cols)?
            .ok_or_else(|| meta_err(self.path(), format!("tensor {name} is missing")))
    }

    fn opt_matrix(&self, name: &str, cols: usize) -> Result<Option<QMatrix>, AttributionError> {
        self.file
            .matrix(name, cols)
            .map_err(|e| meta_err(self.path(), e.to_string()))
    }

    /// A vector (norm weight, bias) expanded to f32, checked to have `len` values.
    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Tensor>, AttributionError> {
        let Some(dims) = self.file.dims(name) else {
            return Ok(None);
        };
        if dims[0] != len || dims[1..].iter().any(|&d| d != 1) {
            return Err(meta_err(
                self.path(),
                format!("tensor {name} has shape {dims:?}, expected a vector of {len}"),
            ));
        }
        let m = self.matrix(name, len)?;
        Ok(Some(Tensor::from_vec(expand(&m, 0..1), len, &Device::Cpu)?))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor, AttributionError> {
        self.opt_vector(name, len)?
            .ok_or_else(|| meta_err(self.path(), format!("tensor {name} is missing")))
    }
}

impl AutogradModel {
    /// Open a GGUF file for the autograd forward: the weights stay in the file (memory-mapped),
    /// only norm weights and biases are read now. An architecture outside
    /// [`SUPPORTED_ARCHITECTURES`] gives [`AttributionError::UnsupportedArchitecture`].
    pub fn load(path: &Path) -> Result<Self, AttributionError> {
        let file = WeightFile::open(path).map_err(|e| match e {
            crate::engine::EngineError::Io { path, source } => {
                AttributionError::Io { path, source }
            }
            crate::engine::EngineError::NotFound(path) => AttributionError::Io {
                path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            other => AttributionError::Gguf {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        })?;
        let Some(arch) = file.string("general.architecture") else {
            return Err(meta_err(path, "general.architecture is missing"));
        };
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(AttributionError::UnsupportedArchitecture {
                arch,
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
        let g = Gguf {
            file,
            arch: arch.clone(),
        };
        let n_embd = g.req_uint("embedding_length")?;
        let n_layer = g.req_uint("block_count")?;
        let n_head = g.req_uint("attention.head_count")?;
        let n_head_kv = g.uint("attention.head_count_kv")?.unwrap_or(n_head);
        let head_dim = g
            .uint("attention.key_length")?
            .unwrap_or(n_embd / n_head.max(1));
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) || head_dim == 0 {
            return Err(meta_err(
                path,
                format!("unsupported head layout: {n_head} heads, {n_head_kv} KV heads"),
            ));
        }
        if let Some(v) = g.uint("attention.value_length")?
            && v != head_dim
        {
            return Err(meta_err(path, "key and value head sizes differ"));
        }
        let eps = g.float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
        let freq_base = g.float("rope.freq_base")?.unwrap_or(10000.0);
        let rope_dim = g.uint("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(meta_err(
                path,
                format!("bad rope.dimension_count {rope_dim}"),
            ));
        }
        let mut freq_scale = 1.0;
        if let Some(kind) = g.file.string(&format!("{arch}.rope.scaling.type")) {
            match kind.as_str() {
                "none" => {}
                "linear" => {
                    if let Some(f) = g.float("rope.scaling.factor")?
                        && f > 0.0
                    {
                        freq_scale = 1.0 / f;
                    }
                }
                other => {
                    return Err(meta_err(
                        path,
                        format!("RoPE scaling `{other}` is not supported by the autograd engine"),
                    ));
                }
            }
        }
        let rope_style = match arch.as_str() {
            "qwen2" | "qwen3" => RopeStyle::Neox,
            _ => RopeStyle::Interleaved,
        };
        let freq_factors: Option<Vec<f32>> = g
            .opt_vector("rope_freqs.weight", rope_dim / 2)?
            .map(|t| t.to_vec1::<f32>())
            .transpose()?;
        let inv_freq: Vec<f64> = (0..rope_dim / 2)
            .map(|i| {
                let f = freq_scale * freq_base.powf(-2.0 * i as f64 / rope_dim as f64);
                match &freq_factors {
                    Some(ff) => f / ff.get(i).copied().unwrap_or(1.0) as f64,
                    None => f,
                }
            })
            .collect();

        let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);
        let tok_embd = g.matrix("token_embd.weight", n_embd)?;
        let n_vocab = tok_embd.rows();
        let output = match g.opt_matrix("output.weight", n_embd)? {
            Some(t) => t,
            None => tok_embd.clone(),
        };
        let output_norm = g.vector("output_norm.weight", n_embd)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            let shaped = |m: QMatrix, rows: usize| {
                if m.rows() == rows {
                    Ok(m)
                } else {
                    Err(meta_err(
                        path,
                        format!("tensor {} has {} rows, expected {rows}", m.name(), m.rows()),
                    ))
                }
            };
            let wq = shaped(g.matrix(&p("attn_q.weight"), n_embd)?, q_dim)?;
            let wk = shaped(g.matrix(&p("attn_k.weight"), n_embd)?, kv_dim)?;
            let wv = shaped(g.matrix(&p("attn_v.weight"), n_embd)?, kv_dim)?;
            let wo = shaped(g.matrix(&p("attn_output.weight"), q_dim)?, n_embd)?;
            let w_gate = g.matrix(&p("ffn_gate.weight"), n_embd)?;
            let ffn = w_gate.rows();
            let w_up = shaped(g.matrix(&p("ffn_up.weight"), n_embd)?, ffn)?;
            let w_down = shaped(g.matrix(&p("ffn_down.weight"), ffn)?, n_embd)?;
            layers.push(Layer {
                attn_norm: g.vector(&p("attn_norm.weight"), n_embd)?,
                wq,
                wk,
                wv,
                bq: g.opt_vector(&p("attn_q.bias"), q_dim)?,
                bk: g.opt_vector(&p("attn_k.bias"), kv_dim)?,
                bv: g.opt_vector(&p("attn_v.bias"), kv_dim)?,
                q_norm: g.opt_vector(&p("attn_q_norm.weight"), head_dim)?,
                k_norm: g.opt_vector(&p("attn_k_norm.weight"), head_dim)?,
                wo,
                ffn_norm: g.vector(&p("ffn_norm.weight"), n_embd)?,
                w_gate,
                w_up,
                w_down,
            });
        }
        let unk_id = g
            .global_uint("tokenizer.ggml.unknown_token_id")
            .unwrap_or(0) as u32;
        let eos_id = g
            .global_uint("tokenizer.ggml.eos_token_id")
            .map(|x| x as u32);
        Ok(Self {
            arch,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            eps,
            rope_style,
            rope_dim,
            inv_freq,
            tok_embd,
            output,
            output_norm,
            layers,
            unk_id,
            eos_id,
            device: Device::Cpu,
            budget: DEFAULT_ACTIVATION_BUDGET,
        })
    }

    /// The GGUF architecture name.
    pub fn architecture(&self) -> &str {
        &self.arch
    }

    /// Vocabulary size (rows of the embedding matrix).
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Hidden size.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// Number of transformer blocks.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Inseq's default baseline for integrated gradients: the unknown token's embedding
    /// (`tokenizer.ggml.unknown_token_id`, else id 0) everywhere, end-of-sequence positions
    /// (`tokenizer.ggml.eos_token_id`) keeping their own embedding.
    pub fn default_baseline(&self) -> Baseline {
        Baseline::Token {
            id: self.unk_id,
            keep: self.eos_id.into_iter().collect(),
        }
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), AttributionError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.n_vocab) {
            return Err(AttributionError::BadInput(format!(
                "token id {bad} is out of range (vocabulary of {})",
                self.n_vocab
            )));
        }
        Ok(())
    }

    /// Input embeddings of `ids`: `[1, n, n_embd]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor, AttributionError> {
        self.check_ids(ids)?;
        let d = self.n_embd;
        let mut out = vec![0f32; ids.len() * d];
        for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
            self.tok_embd.dequantise(id as usize..id as usize + 1, row);
        }
        Ok(Tensor::from_vec(out, (1, ids.len(), d), &self.device)?)
    }

    fn rope_tables(&self, n: usize) -> CResult<(Tensor, Tensor)> {
        let half = self.rope_dim / 2;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &self.inv_freq {
                let theta = p as f64 * f;
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        let shape: &[usize] = match self.rope_style {
            RopeStyle::Interleaved => &[1, n, 1, half, 1],
            RopeStyle::Neox => &[1, n, 1, half],
        };
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?,
            Tensor::from_vec(sin, shape, &self.device)?,
        ))
    }

    /// RoPE on `x` `[b, n, heads, head_dim]`, llama.cpp's convention for this architecture.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
        let (b, n, h, hd) = x.dims4()?;
        let rd = self.rope_dim;
        let half = rd / 2;
        let xr = if rd < hd {
            x.narrow(3, 0, rd)?
        } else {
            x.clone()
        };
        let rotated = match self.rope_style {
            RopeStyle::Interleaved => {
                let xr = xr.reshape((b, n, h, half, 2))?;
                let x0 = xr.narrow(4, 0, 1)?;
                let x1 = xr.narrow(4, 1, 1)?;
                let o0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
                let o1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
                Tensor::cat(&[o0, o1], 4)?.reshape((b, n, h, rd))?
            }
            RopeStyle::Neox => {
                let x0 = xr.narrow(3, 0, half)?;
                let x1 = xr.narrow(3, half, half)?;
                let o0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
                let o1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
                Tensor::cat(&[o0, o1], 3)?
            }
        };
        if rd < hd {
            Tensor::cat(&[rotated, x.narrow(3, rd, hd - rd)?], 3)
        } else {
            Ok(rotated)
        }
    }

    fn forward_last(&self, x: &Tensor) -> CResult<Tensor> {
        let (b, n, d) = x.dims3()?;
        let x = self.blocks(x, |_| Ok(()))?;
        let last = x.narrow(1, n - 1, 1)?.reshape((b, d))?;
        self.head(&last)
    }

    /// Final norm and output head: `[b, n_embd]` → `[b, n_vocab]`.
    fn head(&self, last: &Tensor) -> CResult<Tensor> {
        let last = rms_norm(last, &self.output_norm, self.eps)?;
        linear(&last, &self.output, None)
    }

    /// RoPE tables and the causal mask for `n` positions.
    fn tables(&self, n: usize) -> CResult<Tables> {
        let (cos, sin) = self.rope_tables(n)?;
        let mask: Vec<f32> = (0..n * n)
            .map(|i| {
                if i % n > i / n {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), &self.device)?;
        Ok(Tables { cos, sin, mask })
    }

    /// The residual stream through every block: `each` sees the output of each block in
    /// order; returns the last one.
    fn blocks(&self, x: &Tensor, mut each: impl FnMut(&Tensor) -> CResult<()>) -> CResult<Tensor> {
        let t = self.tables(x.dim(1)?)?;
        let mut x = x.clone();
        for l in &self.layers {
            x = self.block(l, &x, &t)?;
            each(&x)?;
        }
        Ok(x)
    }

    /// One transformer block on `x` `[b, n, n_embd]`.
    fn block(&self, l: &Layer, x: &Tensor, t: &Tables) -> CResult<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (h, hkv, hd) = (self.n_head, self.n_head_kv, self.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let rep = h / hkv;
        let hn = rms_norm(x, &l.attn_norm, self.eps)?;
        let mut q = linear(&hn, &l.wq, l.bq.as_ref())?.reshape((b, n, h, hd))?;
        let mut k = linear(&hn, &l.wk, l.bk.as_ref())?.reshape((b, n, hkv, hd))?;
        let v = linear(&hn, &l.wv, l.bv.as_ref())?.reshape((b, n, hkv, hd))?;
        if let Some(w) = &l.q_norm {
            q = rms_norm(&q, w, self.eps)?;
        }
        if let Some(w) = &l.k_norm {
            k = rms_norm(&k, w, self.eps)?;
        }
        let q = self
            .rope(&q, &t.cos, &t.sin)?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self.rope(&k, &t.cos, &t.sin)?.transpose(1, 2)?;
        let v = v.transpose(1, 2)?;
        let (k, v) = if rep > 1 {
            let k = k
                .unsqueeze(2)?
                .broadcast_as((b, hkv, rep, n, hd))?
                .reshape((b, h, n, hd))?;
            let v = v
                .unsqueeze(2)?
                .broadcast_as((b, hkv, rep, n, hd))?
                .reshape((b, h, n, hd))?;
            (k, v)
        } else {
            (k.contiguous()?, v.contiguous()?)
        };
        let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&t.mask)?;
        let att = softmax_last(&att)?;
        let o = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, h * hd))?;
        let x = (x + linear(&o, &l.wo, None)?)?;
        let hn = rms_norm(&x, &l.ffn_norm, self.eps)?;
        let g = linear(&hn, &l.w_gate, None)?.silu()?;
        let u = linear(&hn, &l.w_up, None)?;
        x + linear(&(g * u)?, &l.w_down, None)?
    }

    /// The residual stream of `ids` after the embedding (layer 0) and after every block
    /// (layers 1..=n_layer), each `n × n_embd` values row-major: what the logit lens reads
    /// (for parity checks of `ntv lens` against this f32 forward).
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, AttributionError> {
        if ids.is_empty() {
            return Err(AttributionError::BadInput("the context is empty".into()));
        }
        let e = self.embed(ids)?;
        let mut out = vec![e.flatten_all()?.to_vec1::<f32>()?];
        self.blocks(&e, |x| {
            out.push(x.flatten_all()?.to_vec1::<f32>()?);
            Ok(())
        })?;
        Ok(out)
    }

    /// This engine's final norm and output head on one residual row (`n_embd` values): the
    /// lens logits of that row in f32.
    pub fn lens_logits(&self, residual: &[f32]) -> Result<Vec<f32>, AttributionError> {
        let x = Tensor::from_slice(residual, (1, residual.len()), &self.device)?;
        Ok(self.head(&x)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Logits at the last position of each sequence: `embeddings` `[b, n, n_embd]` →
    /// `[b, n_vocab]`. Differentiable with respect to `embeddings`.
    pub fn logits_last(&self, embeddings: &Tensor) -> Result<Tensor, AttributionError> {
        let (_, n, d) = embeddings.dims3()?;
        if n == 0 || d != self.n_embd {
            return Err(AttributionError::BadInput(format!(
                "embeddings of shape {:?} do not fit the model (n_embd {})",
                embeddings.dims(),
                self.n_embd
            )));
        }
        Ok(self.forward_last(embeddings)?)
    }
}

fn target_value(logits: &Tensor, target: u32, f: TargetFn) -> CResult<Tensor> {
    let t = target as usize;
    match f {
        TargetFn::Logit => logits.narrow(1, t, 1),
        TargetFn::Prob => softmax_last(logits)?.narrow(1, t, 1),
        TargetFn::Logprob => log_softmax_last(logits)?.narrow(1, t, 1),
    }
}

/// Next-token logits after `context` under the autograd forward (for parity checks).
pub fn next_token_logits(
    model: &AutogradModel,
    context: &[u32],
) -> Result<Vec<f32>, AttributionError> {
    next_token_logits_inner(model, context)
}

fn next_token_logits_inner(
    model: &AutogradModel,
    context: &[u32],
) -> Result<Vec<f32>, AttributionError> {
    if context.is_empty() {
        return Err(AttributionError::BadInput("the context is empty".into()));
    }
    let e = model.embed(context)?;
    Ok(model.logits_last(&e)?.squeeze(0)?.to_vec1::<f32>()?)
}

/// How the backward pass gets each block's activations: the first `graphs` blocks keep their
/// graph from the forward pass; the others keep only their input and are recomputed, one
/// block at a time, during the backward pass (gradient checkpointing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keep {
    graphs: usize,
}

/// A block's part of the forward pass, as the backward pass needs it.
enum Saved {
    /// The block's input (a leaf) and its output, with the graph between them.
    Graph(Var, Tensor),
    /// The block's input only.
    Input(Tensor),
}

/// A forward pass kept for backward passes: the blocks' graphs or inputs (see [`Keep`]) and
/// the residual stream at the top, for inputs `[b, n, d]` (rows independent). Each backward
/// pass starts from one position's target function, so the targets of one sequence (e.g.
/// every completion token of `--all`, or saliency and input×gradient of one target) share
/// the forward pass and differ only in the seed.
struct Pass {
    saved: Vec<Saved>,
    top: Var,
    tables: Tables,
}

impl Pass {
    fn new(model: &AutogradModel, inputs: &Tensor, keep: Keep) -> Result<Self, AttributionError> {
        let t = model.tables(inputs.dim(1)?)?;
        let mut saved = Vec::with_capacity(model.layers.len());
        let mut x = inputs.detach();
        for (i, l) in model.layers.iter().enumerate() {
            if i < keep.graphs {
                let v = Var::from_tensor(&x)?;
                let y = model.block(l, v.as_tensor(), &t)?;
                x = y.detach();
                saved.push(Saved::Graph(v, y));
            } else {
                let y = model.block(l, &x, &t)?;
                saved.push(Saved::Input(std::mem::replace(&mut x, y)));
            }
        }
        Ok(Self {
            saved,
            top: Var::from_tensor(&x)?,
            tables: t,
        })
    }

    /// The target function at position `row` of every input, its gradient w.r.t. the
    /// inputs `[b, n, d]` (zero after `row`: the model is causal) and the logits at `row`
    /// (detached).
    fn backward(
        &self,
        model: &AutogradModel,
        row: usize,
        target: u32,
        f: TargetFn,
    ) -> Result<(Vec<f32>, Tensor, Tensor), AttributionError> {
        let (b, _, d) = self.top.as_tensor().dims3()?;
        let last = self.top.as_tensor().narrow(1, row, 1)?.reshape((b, d))?;
        let logits = model.head(&last)?;
        let vals = target_value(&logits, target, f)?;
        let no_grad = || AttributionError::Compute("no gradient reached the input".into());
        let mut g = vals
            .sum_all()?
            .backward()?
            .get(self.top.as_tensor())
            .ok_or_else(no_grad)?
            .clone();
        for (l, part) in model.layers.iter().zip(&self.saved).rev() {
            let recomputed;
            let (v, y) = match part {
                Saved::Graph(v, y) => (v, y),
                Saved::Input(x) => {
                    let v = Var::from_tensor(x)?;
                    let y = model.block(l, v.as_tensor(), &self.tables)?;
                    recomputed = (v, y);
                    (&recomputed.0, &recomputed.1)
                }
            };
            // d(Σ y·g)/dx is the block's vector-Jacobian product with the gradient above it.
            g = (y * &g)?
                .sum_all()?
                .backward()?
                .get(v.as_tensor())
                .ok_or_else(no_grad)?
                .clone();
        }
        Ok((vals.flatten_all()?.to_vec1::<f32>()?, g, logits.detach()))
    }
}

/// Target function values and their gradients w.r.t. `inputs` `[b, n, d]` (rows independent),
/// one block at a time backwards (see [`Keep`]). Returns the values, the gradient and the
/// logits (detached).
fn value_and_grad(
    model: &AutogradModel,
    inputs: &Tensor,
    target: u32,
    f: TargetFn,
    keep: Keep,
) -> Result<(Vec<f32>, Tensor, Tensor), AttributionError> {
    let n = inputs.dim(1)?;
    Pass::new(model, inputs, keep)?.backward(model, n - 1, target, f)
}

/// The forward pass of one token sequence, kept so that gradient attributions of targets
/// after any prefix of it share it ([`SharedForward::attribute`]): saliency and
/// input×gradient of one target cost one backward pass together, and each further target
/// one more backward pass.
pub struct SharedForward {
    ids: Vec<u32>,
    embeddings: Tensor,
    pass: Pass,
    /// Gradients already computed: (predicting position, target, function) → (gradient
    /// `[1, row + 1, d]`, p(target)).
    done: Vec<((usize, u32, TargetFn), Tensor, f64)>,
}

impl SharedForward {
    /// The forward pass of `ids` (within the model's activation budget).
    pub fn new(model: &AutogradModel, ids: &[u32]) -> Result<Self, AttributionError> {
        if ids.is_empty() {
            return Err(AttributionError::BadInput("the context is empty".into()));
        }
        let e = model.embed(ids)?;
        let (_, keep) = model.plan(1, ids.len());
        Ok(Self {
            ids: ids.to_vec(),
            pass: Pass::new(model, &e, keep)?,
            embeddings: e,
            done: Vec::new(),
        })
    }

    /// Backward passes run so far (one per distinct target; a method asked again of a target
    /// reuses its gradient).
    pub fn backward_passes(&self) -> usize {
        self.done.len()
    }

    /// Whether `context` is a prefix of this pass's sequence (so its targets can use it).
    pub fn covers(&self, context: &[u32]) -> bool {
        !context.is_empty() && self.ids.starts_with(context)
    }

    /// Saliency or input×gradient of `target` after `context` (a prefix of the sequence,
    /// see [`SharedForward::covers`]).
    pub fn attribute(
        &mut self,
        model: &AutogradModel,
        context: &[u32],
        target: u32,
        method: &GradMethod,
        f: TargetFn,
        agg: Agg,
    ) -> Result<GradAttribution, AttributionError> {
        if !self.covers(context) {
            return Err(AttributionError::BadInput(
                "the context is not a prefix of the shared forward pass".into(),
            ));
        }
        model.check_ids(&[target])?;
        let n = context.len();
        let key = (n - 1, target, f);
        let (g, p) = match self.done.iter().find(|(k, _, _)| *k == key) {
            Some((_, g, p)) => (g.clone(), *p),
            None => {
                let (_, g, logits) = self.pass.backward(model, n - 1, target, f)?;
                let g = g.narrow(1, 0, n)?;
                let p = prob_of(&logits, target)?;
                self.done.push((key, g.clone(), p));
                (g, p)
            }
        };
        let attr = match method {
            GradMethod::Saliency => g,
            GradMethod::InputXGradient => (self.embeddings.narrow(1, 0, n)? * &g)?,
            GradMethod::IntegratedGradients { .. } => {
                return Err(AttributionError::BadInput(
                    "integrated gradients does not share a forward pass".into(),
                ));
            }
        };
        let (scores, raw) = aggregate(&attr, agg)?;
        Ok(GradAttribution {
            scores,
            raw,
            target_prob: p,
            completeness_error: None,
        })
    }
}

/// Per-token scores of an attribution `[1, n, d]`: (aggregated as asked, signed sums).
fn aggregate(attr: &Tensor, agg: Agg) -> Result<(Vec<f64>, Vec<f64>), AttributionError> {
    let attr = attr.squeeze(0)?.to_dtype(DType::F64)?; // [n, d]
    let raw = attr.sum(1)?.to_vec1::<f64>()?;
    let l2 = attr.sqr()?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
    let scores = match agg {
        Agg::Sum => raw.clone(),
        Agg::L2 => l2,
        Agg::Inseq => {
            let total: f64 = l2.iter().sum();
            if total > 0.0 {
                l2.iter().map(|x| x / total).collect()
            } else {
                l2
            }
        }
    };
    Ok((scores, raw))
}

fn prob_of(logits: &Tensor, target: u32) -> Result<f64, AttributionError> {
    let p = softmax_last(&logits.narrow(0, 0, 1)?)?
        .narrow(1, target as usize, 1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(p[0] as f64)
}

/// Attribute `target` (the token predicted after `context`) to each context token.
pub fn attribute(
    model: &AutogradModel,
    context: &[u32],
    target: u32,
    method: GradMethod,
    target_fn: TargetFn,
    agg: Agg,
) -> Result<GradAttribution, AttributionError> {
    attribute_watched(
        model,
        context,
        target,
        method,
        target_fn,
        agg,
        &Watch::default(),
    )
}

/// [`attribute`], reporting progress to `watch` (integrated gradients: one unit per quadrature
/// node, counted as each batch of nodes finishes; the other methods: one unit) and stopping
/// between batches once it is cancelled. The units are added to the watch's total here.
pub fn attribute_watched(
    model: &AutogradModel,
    context: &[u32],
    target: u32,
    method: GradMethod,
    target_fn: TargetFn,
    agg: Agg,
    watch: &Watch,
) -> Result<GradAttribution, AttributionError> {
    if context.is_empty() {
        return Err(AttributionError::BadInput("the context is empty".into()));
    }
    model.check_ids(&[target])?;
    watch.check()?;
    let e = model.embed(context)?; // [1, n, d]
    let (_, n, d) = e.dims3()?;
    let (attr, target_prob, completeness) = match method {
        GradMethod::Saliency | GradMethod::InputXGradient => {
            watch.add_total(1);
            let (_, keep) = model.plan(1, n);
            let (_, g, logits) = value_and_grad(model, &e, target, target_fn, keep)?;
            watch.advance(1);
            let p = prob_of(&logits, target)?;
            let attr = if method == GradMethod::Saliency {
                g
            } else {
                (&e * &g)?
            };
            (attr, p, None)
        }
        GradMethod::IntegratedGradients { steps, baseline } => {
            if steps == 0 {
                return Err(AttributionError::BadInput(
                    "integrated gradients needs at least one step".into(),
                ));
            }
            let b = baseline_embeddings(model, context, &e, &baseline)?;
            let diff = (&e - &b)?;
            let (alphas, weights) = gauss_legendre_unit(steps);
            let (chunk, keep) = model.plan(steps.min(IG_MAX_BATCH), n);
            let mut acc = Tensor::zeros((1, n, d), DType::F32, &model.device)?;
            watch.add_total(steps as u64);
            for (a_chunk, w_chunk) in alphas.chunks(chunk).zip(weights.chunks(chunk)) {
                watch.check()?;
                let k = a_chunk.len();
                let a = Tensor::from_vec(
                    a_chunk.iter().map(|&a| a as f32).collect::<Vec<_>>(),
                    (k, 1, 1),
                    &model.device,
                )?;
                let w = Tensor::from_vec(
                    w_chunk.iter().map(|&w| w as f32).collect::<Vec<_>>(),
                    (k, 1, 1),
                    &model.device,
                )?;
                let inputs = b.broadcast_add(&diff.broadcast_mul(&a)?)?;
                let (_, g, _) = value_and_grad(model, &inputs, target, target_fn, keep)?;
                acc = (acc + g.broadcast_mul(&w)?.sum_keepdim(0)?)?;
                watch.advance(k as u64);
            }
            watch.check()?;
            let attr = (&diff * &acc)?;
            // f(input) and f(baseline) in one forward of two rows.
            let ends = Tensor::cat(&[&e, &b], 0)?;
            let logits = model.logits_last(&ends)?;
            let f = target_value(&logits, target, target_fn)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let p = prob_of(&logits, target)?;
            let sum: f64 = attr.sum_all()?.to_dtype(DType::F64)?.to_vec0::<f64>()?;
            let err = (sum - (f[0] as f64 - f[1] as f64)).abs();
            (attr, p, Some(err))
        }
    };
    let (scores, raw) = aggregate(&attr, agg)?;
    Ok(GradAttribution {
        scores,
        raw,
        target_prob,
        completeness_error: completeness,
    })
}

fn baseline_embeddings(
    model: &AutogradModel,
    context: &[u32],
    e: &Tensor,
    baseline: &Baseline,
) -> Result<Tensor, AttributionError> {
    match baseline {
        Baseline::Zero => Ok(e.zeros_like()?),
        Baseline::Token { id, keep } => {
            let ids: Vec<u32> = context
                .iter()
                .map(|t| if keep.contains(t) { *t } else { *id })
                .collect();
            model.embed(&ids)
        }
    }
}

impl AutogradModel {
    /// Bytes of activations one input keeps for the backward pass of one block over `n`
    /// positions (attention maps dominate on long contexts, per-token activations on short
    /// ones).
    fn block_bytes(&self, n: usize) -> usize {
        4 * (4 * self.n_head * n * n + n * (16 * self.n_embd + 8 * self.ffn_dim()))
    }

    /// How to run a batch of up to `most` inputs of `n` positions within the budget: how many
    /// inputs at a time, and how many blocks keep their graph (the others are recomputed in
    /// the backward pass). Batches of [`MIN_BATCH`] inputs at least (or `most`) when the
    /// blocks' inputs fit, for matmuls big enough to run at speed; then as many blocks'
    /// graphs as the rest of the budget holds; with a budget too small for even that, one
    /// input at a time.
    fn plan(&self, most: usize, n: usize) -> (usize, Keep) {
        let most = most.max(1);
        let layers = self.n_layer();
        let block = self.block_bytes(n).max(1);
        // Per input: every block's graph, or only the blocks' inputs and one block's graph.
        let all = block * layers;
        let inputs = 4 * n * self.n_embd * (layers + 1) + block;
        if all * most <= self.budget {
            return (most, Keep { graphs: layers });
        }
        let chunk = (self.budget / all).max(MIN_BATCH.min(most));
        if all * chunk <= self.budget {
            return (chunk, Keep { graphs: layers });
        }
        let chunk = MIN_BATCH.min(most);
        let chunk = if inputs * chunk <= self.budget {
            chunk
        } else {
            (self.budget / inputs).clamp(1, chunk)
        };
        let spare = self.budget.saturating_sub(inputs * chunk);
        let graphs = (spare / (block * chunk)).min(layers);
        (chunk, Keep { graphs })
    }

    /// The schedule the budget gives a batch of up to `inputs` inputs of `n` positions:
    /// (inputs processed together, blocks that keep their graph; the others are recomputed).
    pub fn schedule(&self, inputs: usize, n: usize) -> (usize, usize) {
        let (chunk, keep) = self.plan(inputs, n);
        (chunk, keep.graphs)
    }

    /// Set the activation budget in bytes (`--max-memory`; default
    /// [`DEFAULT_ACTIVATION_BUDGET`]): what one batch of inputs may keep for the backward pass.
    /// Weights are not part of it (they stay in the file; one tile of at most 16 MiB is
    /// expanded at a time). One input is always processed, whatever the budget.
    pub fn set_activation_budget(&mut self, bytes: usize) {
        self.budget = bytes;
    }

    /// The activation budget in bytes.
    pub fn activation_budget(&self) -> usize {
        self.budget
    }

    fn ffn_dim(&self) -> usize {
        self.layers
            .first()
            .map_or(4 * self.n_embd, |l| l.w_up.rows())
    }
}
