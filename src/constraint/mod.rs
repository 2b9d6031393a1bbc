//! Constrained decoding (constraints.md): multiple choice, regex, Lark, JSON schema and GBNF,
//! all compiled by llguidance and driven through its [`Matcher`], which this module keeps (not
//! llama.cpp's opaque sampler wrapper, which silently allows everything on a matcher error).
//!
//! The constraint applies to the completion text only. The token environment comes from the
//! engine ([`crate::engine::Model::tok_env`]): every end-of-generation token is registered as an
//! EOS token, and special tokens carry llguidance's `0xFF` marker, so text grammars never allow
//! them. [`Constraint::mask`] allows the end-of-generation tokens exactly when the completion so
//! far is a complete match, and only them once the grammar cannot be extended.
//!
//! Nothing here needs a model: [`grammar`] checks a source before any model work, and the tests
//! drive [`Constraint`] over a byte-level token environment.

mod error;
mod gbnf;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex};

use llguidance::api::{GrammarInit, ParserLimits, StopReason, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv};
use llguidance::{Matcher, ParserFactory};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use error::ConstraintError;
pub use gbnf::{GbnfError, gbnf_to_lark};

/// An output constraint as the user gave it (stored in the session and in traces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConstraintSpec {
    /// Constraint kind.
    pub kind: ConstraintKind,
    /// The constraint's source text.
    pub source: String,
}

/// The five kinds of constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    /// The completion is exactly one of a list of strings (source: a JSON list of strings).
    Choice,
    /// The whole completion matches a regular expression (llguidance / Rust regex syntax).
    Regex,
    /// llguidance's Lark dialect.
    Lark,
    /// JSON valid under a JSON schema (source: the schema as JSON text).
    JsonSchema,
    /// llama.cpp's GBNF, translated to Lark by [`gbnf_to_lark`].
    Gbnf,
}

impl ConstraintKind {
    /// Every kind, in the order of constraints.md.
    pub const ALL: [ConstraintKind; 5] = [
        ConstraintKind::Choice,
        ConstraintKind::Regex,
        ConstraintKind::Lark,
        ConstraintKind::JsonSchema,
        ConstraintKind::Gbnf,
    ];

    /// The JSON name: `choice`, `regex`, `lark`, `json_schema`, `gbnf`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintKind::Choice => "choice",
            ConstraintKind::Regex => "regex",
            ConstraintKind::Lark => "lark",
            ConstraintKind::JsonSchema => "json_schema",
            ConstraintKind::Gbnf => "gbnf",
        }
    }

    /// The inverse of [`ConstraintKind::as_str`] (also accepts `json-schema`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "choice" => ConstraintKind::Choice,
            "regex" => ConstraintKind::Regex,
            "lark" => ConstraintKind::Lark,
            "json_schema" | "json-schema" => ConstraintKind::JsonSchema,
            "gbnf" => ConstraintKind::Gbnf,
            _ => return None,
        })
    }

    /// What the source is, for messages ("malformed regex: ...").
    pub(crate) fn label(self) -> &'static str {
        match self {
            ConstraintKind::Choice => "choice list",
            ConstraintKind::Regex => "regex",
            ConstraintKind::Lark => "Lark grammar",
            ConstraintKind::JsonSchema => "JSON schema",
            ConstraintKind::Gbnf => "GBNF grammar",
        }
    }
}

impl fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn malformed(kind: ConstraintKind, message: impl fmt::Display) -> ConstraintError {
    ConstraintError::Malformed {
        kind,
        message: message.to_string(),
    }
}

/// The options of a choice source (a JSON list of strings): duplicates removed keeping the first,
/// empty options dropped; none left is [`ConstraintError::EmptyChoice`].
pub fn parse_choices(source: &str) -> Result<Vec<String>, ConstraintError> {
    let list: Vec<String> = serde_json::from_str(source).map_err(|e| {
        malformed(
            ConstraintKind::Choice,
            format!("not a JSON list of strings: {e}"),
        )
    })?;
    dedupe_choices(list)
}

