//! The model's vocabulary as llguidance sees it (a `TokEnv`), for constrained decoding.

use std::path::PathBuf;
use std::sync::Mutex;

use llama_cpp_2::sampling::LlamaSampler;
use llguidance::toktrie::TokEnv;

use super::Model;

/// Token environments already built in this process, by model file (path, size, vocabulary).
type Cache = Mutex<Vec<((PathBuf, u64, usize), TokEnv)>>;
static TOK_ENVS: Cache = Mutex::new(Vec::new());

impl Model {
    /// llguidance's view of the vocabulary: every token's bytes, special tokens with the `0xFF`
    /// marker, and every end-of-generation token registered as EOS. Building it walks the whole
    /// vocabulary, so it is built once per model file and process, then shared (it is `Arc`-backed).
    pub fn tok_env(&self) -> TokEnv {
        let info = self.info();
        let key = (info.path.clone(), info.file_size, info.n_vocab);
        let mut cache = TOK_ENVS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, env)) = cache.iter().find(|(k, _)| *k == key) {
            return env.clone();
        }
        let env = LlamaSampler::llguidance_tok_env(self.raw());
        cache.push((key, env.clone()));
        env
    }
}
