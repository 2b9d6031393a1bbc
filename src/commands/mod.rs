//! One file per subcommand: glue between settings, engine, driver, session and render.

pub mod attribute;
pub mod branch;
pub mod cases;
pub mod check;
pub mod diff;
pub mod docs;
pub mod generate;
pub mod genloop;
pub mod load;
pub mod model;
pub mod preview;
pub mod step;
pub mod stepping;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::app::input_err;
use crate::chat::{self, ChatInput};
use crate::cli::{EngineArgs, GlobalArgs, PromptArgs, RuntimeArgs};
use crate::engine::{LoadOptions, Model};

use crate::record::ModelFacts;
use crate::session::{self, ModelRef, Session, SessionLock};
use crate::settings;

/// The session a command works on: loaded (or new), locked when it will be written.
pub struct SessionCtx {
    pub path: Option<PathBuf>,
    pub session: Session,
    /// Whether a file existed.
    pub existed: bool,
    _lock: Option<SessionLock>,
}

impl SessionCtx {
    /// Open the session of `global` (none with --no-session). `write` takes the lock.
    pub fn open(global: &GlobalArgs, write: bool) -> anyhow::Result<Self> {
        let Some(path) = settings::session_path(global) else {
            return Ok(Self {
                path: None,
                session: Session::new(),
                existed: false,
                _lock: None,
            });
        };
        let lock = if write {
            Some(SessionLock::acquire(&path)?)
        } else {
            None
        };
        let loaded = session::load(&path)?;
        Ok(Self {
            existed: loaded.is_some(),
            session: loaded.unwrap_or_else(Session::new),
            path: Some(path),
            _lock: lock,
        })
    }

    /// The session as found on disk, if there was one.
    pub fn existing(&self) -> Option<&Session> {
        self.existed.then_some(&self.session)
    }

    /// Write the session back (atomically); no-op with --no-session.
    pub fn save(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.path {
            self.session.touch();
            session::save(path, &self.session)?;
        }
        Ok(())
    }

    /// Path as text, for output.
    pub fn path_string(&self) -> Option<String> {
        self.path.as_ref().map(|p| p.display().to_string())
    }
}

/// Facts of a loaded model, as recorded and printed.
pub fn facts(model: &Model) -> ModelFacts {
    let i = model.info();
    ModelFacts {
        model_id: i.name.clone(),
        path: i.path.display().to_string(),
        architecture: i.architecture.clone(),
        n_params: i.n_params,
        dtype: i.file_type.clone(),
        file_size: i.file_size,
        vocab_size: i.n_vocab,
        vocab_type: i.vocab_type.clone(),
        n_ctx_train: i.n_ctx_train,
        n_layer: i.n_layer,
        n_head: i.n_head,
        n_head_kv: i.n_head_kv,
        n_embd: i.n_embd,
        has_chat_template: i.chat_template.is_some(),
        bos_token_id: i.bos,
        eos_token_id: i.eos,
        eog_token_ids: i.eog.clone(),
        add_bos: i.add_bos,
        device: i.device.clone(),
        gpu_layers_offloaded: i.gpu_layers_offloaded,
    }
}

/// Load the model at `path` with the runtime flags. A load that takes over a second shows a
/// progress bar on stderr when stderr is a terminal (indicatif draws nothing otherwise).
pub fn load_model(path: &Path, rt: &EngineArgs) -> anyhow::Result<Model> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("loading model {wide_bar} {percent}%")
            .expect("valid template"),
    );
    let started = Instant::now();
    let shown = std::sync::atomic::AtomicBool::new(false);
    let b = bar.clone();
    let opts = LoadOptions {
        gpu_layers: rt.gpu_layers,
        progress: Some(std::sync::Arc::new(move |p: f32| {
            use std::sync::atomic::Ordering;
            if started.elapsed().as_secs_f32() > 1.0 && !shown.swap(true, Ordering::Relaxed) {
                b.set_draw_target(ProgressDrawTarget::stderr());
            }
            b.set_position((p.clamp(0.0, 1.0) * 1000.0) as u64);
        })),
    };
    let model = Model::load(path, &opts);
    bar.finish_and_clear();
    Ok(model?)
}

/// A model reference for the session (path made absolute, fingerprint, facts).
pub fn model_ref(model: &Model) -> anyhow::Result<ModelRef> {
    let path = &model.info().path;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    let fingerprint =
        session::fingerprint(path).with_context(|| format!("fingerprinting {}", path.display()))?;
    Ok(ModelRef {
        path: abs.display().to_string(),
        fingerprint,
        facts: Some(facts(model)),
    })
}

/// Warn loudly when the session's model file changed since it was recorded.
pub fn warn_if_model_changed(session: &Session, current: &ModelRef, err: &mut dyn Write) -> bool {
    let Some(old) = &session.model else {
        return false;
    };
    if old.path == current.path && old.fingerprint != current.fingerprint {
        let _ = writeln!(
            err,
            "warning: the model file {} changed since this session recorded it (fingerprint differs); recorded probabilities may not match",
            current.path
        );
        return true;
    }
    false
}

/// The prompt as resolved for one call.
#[derive(Debug, Clone)]
pub struct PromptSpec {
    pub prompt: String,
    pub system: String,
    pub chat_template: bool,
}

