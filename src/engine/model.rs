//! Loading a GGUF model and everything about its vocabulary.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_sys_2 as sys;

use super::error::EngineError;
use super::{backend, log};

/// Called with the load progress in [0, 1]; must not panic (it runs inside llama.cpp).
pub type ProgressFn = std::sync::Arc<dyn Fn(f32) + Send + Sync>;

/// How to load a model.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Layers to offload to a GPU; `None` = all of them (llama.cpp's default).
    pub gpu_layers: Option<u32>,
    /// Load progress observer.
    pub progress: Option<ProgressFn>,
}

/// Facts about a loaded model, as plain data.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    pub n_params: u64,
    pub file_type: String,
    pub file_size: u64,
    pub n_vocab: usize,
    pub vocab_type: String,
    pub n_ctx_train: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_embd: u32,
    pub chat_template: Option<String>,
    /// Bytes of the longest token piece in the vocabulary (special tokens rendered).
    pub max_piece_len: usize,
    pub bos: Option<i32>,
    pub eos: Option<i32>,
    pub eog: Vec<i32>,
    pub add_bos: bool,
    pub device: String,
    pub gpu_layers_offloaded: u32,
    pub load_time: Duration,
}

/// A loaded GGUF model (weights memory-mapped).
pub struct Model {
    inner: LlamaModel,
    info: ModelInfo,
}

fn gguf_str(g: &GgufContext, key: &str) -> Option<String> {
    let idx = g.find_key(key);
    if idx < 0 || g.kv_type(idx) != sys::GGUF_TYPE_STRING {
        return None;
    }
    g.val_str(idx).map(str::to_owned)
}

fn gguf_u32(g: &GgufContext, key: &str) -> Option<u32> {
    let idx = g.find_key(key);
    // Checking the type first matters: a getter of the wrong type aborts inside ggml.
    (idx >= 0 && g.kv_type(idx) == sys::GGUF_TYPE_UINT32).then(|| g.val_u32(idx))
}

/// Name of a GGUF `general.file_type` (llama.cpp's `llama_ftype`).
fn file_type_name(ft: u32) -> String {
    let name = match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return format!("ftype {ft}"),
    };
    name.to_string()
}

impl Model {
    /// Load a GGUF file, checking first that it is one, so that bad input gets a clear error
    /// instead of llama.cpp's log noise.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model, EngineError> {
        let started = Instant::now();
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::NotFound(path.to_path_buf()),
            _ => EngineError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        if meta.is_dir() {
            return Err(EngineError::NotGguf {
                path: path.to_path_buf(),
            });
        }
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|e| EngineError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        if n < 4 || &magic != b"GGUF" {
            return Err(EngineError::NotGguf {
                path: path.to_path_buf(),
            });
        }
        let backend = backend()?;
        log::take_errors();
        let Some(gguf) = GgufContext::from_file(path) else {
            return Err(EngineError::Corrupt {
                path: path.to_path_buf(),
                detail: last_error("the GGUF header could not be parsed (truncated file?)"),
            });
        };
        let arch = gguf_str(&gguf, "general.architecture").unwrap_or_default();
        let name = gguf_str(&gguf, "general.name").unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let file_type = gguf_u32(&gguf, "general.file_type")
            .map(file_type_name)
            .unwrap_or_else(|| "unknown".into());
        let vocab_type = gguf_str(&gguf, "tokenizer.ggml.model").unwrap_or_default();
        drop(gguf);

