//! The one thread that owns the model: requests arrive over a channel and are answered one at
//! a time through the application core, so no two ever run on one llama.cpp context. Each
//! `branch_id` keeps its own [`Workbench`] (its KV state, records and random stream) in a small
//! least-recently-used set, so a request that extends the previous context of its branch
//! decodes only the new tokens; past `--max-branches`, a new branch takes over the least
//! recently used workbench (restarted), so memory stays bounded and no context is made anew. A panic while answering is caught here: that request gets a
//! 500, the branches are dropped (their state is unknown after an unwind) and the thread goes
//! on serving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::api::{
    self, AttributionRequest, AttributionResponse, ModelPublic, PreviewRequest, PreviewResponse,
    Status, StepRequest, StepResponse,
};
use super::error::ApiError;
use crate::attribution::Options;
use crate::attribution::request::{Merged, TargetSel};
use crate::engine::Model;
use crate::error::{Error, Result, input_err};
use crate::record::{StepAction, StopReason, Timings};
use crate::settings::{ModelChoice, RunSettings, SeedChoice};
use crate::workbench::explain::Explainer;
use crate::workbench::{self, Mode, SessionStore, Workbench};

/// What a request asks of the model.
pub enum Job {
    Preview(PreviewRequest),
    Step(StepRequest),
    Attribution(AttributionRequest),
    /// Replace the model (the handler has answered already): a file, or a hub model the
    /// worker fetches first.
    Load(ModelChoice),
}

/// A job and where its answer goes.
pub struct Envelope {
    pub job: Job,
    pub reply: Option<oneshot::Sender<Result<serde_json::Value, ApiError>>>,
}

/// How the worker runs.
pub struct WorkerConfig {
    /// Settings every branch starts from (context size, threads, GPU layers).
    pub base: RunSettings,
    /// The model to load first.
    pub model: ModelChoice,
    pub max_branches: usize,
}

/// The shared status, as `GET /api/model/status` shows it.
pub type SharedStatus = Arc<Mutex<Status>>;

fn set_status(status: &SharedStatus, f: impl FnOnce(&mut Status)) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut s);
}

/// Run until the channel closes (every sender dropped: the server shut down).
pub fn run(mut rx: mpsc::Receiver<Envelope>, status: SharedStatus, cfg: WorkerConfig) {
    let mut next = Some(cfg.model.clone());
    while let Some(choice) = next.take() {
        set_status(&status, |s| {
            s.loading = true;
            s.ready = false;
            s.error = None;
        });
        let loaded = choice
            .path()
            .and_then(|p| crate::commands::load_model(&p, cfg.base.gpu_layers));
        match loaded {
            Ok(model) => {
                let facts = workbench::facts(&model);
                let public = ModelPublic::of(&facts);
                set_status(&status, |s| {
                    s.model_id = public.model_id.clone();
                    s.device = public.device.clone();
                    s.dtype = public.dtype.clone();
                    s.has_chat_template = public.has_chat_template;
                    s.eos_token_id = public.eos_token_id;
                    s.vocab_size = Some(public.vocab_size);
                    s.loading = false;
                    s.ready = true;
                    s.branches = 0;
                });
                next = serve(&model, public, &mut rx, &status, &cfg);
            }
            Err(e) => {
                let msg = e.message();
                eprintln!("ntv serve: could not load the model: {msg}");
                set_status(&status, |s| {
                    s.loading = false;
                    s.ready = false;
                    s.error = Some(msg);
                });
                next = idle(&mut rx);
            }
        }
    }
}

/// Without a model: refuse model work until a load arrives.
fn idle(rx: &mut mpsc::Receiver<Envelope>) -> Option<ModelChoice> {
    while let Some(env) = rx.blocking_recv() {
        match env.job {
            Job::Load(choice) => return Some(choice),
            _ => {
                if let Some(r) = env.reply {
                    let _ = r.send(Err(ApiError::unavailable("no model is loaded")));
                }
            }
        }
    }
    None
}

/// The branches of one model, most recently used last.
struct State<'m> {
    model: &'m Model,
    public: ModelPublic,
    branches: Vec<(String, Workbench<'m>)>,
    explainer: Explainer<'m>,
}

