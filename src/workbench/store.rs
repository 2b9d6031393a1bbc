//! The session a call works on: loaded (or new), locked while it will be written, saved
//! atomically. A session holding a completion made for another prompt or model is never
//! overwritten: unless `--reset` discards it, it is written aside (`NAME.1.json`, …) when the
//! new session is saved, and the front-end names that file on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, input_err};
use crate::session::{self, ModelRef, Session, SessionLock};
use crate::settings::PromptSpec;

/// The session file of a call.
pub struct SessionStore {
    path: Option<PathBuf>,
    pub session: Session,
    existed: bool,
    /// The session as found, to be written aside on save (a new one replaced it).
    aside: Option<Session>,
    _lock: Option<SessionLock>,
    /// `--force`: go on with a session whose model file changed.
    pub(crate) force_model: bool,
}

/// What [`SessionStore::save`] did besides writing the session.
#[derive(Debug, Default)]
pub struct Saved {
    /// Where the replaced session was kept.
    pub aside: Option<PathBuf>,
}

impl SessionStore {
    /// Open the session at `path` (none: `--no-session`). `write` takes the lock.
    pub fn open(path: Option<PathBuf>, write: bool) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::detached());
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
            aside: None,
            _lock: lock,
            force_model: false,
        })
    }

    /// A session that lives in memory only.
    pub fn detached() -> Self {
        Self {
            path: None,
            session: Session::new(),
            existed: false,
            aside: None,
            _lock: None,
            force_model: false,
        }
    }

    /// Allow (`true`, `--force`) a session whose model file changed since it was recorded.
    pub fn force_model(mut self, force: bool) -> Self {
        self.force_model = force;
        self
    }

    /// The session as found on disk, if there was one (read settings from it before changing
    /// anything).
    pub fn existing(&self) -> Option<&Session> {
        self.existed.then_some(&self.session)
    }

    /// The session file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Refuse when there is no session file to work on.
    pub fn require_existing(&self, hint: &str) -> Result<()> {
        if self.existed {
            Ok(())
        } else {
            Err(input_err("there is no session file here", hint))
        }
    }

    /// Make `model` the session's model and `prompt` (when given) its prompt. A completion
    /// made for another model or prompt is dropped with `reset`, else kept aside on save.
    pub fn adopt(
        &mut self,
        model: &ModelRef,
        prompt: Option<&PromptSpec>,
        reset: bool,
    ) -> Result<()> {
        let other = !same_model(&self.session, model)
            || prompt.is_some_and(|p| !same_prompt(&self.session, p));
        if other && has_completion(&self.session) {
            let fresh = Session::new();
            if reset {
                self.session.branches = fresh.branches;
                self.session.active_branch = fresh.active_branch;
            } else {
                let old = std::mem::replace(&mut self.session, fresh);
                // The new session starts from the settings the call resolved (the caller
                // writes them next); only the completion work moves aside.
                self.session.params = old.params.clone();
                self.session.preset = old.preset;
                self.session.display_k = old.display_k;
                self.session.constraint = old.constraint.clone();
                self.session.stop = old.stop.clone();
                self.session.max_tokens = old.max_tokens;
                if self.path.is_some() && self.aside.is_none() {
                    self.aside = Some(old);
                }
            }
        }
        if let Some(p) = prompt {
            let text = p.messages.is_none();
            self.session.prompt = text.then(|| p.prompt.clone());
            self.session.system = text.then(|| p.system.clone());
            self.session.messages = p.messages.clone();
            self.session.chat_template = p.chat_template;
            self.session.parse_special = p.parse_special;
        }
        self.session.model = Some(model.clone());
        Ok(())
    }

    /// Write the session back (atomically), the replaced one aside first; no-op without a file.
    pub fn save(&mut self) -> Result<Saved> {
        let Some(path) = &self.path else {
            return Ok(Saved::default());
        };
        let mut saved = Saved::default();
        if let Some(old) = self.aside.take() {
            let aside = claim_aside(path)?;
            session::save(&aside, &old)?;
            saved.aside = Some(aside);
        }
        self.session.touch();
        session::save(path, &self.session)?;
        self.existed = true;
        Ok(saved)
    }

    /// Path as text, for output.
    pub fn path_string(&self) -> Option<String> {
        self.path.as_ref().map(|p| p.display().to_string())
    }
}

/// Reserve the first free `STEM.N.EXT` beside `path` (created empty, so two processes never
/// pick the same name).
fn claim_aside(path: &Path) -> Result<PathBuf> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ntv-session".into());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new(""));
    for n in 1u32.. {
        let candidate = dir.join(format!("{stem}.{n}{ext}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(mut f) => {
                let _ = f.flush();
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(crate::error::Error::from(e)
                    .context(format!("keeping the old session beside {}", path.display())));
            }
        }
    }
    unreachable!("some session name is free")
}

