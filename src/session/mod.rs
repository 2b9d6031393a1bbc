//! The session file (session.md, "The session file"): the types stored in it and the pure
//! operations on branches. Reading, writing and locking live in [`file`].
//!
//! Every operation that returns a `Result` validates first and mutates after, so an error leaves
//! the session exactly as it was.

mod error;
mod file;

pub use error::SessionError;
pub use file::{SessionLock, load, lock_path, save};

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::constraint::ConstraintSpec;
use crate::record::{AppendedMeta, ModelFacts, StopReason};
use crate::sampling::{Preset, RngState, SamplingParams};

/// The value of the `format` field of every session file.
pub const FORMAT: &str = "ntv-session";
/// The session file version this ntv writes (and the newest it reads).
pub const VERSION: u32 = 2;
/// The name of the branch a new session starts with.
pub const MAIN_BRANCH: &str = "main";
/// Default number of candidates shown per step.
pub const DEFAULT_DISPLAY_K: usize = 10;

/// Everything `ntv` remembers between commands. Never holds model weights or KV state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    /// Always `"ntv-session"`.
    pub format: String,
    /// File format version (see [`VERSION`]).
    pub version: u32,
    /// When the session was created (RFC 3339, UTC).
    pub created: String,
    /// When the session was last written (RFC 3339, UTC).
    pub updated: String,
    /// The session's model, once `ntv load` has run.
    pub model: Option<ModelRef>,
    /// The user prompt.
    pub prompt: Option<String>,
    /// The system prompt.
    pub system: Option<String>,
    /// The conversation (`--messages`), which replaces `prompt` and `system` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<crate::chat::ChatMessage>>,
    /// Whether the prompt is wrapped in the model's chat template.
    pub chat_template: bool,
    /// Raw prompts: whether special-token text becomes special tokens (`--no-parse-special`
    /// turns it off). Version-1 files made without a template tokenised it literally, so the
    /// migration writes false for them.
    pub parse_special: bool,
    /// The exact text the model saw as its prompt (template rendered), as last rendered; a
    /// later rendering that differs is reported ("the prompt changed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_text: Option<String>,
    /// The preset the parameters came from, if any.
    pub preset: Option<Preset>,
    /// The resolved sampling parameters.
    pub params: SamplingParams,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Maximum number of completion tokens for `generate`.
    pub max_tokens: Option<u32>,
    /// The active output constraint, if any.
    pub constraint: Option<ConstraintSpec>,
    /// How many candidates to show per step.
    pub display_k: usize,
    /// Name of the active branch (always one of `branches`).
    pub active_branch: String,
    /// All branches; always contains the active one.
    pub branches: Vec<Branch>,
}

/// The model a session uses, with a cheap fingerprint to notice when the file changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRef {
    /// Path of the GGUF file as resolved by `ntv load`.
    pub path: String,
    /// Fingerprint of the file at load time.
    pub fingerprint: Fingerprint,
    /// What `ntv load` reported about the model.
    pub facts: Option<ModelFacts>,
    /// Where the file came from, when it came from the Hugging Face hub (absent for local
    /// files and in files of earlier ntv versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubSource>,
}

/// A model file's place on the Hugging Face hub: enough to fetch the same bytes elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HubSource {
    /// The reference as given, e.g. `hf:OWNER/REPO:Q4_K_M` (or `hf:OWNER/REPO/FILE` when the
    /// file was named by its path in the cache).
    pub reference: String,
    /// `OWNER/REPO`.
    pub repo: String,
    /// The file in the repository (the first part of a split model).
    pub file: String,
    /// The commit the file was fetched at.
    pub revision: String,
}

/// A cheap model-file fingerprint: the size plus a hash of the first and last MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Fingerprint {
    /// File size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the first MiB followed by the last MiB (the whole file when it
    /// is smaller than 2 MiB).
    pub sha256_head_tail: String,
}

/// One line of completion: its tokens, their snapshots and its RNG stream state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Branch {
    /// Unique name.
    pub name: String,
    /// The branch this one was created from.
    pub parent: Option<String>,
    /// The completion position in `parent` where this branch was created.
    pub fork_position: Option<usize>,
    /// Completion token ids (after the prompt).
    pub completion_ids: Vec<i32>,
    /// One snapshot per completion token (same length as `completion_ids`).
    pub appended_meta: Vec<AppendedMeta>,
    /// The seed of the branch's RNG stream (none until a sampled step needs one).
    pub seed: Option<u64>,
    /// Position in the ChaCha20 stream of `seed`, in 32-bit words (two per uniform draw).
    pub rng_pos: u64,
    /// Why the last generation stopped; cleared by any edit.
    pub stop_reason: Option<StopReason>,
}

/// Size of the head and of the tail hashed by [`fingerprint`].
const FINGERPRINT_CHUNK: u64 = 1 << 20;

