//! Gradient attribution (saliency, input×gradient, integrated gradients) through a
//! differentiable forward pass of the llama family (llama, mistral, smollm) and qwen2/qwen3,
//! in f32 on the CPU over the GGUF's own weights: the forward pass and its vector-Jacobian
//! product are written out by hand (the transformer block in [`super::block`]), not recorded
//! as a graph.
//!
//! Memory: the weights stay in the file's (quantised or 16-bit) form, memory-mapped; every
//! matmul expands its weight a cache-sized tile at a time into a buffer each thread reuses,
//! forward and backward alike, so no weight matrix is ever expanded whole (the embedding
//! reads only the context's rows). Activations live within a budget
//! ([`AutogradModel::set_activation_budget`], `--max-memory`): the backward pass runs block by
//! block, using each block's kept activations when the budget allows and otherwise
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
//! Only input gradients are computed (the backward pass of `x · Wᵀ` is `g · W`; no weight
//! gradient is ever formed). Logits are computed at the target's position only.
//!
//! Semantics (attribution.md, "What the numbers mean"): the target function is p(target) by
//! default, gradients are taken with respect to the input embeddings; the Inseq aggregation is
//! the L2 norm over the hidden dimension, L1-normalised over the context.
//!
//! Tested on the llama-arch test model (SmolLM2; Mistral and SmolLM GGUFs are converted as
//! `llama` too) and on qwen2 and qwen3 copies of it made by the tests (NEOX RoPE, Q/K/V biases,
//! per-head Q/K RMSNorm): parity with llama.cpp's qwen2 and qwen3 graphs, mean KL 0.004 nats.
//!
//! Threads: every product and element-wise step runs on the current rayon pool (the
//! [`super::Attributor`]'s own when `-t` asks for fewer threads than cores).

use std::ops::Range;
use std::path::Path;

use rayon::prelude::*;

use crate::engine::{QMatrix, WeightFile};

use super::attention::softmax_prob;
use super::block::{self, Acts, Dims, Layer, Rope, RopeStyle};
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