fn dedupe_choices(list: Vec<String>) -> Result<Vec<String>, ConstraintError> {
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    let out: Vec<String> = list
        .into_iter()
        .filter(|o| !o.is_empty() && seen.insert(o.clone()))
        .collect();
    if out.is_empty() {
        return Err(ConstraintError::EmptyChoice);
    }
    if out.len() > crate::limits::MAX_CHOICES {
        return Err(ConstraintError::TooManyChoices { count: out.len() });
    }
    Ok(out)
}

/// The choice source for a list of options (the JSON list [`grammar`] reads), deduplicated as
/// [`parse_choices`] would.
pub fn choice_source(options: &[String]) -> Result<String, ConstraintError> {
    let options = dedupe_choices(options.to_vec())?;
    Ok(serde_json::Value::from(options).to_string())
}

/// The options of a choices file: a JSON list of strings when the text is one, otherwise one
/// option per line (a trailing `\r` removed; empty lines dropped later).
pub fn choices_from_file_text(text: &str) -> Vec<String> {
    if text.trim_start().starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<String>>(text)
    {
        return list;
    }
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

/// The Lark grammar of a choice: `start: "opt1" | "opt2" | ...`.
fn choice_lark(options: &[String]) -> String {
    let alts: Vec<String> = options.iter().map(|o| gbnf::lark_string(o)).collect();
    format!("start: {}\n", alts.join(" | "))
}

/// The llguidance grammar of a source, not yet checked.
fn build(kind: ConstraintKind, source: &str) -> Result<TopLevelGrammar, ConstraintError> {
    Ok(match kind {
        ConstraintKind::Choice => TopLevelGrammar::from_lark(choice_lark(&parse_choices(source)?)),
        ConstraintKind::Regex => {
            if source.is_empty() {
                return Err(malformed(kind, "the regex is empty"));
            }
            TopLevelGrammar::from_regex(source)
        }
        ConstraintKind::Lark => {
            if source.trim().is_empty() {
                return Err(malformed(kind, "the grammar is empty"));
            }
            TopLevelGrammar::from_lark(source.to_string())
        }
        ConstraintKind::JsonSchema => {
            let schema: serde_json::Value = serde_json::from_str(source)
                .map_err(|e| malformed(kind, format!("not valid JSON: {e}")))?;
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(malformed(
                    kind,
                    "a JSON schema is an object (or true/false), not this JSON value",
                ));
            }
            TopLevelGrammar::from_json_schema(schema)
        }
        ConstraintKind::Gbnf => {
            TopLevelGrammar::from_lark(gbnf_to_lark(source).map_err(|e| malformed(kind, e))?)
        }
    })
}

/// Parse and check a constraint source before any model work, and return its llguidance
/// grammar. The check compiles the grammar without a vocabulary (special-token references such
/// as `<|im_end|>` are checked later, by [`Constraint::new`]).
pub fn grammar(kind: ConstraintKind, source: &str) -> Result<TopLevelGrammar, ConstraintError> {
    let g = build(kind, source)?;
    if let Some(e) = GrammarInit::Serialized(g.clone())
        .validate(None, ParserLimits::default())
        .into_error()
    {
        return Err(malformed(kind, e));
    }
    Ok(g)
}

/// One parser factory per token environment (building one walks the vocabulary). Entries keep
/// their environment alive, so an address is never reused for another one.
fn factory(env: &TokEnv) -> Result<Arc<ParserFactory>, ConstraintError> {
    type Cache = Mutex<Vec<(TokEnv, Arc<ParserFactory>)>>;
    static FACTORIES: Cache = Mutex::new(Vec::new());
    let mut cache = FACTORIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, f)) = cache.iter().find(|(e, _)| Arc::ptr_eq(e, env)) {
        return Ok(f.clone());
    }
    let mut f = ParserFactory::new_simple(env)
        .map_err(|e| ConstraintError::Matcher(format!("cannot set up llguidance: {e}")))?;
    // No llguidance logging on stderr, and short runtime errors (no parser-state dumps).
    f.quiet();
    f.limits_mut().verbose_errors = false;
    let f = Arc::new(f);
    cache.push((env.clone(), f.clone()));
    Ok(f)
}