/// Serve requests on `model` until a load (its path returned) or the end of the channel.
fn serve(
    model: &Model,
    public: ModelPublic,
    rx: &mut mpsc::Receiver<Envelope>,
    status: &SharedStatus,
    cfg: &WorkerConfig,
) -> Option<ModelChoice> {
    let mut st = State {
        model,
        public,
        branches: Vec::new(),
        explainer: Explainer::new(model, &cfg.base.context),
    };
    while let Some(env) = rx.blocking_recv() {
        if let Job::Load(choice) = env.job {
            return Some(choice);
        }
        let (answer, panicked) = guarded(|| st.handle(env.job, cfg));
        if panicked {
            st.branches.clear();
            st.explainer = Explainer::new(model, &cfg.base.context);
        }
        let n = st.branches.len();
        set_status(status, |s| s.branches = n);
        if let Some(r) = env.reply {
            let _ = r.send(answer);
        }
    }
    None
}

/// Run one job; a panic becomes a 500 for it (and `true`: the caller drops what the job may
/// have left half-changed).
fn guarded(
    f: impl FnOnce() -> Result<serde_json::Value, ApiError>,
) -> (Result<serde_json::Value, ApiError>, bool) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(answer) => (answer, false),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            eprintln!("ntv serve: a request panicked: {what}");
            (
                Err(ApiError::internal(format!("internal error: {what}"))),
                true,
            )
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

/// The demo's name for a stop reason (`eos_token`), ntv's for the others.
fn stop_name(r: StopReason) -> String {
    match r {
        StopReason::Eog => "eos_token".into(),
        other => other.as_str().into(),
    }
}

impl<'m> State<'m> {
    fn handle(&mut self, job: Job, cfg: &WorkerConfig) -> Result<serde_json::Value, ApiError> {
        match job {
            Job::Preview(r) => to_json(&self.preview(r, cfg)?),
            Job::Step(r) => to_json(&self.step(r, cfg)?),
            Job::Attribution(r) => to_json(&self.attribution(r)?),
            Job::Load(_) => unreachable!("handled by the loop"),
        }
    }

    /// The branch's workbench (opened on first use; the least recently used one goes when
    /// there are too many), with the request's settings and context applied.
    fn branch(
        &mut self,
        req: &PreviewRequest,
        seed: SeedChoice,
        cfg: &WorkerConfig,
    ) -> Result<(&mut Workbench<'m>, usize)> {
        let spec = api::prompt_spec(&req.prompt, &req.system_prompt, req.use_chat_template);
        let constraint = req.constraint.spec()?;
        let params = req.params.sampling()?;
        let n_vocab = self.model.n_vocab();
        if req.top_k == 0 || req.top_k > n_vocab {
            return Err(input_err(
                format!("top_k {} is not a candidate count", req.top_k),
                format!("top_k (the candidates shown) is 1 to the vocabulary size, {n_vocab}"),
            ));
        }
        match self.branches.iter().position(|(n, _)| *n == req.branch_id) {
            Some(i) => {
                let entry = self.branches.remove(i);
                self.branches.push(entry);
            }
            // A new branch takes over the least recently used one's workbench when there are
            // enough (its llama.cpp context, memory already touched, and the KV prefix the
            // contexts share, typically the system prompt); only the first ones make theirs.
            None if self.branches.len() >= cfg.max_branches.max(1) => {
                let (_, mut wb) = self.branches.remove(0);
                wb.restart()?;
                self.branches.push((req.branch_id.clone(), wb));
            }
            None => {
                let mut settings = cfg.base.clone();
                settings.prompt = Some(spec.clone());
                let wb = Workbench::open(
                    self.model,
                    SessionStore::detached(),
                    settings,
                    Mode::Record { reset: true },
                )?;
                self.branches.push((req.branch_id.clone(), wb));
            }
        }
        let wb = &mut self.branches.last_mut().expect("pushed above").1;
        // What the workbench's context had decoded before this request (also in an earlier
        // branch's life, for one taken over).
        let before = wb.cache_use().decoded_tokens;
        wb.take_notices();
        wb.set_stepping(seed, req.params.stop_sequences.clone());
        wb.set_params(params, req.top_k)?;
        wb.set_context(spec, constraint, &req.completion_ids)?;
        Ok((wb, before))
    }

