//! The application core: one object holding a loaded model, the driver with its KV state,
//! the constraint matcher, the prefix cache and the session, with operations named after what
//! users do (preview, step, generate, undo, rewind, branches, attribute). Front-ends — the CLI
//! commands, and later the terminal explorer and the HTTP server — resolve settings, open a
//! [`Workbench`], call it and render what it returns; none has a step loop of its own.
//!
//! Within one process the KV cache is kept across operations: a knob change recomputes from
//! the logits already there, a step decodes one token. Across processes the prefix cache beside
//! the session restores what an earlier call decoded.

pub mod cases;
pub mod explain;
pub mod lens;
pub mod stepper;
pub mod store;
pub mod sweep;

use std::time::Instant;

use crate::chat::{self, ChatInput};
use crate::constraint::Constraint;
use crate::driver::{Choice, Driver, pill};
use crate::engine::Model;
use crate::error::{Result, input_err};
use crate::kvcache::KvCache;
use crate::record::{
    CacheUse, ForcedBy, GenerateSummary, ModelFacts, PreviewDoc, PromptLogprob, StepAction,
    StepDoc, StepRecord, Timings, TokenPill,
};
use crate::sampling::{RngState, SamplingParams, StreamRng, logprob_and_rank};
use crate::session::{Branch, ModelRef, Session};
use crate::settings::{self, CacheSetting, PromptSpec, RunSettings, SeedChoice};

pub use stepper::{Outcome, Plan, StopRule};
pub use store::SessionStore;

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