/// Resolve the prompt from the flags and the session; a prompt is required.
pub fn prompt_spec(
    args: &PromptArgs,
    positional: Option<&str>,
    session: Option<&Session>,
) -> anyhow::Result<PromptSpec> {
    let prompt = settings::cli_prompt(args, positional)?
        .or_else(|| session.and_then(|s| s.prompt.clone()))
        .ok_or_else(|| {
            input_err(
                "no prompt: nothing to show the model",
                "pass a prompt with -p TEXT (or -f FILE, or -p - for stdin)",
            )
        })?;
    let system = args
        .system
        .clone()
        .or_else(|| session.and_then(|s| s.system.clone()))
        .unwrap_or_else(|| chat::DEFAULT_SYSTEM.to_string());
    let chat_template = settings::cli_chat_template(args)
        .or(session.map(|s| s.chat_template))
        .unwrap_or(true);
    Ok(PromptSpec {
        prompt,
        system,
        chat_template,
    })
}

/// The rendered prompt text and its ids (chat.md).
pub fn prompt_ids(model: &Model, spec: &PromptSpec) -> anyhow::Result<(String, Vec<i32>)> {
    let template = model.info().chat_template.as_deref();
    match (spec.chat_template, template) {
        (true, Some(t)) => {
            let (bos, eos) = (model.bos_text(), model.eos_text());
            let text = chat::render(&ChatInput {
                template: t,
                system: &spec.system,
                prompt: &spec.prompt,
                bos_token: &bos,
                eos_token: &eos,
            })?;
            let ids = model.tokenize(&text, false, true);
            Ok((text, ids))
        }
        _ => {
            let ids = model.tokenize(&spec.prompt, true, false);
            Ok((spec.prompt.clone(), ids))
        }
    }
}

/// Whether the session's prompt (text, system prompt, template flag) is `spec`.
pub fn same_prompt(session: &Session, spec: &PromptSpec) -> bool {
    session.prompt.as_deref() == Some(spec.prompt.as_str())
        && session.system.as_deref() == Some(spec.system.as_str())
        && session.chat_template == spec.chat_template
}

/// Whether the session's model (if it has one) is the file at `path`.
pub fn same_model(session: &Session, path: &str) -> bool {
    session.model.as_ref().is_none_or(|m| m.path == path)
}

/// A session holding a completion made for other inputs (`what`: "prompt" or "model") is kept:
/// refuse unless `reset`, which starts the branches over.
pub fn guard_completion(session: &mut Session, what: &str, reset: bool) -> anyhow::Result<()> {
    if !session
        .branches
        .iter()
        .any(|b| !b.completion_ids.is_empty())
    {
        return Ok(());
    }
    if !reset {
        return Err(input_err(
            format!("this session holds a completion for another {what}"),
            "pass --reset to start the session over, or --session NEW.json to keep both",
        ));
    }
    let fresh = Session::new();
    session.branches = fresh.branches;
    session.active_branch = fresh.active_branch;
    Ok(())
}

/// Completion text of `ids`; end-of-generation tokens are left out (as llama.cpp's server and
/// Hugging Face's `skip_special_tokens` do for the stop token).
pub fn text_of(model: &Model, ids: &[i32]) -> String {
    let mut bytes = Vec::new();
    for &id in ids.iter().filter(|&&id| !model.is_eog(id)) {
        bytes.extend_from_slice(&model.piece_bytes(id));
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Record the call's inputs in the session. When the session already holds a completion for
/// another prompt/model, refuse unless `reset` (then the branches start over).
pub fn adopt_inputs(
    session: &mut Session,
    model: &ModelRef,
    spec: &PromptSpec,
    reset: bool,
) -> anyhow::Result<()> {
    if !same_model(session, &model.path) {
        guard_completion(session, "model", reset)?;
    } else if !same_prompt(session, spec) {
        guard_completion(session, "prompt", reset)?;
    }
    session.prompt = Some(spec.prompt.clone());
    session.system = Some(spec.system.clone());
    session.chat_template = spec.chat_template;
    session.model = Some(model.clone());
    Ok(())
}

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Print a JSON value as one document (pretty) or one line.
pub fn write_json<T: serde::Serialize>(
    out: &mut dyn Write,
    value: &T,
    pretty: bool,
) -> anyhow::Result<()> {
    Ok(crate::render::json::write(out, value, pretty)?)
}

/// The prefix cache of this call: beside the session (`SESSION.kvcache/`), none with
/// `--no-cache` or `--no-session`. A cache that cannot be opened is skipped with a warning.
pub fn kv_cache(sc: &SessionCtx, rt: &RuntimeArgs) -> Option<crate::kvcache::KvCache> {
    if rt.no_cache {
        return None;
    }
    let path = sc.path.as_ref()?;
    let dir = crate::kvcache::dir_for_session(path);
    match crate::kvcache::KvCache::open(&dir, rt.cache_size.saturating_mul(1_000_000)) {
        // A cache needs no durability: every entry is checksummed and verified on use.
        Ok(c) => Some(c.with_fsync(false)),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "warning: prefix cache {} unavailable ({e}); decoding the whole context",
                dir.display()
            );
            None
        }
    }
}

/// The cache key of a model file.
pub fn cache_fingerprint(m: &ModelRef) -> String {
    format!("{}:{}", m.fingerprint.size, m.fingerprint.sha256_head_tail)
}

/// Restore the longest cached prefix of the driver's context (no-op without a cache).
pub fn restore_prefix(
    cache: Option<&crate::kvcache::KvCache>,
    driver: &mut crate::driver::Driver<'_>,
    fingerprint: &str,
) -> usize {
    let Some(cache) = cache else { return 0 };
    let context = driver.context().to_vec();
    cache.restore_into(driver.decoder(), fingerprint, &context)
}

/// Save what the driver's KV cache holds for the next call (a failure only warns).
pub fn save_prefix(
    cache: Option<&crate::kvcache::KvCache>,
    driver: &mut crate::driver::Driver<'_>,
    fingerprint: &str,
) {
    if let Some(cache) = cache
        && let Err(e) = cache.save_from(driver.decoder(), fingerprint)
    {
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not update the prefix cache: {e}"
        );
    }
}