/// Fingerprints a (model) file: its size and the SHA-256 of its first MiB followed by its last
/// MiB, or of the whole file when it is smaller than 2 MiB.
pub fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    if size < 2 * FINGERPRINT_CHUNK {
        std::io::copy(&mut file, &mut hasher)?;
    } else {
        let mut buf = vec![0u8; FINGERPRINT_CHUNK as usize];
        file.read_exact(&mut buf)?;
        hasher.update(&buf);
        file.seek(SeekFrom::Start(size - FINGERPRINT_CHUNK))?;
        file.read_exact(&mut buf)?;
        hasher.update(&buf);
    }
    let digest = hasher.finalize();
    let sha256_head_tail = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Fingerprint {
        size,
        sha256_head_tail,
    })
}

/// The current time as RFC 3339 UTC, to the second (`2025-01-31T12:00:00Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The longest branch name a session may hold.
pub const MAX_BRANCH_NAME: usize = 200;

/// Checks a user-chosen branch name: non-empty, only `A-Z a-z 0-9 . _ -`.
/// (Automatic fork names contain `~` and so never collide with user names.)
pub fn validate_branch_name(name: &str) -> Result<(), SessionError> {
    let reason = if name.is_empty() {
        "it is empty".to_string()
    } else if name.len() > MAX_BRANCH_NAME {
        format!("it is longer than {MAX_BRANCH_NAME} characters")
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("it contains {c:?}")
    } else {
        return Ok(());
    };
    Err(SessionError::BadBranchName {
        name: name.to_string(),
        reason,
    })
}