/// A model's path made absolute. A file of a Hugging Face cache snapshot keeps its snapshot
/// path (its link is not followed into `blobs/`, where the file has lost its name and the
/// other parts of a split model).
pub fn absolute_model_path(path: &std::path::Path) -> std::path::PathBuf {
    if crate::hub::origin_of(path).is_some()
        && let (Some(dir), Some(name)) = (path.parent(), path.file_name())
        && let Ok(dir) = std::fs::canonicalize(dir)
    {
        return dir.join(name);
    }
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Where a model file came from on the hub, read off its path in the Hugging Face cache: the
/// reference is `label` (as given now), else the one recorded for the same file, else the
/// file's own `hf:OWNER/REPO/FILE`.
pub fn hub_source(
    path: &std::path::Path,
    label: Option<&str>,
    recorded: Option<&crate::session::HubSource>,
) -> Option<crate::session::HubSource> {
    let o = crate::hub::origin_of(path)?;
    let reference = match (label, recorded) {
        (Some(l), _) => l.to_string(),
        (None, Some(r)) if r.repo == o.repo && r.file == o.file && r.revision == o.commit => {
            r.reference.clone()
        }
        _ => crate::hub::HubRef {
            repo: o.repo.clone(),
            pick: crate::hub::Pick::File(o.file.clone()),
            revision: None,
        }
        .to_string(),
    };
    Some(crate::session::HubSource {
        reference,
        repo: o.repo,
        file: o.file,
        revision: o.commit,
    })
}

/// A model reference for the session (path made absolute, fingerprint, facts, where it came
/// from on the hub: `label` is the reference given now, `recorded` the session's model).
pub fn model_ref(
    model: &Model,
    label: Option<&str>,
    recorded: Option<&ModelRef>,
) -> Result<ModelRef> {
    let path = &model.info().path;
    let abs = absolute_model_path(path);
    let fingerprint = crate::session::fingerprint(path).map_err(|e| {
        crate::error::Error::from(e).context(format!("fingerprinting {}", path.display()))
    })?;
    Ok(ModelRef {
        path: abs.display().to_string(),
        fingerprint,
        facts: Some(facts(model)),
        hub: hub_source(&abs, label, recorded.and_then(|m| m.hub.as_ref())),
    })
}

/// The warning for a session whose model file changed since it was recorded.
pub fn model_changed(session: &Session, current: &ModelRef) -> Option<String> {
    let old = session.model.as_ref()?;
    (old.path == current.path && old.fingerprint != current.fingerprint).then(|| {
        format!(
            "the model file {} changed since this session recorded it (fingerprint {} then, {} now)",
            current.path,
            short_fingerprint(&old.fingerprint),
            short_fingerprint(&current.fingerprint)
        )
    })
}

fn short_fingerprint(f: &crate::session::Fingerprint) -> String {
    let head: String = f.sha256_head_tail.chars().take(12).collect();
    format!("{} bytes, sha256 {head}…", f.size)
}

/// Write the session; a session it replaced is written aside first (named in `notices`).
fn save_session(store: &mut SessionStore, notices: &mut Vec<String>) -> Result<()> {
    let saved = store.save()?;
    if let Some(aside) = saved.aside {
        notices.push(format!(
            "note: the session held a completion for another prompt or model; it is kept as {} (pass --session {} to go back to it, --reset to discard instead)",
            aside.display(),
            aside.display()
        ));
    }
    Ok(())
}

/// The refusal of a session whose model changed (`what` said by [`model_changed`]).
fn changed_model_error(what: String) -> crate::error::Error {
    input_err(
        format!("{what}: its token ids may mean other tokens in this file"),
        "pass --force to go on with it anyway, --reset to start the session over on this model, or --session with another path",
    )
}

/// The rendered prompt text and its ids (chat.md).
///
/// With the model's chat template the rendered text is tokenised with special-token parsing
/// on and no automatic BOS (as Hugging Face's `apply_chat_template(tokenize=True)`); a raw
/// prompt gets the model's add-BOS rule and special-token parsing unless `--no-parse-special`
/// (as `tokenizer(text)` and llama.cpp). Either text must fit [`max_prompt_bytes`] before it is
/// tokenised.
pub fn prompt_ids(model: &Model, spec: &PromptSpec) -> Result<(String, Vec<i32>)> {
    let template = model.info().chat_template.as_deref();
    let (text, add_bos, special) = match (spec.chat_template, template) {
        (true, Some(t)) => {
            let (bos, eos) = (model.bos_text(), model.eos_text());
            let text = chat::render(&ChatInput {
                template: t,
                messages: &spec.conversation_messages(),
                bos_token: &bos,
                eos_token: &eos,
                limits: chat::Limits::default(),
            })?;
            (text, false, true)
        }
        _ => (spec.raw_text(), true, spec.parse_special),
    };
    let limit = max_prompt_bytes(model);
    if text.len() > limit {
        return Err(input_err(
            format!(
                "the prompt text is {} bytes, more than any context of this model can hold ({} tokens of at most {} bytes: {limit} bytes)",
                text.len(),
                model.info().n_ctx_train.max(16),
                model.info().max_piece_len.max(1),
            ),
            "shorten the prompt; a chat template that writes this much is broken or hostile: pass --no-chat-template",
        ));
    }
    let ids = model.tokenize(&text, add_bos, special);
    Ok((text, ids))
}

/// The warning when the text a session's prompt renders to is not the one it recorded (the
/// model's chat template, or ntv's rendering of it, changed since).
pub fn prompt_changed(recorded: Option<&str>, now: &str) -> Option<String> {
    let recorded = recorded?;
    (recorded != now).then(|| {
        let at = recorded
            .char_indices()
            .zip(now.chars())
            .find(|((_, a), b)| a != b)
            .map(|((i, _), _)| i)
            .unwrap_or(recorded.len().min(now.len()));
        format!(
            "warning: the prompt changed: it renders differently from the text this session recorded (from byte {at} on; the chat template or its rendering changed), so the completion now follows another prompt"
        )
    })
}

/// The longest prompt text ntv tokenises: the model's training context times its longest
/// token in bytes. A longer text needs more tokens than any context of the model holds, and
/// refusing it first keeps tokenising bounded (llama.cpp's special-token matching is
/// quadratic in the number of special tokens in the text).
pub fn max_prompt_bytes(model: &Model) -> usize {
    let i = model.info();
    (i.n_ctx_train.max(16) as usize).saturating_mul(i.max_piece_len.max(1))
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

/// Completion text of a branch from its records, without a model (special tokens left out).
pub fn recorded_text(branch: &Branch) -> String {
    branch
        .appended_meta
        .iter()
        .filter(|m| !m.selected.special)
        .fold(Vec::new(), |mut bytes, m| {
            if m.selected.bytes.is_empty() {
                bytes.extend_from_slice(m.selected.text.as_bytes());
            } else {
                bytes.extend_from_slice(&m.selected.bytes);
            }
            bytes
        })
        .pipe_lossy()
}

trait Lossy {
    fn pipe_lossy(self) -> String;
}

impl Lossy for Vec<u8> {
    fn pipe_lossy(self) -> String {
        String::from_utf8_lossy(&self).into_owned()
    }
}

/// Pills for completion tokens from their recorded metadata (no model needed).
pub fn recorded_pills(branch: &Branch) -> Vec<TokenPill> {
    branch
        .completion_ids
        .iter()
        .zip(&branch.appended_meta)
        .map(|(&id, m)| TokenPill {
            id,
            text: m.selected.text.clone(),
            bytes: m.selected.bytes.clone(),
            display: crate::render::text::display_bytes(&m.selected.bytes),
            special: m.selected.special,
        })
        .collect()
}

/// Build the matcher of a (validated) constraint spec for `model`.
pub fn build_constraint(
    model: &Model,
    spec: Option<&crate::constraint::ConstraintSpec>,
) -> Result<Option<Constraint>> {
    match spec {
        Some(spec) => Ok(Some(Constraint::new(
            &model.tok_env(),
            spec.kind,
            &spec.source,
        )?)),
        None => Ok(None),
    }
}

/// The branch's random stream after applying --seed / --reset-rng (sampling.md, Selection):
/// the seed the branch already has continues its stream, a different one restarts it, no seed
/// at all draws one from the OS and records it.
pub fn branch_rng(branch: &mut Branch, seed: SeedChoice) -> StreamRng {
    let state = match (seed.seed, branch.seed) {
        (Some(new), Some(old)) if new == old => RngState {
            seed: old,
            pos: if seed.reset_rng { 0 } else { branch.rng_pos },
        },
        (Some(new), _) => RngState { seed: new, pos: 0 },
        (None, Some(old)) => RngState {
            seed: old,
            pos: if seed.reset_rng { 0 } else { branch.rng_pos },
        },
        (None, None) => RngState {
            seed: StreamRng::os_seed(),
            pos: 0,
        },
    };
    branch.seed = Some(state.seed);
    branch.rng_pos = state.pos;
    StreamRng::new(state)
}

/// How a workbench treats the session it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Look only: the session's completion applies when it was made for this prompt and model.
    ReadOnly,
    /// Record this call's inputs in the session; a completion for other inputs is kept aside
    /// (or dropped with `reset`).
    Record { reset: bool },
}

/// What a step run reports as it goes.
pub enum StepEvent<'a> {
    /// A token was appended (its record, as streamed).
    Token(&'a StepRecord),
    /// The session file now holds the active branch's completion up to `tokens` tokens (a
    /// checkpoint of a long run, written after the token's record was reported).
    Saved { branch: &'a str, tokens: usize },
}

/// How often a long run writes the session while it goes (so `kill -9` loses at most that
/// much): after this many tokens or this much time since the last write, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checkpoints {
    pub tokens: usize,
    pub every: std::time::Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            tokens: 64,
            every: std::time::Duration::from_secs(5),
        }
    }
}