/// A model's weights in place in its GGUF file (memory-mapped, expanded per matmul), with a
/// differentiable forward pass.
pub struct AutogradModel {
    arch: String,
    dims: Dims,
    n_vocab: usize,
    /// Angular frequency of each rotated pair (len `rope_dim / 2`).
    inv_freq: Vec<f64>,
    tok_embd: QMatrix,
    output: QMatrix,
    output_norm: Vec<f32>,
    layers: Vec<Layer<QMatrix>>,
    unk_id: u32,
    eos_id: Option<u32>,
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
    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, AttributionError> {
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
        Ok(Some(expand(&m, 0..1)))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, AttributionError> {
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
        let freq_factors = g.opt_vector("rope_freqs.weight", rope_dim / 2)?;
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
            dims: Dims {
                n_embd,
                n_head,
                n_head_kv,
                head_dim,
                eps: eps as f32,
                rope_style,
            },
            n_vocab,
            inv_freq,
            tok_embd,
            output,
            output_norm,
            layers,
            unk_id,
            eos_id,
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
        self.dims.n_embd
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

    /// Input embeddings of `ids`: `n × n_embd` values, row-major.
    fn embed(&self, ids: &[u32]) -> Result<Vec<f32>, AttributionError> {
        self.check_ids(ids)?;
        let d = self.dims.n_embd;
        let mut out = vec![0f32; ids.len() * d];
        for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
            self.tok_embd.dequantise(id as usize..id as usize + 1, row);
        }
        Ok(out)
    }

    /// The residual stream of `x` (sequences of `n` positions) through every block, forward
    /// only: `each` sees the output of each block in order; returns the last one.
    fn blocks(&self, mut x: Vec<f32>, n: usize, mut each: impl FnMut(&[f32])) -> Vec<f32> {
        let rope = Rope::new(&self.inv_freq, n);
        for l in &self.layers {
            x = block::forward(&self.dims, l, &rope, n, &x, None).0;
            each(&x);
        }
        x
    }

    /// Final norm and output head on rows of `n_embd` values: (1 / RMS per row, the normed
    /// rows, the logits `rows × n_vocab`).
    fn head(&self, rows: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let m = rows.len() / self.dims.n_embd;
        let mut r = vec![0f32; m];
        let mut hn = vec![0f32; rows.len()];
        block::rms_norm(rows, &self.output_norm, self.dims.eps, &mut r, &mut hn);
        let mut logits = vec![0f32; m * self.n_vocab];
        self.output.matmul_t(&hn, &mut logits);
        (r, hn, logits)
    }

    /// Logits at the last position of each sequence of `inputs` (embeddings, sequences of
    /// `n` positions): `b × n_vocab`.
    fn forward_last(&self, inputs: Vec<f32>, n: usize) -> Vec<f32> {
        let top = self.blocks(inputs, n, |_| ());
        let last = block::pick_rows(&top, n, n - 1, self.dims.n_embd);
        self.head(&last).2
    }

    /// The residual stream of `ids` after the embedding (layer 0) and after every block
    /// (layers 1..=n_layer), each `n × n_embd` values row-major: what the logit lens reads
    /// (for parity checks of `ntv lens` against this f32 forward).
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, AttributionError> {
        if ids.is_empty() {
            return Err(AttributionError::BadInput("the context is empty".into()));
        }
        let e = self.embed(ids)?;
        let mut out = vec![e.clone()];
        self.blocks(e, ids.len(), |x| out.push(x.to_vec()));
        Ok(out)
    }

    /// This engine's final norm and output head on one residual row (`n_embd` values): the
    /// lens logits of that row in f32.
    pub fn lens_logits(&self, residual: &[f32]) -> Result<Vec<f32>, AttributionError> {
        if residual.len() != self.dims.n_embd {
            return Err(AttributionError::BadInput(format!(
                "a residual row of {} values does not fit the model (n_embd {})",
                residual.len(),
                self.dims.n_embd
            )));
        }
        Ok(self.head(residual).2)
    }
}

/// The target function of one row of logits and its gradient with respect to them.
fn target_grad(logits: &[f32], target: usize, f: TargetFn) -> (f32, Vec<f32>) {
    let mut g = vec![0f32; logits.len()];
    if f == TargetFn::Logit {
        g[target] = 1.0;
        return (logits[target], g);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for (g, &z) in g.iter_mut().zip(logits) {
        *g = (z - max).exp();
        sum += f64::from(*g);
    }
    let inv = (1.0 / sum) as f32;
    g.iter_mut().for_each(|p| *p *= inv); // g = softmax
    let p_t = g[target];
    match f {
        // d p_t / dz = p_t (δ_t − p)
        TargetFn::Prob => {
            g.iter_mut().for_each(|p| *p *= -p_t);
            g[target] += p_t;
            (p_t, g)
        }
        // d log p_t / dz = δ_t − p
        _ => {
            g.iter_mut().for_each(|p| *p = -*p);
            g[target] += 1.0;
            ((logits[target] - max) - sum.ln() as f32, g)
        }
    }
}

/// Next-token logits after `context` under the autograd forward (for parity checks).
pub fn next_token_logits(
    model: &AutogradModel,
    context: &[u32],
) -> Result<Vec<f32>, AttributionError> {
    if context.is_empty() {
        return Err(AttributionError::BadInput("the context is empty".into()));
    }
    let e = model.embed(context)?;
    Ok(model.forward_last(e, context.len()))
}

/// How the backward pass gets each block's activations: the first `graphs` blocks keep them
/// from the forward pass; the others keep only their input and are recomputed, one block at
/// a time, during the backward pass (gradient checkpointing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keep {
    graphs: usize,
}

/// A block's part of the forward pass, as the backward pass needs it: its input, and its
/// activations unless they are to be recomputed.
struct Saved {
    input: Vec<f32>,
    acts: Option<Acts>,
}

/// A forward pass kept for backward passes: the blocks' inputs and activations (see
/// [`Keep`]) and the residual stream at the top, for `b` sequences of `n` positions (rows
/// independent). Each backward pass starts from one position's target function, so the
/// targets of one sequence (e.g. every completion token of `--all`, or saliency and
/// input×gradient of one target) share the forward pass and differ only in the seed. A pass
/// for one position's targets alone (`only`) runs the last block on that position only.
struct Pass {
    saved: Vec<Saved>,
    top: Vec<f32>,
    rope: Rope,
    n: usize,
    only: Option<usize>,
}

impl Pass {
    fn new(
        model: &AutogradModel,
        inputs: Vec<f32>,
        n: usize,
        keep: Keep,
        only: Option<usize>,
    ) -> Self {
        let rope = Rope::new(&model.inv_freq, n);
        let layers = model.layers.len();
        let mut saved = Vec::with_capacity(layers);
        let mut x = inputs;
        for (i, l) in model.layers.iter().enumerate() {
            let rows = if i + 1 == layers { only } else { None };
            let (y, acts) = block::forward(&model.dims, l, &rope, n, &x, rows);
            saved.push(Saved {
                input: std::mem::replace(&mut x, y),
                acts: (i < keep.graphs).then_some(acts),
            });
        }
        Self {
            saved,
            top: x,
            rope,
            n,
            only,
        }
    }