impl Branch {
    /// An empty branch with no parent and no RNG state.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            parent: None,
            fork_position: None,
            completion_ids: Vec::new(),
            appended_meta: Vec::new(),
            seed: None,
            rng_pos: 0,
            stop_reason: None,
        }
    }

    /// Number of completion tokens.
    pub fn len(&self) -> usize {
        self.completion_ids.len()
    }

    /// Whether the branch has no completion tokens.
    pub fn is_empty(&self) -> bool {
        self.completion_ids.is_empty()
    }

    /// Mirostat's `mu` after the last token (`None`: no Mirostat step yet, it starts at
    /// `2 * tau`). Kept in the step snapshots, so rewinds and forks resume it.
    pub fn mirostat_mu(&self) -> Option<f64> {
        self.appended_meta
            .iter()
            .rev()
            .find_map(|m| m.mirostat_mu_after)
    }

    /// The branch's current RNG state (`None` while it has no seed).
    pub fn rng_state(&self) -> Option<RngState> {
        self.seed.map(|seed| RngState {
            seed,
            pos: self.rng_pos,
        })
    }

    /// Sets the branch's RNG state (`None` forgets the seed).
    pub fn set_rng_state(&mut self, state: Option<RngState>) {
        self.seed = state.map(|s| s.seed);
        self.rng_pos = state.map_or(0, |s| s.pos);
    }

    /// The RNG state before completion index `at`: at (or past) the end, the branch's current
    /// state; otherwise the `rng_after` of the last snapshot before `at` that has one, else
    /// `(seed, 0)` when the branch has a seed, else `None`.
    ///
    /// Rewinds are exact when every step records `rng_after` (greedy and forced steps too).
    pub fn rng_state_at(&self, at: usize) -> Option<RngState> {
        if at >= self.len() {
            return self.rng_state();
        }
        self.appended_meta
            .iter()
            .take(at)
            .rev()
            .find_map(|m| m.rng_after)
            .or_else(|| self.seed.map(|seed| RngState { seed, pos: 0 }))
    }

    /// Drops every completion token from `at` on, rewinds the RNG state and clears
    /// `stop_reason`. `at` must be at most the length (checked by callers).
    fn truncate_to(&mut self, at: usize) {
        debug_assert!(at <= self.len());
        if at < self.len() {
            let state = self.rng_state_at(at);
            if state.is_some() {
                self.set_rng_state(state);
            }
            self.completion_ids.truncate(at);
            self.appended_meta.truncate(at);
        }
        self.stop_reason = None;
    }

    /// A copy of the first `at` tokens under another name, with the RNG state at `at`.
    fn fork(&self, name: String, at: usize) -> Branch {
        let mut branch = Branch::new(name);
        branch.parent = Some(self.name.clone());
        branch.fork_position = Some(at);
        branch.completion_ids = self.completion_ids[..at].to_vec();
        branch.appended_meta = self.appended_meta.iter().take(at).cloned().collect();
        branch.set_rng_state(self.rng_state_at(at));
        branch
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A new session: one empty branch `main`, default parameters, timestamps now.
    pub fn new() -> Self {
        let now = now_rfc3339();
        Self {
            format: FORMAT.to_string(),
            version: VERSION,
            created: now.clone(),
            updated: now,
            model: None,
            prompt: None,
            system: None,
            messages: None,
            chat_template: true,
            parse_special: true,
            prompt_text: None,
            preset: None,
            params: SamplingParams::default(),
            stop: Vec::new(),
            max_tokens: None,
            constraint: None,
            display_k: DEFAULT_DISPLAY_K,
            active_branch: MAIN_BRANCH.to_string(),
            branches: vec![Branch::new(MAIN_BRANCH)],
        }
    }

    /// Sets `updated` to now.
    pub fn touch(&mut self) {
        self.updated = now_rfc3339();
    }

    /// The names of all branches, in file order.
    pub fn branch_names(&self) -> Vec<String> {
        self.branches.iter().map(|b| b.name.clone()).collect()
    }

    fn index_of(&self, name: &str) -> Result<usize, SessionError> {
        self.branches
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| SessionError::UnknownBranch {
                name: name.to_string(),
                existing: self.branch_names(),
            })
    }

    fn active_index(&self) -> usize {
        self.branches
            .iter()
            .position(|b| b.name == self.active_branch)
            .expect("invariant: the active branch exists")
    }

    /// The active branch.
    ///
    /// # Panics
    /// When the active branch is missing, which [`load`] and every operation here rule out.
    pub fn active(&self) -> &Branch {
        &self.branches[self.active_index()]
    }

    /// The active branch, mutably (see [`Session::active`]).
    pub fn active_mut(&mut self) -> &mut Branch {
        let i = self.active_index();
        &mut self.branches[i]
    }

    /// The branch called `name`; the error lists the existing names.
    pub fn branch(&self, name: &str) -> Result<&Branch, SessionError> {
        Ok(&self.branches[self.index_of(name)?])
    }

    /// The branch called `name`, mutably.
    pub fn branch_mut(&mut self, name: &str) -> Result<&mut Branch, SessionError> {
        let i = self.index_of(name)?;
        Ok(&mut self.branches[i])
    }

    /// The RNG state of `branch` before completion index `at` (see [`Branch::rng_state_at`]);
    /// `None` for an unknown branch.
    pub fn rng_state_at(&self, branch: &str, at: usize) -> Option<RngState> {
        self.branch(branch).ok()?.rng_state_at(at)
    }

    fn check_position(branch: &Branch, at: usize) -> Result<(), SessionError> {
        if at > branch.len() {
            return Err(SessionError::PositionOutOfRange {
                branch: branch.name.clone(),
                at,
                len: branch.len(),
            });
        }
        Ok(())
    }

    /// Creates branch `name` from `from` (default: the active branch) with its first `at`
    /// (default: all) completion tokens and the RNG state at that position. Does not switch.
    pub fn new_branch(
        &mut self,
        name: &str,
        from: Option<&str>,
        at: Option<usize>,
    ) -> Result<&Branch, SessionError> {
        validate_branch_name(name)?;
        if self.branches.iter().any(|b| b.name == name) {
            return Err(SessionError::BranchExists {
                name: name.to_string(),
            });
        }
        let src = match from {
            Some(from) => self.branch(from)?,
            None => self.active(),
        };
        let at = at.unwrap_or(src.len());
        Self::check_position(src, at)?;
        let branch = src.fork(name.to_string(), at);
        self.branches.push(branch);
        Ok(self.branches.last().expect("just pushed"))
    }

    /// Makes `name` the active branch.
    pub fn switch(&mut self, name: &str) -> Result<(), SessionError> {
        let i = self.index_of(name)?;
        self.active_branch = self.branches[i].name.clone();
        Ok(())
    }

    /// Deletes branch `name`. The active branch is refused unless `force`; then `main` (or the
    /// first remaining branch) becomes active. The last branch is never deleted.
    pub fn delete(&mut self, name: &str, force: bool) -> Result<(), SessionError> {
        let i = self.index_of(name)?;
        if self.branches.len() == 1 {
            return Err(SessionError::LastBranch {
                name: name.to_string(),
            });
        }
        let was_active = self.active_branch == name;
        if was_active && !force {
            return Err(SessionError::DeleteActive {
                name: name.to_string(),
            });
        }
        let gone = self.branches.remove(i);
        // Its children now fork from its parent, where the three still share a prefix.
        for b in &mut self.branches {
            if b.parent.as_deref() == Some(name) {
                b.parent = gone.parent.clone();
                b.fork_position = match (b.fork_position, gone.fork_position) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    _ => None,
                };
            }
        }
        if was_active {
            self.active_branch = if self.branches.iter().any(|b| b.name == MAIN_BRANCH) {
                MAIN_BRANCH.to_string()
            } else {
                self.branches[0].name.clone()
            };
        }
        Ok(())
    }

    /// Drops the last `n` completion tokens of the active branch, rewinds its RNG state and
    /// clears its `stop_reason`.
    pub fn undo(&mut self, n: usize) -> Result<(), SessionError> {
        let branch = self.active();
        let len = branch.len();
        if n > len {
            return Err(SessionError::UndoTooMany {
                branch: branch.name.clone(),
                n,
                len,
            });
        }
        self.active_mut().truncate_to(len - n);
        Ok(())
    }

    /// Keeps the first `at` completion tokens of the active branch (rewinding its RNG state and
    /// clearing its `stop_reason`), without creating a branch.
    pub fn truncate_active(&mut self, at: usize) -> Result<(), SessionError> {
        Self::check_position(self.active(), at)?;
        self.active_mut().truncate_to(at);
        Ok(())
    }

    /// The automatic name for a fork of `base`: `base~1`, `base~2`, … (the first unused), where
    /// a `~N` suffix of `base` is dropped first (forking `main~1` gives `main~2`).
    pub fn fork_name(&self, base: &str) -> String {
        let stem = match base.rsplit_once('~') {
            Some((stem, n)) if !stem.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => stem,
            _ => base,
        };
        (1..)
            .map(|k| format!("{stem}~{k}"))
            .find(|n| !self.branches.iter().any(|b| &b.name == n))
            .expect("some name is free")
    }

    /// Creates a branch from the active one at completion position `at` with an automatic name
    /// (see [`Session::fork_name`]), switches to it and returns its name.
    pub fn fork_at(&mut self, at: usize) -> Result<String, SessionError> {
        let src = self.active();
        Self::check_position(src, at)?;
        let name = self.fork_name(&src.name);
        let branch = src.fork(name.clone(), at);
        self.branches.push(branch);
        self.active_branch = name.clone();
        Ok(name)
    }

    /// Checks the invariants a loaded file must hold: the active branch exists, branch names are
    /// unique and non-empty, and every branch has one snapshot per completion token.
    pub fn check(&self) -> Result<(), String> {
        if self.branches.is_empty() {
            return Err("it has no branches".into());
        }
        // The rules the command line holds its values to.
        self.params.validate().map_err(|e| format!("params: {e}"))?;
        if self.display_k == 0 || self.display_k > crate::trace::MAX_TOP_K {
            return Err(format!(
                "display_k {} is not in 1..={}",
                self.display_k,
                crate::trace::MAX_TOP_K
            ));
        }
        for (i, b) in self.branches.iter().enumerate() {
            if b.name.is_empty() {
                return Err(format!("branches[{i}] has an empty name"));
            }
            // User names (validate_branch_name) plus `~` of automatic fork names; nothing
            // that a terminal would interpret when `branch list` prints it.
            if b.name.len() > MAX_BRANCH_NAME
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~'))
            {
                return Err(format!(
                    "branches[{i}] has the name {:?}: names are at most {MAX_BRANCH_NAME} of A-Z a-z 0-9 . _ - ~",
                    b.name
                ));
            }
            if self.branches[..i].iter().any(|o| o.name == b.name) {
                return Err(format!("branch name '{}' is used twice", b.name));
            }
            if let Some(p) = &b.parent
                && !self.branches.iter().any(|o| &o.name == p)
            {
                return Err(format!(
                    "branch '{}' names the parent '{p}', which is not among its branches",
                    b.name
                ));
            }
            if let Some(at) = b.fork_position
                && at > crate::limits::MAX_CONTEXT_TOKENS
            {
                return Err(format!(
                    "branch '{}' forks at position {at}, beyond any context ({})",
                    b.name,
                    crate::limits::MAX_CONTEXT_TOKENS
                ));
            }
            if b.completion_ids.len() > crate::limits::MAX_CONTEXT_TOKENS {
                return Err(format!(
                    "branch '{}' holds {} tokens, beyond any context",
                    b.name,
                    b.completion_ids.len()
                ));
            }
            if b.appended_meta.len() != b.completion_ids.len() {
                return Err(format!(
                    "branch '{}' has {} completion ids but {} appended_meta entries",
                    b.name,
                    b.completion_ids.len(),
                    b.appended_meta.len()
                ));
            }
        }
        // Parents form a forest: following them from any branch ends within n steps.
        for b in &self.branches {
            let mut at = b;
            for _ in 0..=self.branches.len() {
                match &at.parent {
                    None => break,
                    Some(p) => {
                        at = self
                            .branches
                            .iter()
                            .find(|o| &o.name == p)
                            .expect("checked")
                    }
                }
            }
            if at.parent.is_some() {
                return Err(format!("the parents of branch '{}' form a cycle", b.name));
            }
        }
        if !self.branches.iter().any(|b| b.name == self.active_branch) {
            return Err(format!(
                "the active branch '{}' is not among its branches ({})",
                self.active_branch,
                self.branch_names().join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