/// What a run of steps produced.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// Every appended token's record (empty when the caller streamed them and kept none).
    pub records: Vec<StepRecord>,
    /// Whether the records were kept (false: they were only streamed).
    pub kept: bool,
    pub outcome: Outcome,
    /// Completion length before the run.
    pub start: usize,
}

/// The application core over one loaded model.
pub struct Workbench<'m> {
    model: &'m Model,
    /// The model's path and fingerprint, computed once at open (hashing 2 MiB of the file).
    model_ref: ModelRef,
    store: SessionStore,
    settings: RunSettings,
    prompt: PromptSpec,
    prompt_text: String,
    prompt_ids: Vec<i32>,
    /// The llama.cpp context and sampling state, made on first use (an operation that only
    /// reads the session, or attributes with engines of its own, never pays for a context).
    driver: Option<Driver<'m>>,
    /// The active completion while there is no driver yet.
    pending: Vec<i32>,
    cache: Option<KvCache>,
    fingerprint: String,
    cache_use: CacheUse,
    primed: bool,
    tokenize_ms: f64,
    notices: Vec<String>,
    /// What changed about the session's model file, when it did (and `--force` was not given).
    changed_model: Option<String>,
    /// Writes of the session during long runs (`None`: read-only core, nothing written).
    checkpoints: Option<Checkpoints>,
}