    /// Takes the last sequences out of a pass for one position (`only`), keeping the first
    /// `keep` for the backward passes: returns the others' rows at the top (`n_embd` values
    /// each), whose backward pass is then never run.
    fn split_off(&mut self, keep: usize, d: usize) -> Vec<f32> {
        assert!(self.only.is_some(), "a pass for one position");
        let total = self.top.len() / d;
        assert!(keep <= total);
        for part in &mut self.saved {
            part.input.truncate(part.input.len() / total * keep);
            if let Some(a) = &mut part.acts {
                a.truncate(keep, total);
            }
        }
        self.top.split_off(keep * d)
    }

    /// The target function at position `row` of every sequence, its gradient w.r.t. the
    /// inputs (`b × n × n_embd`; zero after `row`: the model is causal) and the logits at
    /// `row` (`b × n_vocab`).
    ///
    /// # Panics
    /// When the pass was made for another position alone.
    fn backward(
        &self,
        model: &AutogradModel,
        row: usize,
        target: u32,
        f: TargetFn,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, n, v) = (model.dims.n_embd, self.n, model.n_vocab);
        let last = match self.only {
            Some(r) => {
                assert_eq!(r, row, "a pass for position {r} alone");
                self.top.clone()
            }
            None => block::pick_rows(&self.top, n, row, d),
        };
        let (r, _, logits) = model.head(&last);
        let (vals, dz): (Vec<f32>, Vec<Vec<f32>>) = logits
            .par_chunks(v)
            .map(|z| target_grad(z, target as usize, f))
            .unzip();
        let dz = dz.concat();
        let mut gh = vec![0f32; last.len()];
        model.output.matmul(&dz, &mut gh);
        drop(dz);
        let mut g = vec![0f32; last.len()];
        block::rms_norm_backward(&last, &model.output_norm, &r, &gh, &mut g);
        if self.only.is_none() {
            g = block::place_rows(&g, n, row, d);
        }
        let layers = model.layers.len();
        for (i, (l, part)) in model.layers.iter().zip(&self.saved).enumerate().rev() {
            let rows = if i + 1 == layers { self.only } else { None };
            let recomputed;
            let acts = match &part.acts {
                Some(a) => a,
                None => {
                    recomputed = block::forward(&model.dims, l, &self.rope, n, &part.input, rows).1;
                    &recomputed
                }
            };
            g = block::backward(&model.dims, l, &self.rope, n, &part.input, acts, &g, rows);
        }
        (vals, g, logits)
    }
}

/// Target function values and their gradients w.r.t. `inputs` (sequences of `n` positions,
/// rows independent), one block at a time backwards (see [`Keep`]). Returns the values, the
/// gradient and the logits.
fn value_and_grad(
    model: &AutogradModel,
    inputs: Vec<f32>,
    n: usize,
    target: u32,
    f: TargetFn,
    keep: Keep,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    Pass::new(model, inputs, n, keep, Some(n - 1)).backward(model, n - 1, target, f)
}

/// The forward pass of one token sequence, kept so that gradient attributions of targets
/// after any prefix of it share it ([`SharedForward::attribute`]): saliency and
/// input×gradient of one target cost one backward pass together, and each further target
/// one more backward pass.
pub struct SharedForward {
    ids: Vec<u32>,
    embeddings: Vec<f32>,
    pass: Pass,
    /// Gradients already computed.
    done: Vec<Done>,
}