    fn preview(&mut self, req: PreviewRequest, cfg: &WorkerConfig) -> Result<PreviewResponse> {
        let public = self.public.clone();
        let seed = SeedChoice {
            seed: req.params.seed,
            reset_rng: false,
        };
        let (wb, before) = self.branch(&req, seed, cfg)?;
        let dist = wb.preview()?;
        let doc = wb.preview_doc(dist, None, Timings::default());
        let decoded = wb.cache_use().decoded_tokens - before;
        Ok(PreviewResponse {
            model: public,
            prompt_tokens: doc.prompt_tokens,
            completion_tokens: doc.completion_tokens,
            context_token_count: doc.context_token_count,
            dist: doc.dist,
            branch_id: req.branch_id,
            decoded_tokens: decoded,
            prompt_text: doc.prompt_text,
        })
    }

    fn step(&mut self, req: StepRequest, cfg: &WorkerConfig) -> Result<StepResponse> {
        let public = self.public.clone();
        let seed = SeedChoice {
            seed: req.params.seed,
            reset_rng: req.reset_rng,
        };
        let context = req.context();
        let (wb, before) = self.branch(&context, seed, cfg)?;
        let text = req.force_text.as_deref().filter(|t| !t.is_empty());
        let plan = match (text, req.force_token_id) {
            (Some(t), _) => wb.force_text(t)?,
            (None, Some(id)) => wb.force_token(id)?,
            (None, None) => wb.choose(Some(1)),
        };
        let run = wb.step(&plan, None, true, &mut |_| Ok(()))?;
        let doc = wb.step_doc(StepAction::Append, None, Some(run), Vec::new());
        let decoded = wb.cache_use().decoded_tokens - before;
        Ok(StepResponse {
            model: public,
            dist: doc.appended_meta.first().map(|m| m.dist.clone()),
            selected: if text.is_some() {
                None
            } else {
                doc.steps.first().map(|r| r.selected.clone())
            },
            appended: doc.appended,
            appended_meta: doc.appended_meta,
            new_completion_ids: doc.completion_ids,
            done: doc.done,
            stop_reason: doc.stop_reason.map(stop_name),
            branch_id: req.branch_id,
            decoded_tokens: decoded,
            completion_text: doc.completion_text,
            context_token_count: doc.context_token_count,
            seed: doc.seed,
        })
    }

    fn attribution(&mut self, req: AttributionRequest) -> Result<AttributionResponse> {
        let Some(method) = api::method(&req.method)? else {
            return Ok(AttributionResponse {
                ok: true,
                attributions: Vec::new(),
                source_len: 0,
                context_len: None,
                target_id: None,
                model_id: None,
                method: None,
                record: None,
            });
        };
        let i = req.target_index.max(0) as usize;
        let n = req.completion_ids.len();
        let out_of_range = || {
            input_err(
                format!("target_index {i} is out of range (the completion has {n} tokens)"),
                "target_index is a completion position; with target_token_id it may be the length (the next token)",
            )
        };
        let full = req.completion_ids.clone();
        let (completion_ids, sel) = match req.target_token_id {
            None if i < n => (full, TargetSel::Index(i as i64)),
            None => return Err(out_of_range()),
            Some(t) if full.get(i) == Some(&t) => (full, TargetSel::Index(i as i64)),
            Some(_) if i > n => return Err(out_of_range()),
            Some(t) => (full[..i].to_vec(), TargetSel::Token(t)),
        };
        let merged = Merged {
            prompt: api::prompt_spec(&req.prompt, &req.system_prompt, req.use_chat_template),
            completion_ids,
            sel,
            options: Options {
                method,
                ..Options::default()
            },
        };
        let record = self
            .explainer
            .explain_request(&merged)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::runtime("the attribution produced no record"))?;
        Ok(AttributionResponse {
            ok: true,
            attributions: record.scores.iter().map(|s| s.score).collect(),
            source_len: record.scores.len(),
            context_len: Some(record.context_len),
            target_id: Some(record.target.id),
            model_id: Some(self.public.model_id.clone()),
            method: Some(method.name().into()),
            record: Some(Box::new(record)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_a_500_for_that_job_only() {
        let (answer, panicked) = guarded(|| panic!("boom {}", 7));
        let e = answer.unwrap_err();
        assert!(panicked);
        assert_eq!(e.status, 500);
        assert!(e.body.detail.contains("boom 7"), "{}", e.body.detail);
        let (answer, panicked) = guarded(|| Ok(serde_json::json!({"ok": true})));
        assert!(!panicked);
        assert_eq!(answer.unwrap()["ok"], true);
    }

    #[test]
    fn the_demo_names_end_of_generation_eos_token() {
        assert_eq!(stop_name(StopReason::Eog), "eos_token");
        assert_eq!(stop_name(StopReason::StopSequence), "stop_sequence");
    }
}