/// The tokens a constraint allows next.
#[derive(Clone)]
pub struct Mask {
    vob: SimpleVob,
    n_vocab: usize,
}

impl Mask {
    /// True when token `id` is allowed (false outside the vocabulary).
    pub fn is_allowed(&self, id: usize) -> bool {
        id < self.n_vocab && self.vob.get(id)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        let mut n = 0;
        self.vob
            .iter_set_entries(|i| n += usize::from(i < self.n_vocab));
        n
    }

    /// The allowed ids, ascending.
    pub fn allowed_ids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        self.vob.iter_set_entries(|i| {
            if i < self.n_vocab {
                out.push(i as u32);
            }
        });
        out
    }

    /// Set the logit of every forbidden token to -inf (sampling.md step 4).
    pub fn apply(&self, logits: &mut [f32]) {
        for (i, z) in logits.iter_mut().enumerate() {
            if !self.is_allowed(i) {
                *z = f32::NEG_INFINITY;
            }
        }
    }

    /// The vocabulary size the mask covers.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// llguidance's bit set.
    pub fn as_vob(&self) -> &SimpleVob {
        &self.vob
    }
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mask")
            .field("count", &self.count())
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

/// A constraint being matched against a completion, token by token.
pub struct Constraint {
    kind: ConstraintKind,
    source: String,
    env: TokEnv,
    matcher: Matcher,
    /// Tokens given to the matcher.
    consumed: usize,
    /// End-of-generation tokens accepted after the grammar had stopped (the matcher refuses
    /// them, so they are counted here).
    eog_after_stop: usize,
    /// The mask of the current position, until the next consume / rollback.
    mask: Option<Mask>,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Build a constraint over a token environment. Syntax errors in the source surface here
    /// with llguidance's message, as [`ConstraintError::Malformed`].
    pub fn new(env: &TokEnv, kind: ConstraintKind, source: &str) -> Result<Self, ConstraintError> {
        let grammar = build(kind, source)?;
        let parser = factory(env)?
            .create_parser(grammar)
            .map_err(|e| malformed(kind, e))?;
        let matcher = Matcher::new(Ok(parser));
        // Failing before the first token: the grammar itself cannot start (a limit of
        // llguidance's, such as a row with too many items) — the input's fault.
        if let Some(e) = matcher.get_error() {
            return Err(malformed(kind, e));
        }
        Ok(Constraint {
            kind,
            source: source.to_string(),
            env: env.clone(),
            matcher,
            consumed: 0,
            eog_after_stop: 0,
            mask: None,
        })
    }

    /// The kind of constraint.
    pub fn kind(&self) -> ConstraintKind {
        self.kind
    }

    /// The source text it was built from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many completion tokens have been consumed (the position of the next one).
    pub fn position(&self) -> usize {
        self.consumed + self.eog_after_stop
    }

    fn n_vocab(&self) -> usize {
        self.env.tok_trie().vocab_size()
    }

    /// True for the end-of-generation tokens of the environment.
    pub fn is_eog(&self, id: u32) -> bool {
        self.env.tok_trie().eos_tokens().contains(&id)
    }

    /// The grammar has stopped normally: complete, or an end-of-generation token consumed.
    fn stopped_ok(&self) -> bool {
        self.matcher.is_stopped()
            && !self.matcher.is_error()
            && matches!(
                self.matcher.stop_reason(),
                StopReason::NoExtension | StopReason::EndOfSentence
            )
    }

    fn matcher_error(&self, e: impl fmt::Display) -> ConstraintError {
        let msg = e.to_string();
        let msg = msg
            .trim_end_matches("<non-verbose/>")
            .trim_end()
            .to_string();
        if msg.starts_with("NoExtensionBias") {
            ConstraintError::NoValidToken {
                position: self.position(),
            }
        } else {
            ConstraintError::Matcher(msg)
        }
    }