/// A gradient a [`SharedForward`] computed: for (predicting position, target, function), the
/// gradient of the first `row + 1` positions and p(target).
type Done = ((usize, u32, TargetFn), Vec<f32>, f64);

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
            pass: Pass::new(model, e.clone(), ids.len(), keep, None),
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
        let (n, d) = (context.len(), model.dims.n_embd);
        let key = (n - 1, target, f);
        let at = match self.done.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                let (_, mut g, logits) = self.pass.backward(model, n - 1, target, f);
                g.truncate(n * d);
                let p = softmax_prob(&logits, target as i32);
                self.done.push((key, g, p));
                self.done.len() - 1
            }
        };
        let (_, g, p) = &self.done[at];
        let attr: Vec<f32> = match method {
            GradMethod::Saliency => g.clone(),
            GradMethod::InputXGradient => {
                g.iter().zip(&self.embeddings).map(|(g, e)| g * e).collect()
            }
            GradMethod::IntegratedGradients { .. } => {
                return Err(AttributionError::BadInput(
                    "integrated gradients does not share a forward pass".into(),
                ));
            }
        };
        let (scores, raw) = aggregate(&attr, d, agg);
        Ok(GradAttribution {
            scores,
            raw,
            target_prob: *p,
            completeness_error: None,
        })
    }
}