        let mut params = LlamaModelParams::default();
        if let Some(n) = opts.gpu_layers {
            params = params.with_n_gpu_layers(n);
        }
        if let Some(progress) = opts.progress.clone() {
            params = params.with_progress_callback(move |p| {
                progress(p);
                true
            });
        }
        let inner = LlamaModel::load_from_file(backend, path, &params).map_err(|_| {
            let errors = log::take_errors();
            let detail = if errors.is_empty() {
                "llama.cpp refused the file".to_string()
            } else {
                errors.join("; ")
            };
            if detail.contains("unknown model architecture") || arch.is_empty() {
                EngineError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    arch: if arch.is_empty() {
                        "(none)".into()
                    } else {
                        arch.clone()
                    },
                    detail,
                }
            } else {
                EngineError::Corrupt {
                    path: path.to_path_buf(),
                    detail,
                }
            }
        })?;

        let vocab = inner.vocab();
        let n_vocab = usize::try_from(inner.n_vocab()).unwrap_or(0);
        let some = |t: LlamaToken| (t.0 >= 0).then_some(t.0);
        let eog = (0..n_vocab as i32)
            .filter(|&t| vocab.is_eog(LlamaToken(t)))
            .collect();
        let max_piece_len = (0..n_vocab as i32)
            .map(|t| vocab.token_to_piece(LlamaToken(t), true, None).len())
            .max()
            .unwrap_or(1);
        let chat_template = inner
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .filter(|t| t.contains("{%") || t.contains("{{"));
        let n_layer = inner.n_layer();
        let gpu = llama_cpp_2::list_llama_ggml_backend_devices()
            .into_iter()
            .find(|d| d.backend != "CPU" && !d.backend.is_empty());
        let requested = opts.gpu_layers.unwrap_or(u32::MAX);
        let (device, offloaded) = match gpu {
            Some(d) if requested > 0 => (d.name, requested.min(n_layer + 1)),
            _ => ("CPU".to_string(), 0),
        };
        let info = ModelInfo {
            name,
            path: path.to_path_buf(),
            architecture: arch,
            n_params: inner.n_params(),
            file_type,
            file_size: meta.len(),
            n_vocab,
            vocab_type,
            n_ctx_train: inner.n_ctx_train(),
            n_layer,
            n_head: inner.n_head(),
            n_head_kv: inner.n_head_kv(),
            n_embd: u32::try_from(inner.n_embd()).unwrap_or(0),
            chat_template,
            max_piece_len,
            bos: some(vocab.bos()),
            eos: some(vocab.eos()),
            eog,
            add_bos: vocab.should_add_bos(),
            device,
            gpu_layers_offloaded: offloaded,
            load_time: started.elapsed(),
        };
        Ok(Model { inner, info })
    }

    /// The model's facts.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.info.n_vocab
    }

    pub(crate) fn raw(&self) -> &LlamaModel {
        &self.inner
    }

    /// Tokenise `text`. `add_bos` follows the model's own rule when true; `parse_special`
    /// turns `<|im_start|>`-like text into control tokens.
    pub fn tokenize(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<i32> {
        self.inner
            .vocab()
            .tokenize(text.as_bytes(), add_bos, parse_special)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// Exact bytes of a token, special tokens rendered (`<|im_end|>`).
    pub fn piece_bytes(&self, id: i32) -> Vec<u8> {
        if !self.in_range(id) {
            return Vec::new();
        }
        self.inner
            .vocab()
            .token_to_piece(LlamaToken(id), true, None)
    }

    /// The token's text (invalid UTF-8 replaced).
    pub fn piece(&self, id: i32) -> String {
        String::from_utf8_lossy(&self.piece_bytes(id)).into_owned()
    }

    /// Decode a run of ids to bytes, special tokens rendered.
    pub fn detokenize(&self, ids: &[i32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(&self.piece_bytes(id));
        }
        out
    }

    /// Control tokens and end-of-generation tokens.
    pub fn is_special(&self, id: i32) -> bool {
        self.in_range(id) && {
            let vocab = self.inner.vocab();
            vocab.is_control(LlamaToken(id)) || vocab.is_eog(LlamaToken(id))
        }
    }

    /// End-of-generation (EOS, EOT, `<|im_end|>`, ...).
    pub fn is_eog(&self, id: i32) -> bool {
        self.in_range(id) && self.inner.vocab().is_eog(LlamaToken(id))
    }

    /// True when `id` is a valid token id of this model.
    pub fn in_range(&self, id: i32) -> bool {
        id >= 0 && (id as usize) < self.info.n_vocab
    }

    /// Text of the BOS / EOS tokens (for chat templates); empty when the model has none.
    pub fn bos_text(&self) -> String {
        self.info.bos.map(|t| self.piece(t)).unwrap_or_default()
    }

    /// See [`Model::bos_text`].
    pub fn eos_text(&self) -> String {
        self.info.eos.map(|t| self.piece(t)).unwrap_or_default()
    }
}

fn last_error(fallback: &str) -> String {
    let errors = log::take_errors();
    if errors.is_empty() {
        fallback.to_string()
    } else {
        errors.join("; ")
    }
}