    /// The tokens allowed next (llguidance's `compute_mask`). End-of-generation tokens are
    /// allowed exactly when the completion so far is a complete match; once the grammar cannot
    /// be extended they are the only ones. Cached until the next consume / rollback.
    pub fn mask(&mut self) -> Result<Mask, ConstraintError> {
        if let Some(m) = &self.mask {
            return Ok(m.clone());
        }
        let vob = if self.stopped_ok() {
            self.env.tok_trie().eos_token_set()
        } else {
            match self.matcher.compute_mask() {
                Ok(v) => v,
                Err(e) => return Err(self.matcher_error(e)),
            }
        };
        let m = Mask {
            vob,
            n_vocab: self.n_vocab(),
        };
        self.mask = Some(m.clone());
        Ok(m)
    }

    /// Is `id` allowed next? Uses the cached mask when there is one, else llguidance's cheaper
    /// single-token check.
    pub fn allows(&mut self, id: u32) -> Result<bool, ConstraintError> {
        if id as usize >= self.n_vocab() {
            return Ok(false);
        }
        if let Some(m) = &self.mask {
            return Ok(m.is_allowed(id as usize));
        }
        if self.stopped_ok() {
            return Ok(self.is_eog(id));
        }
        match self.matcher.validate_tokens(&[id]) {
            Ok(n) => Ok(n == 1),
            Err(e) => Err(self.matcher_error(e)),
        }
    }

    /// Advance by one token. A token the constraint forbids is
    /// [`ConstraintError::Rejected`] and leaves the constraint unchanged.
    pub fn consume(&mut self, id: u32) -> Result<(), ConstraintError> {
        let position = self.position();
        if !self.allows(id)? {
            return Err(ConstraintError::Rejected { id, position });
        }
        if self.stopped_ok() {
            // Only end-of-generation tokens get here; the matcher would refuse them.
            self.eog_after_stop += 1;
            return Ok(());
        }
        if let Err(e) = self.matcher.consume_token(id) {
            return Err(self.matcher_error(e));
        }
        self.consumed += 1;
        self.mask = None;
        Ok(())
    }

    /// Replay completion ids from the start of the completion (the constraint is reset first).
    /// A rejected id names its index in `ids`.
    pub fn replay(&mut self, ids: &[u32]) -> Result<(), ConstraintError> {
        self.rollback(self.position())?;
        ids.iter().try_for_each(|&id| self.consume(id))
    }

    /// Undo the last `n` consumed tokens.
    pub fn rollback(&mut self, n: usize) -> Result<(), ConstraintError> {
        if n == 0 {
            return Ok(());
        }
        if n > self.position() {
            return Err(ConstraintError::Matcher(format!(
                "cannot roll back {n} tokens: only {} consumed",
                self.position()
            )));
        }
        let extra = n.min(self.eog_after_stop);
        let rest = n - extra;
        if rest > 0 {
            if let Err(e) = self.matcher.rollback(rest) {
                return Err(self.matcher_error(e));
            }
            self.consumed -= rest;
        }
        self.eog_after_stop -= extra;
        self.mask = None;
        Ok(())
    }

    /// The completion so far is a complete match (end-of-generation allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.stopped_ok() || self.matcher.is_accepting().unwrap_or(false)
    }

    /// Accepting, and no token other than end-of-generation is allowed
    /// (`stop_reason: "constraint_complete"`).
    pub fn is_complete(&mut self) -> Result<bool, ConstraintError> {
        if self.stopped_ok() {
            return Ok(true);
        }
        if !self.is_accepting() {
            return Ok(false);
        }
        let mask = self.mask()?;
        let mut others = false;
        mask.vob.iter_set_entries(|i| {
            if i < mask.n_vocab && !self.is_eog(i as u32) {
                others = true;
            }
        });
        Ok(!others)
    }

    /// An independent copy (its own parser state and caches), e.g. for another branch.
    pub fn deep_clone(&self) -> Self {
        Constraint {
            kind: self.kind,
            source: self.source.clone(),
            env: self.env.clone(),
            matcher: self.matcher.deep_clone(),
            consumed: self.consumed,
            eog_after_stop: self.eog_after_stop,
            mask: self.mask.clone(),
        }
    }
}