/// Per-token scores of an attribution (`n × d` values): (aggregated as asked, signed sums).
fn aggregate(attr: &[f32], d: usize, agg: Agg) -> (Vec<f64>, Vec<f64>) {
    let raw: Vec<f64> = attr
        .chunks_exact(d)
        .map(|r| r.iter().map(|&x| f64::from(x)).sum())
        .collect();
    let l2: Vec<f64> = attr
        .chunks_exact(d)
        .map(|r| {
            r.iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
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
    (scores, raw)
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
    let e = model.embed(context)?; // n × d
    let (n, d) = (context.len(), model.dims.n_embd);
    let (attr, target_prob, completeness) = match method {
        GradMethod::Saliency | GradMethod::InputXGradient => {
            watch.add_total(1);
            let (_, keep) = model.plan(1, n);
            let (_, g, logits) = value_and_grad(model, e.clone(), n, target, target_fn, keep);
            watch.advance(1);
            let p = softmax_prob(&logits, target as i32);
            let attr = if method == GradMethod::Saliency {
                g
            } else {
                g.iter().zip(&e).map(|(g, e)| g * e).collect()
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
            let diff: Vec<f32> = e.iter().zip(&b).map(|(e, b)| e - b).collect();
            let (alphas, weights) = gauss_legendre_unit(steps);
            // f(input) and f(baseline) (p(target) and the completeness check) ride along in the
            // first batch's forward pass, two more sequences whose backward pass is not run,
            // where the budget holds them; else they take a forward pass of their own.
            let (chunk, keep) = model.plan(steps.min(IG_MAX_BATCH) + 2, n);
            let ride = chunk > 2;
            let mut acc = vec![0f32; n * d];
            let mut ends = None;
            watch.add_total(steps as u64);
            let mut start = 0;
            while start < steps {
                let first = start == 0 && ride;
                let len = (if first { chunk - 2 } else { chunk }).min(steps - start);
                let (a_chunk, w_chunk) =
                    (&alphas[start..start + len], &weights[start..start + len]);
                watch.check()?;
                let mut inputs: Vec<f32> = a_chunk
                    .iter()
                    .flat_map(|&a| {
                        let a = a as f32;
                        b.iter().zip(&diff).map(move |(b, df)| b + df * a)
                    })
                    .collect();
                if first {
                    inputs.extend_from_slice(&e);
                    inputs.extend_from_slice(&b);
                }
                let mut pass = Pass::new(model, inputs, n, keep, Some(n - 1));
                if first {
                    ends = Some(model.head(&pass.split_off(len, d)).2);
                }
                let (_, g, _) = pass.backward(model, n - 1, target, target_fn);
                drop(pass);
                for (gs, &w) in g.chunks_exact(n * d).zip(w_chunk) {
                    let w = w as f32;
                    acc.iter_mut().zip(gs).for_each(|(a, g)| *a += g * w);
                }
                watch.advance(len as u64);
                start += len;
            }
            watch.check()?;
            let attr: Vec<f32> = diff.iter().zip(&acc).map(|(df, a)| df * a).collect();
            let logits = ends
                .unwrap_or_else(|| model.forward_last([e.as_slice(), b.as_slice()].concat(), n));
            let v = model.n_vocab;
            let f0 = target_grad(&logits[..v], target as usize, target_fn).0;
            let f1 = target_grad(&logits[v..], target as usize, target_fn).0;
            let p = softmax_prob(&logits[..v], target as i32);
            let sum: f64 = attr.iter().map(|&x| f64::from(x)).sum();
            let err = (sum - (f64::from(f0) - f64::from(f1))).abs();
            (attr, p, Some(err))
        }
    };
    let (scores, raw) = aggregate(&attr, d, agg);
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
    e: &[f32],
    baseline: &Baseline,
) -> Result<Vec<f32>, AttributionError> {
    match baseline {
        Baseline::Zero => Ok(vec![0f32; e.len()]),
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
    /// Bytes one input keeps for the backward pass of one block over `n` positions: the
    /// block's input and its activations ([`Acts`]).
    fn block_bytes(&self, n: usize) -> usize {
        4 * (n * self.dims.n_embd + Acts::floats(&self.dims, self.ffn_dim(), n))
    }

    /// How to run a batch of up to `most` inputs of `n` positions within the budget: how many
    /// inputs at a time, and how many blocks keep their activations (the others are
    /// recomputed in the backward pass). Batches of [`MIN_BATCH`] inputs at least (or `most`)
    /// when the blocks' inputs fit, for matmuls big enough to run at speed; then as many
    /// blocks' activations as the rest of the budget holds; with a budget too small for even
    /// that, one input at a time.
    fn plan(&self, most: usize, n: usize) -> (usize, Keep) {
        let most = most.max(1);
        let layers = self.n_layer();
        let block = self.block_bytes(n).max(1);
        // Per input: every block's activations, or only the blocks' inputs and one block's
        // activations.
        let all = block * layers;
        let inputs = 4 * n * self.dims.n_embd * (layers + 1) + block;
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
    /// (inputs processed together, blocks that keep their activations; the others are
    /// recomputed).
    pub fn schedule(&self, inputs: usize, n: usize) -> (usize, usize) {
        let (chunk, keep) = self.plan(inputs, n);
        (chunk, keep.graphs)
    }

    /// Set the activation budget in bytes (`--max-memory`; default
    /// [`DEFAULT_ACTIVATION_BUDGET`]): what one batch of inputs may keep for the backward pass.
    /// Weights are not part of it (they stay in the file; each thread expands a tile of about
    /// 1 MiB at a time). One input is always processed, whatever the budget.
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
            .map_or(4 * self.dims.n_embd, |l| block::Weight::rows(&l.w_up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_gradients_match_finite_differences() {
        let z: Vec<f32> = (0..7).map(|i| (i as f32 * 1.3).sin() * 2.0).collect();
        for f in [TargetFn::Prob, TargetFn::Logprob, TargetFn::Logit] {
            let (v, g) = target_grad(&z, 3, f);
            let p = softmax_prob(&z, 3);
            let want = match f {
                TargetFn::Prob => p,
                TargetFn::Logprob => p.ln(),
                TargetFn::Logit => f64::from(z[3]),
            };
            assert!((f64::from(v) - want).abs() < 1e-6, "{f:?}: {v} vs {want}");
            for i in 0..z.len() {
                let h = 1e-3f32;
                let (mut zp, mut zm) = (z.clone(), z.clone());
                zp[i] += h;
                zm[i] -= h;
                let fd = f64::from(target_grad(&zp, 3, f).0 - target_grad(&zm, 3, f).0)
                    / f64::from(2.0 * h);
                assert!(
                    (fd - f64::from(g[i])).abs() < 1e-3,
                    "{f:?} logit {i}: {} vs {fd}",
                    g[i]
                );
            }
        }
    }
}