impl<'m> Workbench<'m> {
    /// Open the core on `model` with the resolved settings over `store`.
    pub fn open(
        model: &'m Model,
        mut store: SessionStore,
        settings: RunSettings,
        mode: Mode,
    ) -> Result<Self> {
        settings::check_display_k(settings.display_k, model.n_vocab())?;
        let model_ref = model_ref(
            model,
            settings.model.label(),
            store.existing().and_then(|s| s.model.as_ref()),
        )?;
        let mut notices = Vec::new();
        // Extending or replaying a completion made with another file is refused (spec:
        // session.md) unless forced or reset; read-only commands warn.
        let changed = store.existing().and_then(|s| model_changed(s, &model_ref));
        if let Some(w) = &changed {
            match mode {
                Mode::Record { reset: false } if !store.force_model => {
                    return Err(changed_model_error(w.clone()));
                }
                Mode::Record { reset: true } => {}
                _ => notices.push(format!("warning: {w}")),
            }
        }
        let model_changed = changed.is_some() && !store.force_model;
        let prompt = settings.require_prompt()?.clone();
        let t = Instant::now();
        let (prompt_text, prompt_ids) = prompt_ids(model, &prompt)?;
        let tokenize_ms = ms(t);
        if let Some(s) = store.existing()
            && store::same_prompt(s, &prompt)
            && let Some(w) = prompt_changed(s.prompt_text.as_deref(), &prompt_text)
        {
            notices.push(w);
        }
        let completion = match mode {
            Mode::Record { reset } => {
                store.adopt(&model_ref, Some(&prompt), reset)?;
                let s = &mut store.session;
                s.prompt_text = Some(prompt_text.clone());
                s.params = settings.params.clone();
                s.preset = settings.preset;
                s.display_k = settings.display_k;
                s.constraint = settings.constraint.clone();
                s.active().completion_ids.clone()
            }
            Mode::ReadOnly => match store.existing() {
                Some(s) if store::same_prompt(s, &prompt) && store::same_model(s, &model_ref) => {
                    s.active().completion_ids.clone()
                }
                _ => Vec::new(),
            },
        };
        let cache = match (store.path(), settings.cache) {
            (Some(path), CacheSetting::Limit(bytes)) => {
                let dir = crate::kvcache::dir_for_session(path);
                match KvCache::open(&dir, bytes) {
                    // A cache needs no durability: every entry is checksummed and verified.
                    Ok(c) => Some(c.with_fsync(false)),
                    Err(e) => {
                        notices.push(format!(
                            "warning: prefix cache {} unavailable ({e}); decoding the whole context",
                            dir.display()
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        let fingerprint = format!(
            "{}:{}",
            model_ref.fingerprint.size, model_ref.fingerprint.sha256_head_tail
        );
        Ok(Self {
            cache_use: CacheUse {
                enabled: cache.is_some(),
                ..CacheUse::default()
            },
            model,
            model_ref,
            store,
            settings,
            prompt,
            prompt_text,
            prompt_ids,
            driver: None,
            pending: completion,
            cache,
            fingerprint,
            primed: false,
            tokenize_ms,
            notices,
            changed_model: changed.filter(|_| model_changed),
            checkpoints: matches!(mode, Mode::Record { .. }).then(Checkpoints::default),
        })
    }

    /// Refuse (unless `--force`) to work on the session's completion when the model file
    /// changed since it was recorded (attribution of its tokens replays them).
    pub fn require_unchanged_model(&self) -> Result<()> {
        match &self.changed_model {
            Some(w) if !self.completion().is_empty() => Err(changed_model_error(w.clone())),
            _ => Ok(()),
        }
    }

    /// Warnings and notes for stderr gathered so far (taken: each is shown once).
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The session as it stands.
    pub fn session(&self) -> &Session {
        &self.store.session
    }

    /// The session file written on save (`None`: detached, nothing written).
    pub fn session_path(&self) -> Option<&std::path::Path> {
        self.store.path()
    }

    /// The resolved settings.
    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    /// The prompt's token ids (template applied).
    pub fn prompt_ids(&self) -> &[i32] {
        &self.prompt_ids
    }

    /// The exact prompt text the model sees (template rendered).
    pub fn prompt_text(&self) -> &str {
        &self.prompt_text
    }

    /// The active branch's completion.
    pub fn completion(&self) -> &[i32] {
        match &self.driver {
            Some(d) => d.completion(),
            None => &self.pending,
        }
    }

    /// Prompt plus completion length.
    fn context_len(&self) -> usize {
        self.prompt_ids.len() + self.completion().len()
    }

    /// The driver over the active branch, created (and the constraint replayed) on first use.
    fn driver(&mut self) -> Result<&mut Driver<'m>> {
        if self.driver.is_none() {
            let mut d = Driver::new(self.model, &self.settings.context, &self.prompt_ids)?;
            d.set_completion(&self.pending)?;
            d.set_constraint(build_constraint(
                self.model,
                self.settings.constraint.as_ref(),
            )?)?;
            self.driver = Some(d);
        }
        Ok(self.driver.as_mut().expect("just made"))
    }

    /// What the prefix cache did in this process.
    pub fn cache_use(&self) -> CacheUse {
        CacheUse {
            decoded_tokens: self
                .driver
                .as_ref()
                .map_or(0, |d| d.decoder_ref().decoded_total()),
            ..self.cache_use
        }
    }

    /// The driver, with the longest cached prefix of the context restored once, before the
    /// first decode.
    fn primed(&mut self) -> Result<&mut Driver<'m>> {
        self.driver()?;
        let driver = self.driver.as_mut().expect("made above");
        if !self.primed {
            self.primed = true;
            if let Some(cache) = &self.cache {
                let context = driver.context().to_vec();
                self.cache_use.restored_tokens =
                    cache.restore_into(driver.decoder(), &self.fingerprint, &context);
            }
        }
        Ok(driver)
    }

    /// Milliseconds spent rendering and tokenising the prompt.
    pub fn tokenize_ms(&self) -> f64 {
        self.tokenize_ms
    }

    /// Decode the context (what the prefix cache and the KV state do not hold already).
    pub fn prefill(&mut self) -> Result<()> {
        let driver = self.primed()?;
        let context = driver.context().to_vec();
        driver.decoder().eval(&context)?;
        Ok(())
    }

    /// The distribution of the next token under the session's parameters.
    pub fn preview(&mut self) -> Result<crate::record::Dist> {
        let (params, k) = (self.settings.params.clone(), self.settings.display_k);
        // The branch's stream, peeked: XTC's coin is the one the next step draws (a copy of the
        // branch, so the session is unchanged).
        let stream = (params.draws_xtc_coin() || params.mirostat != 0).then(|| {
            let mut branch = self.store.session.active().clone();
            let mut rng = branch_rng(&mut branch, self.settings.seed);
            rng.mirostat_mu = branch.mirostat_mu();
            rng
        });
        Ok(self.primed()?.preview_with(&params, k, stream.as_ref())?)
    }

    /// Teacher-forced scores of every prompt token given its prefix.
    pub fn prompt_logprobs(&mut self) -> Result<Vec<PromptLogprob>> {
        let ids = self.prompt_ids.clone();
        let mut rows = Vec::with_capacity(ids.len());
        let mut failure = None;
        self.driver()?
            .decoder()
            .eval_all(&ids, &mut |pos, logits| {
                if pos + 1 < ids.len() {
                    let next = ids[pos + 1];
                    match logprob_and_rank(logits, next as usize) {
                        Ok((lp, rank)) => rows.push((pos + 1, next, lp, rank)),
                        Err(e) => failure = Some(e),
                    }
                }
            })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        // Teacher forcing decoded the whole prompt anyway: nothing left to restore.
        self.primed = true;
        Ok(rows
            .into_iter()
            .map(|(index, id, logprob, rank)| {
                let p = pill(self.model, id);
                PromptLogprob {
                    index,
                    id,
                    text: p.text,
                    bytes: p.bytes,
                    display: p.display,
                    special: p.special,
                    logprob,
                    rank,
                    surprisal_bits: -logprob / std::f64::consts::LN_2,
                }
            })
            .collect())
    }

    /// The forced-token plan of `--token ID` (checked against the vocabulary).
    pub fn force_token(&self, id: i64) -> Result<Plan> {
        let id = i32::try_from(id)
            .ok()
            .filter(|&i| self.model.in_range(i))
            .ok_or_else(|| {
                input_err(
                    format!(
                        "token id {id} is outside the vocabulary (0..{})",
                        self.model.n_vocab()
                    ),
                    "token ids come from `ntv preview --format json`",
                )
            })?;
        Ok(Plan::Force(vec![id], ForcedBy::Token))
    }

    /// The forced-text plan of `--text TEXT`: tokenised without special-token parsing
    /// (sampling.md, Selection), appended whole, so it must fit in the context.
    pub fn force_text(&self, text: &str) -> Result<Plan> {
        let ids = self.model.tokenize(text, false, false);
        if ids.is_empty() {
            return Err(input_err(
                "--text is empty: nothing to append",
                "pass the text to force, e.g. --text \" Paris\"",
            ));
        }
        let room = self.settings.context.n_ctx as usize;
        let room = room
            .min(self.model.info().n_ctx_train.max(1) as usize)
            .saturating_sub(self.context_len());
        if ids.len() > room {
            return Err(input_err(
                format!(
                    "--text is {} tokens but the context has room for {room} more",
                    ids.len()
                ),
                "force a shorter text, or pass a larger -c/--ctx-size",
            ));
        }
        Ok(Plan::Force(ids, ForcedBy::Text))
    }

    /// `n` greedy or sampled steps (by the call's parameters), or until a stop when `None`.
    pub fn choose(&self, n: Option<usize>) -> Plan {
        let choice = if self.settings.call_params().greedy {
            Choice::Greedy
        } else {
            Choice::Sample
        };
        Plan::Choose { choice, n }
    }

    /// Set how often long runs write the session (a recording core only).
    pub fn set_checkpoints(&mut self, c: Checkpoints) {
        if self.checkpoints.is_some() {
            self.checkpoints = Some(c);
        }
    }

    /// Append tokens by `plan` to the active branch until the plan ends or a stop condition
    /// (stop sequences of the settings, `max_tokens` new tokens). `on_step` sees each record
    /// as it is made; `keep` keeps them in the returned run too.
    pub fn step(
        &mut self,
        plan: &Plan,
        max_tokens: Option<usize>,
        keep: bool,
        on_step: &mut dyn FnMut(&StepRecord) -> Result<()>,
    ) -> Result<StepRun> {
        self.step_events(plan, max_tokens, keep, &mut |e| match e {
            StepEvent::Token(r) => on_step(r),
            StepEvent::Saved { .. } => Ok(()),
        })
    }

    /// [`Workbench::step`], also reporting the checkpoints a long run writes.
    pub fn step_events(
        &mut self,
        plan: &Plan,
        max_tokens: Option<usize>,
        keep: bool,
        on_event: &mut dyn FnMut(StepEvent<'_>) -> Result<()>,
    ) -> Result<StepRun> {
        self.primed()?;
        let params = self.settings.call_params();
        let display_k = self.settings.display_k;
        let rule = StopRule {
            max_tokens,
            stops: self.settings.stops.clone(),
        };
        self.store.session.stop = rule.stops.clone();
        let seed = self.settings.seed;
        let store = &mut self.store;
        let notices = &mut self.notices;
        let checkpoints = self.checkpoints.filter(|_| store.path().is_some());
        let constraint = store.session.constraint.clone();
        let branch = store.session.active_mut();
        let start = branch.completion_ids.len();
        let mut rng = branch_rng(branch, seed);
        rng.mirostat_mu = branch.mirostat_mu();
        let mut records = Vec::new();
        let mut last_save = (Instant::now(), start);
        let outcome = stepper::run(
            self.driver.as_mut().expect("primed above"),
            &params,
            display_k,
            plan,
            &rule,
            &mut rng,
            &mut |_, a| {
                let branch = store.session.active_mut();
                branch.completion_ids.push(a.meta.selected_id);
                branch.appended_meta.push(a.meta.clone());
                branch.rng_pos = a.rng.state().pos;
                let record = StepRecord {
                    kind: "step".into(),
                    branch: branch.name.clone(),
                    index: branch.completion_ids.len() - 1,
                    selected: a.meta.selected.clone(),
                    appended_meta: a.meta,
                    done: a.stop.is_some(),
                    stop_reason: a.stop,
                    constraint: constraint.clone(),
                };
                on_event(StepEvent::Token(&record))?;
                let n = record.index + 1;
                if keep {
                    records.push(record);
                }
                // A checkpoint: written after the token was reported, so what the file holds
                // is always a prefix of what was streamed. The last token's write is the
                // caller's (it saves the KV cache too).
                if let Some(c) = checkpoints
                    && a.stop.is_none()
                    && (n - last_save.1 >= c.tokens || last_save.0.elapsed() >= c.every)
                {
                    save_session(store, notices)?;
                    last_save = (Instant::now(), n);
                    let branch = store.session.active_branch.clone();
                    on_event(StepEvent::Saved {
                        branch: &branch,
                        tokens: n,
                    })?;
                }
                Ok(())
            },
        )?;
        store.session.active_mut().stop_reason = outcome.stop_reason;
        Ok(StepRun {
            records,
            kept: keep,
            outcome,
            start,
        })
    }

    /// Generate until a stop: `-n` of this call, else the session's, else 256 new tokens.
    pub fn generate(
        &mut self,
        keep: bool,
        on_step: &mut dyn FnMut(&StepRecord) -> Result<()>,
    ) -> Result<StepRun> {
        self.generate_events(keep, &mut |e| match e {
            StepEvent::Token(r) => on_step(r),
            StepEvent::Saved { .. } => Ok(()),
        })
    }

    /// [`Workbench::generate`], also reporting checkpoints.
    pub fn generate_events(
        &mut self,
        keep: bool,
        on_event: &mut dyn FnMut(StepEvent<'_>) -> Result<()>,
    ) -> Result<StepRun> {
        let max = self
            .settings
            .max_tokens
            .unwrap_or(settings::DEFAULT_MAX_TOKENS);
        if max == 0 {
            return Err(input_err("-n 0 generates nothing", "pass -n N with N >= 1"));
        }
        self.store.session.max_tokens = self.settings.max_tokens;
        let plan = self.choose(None);
        let mut run = self.step_events(&plan, Some(max as usize), keep, on_event)?;
        run.outcome
            .stop_reason
            .get_or_insert(crate::record::StopReason::MaxTokens);
        Ok(run)
    }

    /// Drop the last `n` completion tokens; returns them.
    pub fn undo(&mut self, n: usize) -> Result<Vec<i32>> {
        let removed = undo(&mut self.store.session, n)?;
        self.resync()?;
        Ok(removed)
    }

    /// Rewind to completion position `at` on a new branch (which becomes active); returns its
    /// name.
    pub fn rewind(&mut self, at: usize) -> Result<String> {
        let name = self.store.session.fork_at(at)?;
        self.resync()?;
        Ok(name)
    }

    /// Make another branch the active one.
    pub fn switch_branch(&mut self, name: &str) -> Result<()> {
        self.store.session.switch(name)?;
        self.resync()
    }

    /// Create a branch from `from` (default: the active one), cut at `at`.
    pub fn new_branch(&mut self, name: &str, from: Option<&str>, at: Option<usize>) -> Result<()> {
        self.store.session.new_branch(name, from, at)?;
        Ok(())
    }

    /// Delete a branch (the active one only with `force`).
    pub fn delete_branch(&mut self, name: &str, force: bool) -> Result<()> {
        self.store.session.delete(name, force)?;
        self.resync()
    }

    /// Set or drop the output constraint. The completion so far is replayed through the new
    /// one (a token it rejects is an input error and nothing changes); the next preview
    /// recomputes from the logits already decoded.
    pub fn set_constraint(
        &mut self,
        spec: Option<crate::constraint::ConstraintSpec>,
    ) -> Result<()> {
        if let Some(s) = &spec {
            crate::constraint::grammar(s.kind, &s.source)?;
        }
        if let Some(d) = &mut self.driver {
            let matcher = build_constraint(self.model, spec.as_ref())?;
            if let Err(e) = d.set_constraint(matcher) {
                // Put the old one back before reporting.
                let old = build_constraint(self.model, self.settings.constraint.as_ref())?;
                d.set_constraint(old)?;
                return Err(e.into());
            }
        }
        self.settings.constraint = spec.clone();
        self.store.session.constraint = spec;
        Ok(())
    }

    /// Change the sampling parameters and display count; the next preview recomputes from the
    /// logits already decoded.
    pub fn set_params(&mut self, params: SamplingParams, display_k: usize) -> Result<()> {
        params.validate()?;
        settings::check_display_k(display_k, self.model.n_vocab())?;
        self.store.session.params = params.clone();
        self.store.session.preset = None;
        self.store.session.display_k = display_k;
        self.settings.params = params;
        self.settings.preset = None;
        self.settings.display_k = display_k;
        Ok(())
    }

    /// What was recorded when completion token `index` of the active branch was appended: its
    /// distribution then, and how it was chosen (no model work).
    pub fn recorded(&self, index: usize) -> Option<&crate::record::AppendedMeta> {
        self.store.session.active().appended_meta.get(index)
    }

    /// Change the prompt (text, system prompt, template flag). In a session that records
    /// inputs, a completion made for the old prompt is kept aside on save, as on the command
    /// line; the KV cache keeps whatever prefix the old and new contexts share.
    pub fn set_prompt(&mut self, prompt: PromptSpec) -> Result<()> {
        let (text, ids) = prompt_ids(self.model, &prompt)?;
        self.store.adopt(&self.model_ref, Some(&prompt), false)?;
        self.settings.prompt = Some(prompt.clone());
        self.prompt = prompt;
        self.store.session.prompt_text = Some(text.clone());
        self.prompt_text = text;
        self.prompt_ids = ids;
        let completion = self.store.session.active().completion_ids.clone();
        match &mut self.driver {
            Some(d) => d.set_context(&self.prompt_ids, &completion)?,
            None => self.pending = completion,
        }
        Ok(())
    }

    /// The seed flags and stop sequences of the next steps (as `--seed`, `--reset-rng` and
    /// `--stop` of a call).
    pub fn set_stepping(&mut self, seed: SeedChoice, stops: Vec<String>) {
        self.settings.seed = seed;
        self.settings.stops = stops;
    }

    /// Make the active branch's context `prompt` ++ `completion` under `constraint`, for a
    /// client that holds the state itself (the HTTP server's requests). What already matches
    /// is kept: the recorded completion up to the first id that differs (its records, the KV
    /// state, the random stream there); a completion cut shorter rewinds the stream as `undo`
    /// does. Ids beyond the recorded ones are appended as forced tokens (decoded once, with
    /// their records). Out-of-range ids, a context longer than the context size and ids the
    /// constraint rejects are input errors.
    pub fn set_context(
        &mut self,
        prompt: PromptSpec,
        constraint: Option<crate::constraint::ConstraintSpec>,
        completion: &[i64],
    ) -> Result<()> {
        let ids = completion
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                i32::try_from(id)
                    .ok()
                    .filter(|&t| self.model.in_range(t))
                    .ok_or_else(|| {
                        input_err(
                            format!(
                                "completion id {id} (position {i}) is outside the vocabulary (0..{})",
                                self.model.n_vocab()
                            ),
                            "completion ids are token ids of this model",
                        )
                    })
            })
            .collect::<Result<Vec<i32>>>()?;
        if self.prompt != prompt {
            self.set_prompt(prompt)?;
        }
        let room = (self.settings.context.n_ctx as usize)
            .min(self.model.info().n_ctx_train.max(1) as usize);
        let len = self.prompt_ids.len() + ids.len();
        if len > room {
            return Err(input_err(
                format!(
                    "the context is {len} tokens ({} prompt + {} completion) but the context size is {room}",
                    self.prompt_ids.len(),
                    ids.len()
                ),
                "send a shorter prompt or completion, or start the server with a larger -c/--ctx-size",
            ));
        }
        let have = &self.store.session.active().completion_ids;
        let common = have.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if common < have.len() {
            self.store.session.truncate_active(common)?;
            self.resync()?;
        }
        if constraint != self.settings.constraint {
            self.set_constraint(constraint)?;
        }
        if ids.len() > common {
            let plan = Plan::Force(ids[common..].to_vec(), ForcedBy::Token);
            self.step(&plan, None, false, &mut |_| Ok(()))?;
        }
        Ok(())
    }

    /// Start over on the same model and context: the branches, their records and random
    /// streams are dropped (a new session's single empty branch), the KV state is kept for
    /// whatever prefix the next context shares. The HTTP server hands a workbench over to
    /// another client's branch this way instead of making a new llama.cpp context.
    pub fn restart(&mut self) -> Result<()> {
        let fresh = Session::new();
        let s = &mut self.store.session;
        s.branches = fresh.branches;
        s.active_branch = fresh.active_branch;
        self.resync()
    }

    /// Point the driver at the active branch (the KV cache keeps the common prefix).
    fn resync(&mut self) -> Result<()> {
        let ids = self.store.session.active().completion_ids.clone();
        match &mut self.driver {
            Some(d) => d.set_completion(&ids)?,
            None => self.pending = ids,
        }
        Ok(())
    }

    /// Attribute targets of the active branch's context.
    pub fn attribute(
        &mut self,
        explainer: &mut explain::Explainer<'m>,
        sel: crate::attribution::request::TargetSel,
        opts: &crate::attribution::Options,
    ) -> Result<Vec<crate::record::AttributionRecord>> {
        self.attribution_job(sel, opts.clone()).run(explainer)
    }

    /// The same attribution as a job that owns its context, to run elsewhere (on a thread
    /// with its own [`explain::Explainer`], watched through `opts.watch`) while this core goes
    /// on.
    pub fn attribution_job(
        &self,
        sel: crate::attribution::request::TargetSel,
        opts: crate::attribution::Options,
    ) -> explain::Job {
        explain::Job {
            prompt: self.prompt_ids.clone(),
            completion: self.completion().to_vec(),
            sel,
            opts,
        }
    }

    /// The logit lens over the active branch's context: what each layer would predict at the
    /// positions `req` selects.
    pub fn lens(&self, req: &lens::LensRequest) -> Result<crate::record::LensDoc> {
        lens::lens(
            self.model,
            &self.prompt_text,
            &self.prompt_ids,
            self.completion(),
            req,
            self.settings.context.n_threads,
        )
    }

    /// Keep the KV state for the next process and write the session; a session replaced by a
    /// new one is written aside first (named in the notices).
    pub fn save(&mut self) -> Result<()> {
        if let (Some(cache), Some(driver)) = (&self.cache, &mut self.driver)
            && let Err(e) = cache.save_from(driver.decoder(), &self.fingerprint)
        {
            self.notices
                .push(format!("warning: could not update the prefix cache: {e}"));
        }
        save_session(&mut self.store, &mut self.notices)
    }

    /// The `ntv preview` document of a distribution.
    pub fn preview_doc(
        &self,
        dist: crate::record::Dist,
        prompt_logprobs: Option<Vec<PromptLogprob>>,
        timings: Timings,
    ) -> PreviewDoc {
        let model = self.model;
        PreviewDoc {
            schema: "ntv.preview/1".into(),
            model: facts(model),
            prompt: self.prompt.prompt.clone(),
            system: self.prompt.system.clone(),
            messages: self.prompt.messages.clone(),
            chat_template: self.prompt.chat_template && model.info().chat_template.is_some(),
            prompt_text: self.prompt_text.clone(),
            prompt_tokens: self.prompt_ids.iter().map(|&id| pill(model, id)).collect(),
            completion_tokens: self
                .completion()
                .iter()
                .map(|&id| pill(model, id))
                .collect(),
            context_token_count: self.context_len(),
            branch: self.store.session.active_branch.clone(),
            preset: self.settings.preset,
            params: self.settings.params.clone(),
            presets: crate::record::presets(),
            dist,
            constraint: self.settings.constraint.clone(),
            prompt_logprobs,
            cache: self.cache_use(),
            timings,
        }
    }

    /// The `ntv step` document of a run (or of an undo, with `removed`).
    pub fn step_doc(
        &self,
        action: StepAction,
        created_branch: Option<String>,
        run: Option<StepRun>,
        removed: Vec<i32>,
    ) -> StepDoc {
        let model = self.model;
        let branch = self.store.session.active();
        let (records, outcome, start) = match run {
            Some(r) => (r.records, r.outcome, r.start),
            None => (Vec::new(), Outcome::default(), branch.completion_ids.len()),
        };
        let new_ids = branch.completion_ids[start..].to_vec();
        StepDoc {
            schema: "ntv.step/1".into(),
            branch: branch.name.clone(),
            action,
            created_branch,
            appended: new_ids.iter().map(|&id| pill(model, id)).collect(),
            appended_meta: records.iter().map(|r| r.appended_meta.clone()).collect(),
            steps: records,
            new_completion_ids: new_ids,
            removed_ids: removed,
            completion_tokens: branch
                .completion_ids
                .iter()
                .map(|&id| pill(model, id))
                .collect(),
            completion_text: text_of(model, &branch.completion_ids),
            completion_ids: branch.completion_ids.clone(),
            context_token_count: self.context_len(),
            done: outcome.stop_reason.is_some(),
            stop_reason: outcome.stop_reason,
            seed: branch.seed,
            constraint: self.store.session.constraint.clone(),
            cache: self.cache_use(),
        }
    }

    /// The summary record of a generation.
    pub fn generate_summary(&self, run: StepRun) -> GenerateSummary {
        let model = self.model;
        let branch = self.store.session.active();
        let new_ids = branch.completion_ids[run.start..].to_vec();
        GenerateSummary {
            kind: "summary".into(),
            schema: "ntv.generate/1".into(),
            branch: branch.name.clone(),
            completion_ids: branch.completion_ids.clone(),
            completion_text: text_of(model, &branch.completion_ids),
            new_text: text_of(model, &new_ids),
            n_tokens: new_ids.len(),
            new_completion_ids: new_ids,
            stop_reason: run
                .outcome
                .stop_reason
                .unwrap_or(crate::record::StopReason::MaxTokens),
            stop_sequence: run.outcome.stop_sequence.clone(),
            tokens_per_second: run.outcome.tokens_per_second(),
            seconds: run.outcome.seconds,
            seed: branch.seed,
            params: self.settings.call_params(),
            constraint: self.store.session.constraint.clone(),
            cache: self.cache_use(),
            steps: run.kept.then_some(run.records),
        }
    }

    /// The inputs of this workbench's generation as a trace case.
    pub fn case_input(&self) -> cases::CaseInput {
        cases::CaseInput {
            id: None,
            prompt: self.prompt.clone(),
            params: self.settings.call_params(),
            constraint: self.store.session.constraint.clone(),
            seed: self.store.session.active().seed.unwrap_or(0),
            threads: self.settings.context.n_threads,
            ctx_size: self.settings.context.n_ctx,
            max_tokens: self
                .settings
                .max_tokens
                .unwrap_or(settings::DEFAULT_MAX_TOKENS),
            stop: self.settings.stops.clone(),
            top_k: self.settings.display_k,
        }
    }
}

/// The `ntv step --undo` document, from the session's records alone (no model needed).
pub fn undo_doc(session: &Session, removed: Vec<i32>) -> StepDoc {
    let branch = session.active();
    StepDoc {
        schema: "ntv.step/1".into(),
        branch: branch.name.clone(),
        created_branch: None,
        action: StepAction::Undo,
        steps: Vec::new(),
        appended: Vec::new(),
        appended_meta: Vec::new(),
        new_completion_ids: Vec::new(),
        removed_ids: removed,
        completion_ids: branch.completion_ids.clone(),
        completion_tokens: recorded_pills(branch),
        completion_text: recorded_text(branch),
        context_token_count: 0,
        done: false,
        stop_reason: None,
        seed: branch.seed,
        constraint: session.constraint.clone(),
        cache: CacheUse::default(),
    }
}

/// Drop the last `n` tokens of the session's active branch (no model needed); returns them.
pub fn undo(session: &mut Session, n: usize) -> Result<Vec<i32>> {
    let before = session.active().completion_ids.clone();
    session.undo(n)?;
    Ok(before[session.active().completion_ids.len()..].to_vec())
}

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
