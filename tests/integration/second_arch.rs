//! More architectures, made offline from the test model: the same weights written as a `qwen2`
//! GGUF (`llama.*` metadata renamed to `qwen2.*`, zero Q/K/V biases added) and as a `qwen3` GGUF
//! (per-head Q/K RMSNorm weights of ones added). llama.cpp runs them as qwen2/qwen3 — NEOX RoPE
//! instead of llama's, and qwen3's extra norms, so different functions from the original — and
//! ntv must follow: the autograd forward agrees with llama.cpp on it (the parity test; KL
//! 0.002–0.008 nats per prompt as measured, like the llama original's 0.004),
//! attention rows are distributions, and `ntv attribute` works on it end to end.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use ntv::attribution::AutogradModel;
use ntv::engine::{AttentionCapture, LoadOptions, Model};

use crate::util::{KNOWN_IDS, PROMPT, Sandbox};

/// The qwen2 copy of the test model, written once per test process.
pub fn qwen2_gguf() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| rewrite_as("qwen2"))
}

/// The qwen3 copy of the test model, written once per test process.
pub fn qwen3_gguf() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| rewrite_as("qwen3"))
}

/// The test model's weights as a GGUF of architecture `arch` (qwen2: zero Q/K/V biases; qwen3:
/// Q/K norm weights of ones), in the cargo target's temp folder.
fn rewrite_as(arch: &str) -> PathBuf {
    crate::util::rewritten_model(&format!("smollm2-as-{arch}"), |metadata, tensors| {
        let get_u32 = |k: &str| {
            metadata
                .iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.to_u32().ok())
                .expect("u32 metadata")
        };
        let n_layer = get_u32("llama.block_count") as usize;
        let n_embd = get_u32("llama.embedding_length") as usize;
        let n_head = get_u32("llama.attention.head_count") as usize;
        let n_head_kv = get_u32("llama.attention.head_count_kv") as usize;
        let kv_dim = n_embd / n_head * n_head_kv;
        for (key, value) in metadata.iter_mut() {
            if key == "general.architecture" {
                *value = gguf_file::Value::String(arch.into());
            }
            if let Some(rest) = key.strip_prefix("llama.") {
                *key = format!("{arch}.{rest}");
            }
        }
        let zeros = |n: usize| {
            let t = Tensor::zeros(n, DType::F32, &Device::Cpu).expect("zeros");
            QTensor::quantize(&t, GgmlDType::F32).expect("f32 tensor")
        };
        let ones = |n: usize| {
            let t = Tensor::ones(n, DType::F32, &Device::Cpu).expect("ones");
            QTensor::quantize(&t, GgmlDType::F32).expect("f32 tensor")
        };
        for i in 0..n_layer {
            if arch == "qwen3" {
                tensors.push((format!("blk.{i}.attn_q_norm.weight"), ones(n_embd / n_head)));
                tensors.push((format!("blk.{i}.attn_k_norm.weight"), ones(n_embd / n_head)));
            } else {
                tensors.push((format!("blk.{i}.attn_q.bias"), zeros(n_embd)));
                tensors.push((format!("blk.{i}.attn_k.bias"), zeros(kv_dim)));
                tensors.push((format!("blk.{i}.attn_v.bias"), zeros(kv_dim)));
            }
        }
    })
}

#[test]
fn a_qwen2_model_runs_and_the_autograd_forward_follows_llama_cpp() {
    check_architecture(qwen2_gguf(), "qwen2");
}

#[test]
fn a_qwen3_model_runs_and_the_autograd_forward_follows_llama_cpp() {
    check_architecture(qwen3_gguf(), "qwen3");
}

fn check_architecture(path: &Path, arch: &str) {
    let lm = Model::load(path, &LoadOptions::default()).expect("llama.cpp loads the copy");
    assert_eq!(lm.info().architecture, arch);
    let am = AutogradModel::load(path).expect("autograd loads the copy");
    assert_eq!(am.architecture(), arch);
    // This copy is not a trained model (its Q/K weights were permuted for llama's RoPE),
    // so its distributions are flat and near ties are common: a top-1 flip between two tokens
    // within 0.02 of each other under both engines is quantisation, not a different model.
    crate::autograd::assert_parity(&lm, &am, 0.02);

    // Attention rows from llama.cpp's qwen2 graph are distributions over the context.
    let ids: Vec<i32> = KNOWN_IDS.iter().map(|&i| i as i32).collect();
    let mut cap = AttentionCapture::new(&lm, ids.len(), 1).expect("capture context");
    let opts = ntv::engine::ContextOptions {
        n_ctx: 64,
        n_threads: 1,
        n_batch: 64,
    };
    let mut lg = ntv::engine::Decoder::new(&lm, &opts).expect("decoder");
    let rows = cap.capture_last(&ids, &mut lg).expect("capture");
    assert_eq!(rows.layers.len(), lm.info().n_layer as usize);
    for &l in &rows.layers {
        for h in 0..rows.n_head {
            let s: f32 = rows.row(l, h).iter().sum();
            assert!((s - 1.0).abs() < 1e-3, "layer {l} head {h} sums to {s}");
        }
    }
}

#[test]
fn attribute_works_on_the_qwen2_model() {
    let sb = Sandbox::new();
    let path = qwen2_gguf().to_str().expect("utf-8 path");
    for method in ["attention", "saliency"] {
        let doc = sb.json(&[
            "attribute",
            "--no-session",
            "-m",
            path,
            "-p",
            PROMPT,
            "--method",
            method,
            "--json",
        ]);
        assert_eq!(doc["model"]["architecture"], "qwen2");
        let t = &doc["targets"][0];
        let scores = t["scores"].as_array().expect("scores");
        assert_eq!(scores.len(), KNOWN_IDS.len(), "{method}");
        let sum: f64 = scores.iter().map(|s| s["score"].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{method}: {sum}");
    }
}