fn has_completion(session: &Session) -> bool {
    session
        .branches
        .iter()
        .any(|b| !b.completion_ids.is_empty())
}

/// Whether the session's prompt (text, system prompt, template flag) is `spec`.
pub fn same_prompt(session: &Session, spec: &PromptSpec) -> bool {
    let same_input = match &spec.messages {
        Some(m) => session.messages.as_ref() == Some(m),
        None => {
            session.messages.is_none()
                && session.prompt.as_deref() == Some(spec.prompt.as_str())
                && session.system.as_deref() == Some(spec.system.as_str())
        }
    };
    same_input
        && session.chat_template == spec.chat_template
        && session.parse_special == spec.parse_special
}

/// Whether the session's model (if it has one) is `model`: the same file, or the same hub file
/// at the same commit with the same fingerprint (fetched again elsewhere, e.g. on another
/// machine).
pub fn same_model(session: &Session, model: &ModelRef) -> bool {
    session.model.as_ref().is_none_or(|m| {
        m.path == model.path
            || (m.fingerprint == model.fingerprint
                && m.hub.is_some()
                && m.hub.as_ref().map(|h| (&h.repo, &h.file, &h.revision))
                    == model.hub.as_ref().map(|h| (&h.repo, &h.file, &h.revision)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Fingerprint;

    fn model(path: &str) -> ModelRef {
        ModelRef {
            path: path.into(),
            fingerprint: Fingerprint {
                size: 1,
                sha256_head_tail: "00".into(),
            },
            facts: None,
            hub: None,
        }
    }

    fn spec(p: &str) -> PromptSpec {
        PromptSpec::text(p, "s")
    }

    fn push(st: &mut SessionStore, id: i32) {
        let b = st.session.active_mut();
        b.completion_ids.push(id);
        b.appended_meta.push(crate::session::tests::meta(id, None));
    }

    fn with_completion(dir: &Path) -> SessionStore {
        let mut st = SessionStore::open(Some(dir.join("ntv-session.json")), true).unwrap();
        st.adopt(&model("/m.gguf"), Some(&spec("first")), false)
            .unwrap();
        push(&mut st, 7);
        st.session.params.temperature = 0.25;
        st.save().unwrap();
        st
    }

    #[test]
    fn another_prompt_keeps_the_old_session_aside_and_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        drop(with_completion(dir.path()));
        for (n, p) in ["second", "third"].iter().enumerate() {
            let mut st =
                SessionStore::open(Some(dir.path().join("ntv-session.json")), true).unwrap();
            st.adopt(&model("/m.gguf"), Some(&spec(p)), false).unwrap();
            assert!(st.session.active().completion_ids.is_empty());
            assert_eq!(st.session.params.temperature, 0.25, "settings carry over");
            push(&mut st, 8);
            let saved = st.save().unwrap();
            let aside = saved.aside.expect("old session kept");
            assert_eq!(
                aside.file_name().unwrap().to_str().unwrap(),
                format!("ntv-session.{}.json", n + 1)
            );
            let old = session::load(&aside).unwrap().unwrap();
            assert_eq!(
                old.active().completion_ids,
                vec![if n == 0 { 7 } else { 8 }]
            );
        }
        let now = session::load(&dir.path().join("ntv-session.json"))
            .unwrap()
            .unwrap();
        assert_eq!(now.prompt.as_deref(), Some("third"));
    }

    #[test]
    fn same_prompt_continues_and_reset_discards() {
        let dir = tempfile::tempdir().unwrap();
        drop(with_completion(dir.path()));
        let path = dir.path().join("ntv-session.json");
        let mut st = SessionStore::open(Some(path.clone()), true).unwrap();
        st.adopt(&model("/m.gguf"), Some(&spec("first")), false)
            .unwrap();
        assert_eq!(st.session.active().completion_ids, vec![7]);
        st.adopt(&model("/other.gguf"), None, true).unwrap();
        assert!(st.session.active().completion_ids.is_empty());
        assert!(st.save().unwrap().aside.is_none());
        assert!(!dir.path().join("ntv-session.1.json").exists());
    }

    #[test]
    fn nothing_is_written_until_save() {
        let dir = tempfile::tempdir().unwrap();
        drop(with_completion(dir.path()));
        let path = dir.path().join("ntv-session.json");
        let before = std::fs::read(&path).unwrap();
        let mut st = SessionStore::open(Some(path.clone()), true).unwrap();
        st.adopt(&model("/m.gguf"), Some(&spec("other")), false)
            .unwrap();
        drop(st);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(!dir.path().join("ntv-session.1.json").exists());
    }
}
