//! Errors of constrained decoding, with the fix a user can apply.

use super::ConstraintKind;

/// Something a constraint did not allow, or could not be built from.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The source text is not a valid constraint of its kind; `message` is the parser's own
    /// (llguidance's, serde_json's, or the GBNF converter's with line and column).
    #[error("malformed {}: {message}", kind.label())]
    Malformed {
        /// The kind the source was read as.
        kind: ConstraintKind,
        /// The parser's message.
        message: String,
    },
    /// A multiple-choice list with no non-empty option.
    #[error("the choice list is empty (no non-empty option)")]
    EmptyChoice,
    /// More options than [`crate::limits::MAX_CHOICES`].
    #[error(
        "the choice list has {count} options, more than ntv's limit of {}",
        crate::limits::MAX_CHOICES
    )]
    TooManyChoices { count: usize },
    /// A token the constraint forbids at that completion position.
    #[error("token {id} at completion position {position} is not allowed by the constraint")]
    Rejected {
        /// The token id.
        id: u32,
        /// 0-based index in the completion.
        position: usize,
    },
    /// The grammar has no continuation that any token of this vocabulary can produce.
    #[error("the constraint allows no next token here (completion position {position})")]
    NoValidToken {
        /// 0-based index in the completion of the token that cannot be chosen.
        position: usize,
    },
    /// llguidance failed in a way the input does not explain.
    #[error("constraint matcher error: {0}")]
    Matcher(String),
}

impl ConstraintError {
    /// How to fix it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Malformed { kind, .. } => match kind {
                ConstraintKind::Choice => {
                    "give the options as a JSON list of strings, e.g. [\"Yes\", \"No\"]".into()
                }
                ConstraintKind::Regex => {
                    "llguidance reads Rust regex syntax (https://docs.rs/regex/#syntax); the whole completion must match, no anchors needed".into()
                }
                ConstraintKind::Lark => {
                    "see llguidance's Lark syntax: https://github.com/guidance-ai/llguidance/blob/main/docs/syntax.md".into()
                }
                ConstraintKind::JsonSchema => {
                    "the file must hold one JSON schema (an object such as {\"type\": \"object\", ...}); see https://github.com/guidance-ai/llguidance/blob/main/docs/json_schema.md".into()
                }
                ConstraintKind::Gbnf => {
                    "llama.cpp GBNF: rules are `name ::= expression`, the start rule is `root`; see llama.cpp's grammars/README.md".into()
                }
            },
            Self::EmptyChoice => "give at least one non-empty option".into(),
            Self::TooManyChoices { .. } => {
                "for a larger set of answers use --regex with an alternation (a|b|…), which has no such limit".into()
            }
            Self::Rejected { position, .. } => format!(
                "the completion was made under another constraint or none: rewind to position {position} or before (`ntv step --undo N` / `--at I`), or drop the constraint"
            ),
            Self::NoValidToken { .. } => {
                "no token of this model can continue the grammar here; rewind, or loosen the constraint".into()
            }
            Self::Matcher(_) => return None,
        })
    }

    /// Errors caused by the user's input (exit status 2), as opposed to internal failures.
    pub fn is_input(&self) -> bool {
        !matches!(self, Self::Matcher(_))
    }
}

impl crate::error::Diagnose for ConstraintError {
    fn is_input(&self) -> bool {
        ConstraintError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        ConstraintError::hint(self)
    }
}
